//! A `#[tokio::main]` service stopped with work in flight, which drains its
//! cleanups before exiting.
//!
//! Run it with `cargo run --example graceful_shutdown`.
//!
//! Each connection is served inside a [`scope`] holding a permit, the
//! connection, and a journal file. At shutdown the handlers are aborted
//! mid-request: their futures are dropped, so their stacks clean up in the
//! background (journal flushed, connection shut down cleanly, permit
//! released), and `main` waits for that with [`drain`] before returning.
//! Without the `drain`, those cleanups would be cut off when the runtime
//! shuts down (and reported as ERROR events, not lost silently).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_exit_stack::{BoxError, acquire, drain, scope};

/// Serves one connection: journals every line it receives and acknowledges it.
async fn serve(socket: TcpStream, id: usize, dir: Arc<tempfile::TempDir>, limit: Arc<Semaphore>) {
    let outcome = scope(async |stack| {
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
    })
    .await;
    if let Err(e) = outcome {
        eprintln!("connection {id} failed: {e}");
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

    // The service: an accept loop, one handler task per connection.
    let (d, l) = (dir.clone(), limit.clone());
    let service = tokio::spawn(async move {
        let mut handlers = JoinSet::new();
        let mut id = 0;
        let stop = tokio::time::sleep(Duration::from_millis(150)); // stands in for ctrl-c
        tokio::pin!(stop);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((socket, _)) = accepted else { break };
                    handlers.spawn(serve(socket, id, d.clone(), l.clone()));
                    id += 1;
                }
                () = &mut stop => break,
            }
        }
        println!("shutdown: {} handlers in flight, aborting them", handlers.len());
        handlers.shutdown().await; // drops each handler's future mid-request
        id
    });

    // Twenty clients keep their connections busy.
    let clean = Arc::new(AtomicUsize::new(0));
    let mut clients = JoinSet::new();
    for _ in 0..20 {
        clients.spawn(client(addr, clean.clone()));
    }

    let served = service.await?;
    let report = drain(Duration::from_secs(5)).await;
    println!(
        "drained: {} cleanups finished, {} failed, {} lost, {} cut off",
        report.finished, report.failed, report.lost, report.cut_off
    );
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
