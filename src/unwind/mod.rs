//! The unwind loop: runs entries newest first, one at a time, threading the
//! pending error through them, isolating panics and applying timeouts.
//!
//! An [`Unwind`] owns everything it still has to run: the remaining
//! entries, the exit future in flight, and the error chain. That makes
//! cancellation simple and exact: if the future driving an unwind is
//! dropped at any await point, the `Unwind` is dropped with it, and its
//! `Drop` hands exactly what had not finished (the in-flight exit future
//! included, so nothing runs twice) to the function its creator gave it
//! (the background path, a layer above, which this module never imports).
//!
//! * this file: the state, and the poll loop;
//! * `flight.rs`: starting one exit or one group, and driving it with its
//!   deadline;
//! * `settle.rs`: what an outcome does to the pending error, and the
//!   foreground result.

mod flight;
mod settle;

use std::any::Any;
use std::borrow::Cow;
use std::future::Future;
use std::mem;
use std::panic::{AssertUnwindSafe, Location, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{Dispatch, Instrument as _, Span, debug_span, error};

use crate::error::{Abandoned, Chain, panic_message};
use crate::linger::Linger;
use crate::registry::{Entry, Released, spare};
use crate::traits::{Pending, Told};

use self::flight::{InFlight, drop_caught};

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
    pub(crate) fn as_str(self) -> &'static str {
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

pub(crate) struct Unwind {
    /// Remaining entries; the newest is last.
    pub(crate) entries: Vec<Entry>,
    current: Option<InFlight>,
    /// Unsuppressed errors, oldest first; the last is the pending one.
    pub(crate) chain: Chain,
    /// The last `Pending` with anything in it that an exit was told, to
    /// tell the next exit the same without a new allocation.
    told: Option<Arc<Told>>,
    /// The first panic payload, resumed by `finish`.
    pub(crate) panic: Option<Box<dyn Any + Send>>,
    /// Whether any entry failed (error, panic or timeout).
    pub(crate) failed: bool,
    /// The first entry that suppressed a pending error: with a failed
    /// body, the one that suppressed the body's error (directly, or as the
    /// cause of a newer error).
    suppressed_by: Option<Cow<'static, str>>,
    pub(crate) site: &'static Location<'static>,
    pub(crate) handle: Option<Handle>,
    pub(crate) reason: Reason,
    pub(crate) mode: Mode,
    /// Budget for the whole unwind, turned into `deadline` when the
    /// unwind starts.
    pub(crate) budget: Option<Duration>,
    deadline: Option<Instant>,
    span: Option<Span>,
    /// Whether entry labels are worth computing in full and entry spans are
    /// recorded: decided once per unwind, from the subscriber's interest, so
    /// that with no subscriber the loop does no tracing work per entry.
    detailed: bool,
    spans: bool,
    /// No entry spans and no unwind deadline: an entry without options
    /// takes the short path (`run_plain`).
    plain: bool,
    /// Set once the outcome has been handed over; `Drop` then does nothing.
    pub(crate) done: bool,
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
    /// The dispatcher current where the stack was dropped, unless that was
    /// the no-op one: the background task runs under it, and a loss is
    /// reported there too.
    pub(crate) dispatch: Option<Dispatch>,
    /// The stack's close bounds, for entries without their own.
    pub(crate) linger: Option<Arc<Linger>>,
    /// Where an unwind dropped before it finished hands its remainder: the
    /// background path, given by the creator (this module never imports
    /// the layer above it).
    pub(crate) orphaned: fn(Unwind),
    /// Whether the unwind already had its second chance on the runtime
    /// current at its loss.
    pub(crate) rehomed: bool,
}

type Yielding = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What an unwind inherits from the stack that made it.
pub(crate) struct Origin {
    /// Where the stack was created.
    pub(crate) site: &'static Location<'static>,
    /// Where the unwind's remainder goes if it is dropped unfinished.
    pub(crate) orphaned: fn(Unwind),
    /// The stack's runtime, for a background remainder.
    pub(crate) handle: Option<Handle>,
    /// The stack's budget for the whole unwind.
    pub(crate) budget: Option<Duration>,
    /// The stack's tracker for its background task.
    pub(crate) tracker: Option<TaskTracker>,
    /// The stack's close bounds.
    pub(crate) linger: Option<Arc<Linger>>,
}

/// How many entries one poll of an unwind runs at most, when it runs in a
/// task: a few hundred microseconds of cleanup at most.
const YIELD_EVERY: usize = 256;

impl Unwind {
    #[inline(always)]
    pub(crate) fn new(entries: Vec<Entry>, chain: Chain, reason: Reason, mode: Mode, origin: Origin) -> Self {
        // One literal, so that a caller keeping the unwind across an
        // `.await` can have it built in place: it is a few hundred bytes.
        let Origin {
            site,
            orphaned,
            handle,
            budget,
            tracker,
            linger,
        } = origin;
        Self {
            entries,
            current: None,
            chain,
            told: None,
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
            plain: false,
            done: false,
            cooperative: false,
            yielding: None,
            tracker,
            parent: None,
            dispatch: None,
            linger,
            orphaned,
            rehomed: false,
        }
    }

    /// Marks the unwind as abandoned: exits from here on see `Abandoned`
    /// unless an error is already pending.
    pub(crate) fn abandon(&mut self, cause: crate::error::AbandonCause) {
        if self.chain.is_empty() {
            let abandoned = Abandoned { cause, site: self.site };
            self.chain.push(Box::new(abandoned));
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.entries.len() + usize::from(self.current.is_some())
    }

    /// Whether the rest of this unwind can run without a runtime.
    pub(crate) fn runs_inline(&mut self) -> bool {
        self.current.is_none() && self.budget.is_none() && !self.entries.iter_mut().any(Entry::needs_runtime)
    }

    /// What the next exit is told: the pending errors, and its own close
    /// bounds (`own`) or the stack's. Nothing to allocate or count when
    /// neither errors nor bounds are there; otherwise one `Told` shared by
    /// every exit told the same, made again only when that changes.
    #[inline]
    fn pending(&mut self, own: Option<&Arc<Linger>>) -> Pending {
        if self.chain.is_quiet() && own.is_none() && self.linger.is_none() {
            return Pending::none();
        }
        self.pending_shared(own)
    }

    fn pending_shared(&mut self, own: Option<&Arc<Linger>>) -> Pending {
        let linger = own.or(self.linger.as_ref());
        let (seen, detached) = (self.chain.seen(), self.chain.detached());
        let chain = self.chain.shared();
        // The kept `Told` holds its chain and bounds alive, so equal
        // addresses mean the same ones.
        if let Some(told) = self.told.as_ref() {
            if same(told.chain.as_ref(), chain)
                && same(told.linger.as_ref(), linger)
                && told.saw_error == seen
                && told.detached == detached
            {
                return Pending(Some(told.clone()));
            }
        }
        let pending = Pending::told(chain.cloned(), linger.cloned(), seen, detached);
        self.told.clone_from(&pending.0);
        pending
    }

    /// The unwind's span; `None` when nothing could record it.
    fn span(&mut self) -> Option<Span> {
        if !tracing::dispatcher::has_been_set() {
            return None; // no subscriber was ever set
        }
        let (site, entries, reason) = (self.site, self.entries.len(), self.reason.as_str());
        let parent = self.parent.take();
        let span = self
            .span
            .get_or_insert_with(|| match parent {
                Some(parent) => debug_span!(parent: &parent, "unwind", site = %site, entries, reason),
                None => debug_span!("unwind", site = %site, entries, reason),
            })
            .clone();
        Some(span).filter(|span| !span.is_none())
    }

    /// Runs every remaining entry, newest first.
    pub(crate) async fn run(&mut self) {
        let span = self.span();
        self.spans = span.as_ref().is_some_and(|span| !span.is_disabled());
        // Full labels feed the WARN/ERROR events; without a subscriber that
        // wants them, the type name is enough for the errors' own messages.
        self.detailed = self.spans || tracing::enabled!(tracing::Level::WARN);
        if let (Some(budget), None) = (self.budget, self.deadline) {
            // A budget too large to add to the clock means no deadline.
            self.deadline = Instant::now().checked_add(budget);
        }
        self.plain = !self.spans && self.deadline.is_none();
        match span {
            Some(span) => std::future::poll_fn(|cx| self.poll_run(cx)).instrument(span).await,
            // No subscriber could record it: no wrapper to poll and drop.
            None => std::future::poll_fn(|cx| self.poll_run(cx)).await,
        }
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
            if self.plain && entry.is_plain() {
                if let Some(flight) = self.run_plain(entry, cx) {
                    self.current = Some(flight);
                    return Poll::Pending;
                }
                continue;
            }
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
            if entry.is_sync() {
                let _sync_entries_finish_here = self.start(entry);
                continue;
            }
            let label = entry.label(true);
            match entry.release().0 {
                Released::Async(exit) => {
                    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || exit.abandon())) {
                        self.report_panic(&label, "AsyncExit::abandon (or its Drop)", &*payload);
                    }
                    not_run.push(label);
                }
                // Its members are lost or run like plain entries, newest
                // first.
                Released::Group(mut group) => self.entries.extend(group.registry.take()),
                Released::Sync(_) => {}
            }
        }
        not_run
    }

    /// Reports a panic caught where no outcome can carry it (a best-effort
    /// release): an ERROR event naming the entry and what panicked.
    pub(crate) fn report_panic(&mut self, label: &str, what: &str, payload: &(dyn Any + Send)) {
        self.failed = true;
        error!(resource = %label, site = %self.site, panic = %panic_message(payload), "{what} panicked while the cleanup was dropped with synchronous best effort");
    }

    /// Moves the unfinished part out, leaving `self` done.
    pub(crate) fn take_rest(&mut self) -> Self {
        self.done = true;
        Self {
            entries: mem::take(&mut self.entries),
            current: self.current.take(),
            chain: mem::take(&mut self.chain),
            told: self.told.take(),
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
            plain: self.plain,
            done: false,
            cooperative: self.cooperative,
            yielding: None,
            tracker: self.tracker.take(),
            parent: self.parent.take(),
            dispatch: self.dispatch.take(),
            linger: self.linger.take(),
            orphaned: self.orphaned,
            rehomed: self.rehomed,
        }
    }
}

/// Whether `a` and `b` are both absent or the same allocation.
fn same<T: ?Sized>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

impl Drop for Unwind {
    fn drop(&mut self) {
        if self.done || self.remaining() == 0 {
            // Finished: the next stack on this thread reuses the vector.
            if self.entries.is_empty() {
                spare::give(mem::take(&mut self.entries));
            }
            return;
        }
        // Dropped before it finished (a cancelled `aclose`, or a background
        // task its runtime dropped): exactly what had not finished, the
        // exit in flight included, goes to whoever the creator named.
        let rest = self.take_rest();
        (rest.orphaned)(rest);
    }
}
