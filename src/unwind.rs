//! The unwind loop: runs entries newest first, one at a time, threading the
//! pending error through them (SPEC S8 to S16), isolating panics (S18) and
//! applying timeouts (S19).
//!
//! An [`Unwind`] owns everything it still has to run: the remaining
//! entries, the exit future in flight, and the error chain. That makes
//! cancellation simple and exact (S21): if the future driving an unwind is
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
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::runtime::Handle;
use tokio::time::Instant;
use tracing::{Instrument as _, Span, debug, debug_span, error, field, warn};

use crate::background;
use crate::entry::{Entry, Exit, ExitFuture};
use crate::error::{Abandoned, BoxError, Error, PanicError, TimeoutError};
use crate::group::ExitGroup;
use crate::traits::{Flow, Pending};

/// Why an unwind runs; shown in its tracing span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Aclose,
    ScopeEnd,
    Drop,
    Cancel,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Aclose => "aclose",
            Self::ScopeEnd => "scope end",
            Self::Drop => "drop",
            Self::Cancel => "cancel",
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
/// hands it on instead of dropping or restarting it.
struct InFlight {
    work: Work,
    label: Cow<'static, str>,
    span: Span,
    started: Option<std::time::Instant>,
    /// When it times out, and how long it was given.
    until: Option<(Instant, Duration)>,
}

enum Work {
    One(ExitFuture),
    Group(GroupRun),
}

/// A concurrent group in flight: the members still running, and the
/// outcomes of those that finished (S24).
#[derive(Default)]
struct GroupRun {
    running: FuturesUnordered<Pin<Box<dyn Future<Output = Member> + Send>>>,
    done: Vec<Member>,
}

/// One group member's outcome; `index` is its registration order.
struct Member {
    index: usize,
    label: Cow<'static, str>,
    span: Span,
    started: Option<std::time::Instant>,
    outcome: Result<Flow, Fail>,
}

/// Drives one exit future to its outcome: panics caught, timeout applied.
async fn drive(
    future: Pin<&mut (dyn Future<Output = Result<Flow, BoxError>> + Send)>,
    span: Span,
    until: Option<(Instant, Duration)>,
) -> Result<Flow, Fail> {
    let future = AssertUnwindSafe(future).catch_unwind().instrument(span);
    match until {
        None => flatten(future.await),
        Some((deadline, given)) => match tokio::time::timeout_at(deadline, future).await {
            Ok(outcome) => flatten(outcome),
            Err(_) => Err(Fail::Timeout(given)),
        },
    }
}

pub(crate) struct Unwind {
    /// Remaining entries; the newest is last.
    pub(crate) entries: Vec<Entry>,
    current: Option<InFlight>,
    /// Unsuppressed errors, oldest first; the last is the pending one.
    chain: Vec<Arc<BoxError>>,
    /// The first panic payload, resumed by `finish`.
    panic: Option<Box<dyn Any + Send>>,
    /// Whether any entry failed (error, panic or timeout).
    pub(crate) failed: bool,
    pub(crate) site: &'static Location<'static>,
    pub(crate) handle: Option<Handle>,
    pub(crate) reason: Reason,
    pub(crate) mode: Mode,
    /// Budget for the whole unwind (S19), turned into `deadline` when the
    /// unwind starts.
    budget: Option<Duration>,
    deadline: Option<Instant>,
    span: Option<Span>,
    /// Set once the outcome has been handed over; `Drop` then does nothing.
    done: bool,
}

