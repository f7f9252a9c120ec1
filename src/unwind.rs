//! The unwind loop: runs entries newest first, one at a time, threading the
//! pending error through them, isolating panics and
//! applying timeouts.
//!
//! An [`Unwind`] owns everything it still has to run: the remaining
//! entries, the exit future in flight, and the error chain. That makes
//! cancellation simple and exact: if the future driving an unwind is
//! dropped at any await point, the `Unwind` is dropped with it, and its
//! `Drop` hands exactly what had not finished (the in-flight exit future
//! included, so nothing runs twice) to the background path.

use std::any::Any;
use std::borrow::Cow;
use std::future::Future;
use std::mem;
use std::panic::{AssertUnwindSafe, Location, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio::runtime::Handle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{Dispatch, Instrument as _, Span, debug, debug_span, error, field, warn};

use crate::background;
use crate::entry::{Entry, Exit, ExitFuture};
use crate::error::{Abandoned, BoxError, Chain, Error, PanicError, TimeoutError, panic_message};
use crate::group::ExitGroup;
use crate::linger::Linger;
use crate::traits::{Flow, Pending};

/// Why an unwind runs; shown in its tracing span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Aclose,
    ScopeEnd,
    Drop,
    Cancel,
    /// A stack registered on another, unwound as its entry.
    Nested,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Aclose => "aclose",
            Self::ScopeEnd => "scope end",
            Self::Drop => "drop",
            Self::Cancel => "cancel",
            Self::Nested => "nested",
        }
    }
}

/// Whether someone awaits the result (`aclose`, a scope), or the unwind
/// runs on its own (dropped stack, cancelled `aclose`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Foreground,
    Background,
}

/// How an entry ended, other than normally.
enum Fail {
    Error(BoxError),
    Panic(Box<dyn Any + Send>),
    Timeout(Duration),
}

/// The exit future currently running, kept here so that a cancelled unwind
/// hands it on instead of dropping or restarting it. Kept small (the rare
/// parts are boxed): it moves once per entry.
struct InFlight {
    work: Work,
    label: Cow<'static, str>,
    trace: Trace,
    until: Option<Deadline>,
}

/// An entry's span and start time, when entry spans are recorded.
type Trace = Option<Box<(Span, std::time::Instant)>>;

/// An exit's timer, and how long it was given.
struct Deadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
    given: Duration,
}

enum Work {
    One(ExitFuture),
    Group(Box<GroupRun>),
}

/// A concurrent group in flight: the members still running, and the
/// outcomes of those that finished.
#[derive(Default)]
struct GroupRun {
    running: FuturesUnordered<MemberRun>,
    done: Vec<Member>,
}

/// One group member's outcome; `index` is its registration order.
struct Member {
    index: usize,
    label: Cow<'static, str>,
    trace: Trace,
    outcome: Result<Flow, Fail>,
    /// The panic of its resource's `Drop`, when it was abandoned.
    dropped: Option<Box<dyn Any + Send>>,
}

/// Drops an exit's future, and with it the resource it owns when the exit
/// was abandoned (its timeout, or its group's): that `Drop` is user code,
/// and its panic is caught and returned, to be reported naming the entry.
fn drop_caught(work: Work) -> Option<Box<dyn Any + Send>> {
    catch_unwind(AssertUnwindSafe(move || drop(work))).err()
}

/// A group member in flight.
struct MemberRun {
    index: usize,
    flight: Option<InFlight>,
}

impl Future for MemberRun {
    type Output = Member;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Member> {
        let Some(flight) = self.flight.as_mut() else {
            // Polled after completion: FuturesUnordered never does that.
            return Poll::Pending;
        };
        let outcome = std::task::ready!(flight.poll(cx));
        let index = self.index;
        match self.flight.take() {
            Some(flight) => {
                let InFlight { work, label, trace, .. } = flight;
                Poll::Ready(Member {
                    index,
                    label,
                    trace,
                    dropped: if matches!(outcome, Err(Fail::Timeout(_))) {
                        drop_caught(work)
                    } else {
                        None
                    },
                    outcome,
                })
            }
            None => Poll::Pending,
        }
    }
}

