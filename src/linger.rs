//! How long, and how much, closing a stream may take: the bounds of the
//! stream exits' flush and lingering close, settable per entry or per
//! stack, and carried to the exit in its [`Pending`](crate::Pending).

use std::future::Future;
use std::time::Duration;

/// The default bound on how many unread bytes closing a stream reads and
/// discards ([`Linger::drain_limit`]): one mebibyte (1,048,576 bytes).
/// Past it the stream is closed anyway (the peer may then see a reset).
///
/// ```
/// assert_eq!(tokio_exit_stack::linger::DRAIN_LIMIT, 1024 * 1024);
/// ```
pub const DRAIN_LIMIT: usize = 1 << 20;

/// The default bound on how long closing a stream waits for the peer's EOF
/// while discarding unread input, a "lingering close"
/// ([`Linger::drain_timeout`]): 250 milliseconds. A peer that neither
/// writes nor closes costs this much; one that closes costs a round trip.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(tokio_exit_stack::linger::DRAIN_TIMEOUT, Duration::from_millis(250));
/// ```
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(250);

/// The default bound on how long a `BufWriter`, `BufStream` or TLS stream
/// exit may spend flushing and shutting down ([`Linger::flush_timeout`]):
/// five seconds. A peer that never reads cannot hang the unwind longer
/// than this.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(tokio_exit_stack::linger::FLUSH_TIMEOUT, Duration::from_secs(5));
/// ```
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The bounds of a stream's close: how long its buffered output may take
/// to flush, and how long and how much unread input is drained so the peer
/// sees a clean EOF instead of a reset.
///
/// The stream exits of this crate (`TcpStream`, `UnixStream`, `BufWriter`,
/// `BufStream`) read it from their [`Pending`](crate::Pending); the first
/// that is set wins:
///
/// 1. the entry's own, [`EntryBuilder::linger`](crate::EntryBuilder::linger)
///    (for a group member, then its group's);
/// 2. the stack's, [`AsyncExitStack::set_linger`](crate::AsyncExitStack::set_linger);
/// 3. [`Linger::DEFAULT`].
///
/// The trade-off: a longer drain gives a slow peer time to see a clean
/// EOF; a shorter one frees what the close holds (the task, and any entry
/// released after it, such as a semaphore permit acquired before the
/// connection) sooner. A connection discarded after a failed or cancelled
/// request usually wants a short one. Closing many streams at once is a
/// job for a group ([`AsyncExitStack::enter_group`](crate::AsyncExitStack::enter_group)):
/// in sequence, each lingering close waits its own bound.
///
/// The bounds are tokio timers: they need the runtime's time driver
/// (without it the close runs unbounded, and says so in a WARN event).
/// A bound too large to add to the clock means no bound.
///
/// ```
/// # #[cfg(feature = "net")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use std::time::Duration;
/// use tokio_exit_stack::{AsyncExitStack, linger::Linger};
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let mut stack = AsyncExitStack::new();
/// stack.set_linger(Linger { drain_timeout: Duration::from_millis(50), ..Linger::DEFAULT });
/// let conn = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
/// stack
///     .entry()
///     .linger(Linger { drain_timeout: Duration::from_millis(10), ..Linger::DEFAULT })
///     .push_resource(conn); // this one's own bound wins over the stack's
/// stack.aclose().await?;
/// # Ok(()) }
/// # #[cfg(not(feature = "net"))] fn main() {}
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linger {
    /// At most this long for flushing buffered output and shutting the
    /// write side down; past it the close fails with a `TimedOut` I/O
    /// error and the unflushed bytes are lost (reported, not silent).
    pub flush_timeout: Duration,
    /// At most this long for draining unread input, waiting for the
    /// peer's EOF. Past it the stream is closed anyway; not an error.
    pub drain_timeout: Duration,
    /// At most this many unread bytes are drained. Past it the stream is
    /// closed anyway; not an error.
    pub drain_limit: usize,
}

impl Linger {
    /// [`FLUSH_TIMEOUT`] (5 s), [`DRAIN_TIMEOUT`] (250 ms),
    /// [`DRAIN_LIMIT`] (1 MiB): what a stream entry closes with when
    /// neither it nor its stack sets bounds.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio_exit_stack::linger::Linger;
    ///
    /// let Linger { flush_timeout, drain_timeout, drain_limit } = Linger::DEFAULT;
    /// assert_eq!(flush_timeout, Duration::from_secs(5));
    /// assert_eq!(drain_timeout, Duration::from_millis(250));
    /// assert_eq!(drain_limit, 1024 * 1024);
    /// assert_eq!(Linger::default(), Linger::DEFAULT);
    /// ```
    pub const DEFAULT: Linger = Linger {
        flush_timeout: FLUSH_TIMEOUT,
        drain_timeout: DRAIN_TIMEOUT,
        drain_limit: DRAIN_LIMIT,
    };
}

impl Default for Linger {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Runs an I/O step of a close for at most `limit`; past it, a `TimedOut`
/// error saying what was not done (`"not flushed"`) and why.
#[cfg_attr(not(any(feature = "io-util", feature = "rustls")), allow(dead_code))]
pub(crate) async fn io_within<T, F>(limit: Duration, what: &str, step: F) -> std::io::Result<T>
where
    F: Future<Output = std::io::Result<T>>,
{
    within(limit, step).await.unwrap_or_else(|| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what} within {limit:?}: the peer is not reading"),
        ))
    })
}

/// Runs `future` for at most `limit`: `None` if the limit passed first. A
/// limit too large to add to the clock, or a runtime without the time
/// driver (tokio panics when the timer is armed; a WARN says so), means no
/// limit.
#[cfg_attr(not(any(feature = "net", feature = "io-util")), allow(dead_code))]
pub(crate) async fn within<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    let Some(at) = tokio::time::Instant::now().checked_add(limit) else {
        return Some(future.await);
    };
    match crate::timer::sleep_until(at) {
        Some(sleep) => crate::timer::race(future, sleep).await,
        None => {
            tracing::warn!(
                ?limit,
                "a stream's close could not be bounded: the runtime has no time driver (enable_time)"
            );
            Some(future.await)
        }
    }
}
