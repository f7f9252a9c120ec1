//! Fits a tokio service: resources taken back out of a stack (S36), a
//! stack registered on another (S37), a group with a stack's whole method
//! set.
#![cfg(all(feature = "fs", feature = "net"))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_exit_stack::{AsyncExitStack, Flow, acquire, scope};

/// Python's idiom, ported:
///
/// ```python
/// with ExitStack() as stack:
///     files = [stack.enter_context(open(fname)) for fname in filenames]
///     close_files = stack.pop_all().close
/// ```
///
/// If any open fails, the files opened so far are closed; if all succeed,
/// they outlive the block, usable, and `close_files` closes them later.
#[tokio::test]
async fn s36_python_pop_all_idiom_keeps_the_files_only_if_all_opened() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<_> = ["a", "b", "c"].iter().map(|n| dir.path().join(n)).collect();

    // All succeed: the files outlive the scope in a stack of their own,
    // usable through their keys, closed (flushed) when that stack closes.
    let (mut close_files, keys) = scope(async |stack| {
        let mut keys = Vec::new();
        for name in &names {
            let (key, _file) = stack.enter_keyed(acquire(File::create(name))).await?;
            keys.push(key);
        }
        Ok((stack.pop_all(), keys))
    })
    .await
    .unwrap();
    for (i, key) in keys.iter().enumerate() {
        let file = close_files.get_mut(key).expect("the popped stack holds it");
        file.write_all(format!("file {i}").as_bytes()).await.unwrap();
    }
    close_files.aclose().await.unwrap();
    for (i, name) in names.iter().enumerate() {
        assert_eq!(std::fs::read_to_string(name).unwrap(), format!("file {i}"));
    }

    // One fails: the two opened before it are closed by the scope, and
    // nothing is kept.
    let closed = Arc::new(AtomicUsize::new(0));
    let missing = dir.path().join("no such dir").join("d");
    let result = scope(async |stack| {
        let mut keys = Vec::new();
        for name in [&names[0], &names[1], &missing] {
            let (key, _file) = stack.enter_keyed(acquire(File::open(name))).await?;
            let closed = closed.clone();
            stack.callback(move || {
                closed.fetch_add(1, Ordering::SeqCst);
            });
            keys.push(key);
        }
        Ok((stack.pop_all(), keys))
    })
    .await;
    assert!(result.is_err());
    assert_eq!(closed.load(Ordering::SeqCst), 2, "the two opened ones were released");
}

/// "Acquire three, keep them only if all three succeeded", with owned
/// resources handed back, and one handed to a spawned task.
#[tokio::test]
async fn s36_taken_resources_are_owned_unregistered_and_can_move_into_a_task() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..3 {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut line = String::new();
            socket.read_to_string(&mut line).await.unwrap();
            got.push(line);
        }
        got.sort();
        got
    });
    let mut stack = AsyncExitStack::new();
    let mut keys = Vec::new();
    for _ in 0..3 {
        let (key, _conn) = stack
            .enter_keyed(acquire(tokio::net::TcpStream::connect(addr)))
            .await
            .unwrap();
        keys.push(key);
    }
    assert_eq!(stack.len(), 3);
    let conns: Vec<_> = keys.into_iter().map(|k| stack.take(k).unwrap()).collect();
    assert!(stack.is_empty(), "taken resources are unregistered");
    stack.aclose().await.unwrap();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            tokio::spawn(async move {
                conn.write_all(format!("conn {i}").as_bytes()).await.unwrap();
                conn.shutdown().await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(server.await.unwrap(), ["conn 0", "conn 1", "conn 2"]);
}

/// A key gives its resource once, only from the stack that holds it (or
/// the stack `pop_all` moved it to); anything else is `None`.
#[tokio::test]
async fn s36_a_key_of_another_stack_or_of_a_moved_entry_gives_none() {
    let mut a = AsyncExitStack::new();
    let mut b = AsyncExitStack::new();
    let (key, _) = a.push_keyed(tokio::task::JoinSet::<()>::new());
    b.push_resource(tokio::task::JoinSet::<()>::new());
    let (b_key, _) = b.push_keyed(tokio::task::JoinSet::<()>::new());
    assert!(b.get_mut(&key).is_none(), "a key of another stack");
    assert!(b.take(key).is_none());
    assert_eq!(b.len(), 2, "nothing was removed");

    let mut moved = b.pop_all();
    assert!(b.get_mut(&b_key).is_none(), "moved away by pop_all");
    assert!(moved.take(b_key).is_some(), "valid in the stack that holds it");
    assert_eq!(moved.len(), 1);
    a.aclose().await.unwrap();
    moved.aclose().await.unwrap();
}

/// A group registers everything a stack can, with the same methods.
#[tokio::test]
async fn s24_a_group_registers_everything_a_stack_can() {
    let ran = Arc::new(AtomicUsize::new(0));
    let mut stack = AsyncExitStack::new();
    let group = stack.enter_group();
    let count = |ran: &Arc<AtomicUsize>| {
        let ran = ran.clone();
        move || {
            ran.fetch_add(1, Ordering::SeqCst);
        }
    };
    let (r1, r2, r3, r4) = (count(&ran), count(&ran), count(&ran), count(&ran));
    group.push_exit(move |_| {
        r1();
        Ok::<_, std::io::Error>(Flow::Propagate)
    });
    group.push_async_exit(move |_| async move {
        r2();
        Ok::<_, std::io::Error>(Flow::Propagate)
    });
    group.callback(r3);
    group.push_async_callback(move || async move { r4() });
    let nested = group.enter_group();
    nested.callback(count(&ran));
    group.enter_context(String::from("dropped at unwind"));
    group.push_resource(tokio::task::JoinSet::<()>::new());
    assert_eq!(group.len(), 7);
    stack.aclose().await.unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 5);
}

/// A stack registered on a stack that is dropped without `aclose` is
/// unwound in the outer one's background cleanup, told it was abandoned;
/// with no runtime at all, its synchronous entries still run.
#[tokio::test]
async fn s37_a_stack_inside_a_dropped_stack_still_cleans_up() {
    let ran = Arc::new(AtomicUsize::new(0));
    let (tx, done) = tokio::sync::oneshot::channel();
    let mut outer = AsyncExitStack::new();
    outer.set_cancellable(true);
    let inner = AsyncExitStack::new();
    let r = ran.clone();
    inner.push_async_exit(move |pending| async move {
        assert!(pending.is_abandoned());
        r.fetch_add(1, Ordering::SeqCst);
        let _ = tx.send(());
        Ok::<_, std::io::Error>(Flow::Propagate)
    });
    outer.push_resource(inner);
    drop(outer);
    done.await.unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[test]
fn s37_a_stack_inside_a_stack_dropped_with_no_runtime_runs_its_sync_entries() {
    let ran = Arc::new(AtomicUsize::new(0));
    let mut outer = AsyncExitStack::new();
    outer.set_cancellable(true);
    let inner = AsyncExitStack::new();
    let r = ran.clone();
    inner.callback(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    inner.push_async_callback(|| async {}); // needs a runtime: abandoned
    outer.push_resource(inner);
    drop(outer);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}
