//! The bounds of a stream's close (S27, S29): a peer that never reads
//! cannot hang a flush, a peer that never closes costs one drain bound,
//! the bounds can be set per entry or per stack (the entry's winning), and
//! a group closes many half-open connections in one bound, not one each.
//! Real loopback sockets, on the paused clock.
#![cfg(all(feature = "net", feature = "io-util"))]

use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufStream, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_exit_stack::{
    AsyncExitStack, error::ResourceError, linger::DRAIN_TIMEOUT, linger::FLUSH_TIMEOUT, linger::Linger,
};

/// A connected pair: the client end, and the server's end, which the test
/// keeps open and never reads from nor writes to.
async fn silent_peer() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

/// More than loopback's socket buffers hold, buffered in a writer.
const UNSENDABLE: usize = 32 << 20;

fn lingers(ms: u64) -> Linger {
    Linger {
        drain_timeout: Duration::from_millis(ms),
        flush_timeout: Duration::from_millis(ms),
        ..Linger::DEFAULT
    }
}

/// What `aclose` returned, and how long it took on the paused clock.
async fn timed_aclose(stack: &mut AsyncExitStack) -> (Result<(), tokio_exit_stack::Error>, Duration) {
    let start = Instant::now();
    let result = stack.aclose().await;
    (result, start.elapsed())
}

/// How long a successful `aclose` took on the paused clock.
async fn closed_in(stack: &mut AsyncExitStack) -> Duration {
    let (result, took) = timed_aclose(stack).await;
    result.unwrap();
    took
}

#[tokio::test(start_paused = true)]
async fn s29_a_bufwriter_to_a_peer_that_never_reads_gives_up_at_its_flush_bound() {
    let (client, _server) = silent_peer().await;
    let mut stack = AsyncExitStack::new();
    let writer = stack.push_resource(BufWriter::with_capacity(UNSENDABLE, client));
    writer.write_all(&vec![1u8; UNSENDABLE - 1]).await.unwrap(); // all buffered
    let (result, took) = timed_aclose(&mut stack).await;
    assert_eq!(took, FLUSH_TIMEOUT, "bounded by the default");
    let err = result.unwrap_err();
    let failure = err.downcast_ref::<ResourceError>().expect("a ResourceError");
    assert_eq!(failure.source.kind(), std::io::ErrorKind::TimedOut, "{err:#}");
    assert!(failure.to_string().contains("flush"), "{err:#}");
}

#[tokio::test(start_paused = true)]
async fn s29_a_bufstream_to_a_peer_that_never_reads_gives_up_at_its_entrys_flush_bound() {
    let (client, _server) = silent_peer().await;
    let mut stack = AsyncExitStack::new();
    let stream = stack
        .entry()
        .linger(lingers(700))
        .push_resource(BufStream::with_capacity(8192, UNSENDABLE, client));
    stream.write_all(&vec![1u8; UNSENDABLE - 1]).await.unwrap();
    let (result, took) = timed_aclose(&mut stack).await;
    assert_eq!(took, Duration::from_millis(700));
    assert!(result.unwrap_err().downcast_ref::<ResourceError>().is_some());
}

/// A peer that neither writes nor closes holds the close for the drain
/// bound: the default, the stack's, or the entry's, the entry's winning.
#[tokio::test(start_paused = true)]
async fn s27_drain_bounds_are_set_per_entry_or_per_stack_and_the_entrys_win() {
    let (client, _server) = silent_peer().await;
    let mut stack = AsyncExitStack::new();
    stack.push_resource(client);
    assert_eq!(closed_in(&mut stack).await, DRAIN_TIMEOUT);

    let (client, _server) = silent_peer().await;
    stack.set_linger(lingers(100));
    stack.push_resource(client);
    assert_eq!(closed_in(&mut stack).await, Duration::from_millis(100));

    let (client, _server) = silent_peer().await;
    stack.entry().linger(lingers(10)).push_resource(client);
    assert_eq!(closed_in(&mut stack).await, Duration::from_millis(10));

    // In a group: the member's own, else the group's, else the stack's.
    let (a, _a) = silent_peer().await;
    let (b, _b) = silent_peer().await;
    let group = stack.entry().linger(lingers(40)).enter_group();
    group.push_resource(a);
    group.entry().linger(lingers(20)).push_resource(b);
    assert_eq!(closed_in(&mut stack).await, Duration::from_millis(40));
}

/// Closing eight half-open connections one after another waits eight drain
/// bounds; as a group, one.
#[tokio::test(start_paused = true)]
async fn s27_a_group_closes_half_open_connections_in_one_drain_bound() {
    let mut peers = Vec::new();
    let mut stack = AsyncExitStack::new();
    for _ in 0..8 {
        let (client, server) = silent_peer().await;
        peers.push(server);
        stack.push_resource(client);
    }
    assert_eq!(closed_in(&mut stack).await, DRAIN_TIMEOUT * 8);

    let group = stack.enter_group();
    for _ in 0..8 {
        let (client, server) = silent_peer().await;
        peers.push(server);
        group.push_resource(client);
    }
    assert_eq!(closed_in(&mut stack).await, DRAIN_TIMEOUT);
}

/// Each exit is told its own bounds, else its stack's, beside the error
/// pending when it runs, whatever the exits before it were told.
#[tokio::test]
async fn s27_each_exit_is_told_its_own_bounds_or_its_stacks_beside_the_pending_error() {
    use std::sync::{Arc, Mutex};
    use tokio_exit_stack::{Flow, Pending};

    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = |name: &'static str| {
        let seen = seen.clone();
        move |pending: &Pending| {
            let bound = pending.linger().drain_timeout.as_millis();
            let error = pending.error().map(|e| e.to_string());
            seen.lock().unwrap().push(format!("{name}: {bound} ms, {error:?}"));
            Ok::<_, std::io::Error>(Flow::Propagate)
        }
    };
    let mut stack = AsyncExitStack::new();
    stack.set_linger(lingers(100));
    stack.push_exit(record("a"));
    stack.entry().linger(lingers(10)).push_exit(record("b"));
    stack.callback(|| Err::<(), _>(std::io::Error::other("second")));
    stack.push_exit(record("c"));
    stack.entry().linger(lingers(20)).push_exit(record("d"));
    stack.push_exit(record("e"));
    stack.callback(|| Err::<(), _>(std::io::Error::other("first")));
    let err = stack.aclose().await.unwrap_err();
    assert_eq!(err.len(), 2);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "e: 100 ms, Some(\"first\")",
            "d: 20 ms, Some(\"first\")",
            "c: 100 ms, Some(\"first\")",
            "b: 10 ms, Some(\"second\")",
            "a: 100 ms, Some(\"second\")",
        ]
    );
}
