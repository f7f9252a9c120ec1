//! The quick start: one stack holds a TCP connection, a file and a
//! semaphore permit; `aclose` releases them newest first.
//!
//! Run it with `cargo run --example quickstart`.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_exit_stack::{AsyncExitStack, BoxError, acquire};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // A loopback echo server that reports how each connection ended.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (socket, peer) = listener.accept().await?;
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read).lines();
        while let Some(line) = lines.next_line().await? {
            write.write_all(format!("echo: {line}\n").as_bytes()).await?;
        }
        // `next_line` returned None: a clean EOF, not a reset.
        Ok::<_, std::io::Error>(format!("server: {peer} closed cleanly (EOF)"))
    });

    let dir = tempfile::tempdir()?;
    let log_path = dir.path().join("session.log");
    let limit = Arc::new(Semaphore::new(4));

    // Each resource is preceded by a callback: the stack runs newest first,
    // so each callback runs right after the resource above it was released,
    // and reports it.
    let mut stack = AsyncExitStack::new();
    let l = limit.clone();
    stack.callback(move || println!("released: permit ({} of 4 available again)", l.available_permits()));
    let _permit = stack.enter_async_context(limit.clone()).await?;
    stack.callback(|| println!("released: connection (write side shut down, unread input drained)"));
    let conn = stack.enter_async_context(acquire(TcpStream::connect(addr))).await?;
    let p = log_path.clone();
    stack.callback(move || {
        let on_disk = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        println!("released: file (flushed: {on_disk} bytes on disk)");
    });
    let log = stack
        .enter_async_context(acquire(tokio::fs::File::create(&log_path)))
        .await?;

    println!(
        "entered: permit ({} of 4 left), connection to {addr}, file {}",
        limit.available_permits(),
        log_path.display()
    );

    // Use the connection and the file at the same time.
    conn.write_all(b"hello\n").await?;
    let mut reply = String::new();
    let mut reader = BufReader::new(&mut *conn);
    reader.read_line(&mut reply).await?;
    log.write_all(format!("sent hello, got {reply}").as_bytes()).await?;
    print!("used: got {reply}");

    println!("closing the stack:");
    stack.aclose().await?;
    println!("after aclose: the file holds {:?}", std::fs::read_to_string(&log_path)?);
    println!("{}", server.await??);
    Ok(())
}
