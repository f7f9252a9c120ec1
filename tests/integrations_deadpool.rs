//! deadpool objects (feature `deadpool`) on a real pool of loopback
//! connections: a scope that succeeds returns its connection to the pool;
//! one that fails or is abandoned detaches it and closes it cleanly, so
//! the pool never hands out a connection that saw an error.
#![cfg(feature = "deadpool")]

mod common;

use deadpool::managed::{Manager, Metrics, Pool, RecycleResult};
use tokio_exit_stack::deadpool::DetachOnError;
use tokio_exit_stack::scope;

/// Pooled loopback connections: `TcpStream` has its own exit (`net`).
#[cfg(feature = "net")]
mod tcp {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_exit_stack::{acquire, drain};

    use super::*;

    /// How the backend saw each connection end, by the client's port.
    #[derive(Clone, Default)]
    struct Endings(Arc<Mutex<BTreeMap<u16, &'static str>>>);

    impl Endings {
        fn get(&self) -> BTreeMap<u16, &'static str> {
            self.0.lock().unwrap().clone()
        }
    }

    /// A backend that answers each line with `ok <line>`, and records how each
    /// connection ended: "eof" (clean) or "error" (a reset).
    async fn backend() -> (SocketAddr, Endings) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let endings = Endings::default();
        let record = endings.clone();
        tokio::spawn(async move {
            while let Ok((socket, peer)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut lines = BufReader::new(read).lines();
                    let ending = loop {
                        match lines.next_line().await {
                            Ok(Some(line)) => {
                                if write.write_all(format!("ok {line}\n").as_bytes()).await.is_err() {
                                    break "error";
                                }
                            }
                            Ok(None) => break "eof",
                            Err(_) => break "error",
                        }
                    };
                    record.0.lock().unwrap().insert(peer.port(), ending);
                });
            }
        });
        (addr, endings)
    }

    struct Backend(SocketAddr);

    impl Manager for Backend {
        type Type = TcpStream;
        type Error = std::io::Error;

        async fn create(&self) -> std::io::Result<TcpStream> {
            TcpStream::connect(self.0).await
        }

        async fn recycle(&self, _: &mut TcpStream, _: &Metrics) -> RecycleResult<std::io::Error> {
            Ok(())
        }
    }

    /// One exchange on a connection: sends `line`, reads one reply line.
    async fn exchange(conn: &mut TcpStream, line: &str) -> std::io::Result<String> {
        conn.write_all(format!("{line}\n").as_bytes()).await?;
        let mut reply = String::new();
        BufReader::new(conn).read_line(&mut reply).await?;
        Ok(reply.trim_end().to_owned())
    }

    fn idle_ports(pool: &Pool<Backend>) -> BTreeSet<u16> {
        let mut ports = BTreeSet::new();
        pool.retain(|conn, _| {
            ports.insert(conn.local_addr().unwrap().port());
            true
        });
        ports
    }

    /// 500 scopes on a pool of 8, a fifth failing after sending their request
    /// and before reading its reply (the connection holds half an exchange):
    /// the pool then holds only connections whose scopes all succeeded, and
    /// the backend saw a clean EOF for every discarded one.
    async fn only_connections_of_succeeded_scopes_return(scopes: usize) {
        let (addr, endings) = backend().await;
        let pool = Pool::<Backend>::builder(Backend(addr)).max_size(8).build().unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..scopes {
            let pool = pool.clone();
            tasks.spawn(async move {
                let port = Arc::new(Mutex::new(0));
                let seen = port.clone();
                let outcome = scope(async |stack| {
                    let conn = stack.enter_async_context(acquire(pool.get())).await?;
                    *seen.lock().unwrap() = conn.local_addr()?.port();
                    if i % 5 == 0 {
                        conn.write_all(format!("request {i}\n").as_bytes()).await?;
                        Err(std::io::Error::other("the request failed"))?;
                    }
                    let reply = exchange(conn, &format!("request {i}")).await?;
                    assert_eq!(reply, format!("ok request {i}"), "never another request's reply");
                    Ok(())
                })
                .await;
                let port = *port.lock().unwrap();
                (port, outcome.is_ok())
            });
        }
        let (mut succeeded, mut failed) = (BTreeSet::new(), BTreeSet::new());
        while let Some(result) = tasks.join_next().await {
            let (port, ok) = result.unwrap();
            if ok {
                succeeded.insert(port)
            } else {
                failed.insert(port)
            };
        }
        assert_eq!(
            failed.len(),
            scopes / 5,
            "each failed scope's connection was used once, then discarded"
        );

        let idle = idle_ports(&pool);
        assert!(!idle.is_empty());
        assert!(idle.is_subset(&succeeded), "idle: {idle:?}");
        assert!(
            idle.is_disjoint(&failed),
            "no connection that saw a failure is in the pool"
        );
        assert_eq!(pool.status().size, idle.len(), "nothing else is counted");

        common::eventually("the backend sees every discarded connection end", || {
            let seen = endings.get();
            failed.iter().all(|port| seen.contains_key(port))
        })
        .await;
        let seen = endings.get();
        for port in &failed {
            assert_eq!(
                seen[port], "eof",
                "a clean close for the discarded connection on port {port}"
            );
        }
    }

    /// A request that wrote half an exchange and failed, its error then
    /// suppressed by a newer exit: the scope succeeded, but its connection
    /// saw the error, so it is detached and closed, never handed to the
    /// next request (which gets a new connection, and its own reply); a
    /// request that saw no error gives its connection back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_whose_request_saw_a_suppressed_error_is_not_reused() {
        let (addr, endings) = backend().await;
        let pool = Pool::<Backend>::builder(Backend(addr)).max_size(1).build().unwrap();
        let mut ports = Vec::new();
        for (i, fails) in [(0, false), (1, true), (2, false)] {
            let port = Arc::new(Mutex::new(0));
            let seen = port.clone();
            let value = tokio_exit_stack::scope_suppressible(async |stack| {
                let conn = stack.enter_async_context(acquire(pool.get())).await?;
                *seen.lock().unwrap() = conn.local_addr()?.port();
                stack.push_exit(|_| Ok::<_, std::io::Error>(tokio_exit_stack::Flow::Suppress));
                if fails {
                    conn.write_all(format!("request {i}\n").as_bytes()).await?;
                    Err(std::io::Error::other("out of stock"))?;
                }
                assert_eq!(
                    exchange(conn, &format!("request {i}")).await?,
                    format!("ok request {i}")
                );
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(value.is_none(), fails);
            ports.push(*port.lock().unwrap());
        }
        assert_ne!(ports[1], ports[2], "the failed request's connection was not reused");
        common::eventually("the backend sees the discarded connection end", || {
            endings.get().contains_key(&ports[1])
        })
        .await;
        assert_eq!(endings.get()[&ports[1]], "eof", "closed cleanly");
        assert_eq!(ports[0], ports[1], "a clean request gives its connection back");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_connections_of_succeeded_scopes_return_to_the_pool_multi_thread() {
        only_connections_of_succeeded_scopes_return(500).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn only_connections_of_succeeded_scopes_return_to_the_pool_current_thread() {
        only_connections_of_succeeded_scopes_return(500).await;
    }

    /// An abandoned scope (its future dropped mid-request, as by a timeout)
    /// detaches its connection too, and the background cleanup closes it
    /// cleanly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_scope_detaches_and_closes_its_connection() {
        let (addr, endings) = backend().await;
        let pool = Pool::<Backend>::builder(Backend(addr)).max_size(4).build().unwrap();
        let mut ports = BTreeSet::new();
        for i in 0..20 {
            let (port_tx, port_rx) = tokio::sync::oneshot::channel();
            let body = scope(async |stack| {
                let conn = stack.enter_async_context(acquire(pool.get())).await?;
                conn.write_all(format!("request {i}\n").as_bytes()).await?;
                let _ = port_tx.send(conn.local_addr()?.port());
                std::future::pending::<()>().await;
                Ok(())
            });
            tokio::select! {
                _ = body => unreachable!("the body never finishes"),
                Ok(port) = port_rx => { ports.insert(port); }
            }
        }
        assert_eq!(ports.len(), 20, "a new connection each time: none came back");
        let report = drain(Duration::from_secs(30)).await;
        assert_eq!(report.failed, 0, "{report:?}");
        assert_eq!(pool.status().size, 0);
        common::eventually("the backend sees every connection end", || endings.get().len() == 20).await;
        assert!(endings.get().values().all(|e| *e == "eof"), "{:?}", endings.get());
    }

    /// The control: an object dropped as it is after a failed request returns
    /// to the pool, and the next request on it reads the previous one's reply.
    /// Through the stack, the next request gets a fresh connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn control_a_plainly_dropped_object_hands_its_broken_connection_to_the_next_request() {
        let (addr, _) = backend().await;
        let pool = Pool::<Backend>::builder(Backend(addr)).max_size(1).build().unwrap();

        // Plain drop.
        let failed = scope(async |_stack| {
            let mut conn = pool.get().await?;
            conn.write_all(b"request A\n").await?;
            Err(std::io::Error::other("request A failed before its reply"))?;
            Ok(())
        })
        .await;
        assert!(failed.is_err());
        let mut conn = pool.get().await.unwrap();
        assert_eq!(
            exchange(&mut conn, "request B").await.unwrap(),
            "ok request A",
            "a stale reply"
        );
        drop(deadpool::managed::Object::take(conn));

        // Through the stack.
        let failed = scope(async |stack| {
            let conn = stack.enter_async_context(acquire(pool.get())).await?;
            conn.write_all(b"request C\n").await?;
            Err(std::io::Error::other("request C failed before its reply"))?;
            Ok(())
        })
        .await;
        assert!(failed.is_err());
        let mut conn = pool.get().await.unwrap();
        assert_eq!(exchange(&mut conn, "request D").await.unwrap(), "ok request D");
    }
}

