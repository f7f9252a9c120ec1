//! TLS streams (feature `rustls`): every scope, whether it succeeds, fails
//! or is abandoned, ends its TLS stream with `close_notify`, so the peer
//! reads a clean closure; a plain drop truncates.
//!
//! Real TLS on loopback, with a self-signed certificate made in the test.
#![cfg(feature = "rustls")]

mod common;

use std::time::Duration;

use common::tls::{configs, configs_with, localhost};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_exit_stack::{AsyncExitStack, drain, scope};
use tokio_rustls::TlsAcceptor;

/// How a peer saw its TLS stream end.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    /// Its read returned 0 bytes: `close_notify` arrived.
    Clean { bytes: usize },
    /// Its read failed: with rustls, "peer closed connection without
    /// sending TLS close_notify".
    Failed(String),
}

/// Reads a TLS stream to its end.
async fn read_to_end<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Ending {
    let mut buf = [0u8; 4096];
    let mut bytes = 0;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return Ending::Clean { bytes },
            Ok(n) => bytes += n,
            Err(e) => return Ending::Failed(e.to_string()),
        }
    }
}

/// A TLS server on loopback that reads each connection to its end and
/// reports how it ended.
async fn reading_server(acceptor: TlsAcceptor) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Ending>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (report, endings) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, report) = (acceptor.clone(), report.clone());
            tokio::spawn(async move {
                let ending = match acceptor.accept(tcp).await {
                    Ok(mut tls) => read_to_end(&mut tls).await,
                    Err(e) => Ending::Failed(format!("handshake: {e}")),
                };
                let _ = report.send(ending);
            });
        }
    });
    (addr, endings)
}

async fn collect(endings: &mut mpsc::UnboundedReceiver<Ending>, n: usize) -> Vec<Ending> {
    let mut seen = Vec::with_capacity(n);
    while seen.len() < n {
        let ending = tokio::time::timeout(Duration::from_secs(30), endings.recv())
            .await
            .expect("every connection ends")
            .unwrap();
        seen.push(ending);
    }
    seen
}

