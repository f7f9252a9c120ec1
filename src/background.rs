//! Background cleanup: where the cleanup of a stack dropped without
//! `aclose` (or of a cancelled `aclose`) runs, and [`drain`], with which an
//! application waits for it before `main` returns.
//!
//! # How it works
//!
//! * A stack captures `Handle::try_current()` when it is created. When it
//!   is dropped holding entries, its remaining entries become one
//!   unwind, spawned as **one** task on that
//!   runtime, whatever the number of entries. A drop on a thread
//!   outside the runtime still reaches it through the captured handle.
//!   If that runtime is gone, the runtime current at the drop (if any) gets
//!   one chance to run it. Nothing here blocks, builds a runtime, or calls
//!   `Handle::current()` (which panics outside a runtime): `Drop` must
//!   never block or panic.
//! * The task runs under the `tracing` dispatcher that was current at the
//!   drop (or, when none was, under the one current where it runs), in a
//!   span that is a child of the span current where the stack was
//!   created, so a scoped subscriber sees it and an operator can tie it to
//!   its request.
//! * Each task is tracked either by the caller's own tokio-util
//!   `TaskTracker` (see `AsyncExitStack::set_tracker`), or by the
//!   process-wide default: a count of running tasks in a `watch` channel,
//!   and monotonic counters of how they ended. [`drain`] waits for the
//!   count to reach zero and reports the counters' growth during the call,
//!   so any number of concurrent calls each end as soon as the work is
//!   done, and none takes another's counts.
//! * A task that a shutting-down runtime drops before it finished does not
//!   vanish: the unwind inside it notices in its own `Drop` and falls back
//!   to synchronous best effort, naming every cleanup that could not run in
//!   an ERROR event with the true reason. The same happens when there is no
//!   runtime at all.

use std::borrow::Cow;
use std::cell::RefCell;
use std::future::Future;
use std::mem;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::instrument::WithSubscriber as _;
use tracing::{Dispatch, debug, error, warn};

use crate::error::{Abandoned, panic_message};
use crate::unwind::{Mode, Reason, Unwind};

/// How many default-tracked background cleanups are running.
static RUNNING: LazyLock<watch::Sender<usize>> = LazyLock::new(|| watch::channel(0).0);

// Monotonic event counters, never reset: `drain` reports their growth
// during the call. Each is touched once per background unwind, and read
// only by `drain`, so `Relaxed` is enough (no other memory is published
// through them).
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
    let Some(handle) = handle else {
        lose(&mut unwind, Lost::NoRuntime);
        return;
    };
    if unwind.dispatch.is_none() {
        unwind.dispatch = listening_dispatch();
    }
    let dispatch = unwind.dispatch.clone();
    // If the runtime is already shut down, the task is dropped inside
    // `spawn`, and `Unwind`'s `Drop` tries the current runtime, then
    // reports the loss.
    match unwind.tracker.clone() {
        Some(tracker) => {
            let task = run(unwind);
            match dispatch {
                Some(dispatch) => tracker.spawn_on(task.with_subscriber(dispatch), &handle),
                None => tracker.spawn_on(task, &handle),
            };
        }
        None => {
            let task = Tracked::new(unwind).run();
            match dispatch {
                Some(dispatch) => handle.spawn(task.with_subscriber(dispatch)),
                None => handle.spawn(task),
            };
        }
    }
}

/// The dispatcher current here, under which a cleanup begun here runs:
/// its events go where the events of the code that dropped the stack went.
///
/// `None` when that is the no-op dispatcher (no subscriber here): the
/// cleanup then runs under whatever is current where it runs. Scoping the
/// no-op dispatcher instead would be worse than silent: tracing caches,
/// once per process, whether anything wants each event and span call site,
/// and a call site first reached under it would be cached as unwanted for
/// good, hiding the crate's events from a subscriber set later.
fn listening_dispatch() -> Option<Dispatch> {
    tracing::dispatcher::get_default(|dispatch| {
        (!dispatch.is::<tracing::subscriber::NoSubscriber>()).then(|| dispatch.clone())
    })
}

