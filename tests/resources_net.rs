//! `TcpStream` and `UnixStream` exits on real loopback sockets (S27, S32,
//! pitfall P3).
#![cfg(feature = "net")]

mod common;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_exit_stack::{AsyncExitStack, acquire, error::ResourceError};

/// How each connection ended, as the server saw it.
#[derive(Default)]
struct Ends {
    eof: AtomicUsize,
    reset: AtomicUsize,
    other: AtomicUsize,
}

/// A loopback server that sends every client 4 KiB it will never read, then
/// reads until the client's EOF (clean) or an error (reset).
async fn counting_server() -> (std::net::SocketAddr, Arc<Ends>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ends = Arc::new(Ends::default());
    let e = ends.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let ends = e.clone();
            tokio::spawn(async move {
                socket.write_all(&[7u8; 4096]).await.unwrap();
                let mut buf = [0u8; 1024];
                let end = loop {
                    match socket.read(&mut buf).await {
                        Ok(0) => break &ends.eof,
                        Ok(_) => continue,
                        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break &ends.reset,
                        Err(_) => break &ends.other,
                    }
                };
                end.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, ends)
}

/// (clean EOFs, resets, other ends), once `n` connections have ended.
async fn settle(ends: &Ends, n: usize) -> (usize, usize, usize) {
    let counts = || {
        (
            ends.eof.load(Ordering::SeqCst),
            ends.reset.load(Ordering::SeqCst),
            ends.other.load(Ordering::SeqCst),
        )
    };
    common::eventually("every connection ended", || {
        let (eof, reset, other) = counts();
        eof + reset + other >= n
    })
    .await;
    counts()
}

/// Opens `n` connections into `stack`, each with unread input waiting.
async fn open(stack: &AsyncExitStack, addr: std::net::SocketAddr, n: usize) {
    for _ in 0..n {
        let conn = stack
            .enter_async_context(acquire(TcpStream::connect(addr)))
            .await
            .unwrap();
        conn.readable().await.unwrap(); // the server's bytes are waiting, unread
    }
}

both_flavours! {
    async fn s27_a_thousand_connections_with_unread_input_close_with_clean_eofs_on_aclose() {
        let (addr, ends) = counting_server().await;
        let n = common::connections(1000);
        let mut stack = AsyncExitStack::new();
        open(&stack, addr, n).await;
        stack.aclose().await.unwrap();
        assert_eq!(settle(&ends, n).await, (n, 0, 0), "(clean EOFs, resets, other)");
    }
}

both_flavours! {
    async fn s27_a_thousand_connections_close_cleanly_when_the_stack_is_dropped() {
        let (addr, ends) = counting_server().await;
        let stack = common::cancellable();
        let (tx, done) = oneshot::channel();
        stack.push_async_callback(move || async move {
            let _ = tx.send(());
        });
        let n = common::connections(1000);
        open(&stack, addr, n).await;
        drop(stack);
        done.await.unwrap(); // the background cleanup finished
        assert_eq!(settle(&ends, n).await, (n, 0, 0), "(clean EOFs, resets, other)");
    }
}

/// The control: the same connections, plainly dropped, reset their peer.
/// If this stopped resetting, the two tests above would prove nothing.
#[tokio::test]
async fn s27_control_plainly_dropped_connections_reset_their_peer() {
    let (addr, ends) = counting_server().await;
    for _ in 0..50 {
        let conn = TcpStream::connect(addr).await.unwrap();
        conn.readable().await.unwrap();
        drop(conn);
    }
    let (_, reset, _) = settle(&ends, 50).await;
    assert_eq!(reset, 50);
}

#[cfg(unix)]
both_flavours! {
    async fn s27_unix_streams_close_with_a_clean_eof() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let eofs = Arc::new(AtomicUsize::new(0));
        let e = eofs.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let eofs = e.clone();
                tokio::spawn(async move {
                    socket.write_all(&[1u8; 4096]).await.unwrap();
                    let mut buf = Vec::new();
                    if socket.read_to_end(&mut buf).await.is_ok() {
                        eofs.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        let mut stack = AsyncExitStack::new();
        for _ in 0..100 {
            let conn = stack
                .enter_async_context(acquire(tokio::net::UnixStream::connect(&path)))
                .await
                .unwrap();
            conn.readable().await.unwrap();
        }
        stack.aclose().await.unwrap();
        common::eventually("100 clean EOFs", || eofs.load(Ordering::SeqCst) >= 100).await;
        assert_eq!(eofs.load(Ordering::SeqCst), 100);
    }
}

both_flavours! {
    async fn s32_a_reset_peer_makes_the_exit_report_an_error_naming_the_stream_and_the_unwind_goes_on() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut stack = AsyncExitStack::new();
        let ran_after = Arc::new(AtomicUsize::new(0));
        let r = ran_after.clone();
        stack.callback(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        let conn = stack.enter_async_context(acquire(TcpStream::connect(addr))).await.unwrap();
        let local = conn.local_addr().unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        // The peer aborts: SO_LINGER 0 makes its close a reset.
        socket2::SockRef::from(&server_side).set_linger(Some(Duration::ZERO)).unwrap();
        drop(server_side);
        conn.readable().await.unwrap();

        let err = stack.aclose().await.unwrap_err();
        let failure = err.downcast_ref::<ResourceError>().expect("a ResourceError");
        assert!(failure.resource.contains(&local.to_string()), "names the stream: {failure}");
        assert!(failure.resource.starts_with("TcpStream("), "{failure}");
        let source = std::error::Error::source(failure).unwrap().downcast_ref::<io::Error>().unwrap();
        assert!(
            matches!(source.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected | io::ErrorKind::BrokenPipe),
            "{source:?}"
        );
        assert_eq!(ran_after.load(Ordering::SeqCst), 1, "the entry after it still ran");
    }
}