/// 200 TLS connections, a third of the scopes succeeding, a third failing,
/// a third abandoned (the scope's future dropped mid-body): the server
/// reads a clean TLS closure on every one.
async fn every_scope_ends_with_close_notify(n: usize) {
    let (connector, acceptor) = configs();
    let (addr, mut endings) = reading_server(acceptor).await;
    let mut scopes = tokio::task::JoinSet::new();
    for i in 0..n {
        let connector = connector.clone();
        scopes.spawn(async move {
            let (written_tx, written) = tokio::sync::oneshot::channel();
            let body = scope(async |stack| {
                let tcp = TcpStream::connect(addr).await?;
                let tls = stack.push_resource(connector.connect(localhost(), tcp).await?);
                tls.write_all(format!("request {i}\n").as_bytes()).await?;
                tls.flush().await?;
                match i % 3 {
                    0 => Ok("succeeded"),
                    1 => Err(std::io::Error::other("the request failed").into()),
                    _ => {
                        let _ = written_tx.send(());
                        std::future::pending().await
                    }
                }
            });
            tokio::select! {
                outcome = body => match outcome {
                    Ok(_) => "succeeded",
                    Err(e) => {
                        assert_eq!(e.to_string(), "the request failed", "only the body failed: {e:?}");
                        "failed"
                    }
                },
                // Abandoned mid-body, as a timeout would: the stack is
                // dropped, and its cleanup runs in the background.
                Ok(()) = written => "abandoned",
            }
        });
    }
    let mut outcomes = std::collections::HashMap::new();
    while let Some(outcome) = scopes.join_next().await {
        *outcomes.entry(outcome.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(outcomes["succeeded"] + outcomes["failed"] + outcomes["abandoned"], n);
    assert_eq!(outcomes["abandoned"], n / 3, "{outcomes:?}");
    let report = drain(Duration::from_secs(30)).await;
    assert_eq!(report.failed, 0, "{report:?}");

    let seen = collect(&mut endings, n).await;
    let clean = seen
        .iter()
        .filter(|e| matches!(e, Ending::Clean { bytes } if *bytes > 0))
        .count();
    assert_eq!(
        clean,
        n,
        "every peer read its request, then 0 bytes: {:?}",
        seen.iter().find(|e| !matches!(e, Ending::Clean { .. }))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_scopes_succeeding_failing_or_abandoned_all_send_close_notify_multi_thread() {
    every_scope_ends_with_close_notify(common::connections(200)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn tls_scopes_succeeding_failing_or_abandoned_all_send_close_notify_current_thread() {
    every_scope_ends_with_close_notify(common::connections(200)).await;
}

/// The control: a TLS stream dropped as it is truncates. With nothing
/// unread at the client, the peer's read fails with rustls's truncation
/// error, which the exit prevents; with the server's session tickets
/// unread (the default), the drop is even a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_a_dropped_tls_stream_is_a_truncation_for_the_peer() {
    for tickets in [false, true] {
        let (connector, acceptor) = configs_with(tickets);
        let (addr, mut endings) = reading_server(acceptor).await;
        for i in 0..20 {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut tls = connector.connect(localhost(), tcp).await.unwrap();
            tls.write_all(format!("request {i}\n").as_bytes()).await.unwrap();
            tls.flush().await.unwrap();
            if tickets {
                // let the tickets arrive, unread
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            drop(tls);
        }
        for ending in collect(&mut endings, 20).await {
            let Ending::Failed(error) = ending else {
                panic!("a plain drop is not a clean closure: {ending:?}");
            };
            let truncated = error.contains("peer closed connection without sending TLS close_notify");
            let reset = error.contains("reset");
            assert!(if tickets { truncated || reset } else { truncated }, "{error}");
        }
    }
}

/// And the exit with tickets off: the same peer reads a clean closure, so
/// what the control shows is the drop's doing, not the configuration's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_closes_cleanly_where_the_control_truncates() {
    let (connector, acceptor) = configs_with(false);
    let (addr, mut endings) = reading_server(acceptor).await;
    for i in 0..20 {
        let mut stack = AsyncExitStack::new();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = stack.push_resource(connector.connect(localhost(), tcp).await.unwrap());
        tls.write_all(format!("request {i}\n").as_bytes()).await.unwrap();
        stack.aclose().await.unwrap();
    }
    for ending in collect(&mut endings, 20).await {
        assert!(matches!(ending, Ending::Clean { .. }), "{ending:?}");
    }
}

/// The server's side too: a server stream released by its stack ends with
/// `close_notify`, and the client reads 0 bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_tls_stream_released_by_its_stack_ends_cleanly_for_the_client() {
    let (connector, acceptor) = configs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        for i in 0..10 {
            let (tcp, _) = listener.accept().await.unwrap();
            let result = scope(async |stack| {
                let tls = stack.push_resource(acceptor.accept(tcp).await?);
                tls.write_all(b"hello\n").await?;
                if i % 2 == 1 {
                    Err(std::io::Error::other("handler failed"))?;
                }
                Ok(())
            })
            .await;
            assert_eq!(result.is_ok(), i % 2 == 0);
        }
    });
    for _ in 0..10 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = connector.connect(localhost(), tcp).await.unwrap();
        assert_eq!(read_to_end(&mut tls).await, Ending::Clean { bytes: 6 });
    }
    server.await.unwrap();
}

/// Over a Unix socket: the transport's own exit (shut down, drain) runs
/// after `close_notify`, and the label names both.
#[cfg(unix)]
#[tokio::test(flavor = "current_thread")]
async fn tls_over_a_unix_socket_ends_cleanly_and_is_named_with_its_transport() {
    use tokio_exit_stack::AsyncExit;
    let (connector, acceptor) = configs();
    let (client, server) = tokio::net::UnixStream::pair().unwrap();
    let serving = tokio::spawn(async move {
        let mut tls = acceptor.accept(server).await.unwrap();
        read_to_end(&mut tls).await
    });
    let mut stack = AsyncExitStack::new();
    let tls = stack.push_resource(connector.connect(localhost(), client).await.unwrap());
    assert!(
        tls.label().starts_with("TlsStream(client, UnixStream"),
        "{}",
        tls.label()
    );
    tls.write_all(b"over unix\n").await.unwrap();
    stack.aclose().await.unwrap();
    assert_eq!(serving.await.unwrap(), Ending::Clean { bytes: 10 });
}

/// With no runtime left (the stack dropped after its runtime), the alert
/// is written straight to the socket: the peer still reads a clean
/// closure.
#[test]
fn a_tls_stream_abandoned_with_no_runtime_still_sends_close_notify() {
    let server_rt = tokio::runtime::Runtime::new().unwrap();
    let (connector, acceptor) = configs();
    let (addr, mut endings) = server_rt.block_on(reading_server(acceptor));
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stack = client_rt.block_on(async {
        let stack = common::cancellable();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = stack.push_resource(connector.connect(localhost(), tcp).await.unwrap());
        tls.write_all(b"before the runtime went\n").await.unwrap();
        tls.flush().await.unwrap();
        stack
    });
    drop(client_rt);
    drop(stack); // no runtime: `abandon`
    let seen = server_rt.block_on(collect(&mut endings, 1));
    assert_eq!(seen, [Ending::Clean { bytes: 24 }]);
}

/// A peer that completed the handshake and then never reads cannot hang
/// the exit: sending `close_notify` behind a full socket gives up at the
/// entry's flush bound, with a `TimedOut` error naming the step and the
/// stream. On the paused clock.
#[tokio::test(start_paused = true)]
async fn a_peer_that_never_reads_cannot_hang_the_close_notify() {
    use tokio_exit_stack::{error::ResourceError, linger::Linger};
    let (connector, acceptor) = configs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (handshaken, silent) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let _ = handshaken.send(tls); // kept open, never read
    });
    let mut stack = AsyncExitStack::new();
    let bound = Linger {
        flush_timeout: Duration::from_millis(300),
        ..Linger::DEFAULT
    };
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = stack
        .entry()
        .linger(bound)
        .push_resource(connector.connect(localhost(), tcp).await.unwrap());
    let _server_end = silent.await.unwrap();
    // Write until neither the socket nor rustls takes more.
    let chunk = vec![7u8; 1 << 16];
    while tokio::time::timeout(Duration::from_millis(10), tls.write_all(&chunk))
        .await
        .is_ok()
    {}

    let start = tokio::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(60), stack.aclose())
        .await
        .expect("the exit is bounded")
        .unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(300), "the entry's flush bound");
    let failure = err.downcast_ref::<ResourceError>().expect("a ResourceError");
    assert_eq!(failure.operation, "send close_notify");
    assert_eq!(failure.source.kind(), std::io::ErrorKind::TimedOut, "{err:#}");
    assert!(
        failure.resource.starts_with("TlsStream(client, TcpStream("),
        "{}",
        failure.resource
    );
}