/// A connection type without an exit, wrapped: returned on success,
/// detached and dropped on failure.
#[tokio::test(flavor = "current_thread")]
async fn detach_on_error_returns_on_success_and_detaches_on_failure() {
    struct Buffers;
    impl Manager for Buffers {
        type Type = Vec<u8>;
        type Error = std::convert::Infallible;
        async fn create(&self) -> Result<Vec<u8>, std::convert::Infallible> {
            Ok(Vec::new())
        }
        async fn recycle(&self, _: &mut Vec<u8>, _: &Metrics) -> RecycleResult<std::convert::Infallible> {
            Ok(())
        }
    }
    let pool = Pool::<Buffers>::builder(Buffers).max_size(2).build().unwrap();
    scope(async |stack| {
        let buf = stack.push_resource(DetachOnError(pool.get().await.unwrap()));
        buf.push(1);
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!((pool.status().size, pool.status().available), (1, 1));
    let failed = scope(async |stack| {
        let buf = stack.push_resource(DetachOnError(pool.get().await.unwrap()));
        buf.push(2);
        Err(std::io::Error::other("half written"))?;
        Ok(())
    })
    .await;
    assert!(failed.is_err());
    assert_eq!(pool.status().size, 0, "the object that saw the failure is gone");
}

/// Pooled TLS connections to a local server: `TlsStream` has its own exit
/// (`rustls`).
#[cfg(feature = "rustls")]
mod tls_backend {
    use deadpool::managed::{Manager, Metrics, RecycleResult};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;

    pub(crate) struct TlsBackend {
        pub(crate) addr: std::net::SocketAddr,
        pub(crate) connector: tokio_rustls::TlsConnector,
    }

    impl Manager for TlsBackend {
        type Type = TlsStream<TcpStream>;
        type Error = std::io::Error;
        async fn create(&self) -> std::io::Result<TlsStream<TcpStream>> {
            let tcp = TcpStream::connect(self.addr).await?;
            self.connector.connect(crate::common::tls::localhost(), tcp).await
        }
        async fn recycle(&self, _: &mut TlsStream<TcpStream>, _: &Metrics) -> RecycleResult<std::io::Error> {
            Ok(())
        }
    }
}

/// A pool of TLS connections (deadpool over tokio-rustls): a connection
/// whose request failed is detached and closed through the TLS stream's
/// own exit, so the backend reads a clean TLS closure, never a truncation;
/// one whose request succeeded goes back to the pool.
#[cfg(feature = "rustls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_tls_connection_that_saw_an_error_ends_with_close_notify() {
    use tls_backend::TlsBackend;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_exit_stack::acquire;

    let (connector, acceptor) = common::tls::configs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (report, mut endings) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, report) = (acceptor.clone(), report.clone());
            tokio::spawn(async move {
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let mut buf = Vec::new();
                let _ = report.send(
                    tls.read_to_end(&mut buf)
                        .await
                        .map(|_| buf.len())
                        .map_err(|e| e.to_string()),
                );
            });
        }
    });
    let pool = Pool::<TlsBackend>::builder(TlsBackend { addr, connector })
        .max_size(2)
        .build()
        .unwrap();
    for fail in [true, false, true, false] {
        let _ = scope(async |stack| {
            let conn = stack.enter_async_context(acquire(pool.get())).await?;
            conn.write_all(b"request\n").await?;
            conn.flush().await?;
            if fail {
                Err(std::io::Error::other("the request failed"))?;
            }
            Ok(())
        })
        .await;
    }
    // Fail, succeed, fail, succeed: each failed request's connection was
    // detached and closed cleanly (two endings), and the last succeeded
    // request's connection is back in the pool.
    for _ in 0..2 {
        let ending = tokio::time::timeout(std::time::Duration::from_secs(30), endings.recv())
            .await
            .expect("the discarded connection ends")
            .unwrap();
        assert!(
            matches!(ending, Ok(n) if n > 0),
            "a clean TLS closure after the request: {ending:?}"
        );
    }
    assert_eq!(
        pool.status().size,
        1,
        "the connection of the last succeeded request is pooled"
    );
}

