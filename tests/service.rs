//! A service-shaped run (S20, S21, S27, S30): 2,000 requests over real
//! loopback connections, each handled through `scope` on a 2-worker
//! runtime, 10% timed out by the server and 10% abandoned by their client
//! (which closes cleanly). Afterwards: no WARN from the crate (cancellation
//! is normal life), every cleanup ran exactly once, every permit is back,
//! and no client saw a reset.
#![cfg(all(feature = "net", feature = "sync"))]

use std::io;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_exit_stack::scope;
use tracing_subscriber::layer::SubscriberExt as _;

const REQUESTS: usize = 2_000;
const PERMITS: usize = 16;
/// The server's deadline per request.
const DEADLINE: Duration = Duration::from_millis(100);

/// What a request's key asks of the run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Answered,
    /// The server's work never ends: the server's timeout drops the scope.
    TimedOut,
    /// The client sends its request and leaves (closing cleanly); the
    /// server notices and drops the request's work.
    ClientCancelled,
}

fn kind(key: usize) -> Kind {
    match key % 10 {
        0 => Kind::TimedOut,
        1 => Kind::ClientCancelled,
        _ => Kind::Answered,
    }
}

/// Every event at WARN or above, from any thread, by target.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() <= tracing::Level::WARN {
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {:?}", event.metadata().target(), event));
        }
    }
}

/// Per request: how many times each of its cleanups ran.
struct Ledger {
    connection_released: Vec<AtomicU8>,
    work_registered: Vec<AtomicU8>,
    work_released: Vec<AtomicU8>,
}

static LEDGER: OnceLock<Ledger> = OnceLock::new();

fn ledger() -> &'static Ledger {
    LEDGER.get_or_init(|| Ledger {
        connection_released: (0..REQUESTS).map(|_| AtomicU8::new(0)).collect(),
        work_registered: (0..REQUESTS).map(|_| AtomicU8::new(0)).collect(),
        work_released: (0..REQUESTS).map(|_| AtomicU8::new(0)).collect(),
    })
}

/// One connection: the request line, then the work under a permit, raced
/// against the client leaving; all of it under the server's deadline.
async fn handle(socket: TcpStream, limit: Arc<Semaphore>) {
    let request = scope(async |stack| {
        let conn = stack.push_resource(socket); // shut down cleanly on every path
        let mut line = String::new();
        BufReader::new(&mut *conn).read_line(&mut line).await?;
        let key: usize = line.trim().parse()?;
        stack.callback(move || {
            ledger().connection_released[key].fetch_add(1, Ordering::SeqCst);
        });
        let work = scope(async |work| {
            work.callback(move || {
                ledger().work_released[key].fetch_add(1, Ordering::SeqCst);
            });
            ledger().work_registered[key].fetch_add(1, Ordering::SeqCst);
            let _permit = work.enter_async_context(limit.clone()).await?;
            match kind(key) {
                Kind::Answered => tokio::time::sleep(Duration::from_millis(1)).await,
                Kind::TimedOut | Kind::ClientCancelled => std::future::pending().await,
            }
            Ok(format!("value-{key}\n"))
        });
        let mut probe = [0u8; 1];
        tokio::select! {
            reply = work => conn.write_all(reply?.as_bytes()).await?,
            // The client left: the work's scope is dropped (cancelled).
            _ = conn.read(&mut probe) => {}
        }
        Ok(())
    });
    // A timed-out request's scope is dropped: cancelled, not an error of
    // the crate's.
    let _ = tokio::time::timeout(DEADLINE, request).await;
}

/// How a client's connection ended.
#[derive(Default)]
struct Ends {
    answered: AtomicUsize,
    no_reply: AtomicUsize,
    resets: AtomicUsize,
    other: AtomicUsize,
}

async fn client(addr: std::net::SocketAddr, key: usize, ends: Arc<Ends>) -> io::Result<()> {
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(format!("{key}\n").as_bytes()).await?;
    if kind(key) == Kind::ClientCancelled {
        conn.shutdown().await?; // leaves cleanly
    }
    let mut reply = Vec::new();
    let read = conn.read_to_end(&mut reply).await; // until the server's EOF
    let ended = match read {
        Ok(_) if reply.is_empty() => &ends.no_reply,
        Ok(_) if reply == format!("value-{key}\n").as_bytes() => &ends.answered,
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => &ends.resets,
        _ => &ends.other,
    };
    ended.fetch_add(1, Ordering::SeqCst);
    let _ = conn.shutdown().await;
    Ok(())
}

#[test]
fn s20_two_thousand_requests_with_timeouts_and_client_cancels_leave_no_warn_no_leak_no_reset() {
    let warnings = Warnings::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(warnings.clone())).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let limit = Arc::new(Semaphore::new(PERMITS));
    let ends = Arc::new(Ends::default());
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_limit = limit.clone();
        let server = tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                tokio::spawn(handle(socket, server_limit.clone()));
            }
        });
        // At most 64 clients at a time.
        let gate = Arc::new(Semaphore::new(64));
        let mut clients = tokio::task::JoinSet::new();
        for key in 0..REQUESTS {
            let pass = gate.clone().acquire_owned().await.unwrap();
            let ends = ends.clone();
            clients.spawn(async move {
                let _pass = pass;
                client(addr, key, ends).await
            });
        }
        while let Some(done) = clients.join_next().await {
            done.unwrap().unwrap();
        }
        let report = tokio_exit_stack::drain(Duration::from_secs(30)).await;
        assert_eq!(report.cut_off, 0, "{report:?}");
        server.abort();
    });

    let warnings = warnings.0.lock().unwrap();
    let ours: Vec<_> = warnings.iter().filter(|w| w.starts_with("tokio_exit_stack")).collect();
    assert!(ours.is_empty(), "no WARN or ERROR from the crate: {ours:#?}");
    assert_eq!(limit.available_permits(), PERMITS, "every permit is back");

    let (answered, no_reply) = (
        ends.answered.load(Ordering::SeqCst),
        ends.no_reply.load(Ordering::SeqCst),
    );
    assert_eq!(ends.resets.load(Ordering::SeqCst), 0, "no client saw a reset");
    assert_eq!(ends.other.load(Ordering::SeqCst), 0);
    assert_eq!(answered, REQUESTS * 8 / 10);
    assert_eq!(no_reply, REQUESTS * 2 / 10);

    let ledger = ledger();
    for key in 0..REQUESTS {
        let once = |counts: &[AtomicU8]| counts[key].load(Ordering::SeqCst);
        assert_eq!(once(&ledger.connection_released), 1, "request {key} ({:?})", kind(key));
        // A client may leave before its request's work first ran: then
        // that work registered nothing, and has nothing to release.
        let registered = once(&ledger.work_registered);
        if kind(key) != Kind::ClientCancelled {
            assert_eq!(registered, 1, "request {key} ({:?})", kind(key));
        }
        assert_eq!(
            once(&ledger.work_released),
            registered,
            "request {key} ({:?})",
            kind(key)
        );
    }
}
