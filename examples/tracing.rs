//! What an operator sees: the crate's spans and events through a
//! `tracing-subscriber` fmt layer, for a clean close, a failing cleanup,
//! a panicking cleanup and a forgotten `aclose`.
//!
//! Run it with `cargo run --example tracing`; set `RUST_LOG` to change the
//! filter (default: `tokio_exit_stack=debug`).

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_exit_stack::{AsyncExitStack, BoxError, acquire};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("tokio_exit_stack=debug")))
        // Print each span when it closes, with its fields and duration.
        .with_span_events(FmtSpan::CLOSE)
        .with_target(false)
        .init();
    // One line per panic instead of the default hook's message and
    // backtrace: the crate's ERROR event already says which cleanup panicked.
    std::panic::set_hook(Box::new(|info| eprintln!("(panic hook) {info}")));

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut socket, &mut sink).await;
            });
        }
    });

    println!("--- 1. a clean aclose: one `unwind` span, one `exit` span per entry");
    let mut stack = AsyncExitStack::new();
    stack.enter_async_context(acquire(TcpStream::connect(addr))).await?;
    stack.entry().label("audit flush").push_async_callback(|| async {});
    stack.aclose().await?;

    println!("--- 2. a failing cleanup: a WARN event naming the resource; the error is returned");
    let mut stack = AsyncExitStack::new();
    stack.enter_async_context(acquire(TcpStream::connect(addr))).await?;
    stack
        .entry()
        .label("upload receipts")
        .push_async_callback(|| async { Err::<(), _>(std::io::Error::other("bucket unreachable")) });
    let err = stack.aclose().await.unwrap_err();
    println!("aclose returned: {err}");

    println!("--- 3. a panicking cleanup in the background: an ERROR event, nothing else fails");
    {
        let stack = AsyncExitStack::new();
        stack
            .entry()
            .label("flaky hook")
            .callback(|| -> () { panic!("hook bug") });
        stack.enter_async_context(acquire(TcpStream::connect(addr))).await?;
        // dropped without aclose
    }

    println!("--- 4. a forgotten aclose: a WARN naming where the stack was created; cleanup runs in the background");
    {
        let stack = AsyncExitStack::new();
        stack.enter_async_context(acquire(TcpStream::connect(addr))).await?;
    }

    let report = tokio_exit_stack::drain(Duration::from_secs(5)).await;
    println!("--- drained background cleanups: {report:?}");
    Ok(())
}