impl InFlight {
    /// Polls the exit (its span entered, panics caught per poll so the
    /// future stays usable by a cancelled unwind's successor), then its
    /// timer, as `tokio::time::timeout` does.
    #[inline]
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Flow, Fail>> {
        let _entered = self.trace.as_ref().map(|t| t.0.enter());
        match &mut self.work {
            Work::One(future) => match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
                Ok(Poll::Pending) => {}
                Ok(Poll::Ready(Ok(flow))) => return Poll::Ready(Ok(flow)),
                Ok(Poll::Ready(Err(e))) => return Poll::Ready(Err(Fail::Error(e))),
                Err(payload) => return Poll::Ready(Err(Fail::Panic(payload))),
            },
            Work::Group(run) => loop {
                match run.running.poll_next_unpin(cx) {
                    Poll::Ready(Some(member)) => run.done.push(member),
                    Poll::Ready(None) => return Poll::Ready(Ok(Flow::Propagate)),
                    Poll::Pending => break,
                }
            },
        }
        if let Some(deadline) = &mut self.until {
            if deadline.sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Fail::Timeout(deadline.given)));
            }
        }
        Poll::Pending
    }
}

pub(crate) struct Unwind {
    /// Remaining entries; the newest is last.
    entries: Vec<Entry>,
    current: Option<InFlight>,
    /// Unsuppressed errors, oldest first; the last is the pending one.
    chain: Chain,
    /// The first panic payload, resumed by `finish`.
    panic: Option<Box<dyn Any + Send>>,
    /// Whether any entry failed (error, panic or timeout).
    failed: bool,
    /// The first entry that suppressed a pending error: with a failed
    /// body, the one that suppressed the body's error (directly, or as the
    /// cause of a newer error).
    suppressed_by: Option<Cow<'static, str>>,
    site: &'static Location<'static>,
    pub(crate) handle: Option<Handle>,
    reason: Reason,
    pub(crate) mode: Mode,
    /// Budget for the whole unwind, turned into `deadline` when the
    /// unwind starts.
    budget: Option<Duration>,
    deadline: Option<Instant>,
    span: Option<Span>,
    /// Whether entry labels are worth computing in full and entry spans are
    /// recorded: decided once per unwind, from the subscriber's interest, so
    /// that with no subscriber the loop does no tracing work per entry.
    detailed: bool,
    spans: bool,
    /// Set once the outcome has been handed over; `Drop` then does nothing.
    done: bool,
    /// Whether the loop yields to the scheduler every `YIELD_EVERY`
    /// entries: in a background task (not in `aclose`, whose caller owns
    /// its task, nor when a dropped stack of permits is released inline).
    pub(crate) cooperative: bool,
    /// A yield to the scheduler in progress.
    yielding: Option<Yielding>,
    /// The caller's tracker for the background task; `None` for the
    /// process-wide default that `drain` waits for.
    pub(crate) tracker: Option<TaskTracker>,
    /// The span current where the stack was created: a background unwind's
    /// span is its child, so an operator can tie it to its request.
    pub(crate) parent: Option<Span>,
    /// The dispatcher current where the stack was dropped: a loss is
    /// reported there too.
    pub(crate) dispatch: Option<Dispatch>,
    /// The stack's close bounds, for entries without their own.
    pub(crate) linger: Option<Arc<Linger>>,
    /// Whether the unwind already had its second chance on the runtime
    /// current at its loss.
    rehomed: bool,
}

/// Why a background unwind could not run to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lost {
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

type Yielding = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How many entries one poll of an unwind runs at most, when it runs in a
/// task: a few hundred microseconds of cleanup at most.
const YIELD_EVERY: usize = 256;