/// deadpool checkouts of TLS connections, entered with
/// `tokio_exit_stack::deadpool::get` and cut short.
#[cfg(feature = "rustls")]
mod cut_short {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use tokio_exit_stack::{AsyncExitStack, deadpool::get, drain};

    use super::*;
    use tls_backend::TlsBackend;

    /// A TLS server that counts the connections it accepted and reports how
    /// each ended: `Ok` after `close_notify`, `Err` otherwise (a handshake
    /// cut off, a truncation).
    async fn server() -> (
        TlsBackend,
        Arc<AtomicUsize>,
        mpsc::UnboundedReceiver<Result<(), String>>,
    ) {
        let (connector, acceptor) = common::tls::configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let (report, endings) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let (acceptor, report) = (acceptor.clone(), report.clone());
                tokio::spawn(async move {
                    // A slower peer: the client's handshake always waits
                    // for it at least once, whatever the flavour.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let ending = match acceptor.accept(tcp).await {
                        Ok(mut tls) => {
                            let mut buf = Vec::new();
                            tls.read_to_end(&mut buf).await.map(|_| ()).map_err(|e| e.to_string())
                        }
                        Err(e) => Err(format!("handshake: {e}")),
                    };
                    let _ = report.send(ending);
                });
            }
        });
        (TlsBackend { addr, connector }, accepted, endings)
    }

    /// Closes every idle connection of `pool` through its exit.
    async fn close_idle(pool: &Pool<TlsBackend>) {
        let mut stack = AsyncExitStack::new();
        let group = stack.enter_group();
        for object in pool.retain(|_, _| false).removed {
            group.push_resource(object);
        }
        stack.aclose().await.unwrap();
    }

    /// A checkout that must create its connection, cut short right after
    /// its k-th `Pending`, for every k until one completes uncancelled, on a
    /// new pool each time: every connection the server accepted finished
    /// its handshake and, once the pool's idle connections are closed,
    /// ended with `close_notify`; the connections made by cancelled
    /// checkouts went back to their pools, never lent.
    async fn a_checkout_cut_at_every_poll_finishes_its_connection() {
        let (backend, accepted, mut endings) = server().await;
        let backend = Arc::new(backend);
        let mut k = 0;
        let mut pooled = 0;
        loop {
            let pool = Pool::<TlsBackend>::builder(TlsBackend {
                addr: backend.addr,
                connector: backend.connector.clone(),
            })
            .max_size(4)
            .build()
            .unwrap();
            let mut stack = AsyncExitStack::new();
            let completed = common::cancel_after_pendings(stack.enter_async_context(get(&pool)), k)
                .await
                .map(|conn| conn.unwrap().get_ref().0.peer_addr().unwrap())
                .is_some();
            stack.aclose().await.unwrap(); // waits for a cut checkout's end
            let status = pool.status();
            if completed || k > 0 {
                assert_eq!(status.size, 1, "k={k}: one connection, made once");
                assert_eq!(status.available, 1, "k={k}: back in the pool, not detached");
                pooled += 1;
            } else {
                assert_eq!(status.size, 0, "dropped unpolled: nothing made");
            }
            close_idle(&pool).await;
            if completed {
                break;
            }
            k += 1;
            assert!(k < 1000, "the checkout completes uncancelled at some k");
        }
        assert!(k >= 2, "the checkout was cut mid-creation at least once ({k})");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            pooled,
            "one connection per begun checkout"
        );
        for _ in 0..pooled {
            let ending = tokio::time::timeout(Duration::from_secs(30), endings.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(ending, Ok(()), "ended with close_notify");
        }
        assert!(drain(Duration::from_secs(30)).await.is_complete());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_checkout_cut_at_every_poll_finishes_its_connection_current_thread() {
        a_checkout_cut_at_every_poll_finishes_its_connection().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkout_cut_at_every_poll_finishes_its_connection_multi_thread() {
        a_checkout_cut_at_every_poll_finishes_its_connection().await;
    }

    /// 100 checkouts cut short while waiting on a pool of 4 whose objects
    /// are all lent: each leaves the queue (none waits on), the pool keeps
    /// its 4 connections, and the server sees no new one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checkouts_cut_short_on_a_saturated_pool_leave_it_as_it_was() {
        let (backend, accepted, _endings) = server().await;
        let pool = Pool::<TlsBackend>::builder(backend).max_size(4).build().unwrap();
        let mut held = AsyncExitStack::new();
        for _ in 0..4 {
            held.enter_async_context(get(&pool)).await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        for _ in 0..100 {
            let mut stack = AsyncExitStack::new();
            assert!(
                common::cancel_after_pendings(stack.enter_async_context(get(&pool)), 1)
                    .await
                    .is_none()
            );
            stack.aclose().await.unwrap();
        }
        let status = pool.status();
        assert_eq!(status.size, 4);
        assert_eq!(status.waiting, 0, "no cut checkout waits on: {status:?}");
        held.aclose().await.unwrap();
        assert_eq!(pool.status().available, 4, "all back");
        assert_eq!(accepted.load(Ordering::SeqCst), 4, "no new connection");
        close_idle(&pool).await;
    }
}