/// A background unwind counted as running in the default tracker from
/// its spawn until it has ended, or was dropped (and reported lost).
struct Tracked {
    unwind: Option<Unwind>,
}

impl Tracked {
    fn new(unwind: Unwind) -> Self {
        RUNNING.send_modify(|n| *n += 1);
        Self { unwind: Some(unwind) }
    }

    async fn run(mut self) {
        if let Some(unwind) = self.unwind.take() {
            run(unwind).await;
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // The unwind's own `Drop` records a loss first, so a `drain` that
        // sees the count fall sees the loss too.
        drop(self.unwind.take());
        RUNNING.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Spawns `task` on `handle` as one background cleanup of the default
/// tracker: [`drain`] waits for it. The task counts its own outcome
/// ([`count_finished`], [`count_lost`], or a background unwind's report);
/// under the dispatcher current here, if any.
pub(crate) fn spawn_counted(handle: &Handle, task: impl Future<Output = ()> + Send + 'static) {
    RUNNING.send_modify(|n| *n += 1);
    let task = Counted(Some(Box::pin(task)));
    match listening_dispatch() {
        Some(dispatch) => handle.spawn(task.with_subscriber(dispatch)),
        None => handle.spawn(task),
    };
}

/// A running background cleanup of the default tracker, counted until it
/// ended or was dropped. The task is dropped before the count falls, so a
/// loss it records on the way is seen by a `drain` that sees the count
/// fall.
struct Counted<F>(Option<std::pin::Pin<Box<F>>>);

impl<F: Future<Output = ()>> Future for Counted<F> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let Some(task) = self.0.as_mut() else {
            return std::task::Poll::Ready(());
        };
        std::task::ready!(task.as_mut().poll(cx));
        self.0 = None;
        std::task::Poll::Ready(())
    }
}

impl<F> Drop for Counted<F> {
    fn drop(&mut self) {
        drop(self.0.take());
        RUNNING.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Counts a background cleanup lost (reported by the caller).
pub(crate) fn count_lost() {
    LOST.fetch_add(1, Ordering::Relaxed);
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
        report(unwind);
    }
    finished
}

/// Runs `unwind` to its end, then reports and counts it (a background
/// unwind's whole life, once spawned).
pub(crate) async fn run(mut unwind: Unwind) {
    unwind.cooperative = true;
    unwind.run().await;
    report(&mut unwind);
}

/// Where an unwind dropped before it finished goes (every `Unwind` made by
/// the stack is given this): a cancelled `aclose` or scope continues in the
/// background; a background task its runtime dropped gets one more chance
/// on the runtime current here, or is lost, and reported.
pub(crate) fn orphaned(mut rest: Unwind) {
    if losing() {
        // A nested stack's unwind, dropped as the unwind that was running
        // it is lost: part of that one loss, reported with it.
        lose(&mut rest, Lost::ShutDown);
        return;
    }
    match rest.mode {
        Mode::Foreground => {
            // `aclose()` or a scope was cancelled: finish in the
            // background, exactly once per entry.
            if let Some(payload) = rest.panic.take() {
                error!(site = %rest.site, panic = %panic_message(&*payload), "a cleanup panicked before the unwind was cancelled");
            }
            rest.reason = Reason::Cancel;
            // Shielded: the exits still to start are told what they would
            // have been told had the unwind been awaited, and that no one
            // will see its result.
            rest.chain.detach();
            // Cancellation is normal: the owner of the timeout reports it.
            debug!(site = %rest.site, remaining = rest.remaining(), "unwind cancelled after it began; the remaining cleanup runs in a background task, told what it would have been told");
            hand_off(rest);
        }
        Mode::Background if std::thread::panicking() => lose(&mut rest, Lost::Panicked),
        Mode::Background => match Handle::try_current() {
            // The runtime that was to run it is gone, but this thread is
            // in another (a stack created on a runtime since shut down,
            // dropped in a live one): one more chance there. If that one
            // is shutting down too, the task is dropped again at once, and
            // the loss reported then.
            Ok(handle) if !rest.rehomed => {
                rest.rehomed = true;
                rest.handle = Some(handle);
                hand_off(rest);
            }
            _ => lose(&mut rest, Lost::ShutDown),
        },
    }
}

/// Why a background unwind could not run to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    NoRuntime,
    ShutDown,
    Panicked,
}

impl Lost {
    fn as_str(self) -> &'static str {
        match self {
            Self::NoRuntime => "no tokio runtime to run the cleanup on",
            Self::ShutDown => "the runtime shut down before the background cleanup finished",
            Self::Panicked => "the background cleanup task panicked",
        }
    }
}

