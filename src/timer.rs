//! Timers that never panic: tokio panics when a timer is made on a runtime
//! without the time driver, and offers no way to ask first, so every
//! deadline of the crate (entry timeouts, unwind deadlines, stream close
//! bounds, `drain`) arms its timer here and decides itself what a missing
//! driver means.

use std::future::Future;
use std::panic::catch_unwind;
use std::task::Poll;

use tokio::time::{Instant, Sleep};

/// A timer for `at`, or `None` on a runtime without the time driver.
pub(crate) fn sleep_until(at: Instant) -> Option<Sleep> {
    catch_unwind(|| tokio::time::sleep_until(at)).ok()
}

/// Runs `future` until `sleep` fires: `Some(output)` if the future
/// finished first, `None` if the timer did.
pub(crate) async fn race<F: Future>(future: F, sleep: Sleep) -> Option<F::Output> {
    let (mut future, mut sleep) = (std::pin::pin!(future), std::pin::pin!(sleep));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        sleep.as_mut().poll(cx).map(|()| None)
    })
    .await
}
