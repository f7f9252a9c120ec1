//! `File`, `fs::Durable`, `BufWriter` and `BufStream` exits on real files
//! (S28, S29, S32, pitfalls P1 and P2).
#![cfg(all(feature = "fs", feature = "io-util"))]

mod common;

use std::path::{Path, PathBuf};

use tokio::fs::File;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::oneshot;
use tokio_exit_stack::{AsyncExitStack, acquire, error::ResourceError};

const FILE_LEN: usize = 256 * 1024;

/// Distinct, position-dependent content for file `i`.
fn content(i: usize) -> Vec<u8> {
    (0..FILE_LEN)
        .map(|j| (j.wrapping_mul(31) ^ i.wrapping_mul(7)) as u8)
        .collect()
}

/// Writes `n` files through `File` and `n` through `BufWriter<File>` into
/// one stack, without flushing; returns their paths and contents.
async fn write_files(stack: &AsyncExitStack, dir: &Path, first: usize, n: usize) -> Vec<(PathBuf, Vec<u8>)> {
    let mut written = Vec::new();
    for i in first..first + n {
        let path = dir.join(format!("plain-{i}"));
        let data = content(i);
        let file = stack.enter_async_context(acquire(File::create(&path))).await.unwrap();
        file.write_all(&data).await.unwrap();
        written.push((path, data));

        let path = dir.join(format!("buffered-{i}"));
        let data = content(i + 10_000);
        let file = File::create(&path).await.unwrap();
        let writer = stack.enter_async_context(BufWriter::new(file)).await.unwrap();
        writer.write_all(&data).await.unwrap();
        written.push((path, data));
    }
    written
}

fn check(written: &[(PathBuf, Vec<u8>)]) {
    for (path, data) in written {
        let on_disk = std::fs::read(path).unwrap();
        assert!(
            on_disk == *data,
            "{} holds {} of {} bytes, or other bytes",
            path.display(),
            on_disk.len(),
            data.len()
        );
    }
}

both_flavours! {
    async fn s28_s29_four_hundred_files_hold_every_byte_after_aclose_or_drop() {
        let dir = tempfile::tempdir().unwrap();
        // 100 + 100 closed with aclose
        let mut stack = AsyncExitStack::new();
        let closed = write_files(&stack, dir.path(), 0, 100).await;
        stack.aclose().await.unwrap();
        check(&closed);
        // 100 + 100 through a stack dropped without aclose
        let stack = common::cancellable();
        let (tx, done) = oneshot::channel();
        stack.push_async_callback(move || async move {
            let _ = tx.send(());
        });
        let dropped = write_files(&stack, dir.path(), 100, 100).await;
        drop(stack);
        done.await.unwrap();
        check(&dropped);
        assert_eq!(closed.len() + dropped.len(), 400);
    }
}

/// The control for S29: a `BufWriter` dropped without the stack loses its
/// buffer (pitfall P2).
#[tokio::test]
async fn s29_control_a_dropped_bufwriter_loses_its_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lost");
    let mut writer = BufWriter::new(File::create(&path).await.unwrap());
    writer.write_all(b"hello").await.unwrap();
    drop(writer);
    assert_eq!(std::fs::read(&path).unwrap().len(), 0);
}

both_flavours! {
    async fn s28_a_durable_file_is_flushed_and_synced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let mut stack = AsyncExitStack::new();
        let p = path.clone();
        let file = stack
            .enter_async_context(acquire(async move { File::create(p).await.map(tokio_exit_stack::fs::Durable) }))
            .await
            .unwrap();
        file.write_all(&content(1)).await.unwrap();
        stack.aclose().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), content(1));
    }
}

both_flavours! {
    async fn s29_a_bufstream_is_flushed_on_exit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stream");
        let mut stack = AsyncExitStack::new();
        let file = tokio::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).await.unwrap();
        let stream = stack.enter_async_context(tokio::io::BufStream::new(file)).await.unwrap();
        stream.write_all(b"buffered bytes").await.unwrap();
        stack.aclose().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"buffered bytes");
    }
}

both_flavours! {
    async fn s32_a_full_disk_makes_the_file_exit_report_an_error_and_the_unwind_goes_on() {
        let mut stack = AsyncExitStack::new();
        let (tx, ran_after) = oneshot::channel();
        stack.callback(move || {
            let _ = tx.send(());
        });
        let full = stack
            .enter_async_context(acquire(tokio::fs::OpenOptions::new().write(true).open("/dev/full")))
            .await
            .unwrap();
        // tokio's File reports the write's failure later, at the flush a
        // plain drop would skip.
        let _ = full.write_all(&[0u8; 1024]).await;
        let writer = stack
            .enter_async_context(BufWriter::new(tokio::fs::OpenOptions::new().write(true).open("/dev/full").await.unwrap()))
            .await
            .unwrap();
        writer.write_all(b"never fits").await.unwrap(); // buffered
        let err = stack.aclose().await.unwrap_err();
        assert_eq!(err.len(), 2, "both failures kept: {err}");
        for e in err.iter() {
            let failure = e.downcast_ref::<ResourceError>().expect("a ResourceError");
            let io = std::error::Error::source(failure).unwrap().downcast_ref::<std::io::Error>().unwrap();
            assert_eq!(io.raw_os_error(), Some(28), "ENOSPC: {failure}: {io}");
        }
        let messages: Vec<String> = err.iter().map(|e| e.to_string()).collect();
        assert!(messages[0].contains("tokio::fs::File"), "{messages:?}");
        assert!(messages[1].contains("BufWriter"), "{messages:?}");
        ran_after.await.unwrap();
    }
}
