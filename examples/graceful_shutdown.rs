//! A `#[tokio::main]` service stopped with work in flight, whose own
//! tokio-util `TaskTracker` and `CancellationToken` do the whole shutdown,
//! the stacks' cleanups included.
//!
//! Run it with `cargo run --example graceful_shutdown`.
//!
//! Each connection is served inside a [`scope`] holding a permit, the
//! connection, and a journal file, and its stack is tracked by the
//! service's tracker (`set_tracker`). At shutdown the token is cancelled:
//! each handler drops its scope mid-request, so its stack cleans up in the
//! background (journal flushed, connection shut down cleanly, permit
//! released) in a task of that same tracker, and `tracker.wait()` covers
//! it. Without a tracker of your own, [`drain`] at the end of `main` does
//! the same for every stack in the process. Either way, a cleanup cut off
//! when the runtime shuts down is reported as an ERROR event, never lost
//! silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_exit_stack::{BoxError, acquire, drain, scope};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every handler shares: where journals go, the connection limit, and
/// the service's shutdown machinery.
#[derive(Clone)]
struct Service {
    dir: Arc<tempfile::TempDir>,
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// Serves one connection until the client leaves or the service shuts
/// down: journals every line it receives and acknowledges it.
async fn serve(socket: TcpStream, id: usize, service: Service) {
    let Service {
        dir,
        limit,
        tracker,
        shutdown,
    } = service;
    let request = scope(async |stack| {
        stack.set_tracker(tracker); // a cancelled scope cleans up in our tracker
        let _permit = stack.enter_async_context(limit).await?;
        let socket = stack.push_resource(socket);
        let journal = dir.path().join(format!("conn-{id}.journal"));
        let journal = stack
            .enter_async_context(acquire(tokio::fs::File::create(journal)))
            .await?;
        let (read, mut write) = socket.split();
        let mut lines = BufReader::new(read).lines();
        while let Some(line) = lines.next_line().await? {
            journal.write_all(format!("{line}\n").as_bytes()).await?; // flushed at exit
            write.write_all(b"ack\n").await?;
        }
        Ok::<_, BoxError>(())
    });
    tokio::select! {
        outcome = request => {
            if let Err(e) = outcome {
                eprintln!("connection {id} failed: {e}");
            }
        }
        // Shutdown: the scope is dropped mid-request, and cleans up in the
        // background, in the service's tracker.
        () = shutdown.cancelled() => {}
    }
}

/// A client that sends a line every 10 ms until the server goes away, and
/// reports whether the server closed the connection cleanly.
async fn client(addr: std::net::SocketAddr, clean: Arc<AtomicUsize>) -> std::io::Result<()> {
    let mut conn = TcpStream::connect(addr).await?;
    let mut buf = [0u8; 64];
    for i in 0.. {
        if conn.write_all(format!("event {i}\n").as_bytes()).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(10), conn.read(&mut buf)).await {
            Ok(Ok(0)) => {
                clean.fetch_add(1, Ordering::Relaxed); // the server's clean EOF
                break;
            }
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(_)) => break, // a reset
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let dir = Arc::new(tempfile::tempdir()?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let limit = Arc::new(Semaphore::new(64));
    let service = Service {
        dir: dir.clone(),
        limit: limit.clone(),
        tracker: TaskTracker::new(),
        shutdown: CancellationToken::new(),
    };

    // The service: an accept loop, one tracked handler task per connection,
    // until the token is cancelled.
    let s = service.clone();
    let acceptor = service.tracker.spawn(async move {
        let mut id = 0;
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((socket, _)) = accepted else { break };
                    s.tracker.spawn(serve(socket, id, s.clone()));
                    id += 1;
                }
                () = s.shutdown.cancelled() => break,
            }
        }
        id
    });

    // Twenty clients keep their connections busy.
    let clean = Arc::new(AtomicUsize::new(0));
    let mut clients = JoinSet::new();
    for _ in 0..20 {
        clients.spawn(client(addr, clean.clone()));
    }

    // ctrl-c stands in here as a timer: the whole shutdown is the token
    // and the tracker.
    tokio::time::sleep(Duration::from_millis(150)).await;
    println!(
        "shutdown: {} tasks in flight (acceptor and handlers), cancelling them",
        service.tracker.len()
    );
    service.shutdown.cancel();
    service.tracker.close();
    service.tracker.wait().await; // handlers, and their stacks' cleanups
    let served = acceptor.await?;
    println!("tracker empty: every handler and every cleanup finished");
    // Nothing was left to the process-wide default.
    let report = drain(Duration::from_secs(5)).await;
    println!("the process-wide drain had nothing to wait for: {report:?}");
    while clients.join_next().await.is_some() {}

    let mut journaled = 0;
    for id in 0..served {
        let journal = std::fs::read_to_string(dir.path().join(format!("conn-{id}.journal")))?;
        journaled += journal.lines().count();
    }
    println!("{served} connections served; {journaled} events journaled and flushed to disk");
    println!(
        "{} of {served} clients saw a clean close",
        clean.load(Ordering::Relaxed)
    );
    println!("permits back: {} of 64", limit.available_permits());
    Ok(())
}