/// The background result: reported (a WARN with every error when an entry
/// failed, else a DEBUG event), counted, never returned.
fn report(unwind: &mut Unwind) {
    unwind.done = true;
    let (site, reason) = (unwind.site, unwind.reason.as_str());
    if unwind.failed {
        // The `Abandoned` marker is the reason for the unwind, not a
        // failure of it.
        let mut chain = mem::take(&mut unwind.chain);
        chain.retain(|e| !e.is::<Abandoned>());
        let errors = chain.into_error();
        let errors = errors.map(|e| e.to_string()).unwrap_or_default();
        warn!(site = %site, reason, %errors, "background cleanup finished with errors");
    } else {
        debug!(site = %site, reason, "background cleanup finished");
    }
    if unwind.tracker.is_none() {
        count_finished(unwind.failed);
    }
}

/// Counts a finished unwind of the default tracker.
pub(crate) fn count_finished(failed: bool) {
    let counter = if failed { &FAILED } else { &FINISHED };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Synchronous best effort when no runtime can finish the unwind: sync
/// entries still run; async ones get `abandon()` and are named in one
/// ERROR event with the reason, under the dispatcher of the drop.
fn lose(unwind: &mut Unwind, why: Lost) {
    match unwind.dispatch.take() {
        Some(dispatch) => tracing::dispatcher::with_default(&dispatch, || lose_here(unwind, why)),
        None => lose_here(unwind, why),
    }
}

fn lose_here(unwind: &mut Unwind, why: Lost) {
    // What nested stacks lose while this unwind is dropped is part of this
    // loss: collected here, reported in this one event, counted once.
    let outer = LOSING.with(|l| l.replace(Some(Vec::new())));
    let mut not_run = unwind.best_effort();
    let nested = LOSING.with(|l| l.replace(outer)).unwrap_or_default();
    not_run.extend(nested);
    if within_loss(&mut not_run) {
        return; // an outer unwind being lost reports and counts it
    }
    let counted = unwind.tracker.is_none();
    if not_run.is_empty() {
        if counted {
            count_finished(unwind.failed);
        }
        return;
    }
    error!(
        site = %unwind.site,
        reason = why.as_str(),
        not_run = ?not_run,
        "{} cleanup(s) could not run and were dropped with synchronous best effort",
        not_run.len(),
    );
    if counted {
        LOST.fetch_add(1, Ordering::Relaxed);
    }
}

thread_local! {
    /// While an unwind is being lost on this thread: what the nested
    /// stacks it drops could not run, for its one report.
    static LOSING: RefCell<Option<Vec<Cow<'static, str>>>> = const { RefCell::new(None) };
}

/// Whether an unwind is being lost on this thread right now.
fn losing() -> bool {
    LOSING.with(|l| l.borrow().is_some())
}

/// Hands `not_run` to the unwind being lost on this thread, if one is;
/// `true` if it took them (and reports them as part of its own loss).
fn within_loss(not_run: &mut Vec<Cow<'static, str>>) -> bool {
    LOSING.with(|l| match l.borrow_mut().as_mut() {
        Some(outer) => {
            outer.append(not_run);
            true
        }
        None => false,
    })
}

/// Synchronous best effort for a nested stack whose outer stack has no
/// runtime left (its `abandon`): what it could not run is part of the
/// outer stack's loss, named in its report.
pub(crate) fn abandon_nested(unwind: &mut Unwind) {
    let mut not_run = unwind.best_effort();
    within_loss(&mut not_run);
}

/// How the background cleanups fared during one [`drain`] call.
///
/// Counts the background cleanups (one per stack dropped without `aclose`,
/// or per cancelled unwind) of the whole process that ended while the call
/// waited; concurrent calls may each count the same one. Stacks given
/// their own tracker ([`AsyncExitStack::set_tracker`](crate::AsyncExitStack::set_tracker))
/// are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Finished, every entry released cleanly.
    pub finished: u64,
    /// Finished, but some entry failed, panicked or timed out (each was
    /// reported as a tracing event when it happened).
    pub failed: u64,
    /// Could not run to their end (no runtime, the runtime shut down, the
    /// task panicked) and were dropped with synchronous best effort, each
    /// reported as one ERROR event. A stack lost while it ran a nested
    /// stack's cleanup is one loss: its event names what the nested stack
    /// had not run too.
    pub lost: u64,
    /// Still running when the deadline passed.
    pub cut_off: usize,
}