/// The shorter of two optional timeouts.
fn shorter(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Unwind {
    pub(crate) fn new(
        entries: Vec<Entry>,
        chain: Chain,
        reason: Reason,
        mode: Mode,
        site: &'static Location<'static>,
        handle: Option<Handle>,
        budget: Option<Duration>,
    ) -> Self {
        Self {
            entries,
            current: None,
            chain,
            panic: None,
            failed: false,
            suppressed_by: None,
            site,
            handle,
            reason,
            mode,
            budget,
            deadline: None,
            span: None,
            detailed: true,
            spans: true,
            done: false,
            cooperative: false,
            yielding: None,
            tracker: None,
            parent: None,
            dispatch: None,
            linger: None,
            rehomed: false,
        }
    }

    /// Marks the unwind as abandoned: exits from here on see `Abandoned`
    /// unless an error is already pending.
    pub(crate) fn abandon(&mut self, cause: crate::AbandonCause) {
        if self.chain.is_empty() {
            let abandoned = Abandoned { cause, site: self.site };
            self.chain.push(Box::new(abandoned));
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.entries.len() + usize::from(self.current.is_some())
    }

    /// Whether the rest of this unwind can run without a runtime.
    pub(crate) fn runs_inline(&self) -> bool {
        self.current.is_none() && self.budget.is_none() && !self.entries.iter().any(Entry::needs_runtime)
    }

    #[inline]
    fn pending(&mut self, linger: Option<&Arc<Linger>>) -> Pending {
        Pending {
            chain: self.chain.pending(),
            linger: linger.or(self.linger.as_ref()).cloned(),
        }
    }

    fn span(&mut self) -> Span {
        let (site, entries, reason) = (self.site, self.entries.len(), self.reason.as_str());
        let parent = self.parent.take();
        self.span
            .get_or_insert_with(|| match parent {
                Some(parent) => debug_span!(parent: &parent, "unwind", site = %site, entries, reason),
                None => debug_span!("unwind", site = %site, entries, reason),
            })
            .clone()
    }

    /// Runs every remaining entry, newest first.
    pub(crate) async fn run(&mut self) {
        let span = self.span();
        self.spans = !span.is_disabled();
        // Full labels feed the WARN/ERROR events; without a subscriber that
        // wants them, the type name is enough for the errors' own messages.
        self.detailed = self.spans || tracing::enabled!(tracing::Level::WARN);
        if let (Some(budget), None) = (self.budget, self.deadline) {
            // A budget too large to add to the clock means no deadline.
            self.deadline = Instant::now().checked_add(budget);
        }
        std::future::poll_fn(|cx| self.poll_run(cx)).instrument(span).await;
    }

    /// The unwind loop, by hand: no nested futures, nothing moved that need
    /// not be. Cancellation-safe: everything it has not finished stays in
    /// `self`.
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(yielding) = self.yielding.as_mut() {
            std::task::ready!(yielding.as_mut().poll(cx));
            self.yielding = None;
        }
        let mut ran = 0usize;
        loop {
            if self.cooperative {
                // Yield to the scheduler now and then, so that a long unwind
                // never holds a worker for long. tokio's `yield_now` (one
                // allocation per few hundred entries) defers the wake-up
                // behind the tasks that are ready, as tokio's own yields do.
                ran += 1;
                if ran > YIELD_EVERY {
                    let mut yielding: Yielding = Box::pin(tokio::task::yield_now());
                    if yielding.as_mut().poll(cx).is_pending() {
                        self.yielding = Some(yielding);
                        return Poll::Pending;
                    }
                    ran = 0;
                }
            }
            if let Some(flight) = self.current.as_mut() {
                let outcome = std::task::ready!(flight.poll(cx));
                if let Some(flight) = self.current.take() {
                    self.finish_flight(flight, outcome);
                }
                continue;
            }
            let Some(entry) = self.entries.pop() else {
                return Poll::Ready(());
            };
            // Poll a new exit right away: most finish on their first poll,
            // and then never need to be stored.
            if let Some(mut flight) = self.start(entry) {
                match flight.poll(cx) {
                    Poll::Ready(outcome) => self.finish_flight(flight, outcome),
                    Poll::Pending => {
                        self.current = Some(flight);
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    #[inline]
    fn finish_flight(&mut self, flight: InFlight, outcome: Result<Flow, Fail>) {
        let InFlight { work, label, trace, .. } = flight;
        match work {
            Work::Group(run) => {
                let GroupRun { running, mut done } = *run;
                // Members still running when the group timed out are
                // abandoned: their futures, and the resources they own, are
                // dropped here, each on its own (a panicking `Drop` is
                // reported, and does not stop the others).
                for member in running {
                    if let Some(flight) = member.flight {
                        let InFlight { work, label, trace, .. } = flight;
                        if let Some(payload) = drop_caught(work) {
                            done.push(Member {
                                index: member.index,
                                label,
                                trace,
                                outcome: Err(Fail::Panic(payload)),
                                dropped: None,
                            });
                        }
                    }
                }
                // Fold members in newest-first registration order, as if
                // they had run in sequence: the result does not depend on
                // timing.
                done.sort_unstable_by_key(|m| std::cmp::Reverse(m.index));
                for m in done {
                    let name = m.dropped.is_some().then(|| m.label.clone());
                    self.settle(m.label, m.trace, m.outcome);
                    if let (Some(name), Some(payload)) = (name, m.dropped) {
                        self.settle(name, None, Err(Fail::Panic(payload)));
                    }
                }
            }
            // Only an abandoned exit still owns its resource: a finished
            // one's future drops nothing of the user's.
            Work::One(_) if !matches!(outcome, Err(Fail::Timeout(_))) => {}
            one => {
                if let Some(payload) = drop_caught(one) {
                    self.settle(label.clone(), trace, outcome);
                    self.settle(label, None, Err(Fail::Panic(payload)));
                    return;
                }
            }
        }
        if trace.is_none() && matches!(outcome, Ok(Flow::Propagate)) {
            return; // the common case: nothing to record, nothing pending changes
        }
        self.settle(label, trace, outcome);
    }

    /// Starts one entry: sync exits run to completion here; an async exit
    /// is handed back as the in-flight future for the caller to poll.
    #[inline]
    #[must_use]
    fn start(&mut self, entry: Entry) -> Option<InFlight> {
        let timeout = entry.timeout();
        let label = entry.label(self.detailed || timeout.is_some());
        let trace = self.trace(None, &label);
        let pending = self.pending(entry.linger());
        match entry.exit {
            Exit::Sync(exit) => {
                let exit = exit.into_box();
                let run = || catch_unwind(AssertUnwindSafe(|| exit.exit(&pending)));
                let outcome = match &trace {
                    Some(t) => t.0.in_scope(run),
                    None => run(),
                };
                self.settle(label, trace, flatten(outcome));
                None
            }
            Exit::Async(exit) => {
                let exit = exit.into_box();
                match catch_unwind(AssertUnwindSafe(|| exit.start(pending))) {
                    Ok(future) => Some(InFlight {
                        work: Work::One(future),
                        label,
                        trace,
                        until: self.until(timeout),
                    }),
                    Err(payload) => {
                        self.settle(label, trace, Err(Fail::Panic(payload)));
                        None
                    }
                }
            }
            Exit::Group(group) => {
                let run = self.start_group(group.into_box(), &pending, &trace);
                Some(InFlight {
                    work: Work::Group(Box::new(run)),
                    label,
                    trace,
                    until: self.until(timeout),
                })
            }
        }
    }

    /// The span of one entry, and when it started; nothing when entry spans
    /// are not recorded.
    #[inline]
    fn trace(&self, parent: Option<&Span>, label: &str) -> Trace {
        if !self.spans {
            return None;
        }
        let span = match parent {
            Some(parent) => {
                debug_span!(parent: parent, "exit", resource = %label, outcome = field::Empty, elapsed_us = field::Empty)
            }
            None => debug_span!("exit", resource = %label, outcome = field::Empty, elapsed_us = field::Empty),
        };
        Some(Box::new((span, std::time::Instant::now())))
    }

    /// Starts every member of a group at once, each told `pending`. Sync
    /// members finish here; nested groups are flattened into this one.
    fn start_group(&self, group: Box<ExitGroup>, pending: &Pending, parent: &Trace) -> GroupRun {
        let parent = parent.as_ref().map(|t| &t.0);
        let mut run = GroupRun::default();
        // Nested groups are flattened into this one; a nested group's
        // timeout bounds each of its members (all start now). This group's
        // own timeout is its timer, which names it.
        // A member's own close bounds win over its group's, which the
        // group's `pending` already carries.
        let mut queue = vec![(group, None, None)];
        let mut index = 0;
        while let Some((mut group, bound, group_linger)) = queue.pop() {
            for member in group.registry.take() {
                index += 1;
                let timeout = shorter(member.timeout(), bound);
                let linger = member.linger().or(group_linger.as_ref()).cloned();
                let told = match &linger {
                    Some(linger) => Pending {
                        chain: pending.chain.clone(),
                        linger: Some(linger.clone()),
                    },
                    None => pending.clone(),
                };
                let label = member.label(self.detailed || timeout.is_some());
                let trace = parent.and_then(|p| self.trace(Some(p), &label));
                let until = self.until(timeout);
                let outcome = match member.exit {
                    Exit::Group(nested) => {
                        queue.push((nested.into_box(), timeout, linger));
                        continue;
                    }
                    Exit::Sync(exit) => {
                        let exit = exit.into_box();
                        let run = || catch_unwind(AssertUnwindSafe(|| exit.exit(&told)));
                        flatten(match &trace {
                            Some(t) => t.0.in_scope(run),
                            None => run(),
                        })
                    }
                    Exit::Async(exit) => {
                        let exit = exit.into_box();
                        match catch_unwind(AssertUnwindSafe(|| exit.start(told))) {
                            Ok(future) => {
                                run.running.push(MemberRun {
                                    index,
                                    flight: Some(InFlight {
                                        work: Work::One(future),
                                        label,
                                        trace,
                                        until,
                                    }),
                                });
                                continue;
                            }
                            Err(payload) => Err(Fail::Panic(payload)),
                        }
                    }
                };
                run.done.push(Member {
                    index,
                    label,
                    trace,
                    outcome,
                    dropped: None,
                });
            }
        }
        run
    }

    /// The earlier of the entry's own timeout and the unwind's deadline, as
    /// a timer; `None` (and no timer) for most entries.
    #[inline]
    fn until(&self, timeout: Option<Duration>) -> Option<Deadline> {
        if timeout.is_none() && self.deadline.is_none() {
            return None;
        }
        self.arm(timeout)
    }

    /// [`until`](Self::until) for an entry that has a deadline: kept out of
    /// line, so that the common case stays a single test.
    #[cold]
    #[inline(never)]
    fn arm(&self, timeout: Option<Duration>) -> Option<Deadline> {
        let now = Instant::now();
        // A timeout too large to add to the clock means no deadline.
        let own = timeout.and_then(|t| Some((now.checked_add(t)?, t)));
        let whole = self.deadline.map(|d| (d, d.saturating_duration_since(now)));
        let (at, given) = match (own, whole) {
            (Some(a), Some(b)) => {
                if a.0 <= b.0 {
                    a
                } else {
                    b
                }
            }
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return None,
        };
        // Arming a timer panics on a runtime without the time driver, and
        // tokio offers no way to ask first: the exit then runs without its
        // deadline, and an event says so.
        match catch_unwind(|| tokio::time::sleep_until(at)) {
            Ok(sleep) => Some(Deadline {
                sleep: Box::pin(sleep),
                given,
            }),
            Err(_) => {
                warn!(site = %self.site, ?given, "the deadline of a cleanup could not be kept: the runtime has no time driver (enable_time)");
                None
            }
        }
    }

    /// Folds one entry's outcome into the pending error.
    fn settle(&mut self, label: Cow<'static, str>, trace: Trace, outcome: Result<Flow, Fail>) {
        if trace.is_none() && matches!(outcome, Ok(Flow::Propagate)) {
            return; // the common case: nothing to record, nothing pending changes
        }
        let span = match trace {
            Some(t) => {
                let (span, started) = *t;
                span.record("elapsed_us", started.elapsed().as_micros() as u64);
                span
            }
            None => Span::none(),
        };
        let _enter = span.enter();
        match outcome {
            Ok(Flow::Propagate) => {
                span.record("outcome", "ok");
            }
            Ok(Flow::Suppress) => {
                span.record("outcome", "suppressed");
                if !self.chain.is_empty() {
                    debug!(resource = %label, suppressed = self.chain.len(), "exit suppressed the pending error");
                    self.chain.clear();
                    self.suppressed_by.get_or_insert(label);
                }
            }
            Err(Fail::Error(e)) => {
                span.record("outcome", "error");
                warn!(resource = %label, site = %self.site, error = %e, "cleanup failed");
                self.failed = true;
                // Flattens an `Error` into its links, and drops the pending
                // links the new error already holds (see `Chain::raise`).
                self.chain.raise(e);
            }
            Err(Fail::Timeout(after)) => {
                span.record("outcome", "timeout");
                warn!(resource = %label, site = %self.site, ?after, "cleanup timed out and was abandoned");
                self.failed = true;
                let e = TimeoutError { resource: label, after };
                self.chain.push(Box::new(e));
            }
            Err(Fail::Panic(payload)) => {
                span.record("outcome", "panic");
                let message = panic_message(&*payload);
                error!(resource = %label, site = %self.site, panic = %message, "cleanup panicked; the remaining entries still run");
                self.failed = true;
                let e = PanicError {
                    resource: label,
                    message,
                };
                self.chain.push(Box::new(e));
                self.panic.get_or_insert(payload);
            }
        }
    }

    /// The foreground result: `Ok` (with the first entry that suppressed
    /// an error, if any), the final error, or the first panic resumed.
    pub(crate) fn finish(mut self) -> Result<Option<Cow<'static, str>>, Error> {
        self.done = true;
        if let Some(payload) = self.panic.take() {
            std::panic::resume_unwind(payload);
        }
        match mem::take(&mut self.chain).into_error() {
            None => Ok(self.suppressed_by.take()),
            Some(e) => Err(e),
        }
    }

    /// The background result: reported, never returned.
    pub(crate) fn report(&mut self) {
        self.done = true;
        if self.failed {
            // The `Abandoned` marker is the reason for the unwind, not a
            // failure of it.
            let mut chain = mem::take(&mut self.chain);
            chain.retain(|e| !e.is::<Abandoned>());
            let errors = chain.into_error();
            let errors = errors.map(|e| e.to_string()).unwrap_or_default();
            warn!(site = %self.site, reason = self.reason.as_str(), %errors, "background cleanup finished with errors");
        } else {
            debug!(site = %self.site, reason = self.reason.as_str(), "background cleanup finished");
        }
        if self.tracker.is_none() {
            background::record_finished(self.failed);
        }
    }

    /// Synchronous best effort when no runtime can finish the unwind:
    /// sync entries still run; async ones get `abandon()` and are named in
    /// one ERROR event.
    pub(crate) fn lose(&mut self, why: Lost) {
        match self.dispatch.take() {
            Some(dispatch) => tracing::dispatcher::with_default(&dispatch, || self.lose_here(why)),
            None => self.lose_here(why),
        }
    }

    fn lose_here(&mut self, why: Lost) {
        let not_run = self.best_effort();
        let counted = self.tracker.is_none();
        if not_run.is_empty() {
            if counted {
                background::record_finished(self.failed);
            }
        } else {
            error!(
                site = %self.site,
                reason = why.as_str(),
                not_run = ?not_run,
                "{} cleanup(s) could not run and were dropped with synchronous best effort",
                not_run.len(),
            );
            if counted {
                background::record_lost();
            }
        }
    }

    /// Synchronous best effort, reporting nothing: sync entries run, async
    /// ones get `abandon()`; returns the labels of those that could not
    /// run. For a nested stack abandoned by its outer one, which reports.
    pub(crate) fn best_effort(&mut self) -> Vec<Cow<'static, str>> {
        self.done = true;
        let mut not_run: Vec<Cow<'static, str>> = Vec::new();
        if let Some(flight) = self.current.take() {
            if let Some(payload) = drop_caught(flight.work) {
                self.report_panic(&flight.label, "its Drop", &*payload);
            }
            not_run.push(flight.label);
        }
        while let Some(entry) = self.entries.pop() {
            match entry.exit {
                Exit::Sync(_) => {
                    let _sync_entries_finish_here = self.start(entry);
                }
                Exit::Async(exit) => {
                    let label = entry
                        .options
                        .and_then(|o| o.label)
                        .unwrap_or_else(|| crate::entry::label_of(exit.get()));
                    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || exit.into_box().abandon())) {
                        self.report_panic(&label, "AsyncExit::abandon (or its Drop)", &*payload);
                    }
                    not_run.push(label);
                }
                // Its members are lost or run like plain entries, newest
                // first.
                Exit::Group(group) => self.entries.extend(group.into_box().registry.take()),
            }
        }
        not_run
    }

    /// Reports a panic caught where no outcome can carry it (a best-effort
    /// release): an ERROR event naming the entry and what panicked.
    fn report_panic(&mut self, label: &str, what: &str, payload: &(dyn Any + Send)) {
        self.failed = true;
        error!(resource = %label, site = %self.site, panic = %panic_message(payload), "{what} panicked while the cleanup was dropped with synchronous best effort");
    }

    /// Moves the unfinished part out, leaving `self` done.
    fn take_rest(&mut self) -> Self {
        self.done = true;
        Self {
            entries: mem::take(&mut self.entries),
            current: self.current.take(),
            chain: mem::take(&mut self.chain),
            panic: self.panic.take(),
            failed: self.failed,
            suppressed_by: self.suppressed_by.take(),
            site: self.site,
            handle: self.handle.take(),
            reason: self.reason,
            mode: self.mode,
            budget: self.budget,
            deadline: self.deadline,
            span: self.span.take(),
            detailed: self.detailed,
            spans: self.spans,
            done: false,
            cooperative: self.cooperative,
            yielding: None,
            tracker: self.tracker.take(),
            parent: self.parent.take(),
            dispatch: self.dispatch.take(),
            linger: self.linger.take(),
            rehomed: self.rehomed,
        }
    }
}

impl Drop for Unwind {
    fn drop(&mut self) {
        if self.done || self.remaining() == 0 {
            // Finished: the next stack on this thread reuses the vector.
            if self.entries.is_empty() {
                crate::entry::spare::give(mem::take(&mut self.entries));
            }
            return;
        }
        let mut rest = self.take_rest();
        match rest.mode {
            Mode::Foreground => {
                // `aclose()` or a scope was cancelled: finish in the
                // background, exactly once per entry.
                if let Some(payload) = rest.panic.take() {
                    error!(site = %rest.site, panic = %panic_message(&*payload), "a cleanup panicked before the unwind was cancelled");
                }
                rest.reason = Reason::Cancel;
                rest.abandon(crate::AbandonCause::Cancelled);
                // Cancellation is normal: the owner of the timeout reports it.
                debug!(site = %rest.site, remaining = rest.remaining(), "unwind cancelled; the remaining cleanup runs in a background task");
                background::hand_off(rest);
            }
            Mode::Background if std::thread::panicking() => rest.lose(Lost::Panicked),
            Mode::Background => match Handle::try_current() {
                // The runtime that was to run it is gone, but this thread
                // is in another (a stack created on a runtime since shut
                // down, dropped in a live one): one more chance there. If
                // that one is shutting down too, the task is dropped again
                // at once, and the loss reported then.
                Ok(handle) if !rest.rehomed => {
                    rest.rehomed = true;
                    rest.handle = Some(handle);
                    background::hand_off(rest);
                }
                _ => rest.lose(Lost::ShutDown),
            },
        }
    }
}

fn flatten(outcome: Result<Result<Flow, BoxError>, Box<dyn Any + Send>>) -> Result<Flow, Fail> {
    match outcome {
        Ok(Ok(flow)) => Ok(flow),
        Ok(Err(e)) => Err(Fail::Error(e)),
        Err(payload) => Err(Fail::Panic(payload)),
    }
}