/// With no runtime left, the alert written straight to a socket whose peer
/// reset the connection is an `EPIPE` error, never a SIGPIPE that ends the
/// process (Rust's `main` ignores SIGPIPE, but a program embedding the
/// library need not). Run in a child process with SIGPIPE at its default
/// disposition: the child must exit normally.
#[cfg(unix)]
#[test]
fn a_tls_stream_abandoned_after_a_reset_raises_no_sigpipe() {
    const CHILD: &str = "TOKIO_EXIT_STACK_SIGPIPE_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return sigpipe_child();
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_tls_stream_abandoned_after_a_reset_raises_no_sigpipe",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the child ended with {status:?} (a signal is SIGPIPE)"
    );
}

#[cfg(unix)]
fn sigpipe_child() {
    // SAFETY: setting a signal's disposition to its default, in a process
    // of its own that runs this one test on one thread.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let (connector, acceptor) = configs();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stack = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(tcp).await.unwrap();
            let (tcp, _) = tls.into_inner();
            socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO)).unwrap();
            drop(tcp); // a reset
        });
        let stack = common::cancellable();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = stack.push_resource(connector.connect(localhost(), tcp).await.unwrap());
        server.await.unwrap();
        // The request's read sees the reset (which clears the socket's
        // error): the next send on it is EPIPE.
        let mut buf = [0u8; 64];
        while tls.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        stack
    });
    drop(rt);
    drop(stack); // no runtime: `abandon` writes close_notify to the socket
}

/// A TLS connect entered with `finish_on_cancel`, dropped right after its
/// k-th `Pending` for every k until it completes uncancelled: each
/// connection the server accepted finished its handshake and ended with
/// `close_notify` (the cancelled ones finished and closed in the
/// background), on both runtime flavours.
async fn tls_connect_cancelled_at_every_poll_ends_with_close_notify() {
    let (connector, acceptor) = configs();
    let (addr, mut endings) = reading_server(acceptor).await;
    let mut started = 0;
    let mut k = 0;
    loop {
        let mut stack = AsyncExitStack::new();
        let connector = connector.clone();
        let connect = tokio_exit_stack::acquire(async move {
            let tcp = TcpStream::connect(addr).await?;
            // Connected, not yet encrypted: always a point to cut at, even
            // where the handshake would complete within one poll.
            tokio::task::yield_now().await;
            connector.connect(localhost(), tcp).await
        });
        let entered =
            common::cancel_after_pendings(stack.entry().finish_on_cancel().enter_async_context(connect), k).await;
        if k > 0 {
            started += 1; // polled at least once: the connect began
        }
        let completed = match entered {
            Some(tls) => {
                tls.unwrap().write_all(b"hello").await.unwrap();
                true
            }
            None => false,
        };
        stack.aclose().await.unwrap(); // waits for a cancelled connect's close
        if completed {
            break;
        }
        k += 1;
        assert!(k < 1000, "the connect completes uncancelled at some k");
    }
    assert!(k > 1, "the connect was cut short at several points ({k})");
    for ending in collect(&mut endings, started).await {
        assert!(matches!(ending, Ending::Clean { .. }), "{ending:?}");
    }
    let more = tokio::time::timeout(Duration::from_millis(100), endings.recv()).await;
    assert!(more.is_err(), "one connection per begun connect: {more:?}");
    assert!(drain(Duration::from_secs(30)).await.is_complete());
}

#[tokio::test(flavor = "current_thread")]
async fn a_tls_connect_cancelled_at_every_poll_ends_with_close_notify_current_thread() {
    tls_connect_cancelled_at_every_poll_ends_with_close_notify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connect_cancelled_at_every_poll_ends_with_close_notify_multi_thread() {
    tls_connect_cancelled_at_every_poll_ends_with_close_notify().await;
}
