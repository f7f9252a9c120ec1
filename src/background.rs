//! The background path: where the cleanup of a stack dropped without
//! `aclose` (or of a cancelled `aclose`) runs, and how an application waits
//! for it before `main` returns.
//!
//! # Design
//!
//! * A stack captures `Handle::try_current()` when it is created. When it
//!   is dropped holding entries, its remaining entries become one
//!   [`Unwind`](crate::unwind::Unwind), spawned as **one** task on that
//!   runtime, whatever the number of entries. A drop on a thread
//!   outside the runtime still reaches it through the captured handle.
//!   Nothing here blocks, builds a runtime, or calls `Handle::current()`
//!   (which panics outside a runtime): `Drop` must never block or panic.
//! * Every such task is tracked by one process-wide tokio-util
//!   `TaskTracker`, so [`drain`] can wait for all of them with a deadline.
//! * A task that a shutting-down runtime drops before it finished does not
//!   vanish: the `Unwind` inside it notices in its own `Drop` and falls back
//!   to synchronous best effort, naming every cleanup that could not run in
//!   an ERROR event. The same happens when there is no runtime at all.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

use crate::unwind::{Mode, Unwind};

static TRACKER: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);

// Plain event counters: each is touched once per background unwind, and
// read only by `drain`, so `Relaxed` is enough (no other memory is
// published through them).
static FINISHED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);
static LOST: AtomicU64 = AtomicU64::new(0);

/// Runs `unwind` in the background: one task on its runtime, or, with no
/// runtime to run it on, synchronous best effort right here.
pub(crate) fn hand_off(mut unwind: Unwind) {
    unwind.mode = Mode::Background;
    // Inline, with no task, the loop must not yield: it gets one poll.
    unwind.cooperative = false;
    if unwind.runs_inline() && poll_inline(&mut unwind) {
        return;
    }
    let handle = match unwind.handle.take() {
        Some(handle) => Some(handle),
        None => Handle::try_current().ok(),
    };
    match handle {
        Some(handle) => {
            // If the runtime is already shut down, the task is dropped
            // inside `spawn_on`, and `Unwind`'s `Drop` reports the loss.
            TRACKER.spawn_on(run(unwind), &handle);
        }
        None => unwind.lose("no tokio runtime to run the cleanup on"),
    }
}

/// Runs an unwind whose entries need no runtime right here (permits
/// and guards are released inline, no task spawned). Returns `false` if an
/// entry turned out to need more than one poll.
fn poll_inline(unwind: &mut Unwind) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let finished = {
        let mut run = std::pin::pin!(unwind.run());
        run.as_mut().poll(&mut cx).is_ready()
    };
    if finished {
        unwind.report();
    }
    finished
}

async fn run(mut unwind: Unwind) {
    unwind.cooperative = true;
    unwind.run().await;
    unwind.report();
}

pub(crate) fn record_finished(failed: bool) {
    let counter = if failed { &FAILED } else { &FINISHED };
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn record_lost() {
    LOST.fetch_add(1, Ordering::Relaxed);
}

/// How the background cleanups fared, as [`drain`] reports it.
///
/// Each count covers the background cleanups (one per stack dropped without
/// `aclose`, or per cancelled unwind) since the previous `drain` call, in
/// the whole process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Finished, every entry released cleanly.
    pub finished: u64,
    /// Finished, but some entry failed, panicked or timed out (each was
    /// reported as a tracing event when it happened).
    pub failed: u64,
    /// Could not run at all (no runtime, or the runtime shut down first)
    /// and were dropped with synchronous best effort.
    pub lost: u64,
    /// Still running when the deadline passed.
    pub cut_off: usize,
}

impl DrainReport {
    /// `true` when every background cleanup ran to its end in time.
    pub fn is_complete(&self) -> bool {
        self.lost == 0 && self.cut_off == 0
    }
}

/// Waits, at most `timeout`, for every background cleanup to finish, and
/// says how they fared. Call it at the end of `main`:
///
/// ```
/// #[tokio::main]
/// async fn main() {
///     // ... the service runs; some stacks are dropped without aclose ...
///     let report = tokio_exit_stack::drain(std::time::Duration::from_secs(5)).await;
///     assert!(report.is_complete(), "cleanup cut off: {report:?}");
/// }
/// ```
///
/// When `main` returns, the runtime drops every task it still has; a
/// background cleanup dropped that way is reported as an ERROR event, never
/// lost silently, but it does not finish. `drain` is how it finishes.
///
/// Costs one timer for the deadline. Stacks dropped while `drain` waits are
/// waited for too. Needs a runtime with the time driver enabled.
pub async fn drain(timeout: Duration) -> DrainReport {
    TRACKER.close();
    let in_time = tokio::time::timeout(timeout, TRACKER.wait()).await.is_ok();
    TRACKER.reopen();
    DrainReport {
        finished: FINISHED.swap(0, Ordering::Relaxed),
        failed: FAILED.swap(0, Ordering::Relaxed),
        lost: LOST.swap(0, Ordering::Relaxed),
        cut_off: if in_time { 0 } else { TRACKER.len() },
    }
}

/// How many background cleanups are running right now, in the process.
pub fn background_tasks() -> usize {
    TRACKER.len()
}

/// Strict mode: 0 = not decided yet, 1 = off, 2 = on.
static STRICT: AtomicU8 = AtomicU8::new(0);

/// The environment variable that turns strict mode on (`1` or `true`).
pub const STRICT_ENV: &str = "TOKIO_EXIT_STACK_STRICT";

/// Turns strict mode on or off for the whole process.
///
/// In strict mode a stack dropped while holding entries (outside a panic)
/// still hands its cleanup to the background, then **panics at the drop
/// site**, so a test suite catches every forgotten `aclose`. Off by
/// default; also turned on by the environment variable
/// `TOKIO_EXIT_STACK_STRICT=1` (read once, at the first drop that needs
/// it). Meant for tests and debugging, never for production.
pub fn set_strict(on: bool) {
    STRICT.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether strict mode is on (see [`set_strict`]).
pub fn is_strict() -> bool {
    match STRICT.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var(STRICT_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
            // Only the first decision sticks, so a racing `set_strict` wins.
            let _ = STRICT.compare_exchange(0, if on { 2 } else { 1 }, Ordering::Relaxed, Ordering::Relaxed);
            STRICT.load(Ordering::Relaxed) == 2
        }
        state => state == 2,
    }
}