impl Unwind {
    pub(crate) fn new(
        entries: Vec<Entry>,
        chain: Vec<Arc<BoxError>>,
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
            site,
            handle,
            reason,
            mode,
            budget,
            deadline: None,
            span: None,
            done: false,
        }
    }

    /// Marks the unwind as abandoned: exits from here on see `Abandoned`
    /// unless an error is already pending.
    pub(crate) fn abandon(&mut self, cause: crate::AbandonCause) {
        if self.chain.is_empty() {
            let abandoned = Abandoned { cause, site: self.site };
            self.chain.push(Arc::new(Box::new(abandoned)));
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.entries.len() + usize::from(self.current.is_some())
    }

    /// Whether the rest of this unwind can run without a runtime.
    pub(crate) fn runs_inline(&self) -> bool {
        self.current.is_none() && self.budget.is_none() && !self.entries.iter().any(Entry::needs_runtime)
    }

    fn pending(&self) -> Pending {
        Pending {
            error: self.chain.last().cloned(),
        }
    }

    fn span(&mut self) -> Span {
        self.span
            .get_or_insert_with(|| {
                debug_span!(
                    "unwind",
                    site = %self.site,
                    entries = self.entries.len(),
                    reason = self.reason.as_str(),
                )
            })
            .clone()
    }

    /// Runs every remaining entry, newest first.
    pub(crate) async fn run(&mut self) {
        let span = self.span();
        async {
            if let (Some(budget), None) = (self.budget, self.deadline) {
                self.deadline = Some(Instant::now() + budget);
            }
            loop {
                if self.current.is_some() {
                    self.drive_current().await;
                    continue;
                }
                let Some(entry) = self.entries.pop() else { break };
                self.start(entry);
            }
        }
        .instrument(span)
        .await;
    }

    /// Starts one entry: sync exits run to completion here, async exits
    /// become the in-flight future.
    pub(crate) fn start(&mut self, entry: Entry) {
        let label = entry.label();
        let span = debug_span!("exit", resource = %label, outcome = field::Empty, elapsed_us = field::Empty);
        let started = (!span.is_disabled()).then(std::time::Instant::now);
        let pending = self.pending();
        let timeout = entry.options.timeout;
        match entry.exit {
            Exit::Sync(exit) => {
                let exit = exit.into_box();
                let outcome = span.in_scope(|| catch_unwind(AssertUnwindSafe(|| exit.exit(&pending))));
                self.settle(label, &span, started, flatten(outcome));
            }
            Exit::Async(exit) => {
                let exit = exit.into_box();
                match catch_unwind(AssertUnwindSafe(|| exit.start(pending))) {
                    Ok(future) => {
                        let until = self.until(timeout);
                        self.current = Some(InFlight {
                            work: Work::One(future),
                            label,
                            span,
                            started,
                            until,
                        });
                    }
                    Err(payload) => self.settle(label, &span, started, Err(Fail::Panic(payload))),
                }
            }
            Exit::Group(group) => {
                let run = self.start_group(group.into_box(), &pending, &span);
                self.current = Some(InFlight {
                    work: Work::Group(run),
                    label,
                    span,
                    started,
                    until: None,
                });
            }
        }
    }

    /// Starts every member of a group at once, each told `pending`. Sync
    /// members finish here; nested groups are flattened into this one.
    fn start_group(&self, group: Box<ExitGroup>, pending: &Pending, parent: &Span) -> GroupRun {
        let mut run = GroupRun::default();
        let mut queue = vec![group];
        let mut index = 0;
        while let Some(mut group) = queue.pop() {
            for member in group.registry.take() {
                index += 1;
                let label = member.label();
                let span = debug_span!(parent: parent, "exit", resource = %label, outcome = field::Empty, elapsed_us = field::Empty);
                let started = (!span.is_disabled()).then(std::time::Instant::now);
                let until = self.until(member.options.timeout);
                let outcome = match member.exit {
                    Exit::Group(nested) => {
                        queue.push(nested.into_box());
                        continue;
                    }
                    Exit::Sync(exit) => {
                        let exit = exit.into_box();
                        flatten(span.in_scope(|| catch_unwind(AssertUnwindSafe(|| exit.exit(pending)))))
                    }
                    Exit::Async(exit) => {
                        let exit = exit.into_box();
                        let pending = pending.clone();
                        match catch_unwind(AssertUnwindSafe(|| exit.start(pending))) {
                            Ok(mut future) => {
                                run.running.push(Box::pin(async move {
                                    let outcome = drive(future.as_mut(), span.clone(), until).await;
                                    Member {
                                        index,
                                        label,
                                        span,
                                        started,
                                        outcome,
                                    }
                                }));
                                continue;
                            }
                            Err(payload) => Err(Fail::Panic(payload)),
                        }
                    }
                };
                run.done.push(Member {
                    index,
                    label,
                    span,
                    started,
                    outcome,
                });
            }
        }
        run
    }

    /// The earlier of the entry's own timeout and the unwind's deadline.
    fn until(&self, timeout: Option<Duration>) -> Option<(Instant, Duration)> {
        if timeout.is_none() && self.deadline.is_none() {
            return None;
        }
        let now = Instant::now();
        let own = timeout.map(|t| (now + t, t));
        let whole = self.deadline.map(|d| (d, d.saturating_duration_since(now)));
        match (own, whole) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    async fn drive_current(&mut self) {
        let Some(flight) = self.current.as_mut() else { return };
        let outcome = match &mut flight.work {
            Work::One(future) => drive(future.as_mut(), flight.span.clone(), flight.until).await,
            Work::Group(run) => {
                while let Some(member) = run.running.next().await {
                    run.done.push(member);
                }
                Ok(Flow::Propagate)
            }
        };
        let Some(flight) = self.current.take() else { return };
        match flight.work {
            // A timed-out future (and the resource it owns) is dropped here.
            Work::One(future) => drop(future),
            Work::Group(run) => {
                // Fold members in newest-first registration order, as if they
                // had run in sequence: the result does not depend on timing.
                let mut done = run.done;
                done.sort_unstable_by_key(|m| std::cmp::Reverse(m.index));
                for m in done {
                    self.settle(m.label, &m.span, m.started, m.outcome);
                }
            }
        }
        self.settle(flight.label, &flight.span, flight.started, outcome);
    }

    /// Folds one entry's outcome into the pending error.
    fn settle(
        &mut self,
        label: Cow<'static, str>,
        span: &Span,
        started: Option<std::time::Instant>,
        outcome: Result<Flow, Fail>,
    ) {
        if let Some(started) = started {
            span.record("elapsed_us", started.elapsed().as_micros() as u64);
        }
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
                }
            }
            Err(Fail::Error(e)) => {
                span.record("outcome", "error");
                warn!(resource = %label, site = %self.site, error = %e, "cleanup failed");
                self.failed = true;
                self.chain.push(Arc::new(e));
            }
            Err(Fail::Timeout(after)) => {
                span.record("outcome", "timeout");
                warn!(resource = %label, site = %self.site, ?after, "cleanup timed out and was abandoned");
                self.failed = true;
                let e = TimeoutError { resource: label, after };
                self.chain.push(Arc::new(Box::new(e)));
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
                self.chain.push(Arc::new(Box::new(e)));
                self.panic.get_or_insert(payload);
            }
        }
    }

    /// The foreground result: `Ok`, the final error, or the first panic
    /// resumed (S18).
    pub(crate) fn finish(mut self) -> Result<(), Error> {
        self.done = true;
        if let Some(payload) = self.panic.take() {
            std::panic::resume_unwind(payload);
        }
        match Error::from_oldest_first(mem::take(&mut self.chain)) {
            None => Ok(()),
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
            let errors = Error::from_oldest_first(chain);
            let errors = errors.map(|e| e.to_string()).unwrap_or_default();
            warn!(site = %self.site, reason = self.reason.as_str(), %errors, "background cleanup finished with errors");
        } else {
            debug!(site = %self.site, reason = self.reason.as_str(), "background cleanup finished");
        }
        background::record_finished(self.failed);
    }

    /// Synchronous best effort when no runtime can finish the unwind (S22):
    /// sync entries still run; async ones get `abandon()` and are named in
    /// one ERROR event.
    pub(crate) fn lose(&mut self, why: &'static str) {
        self.done = true;
        let mut not_run: Vec<Cow<'static, str>> = Vec::new();
        if let Some(flight) = self.current.take() {
            not_run.push(flight.label);
            let _ = catch_unwind(AssertUnwindSafe(move || drop(flight.work)));
        }
        while let Some(entry) = self.entries.pop() {
            match entry.exit {
                Exit::Sync(_) => self.start(entry),
                Exit::Async(exit) => {
                    not_run.push(entry.options.label.unwrap_or_else(|| exit.get().label()));
                    let _ = catch_unwind(AssertUnwindSafe(move || exit.into_box().abandon()));
                }
                // Its members are lost or run like plain entries, newest
                // first.
                Exit::Group(group) => self.entries.extend(group.into_box().registry.take()),
            }
        }
        if not_run.is_empty() {
            background::record_finished(self.failed);
        } else {
            error!(
                site = %self.site,
                reason = why,
                not_run = ?not_run,
                "{} cleanup(s) could not run and were dropped with synchronous best effort",
                not_run.len(),
            );
            background::record_lost();
        }
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
            site: self.site,
            handle: self.handle.take(),
            reason: self.reason,
            mode: self.mode,
            budget: self.budget,
            deadline: self.deadline,
            span: self.span.take(),
            done: false,
        }
    }
}

impl Drop for Unwind {
    fn drop(&mut self) {
        if self.done || self.remaining() == 0 {
            return;
        }
        let mut rest = self.take_rest();
        match rest.mode {
            Mode::Foreground => {
                // `aclose()` or a scope was cancelled: finish in the
                // background, exactly once per entry (S21).
                if let Some(payload) = rest.panic.take() {
                    error!(site = %rest.site, panic = %panic_message(&*payload), "a cleanup panicked before the unwind was cancelled");
                }
                rest.reason = Reason::Cancel;
                rest.abandon(crate::AbandonCause::Cancelled);
                warn!(site = %rest.site, remaining = rest.remaining(), "unwind cancelled; the remaining cleanup runs in a background task");
                background::hand_off(rest);
            }
            Mode::Background => rest.lose("the runtime shut down before the background cleanup finished"),
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

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