impl DrainReport {
    /// `true` when no background cleanup was lost or cut off during the
    /// call.
    pub fn is_complete(&self) -> bool {
        self.lost == 0 && self.cut_off == 0
    }
}

/// Waits, at most `timeout`, until no background cleanup is running, and
/// says how the ones that ended meanwhile fared. Call it at the end of
/// `main`:
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
/// Returns as soon as no cleanup is running; cleanups spawned while it
/// waits are waited for too. Any number of calls may wait at once (from
/// several runtimes, or parallel tests): each returns as soon as the work
/// is done, and each reports what ended during its own wait. Background
/// cleanups tracked by a caller's own `TaskTracker` are not waited for
/// here: that tracker waits for them.
///
/// Costs one timer for the deadline.
///
/// # Cancel safety
///
/// Cancel safe: dropping the future only stops the wait; the cleanups go
/// on, and a later call waits for them.
///
/// On a runtime without the time driver it cannot keep a deadline: it then
/// does not wait, reports what is still running as cut off, and says so in
/// a WARN event. A deadline too large to add to the clock means none.
pub async fn drain(timeout: Duration) -> DrainReport {
    let counts = || [&FINISHED, &FAILED, &LOST].map(|c| c.load(Ordering::Relaxed));
    let start = counts();
    let mut count = RUNNING.subscribe();
    let idle = count.wait_for(|n| *n == 0);
    let in_time = match tokio::time::Instant::now().checked_add(timeout) {
        // A deadline too far to add to the clock: no deadline.
        None => idle.await.is_ok(),
        Some(at) => match crate::timer::sleep_until(at) {
            Some(sleep) => crate::timer::race(idle, sleep).await.is_some_and(|idle| idle.is_ok()),
            // No time driver: the deadline cannot be kept, so do not wait
            // at all rather than maybe forever.
            None => {
                warn!("drain cannot keep a deadline: the runtime has no time driver (enable_time); not waiting");
                *RUNNING.borrow() == 0
            }
        },
    };
    let end = counts();
    DrainReport {
        finished: end[0].wrapping_sub(start[0]),
        failed: end[1].wrapping_sub(start[1]),
        lost: end[2].wrapping_sub(start[2]),
        cut_off: if in_time { 0 } else { running() },
    }
}

/// How many background cleanups of the default tracker (the one [`drain`]
/// waits for) are running right now, in the process.
pub fn running() -> usize {
    *RUNNING.borrow()
}
