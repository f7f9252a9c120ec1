//! One exit, or one group, in flight: starting it (sync exits finish
//! right there), and polling it with its deadline, its panics caught per
//! poll so that a cancelled unwind can hand it on unharmed.

use std::any::Any;
use std::borrow::Cow;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;
use tracing::{Span, debug_span, field, warn};

use super::Unwind;
use crate::erased::{ExitFuture, SyncExit, SyncRun, label_of};
use crate::error::BoxError;
use crate::registry::{Entry, ExitGroup, Released};
use crate::traits::{Flow, Pending};

/// How an entry ended, other than normally.
pub(super) enum Fail {
    Error(BoxError),
    Panic(Box<dyn Any + Send>),
    Timeout(Duration),
}

/// The exit future currently running, kept here so that a cancelled unwind
/// hands it on instead of dropping or restarting it. Kept small (the rare
/// parts are boxed): it moves once per entry.
pub(super) struct InFlight {
    pub(super) work: Work,
    pub(super) label: Cow<'static, str>,
    pub(super) trace: Trace,
    pub(super) until: Option<Deadline>,
}

/// An entry's span and start time, when entry spans are recorded.
pub(super) type Trace = Option<Box<(Span, std::time::Instant)>>;

/// An exit's timer, and how long it was given.
pub(super) struct Deadline {
    pub(super) sleep: Pin<Box<tokio::time::Sleep>>,
    pub(super) given: Duration,
}

pub(super) enum Work {
    One(ExitFuture),
    Group(Box<GroupRun>),
}

/// A concurrent group in flight: the members still running, and the
/// outcomes of those that finished.
#[derive(Default)]
pub(super) struct GroupRun {
    pub(super) running: FuturesUnordered<MemberRun>,
    pub(super) done: Vec<Member>,
}

/// One group member's outcome; `index` is its registration order.
pub(super) struct Member {
    pub(super) index: usize,
    pub(super) label: Cow<'static, str>,
    pub(super) trace: Trace,
    pub(super) outcome: Result<Flow, Fail>,
    /// The panic of its resource's `Drop`, when it was abandoned.
    pub(super) dropped: Option<Box<dyn Any + Send>>,
}

/// Drops an exit's future, and with it the resource it owns when the exit
/// was abandoned (its timeout, or its group's): that `Drop` is user code,
/// and its panic is caught and returned, to be reported naming the entry.
pub(super) fn drop_caught(work: Work) -> Option<Box<dyn Any + Send>> {
    catch_unwind(AssertUnwindSafe(move || drop(work))).err()
}

/// A group member in flight.
pub(super) struct MemberRun {
    pub(super) index: usize,
    pub(super) flight: Option<InFlight>,
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
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Flow, Fail>> {
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

/// The shorter of two optional timeouts.
pub(super) fn shorter(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Unwind {
    /// Starts one entry: sync exits run to completion here; an async exit
    /// is handed back as the in-flight future for the caller to poll.
    #[inline]
    #[must_use]
    pub(super) fn start(&mut self, entry: Entry) -> Option<InFlight> {
        let timeout = entry.timeout();
        let label = entry.label(self.detailed || timeout.is_some());
        let trace = self.trace(None, &label);
        let pending = self.pending(entry.linger());
        match entry.release().0 {
            Released::Sync(exit) => {
                let run = || catch_unwind(AssertUnwindSafe(|| exit.exit(&pending)));
                let outcome = match &trace {
                    Some(t) => t.0.in_scope(run),
                    None => run(),
                };
                self.settle(label, trace, flatten(outcome));
                None
            }
            Released::Async(exit) => match catch_unwind(AssertUnwindSafe(|| exit.start(pending))) {
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
            },
            Released::Group(group) => {
                let run = self.start_group(group, &pending, &trace);
                Some(InFlight {
                    work: Work::Group(Box::new(run)),
                    label,
                    trace,
                    until: self.until(timeout),
                })
            }
        }
    }

    /// The short path of [`start`](Self::start) and the first poll, for a
    /// sync or async entry without options when no span is recorded and no
    /// deadline set: no timer to arm, no span to enter, nothing stored unless the
    /// exit is still pending after its first poll (then it is returned, to
    /// be kept in flight). Same outcomes as the long path.
    #[inline]
    pub(super) fn run_plain(&mut self, entry: Entry, cx: &mut Context<'_>) -> Option<InFlight> {
        let pending = self.pending(None);
        let exit = match entry.release().0 {
            Released::Async(exit) => exit,
            Released::Sync(exit) => {
                self.run_plain_syncs(exit, pending);
                return None;
            }
            Released::Group(_) => return None, // not reached: the caller checked `is_plain`
        };
        // No options: the exit's own label (as `Entry::label` gives it).
        let label = if self.detailed {
            label_of(&*exit)
        } else {
            Cow::Borrowed(exit.type_name())
        };
        let mut future = match catch_unwind(AssertUnwindSafe(|| exit.start(pending))) {
            Ok(future) => future,
            Err(payload) => {
                self.settle(label, None, Err(Fail::Panic(payload)));
                return None;
            }
        };
        let outcome = match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(Ok(Flow::Propagate))) => return None,
            Ok(Poll::Pending) => {
                return Some(InFlight {
                    work: Work::One(future),
                    label,
                    trace: None,
                    until: None,
                });
            }
            Ok(Poll::Ready(Ok(flow))) => Ok(flow),
            Ok(Poll::Ready(Err(e))) => Err(Fail::Error(e)),
            Err(payload) => Err(Fail::Panic(payload)),
        };
        self.settle(label, None, outcome);
        None
    }

    /// Runs `exit`, then every plain sync entry right behind it, all told
    /// one `pending`, rebuilt only when an outcome changes the chain. In a
    /// loop that yields to the scheduler, only `exit` runs here: the
    /// caller's loop counts entries.
    fn run_plain_syncs(&mut self, mut exit: Box<dyn SyncExit>, mut pending: Pending) {
        loop {
            // Named only if it fails: a sync exit's label is its type.
            let run = exit.run(&pending);
            // Checked where the exit wrote it, before anything is moved: a
            // move reads every word back, some wider than they were written.
            if matches!(run.outcome, Ok(Ok(Flow::Propagate))) {
                // Owns nothing: skip the out-of-line drop glue.
                std::mem::forget(run);
            } else {
                let SyncRun { name, outcome } = run;
                self.settle(Cow::Borrowed(name), None, flatten(outcome));
                pending = self.pending(None);
            }
            if self.cooperative || !self.entries.last().is_some_and(|e| e.is_plain() && e.is_sync()) {
                return;
            }
            match self.entries.pop().map(|e| e.release().0) {
                Some(Released::Sync(next)) => exit = next,
                _ => return, // not reached: checked just above
            }
        }
    }

    /// The span of one entry, and when it started; nothing when entry spans
    /// are not recorded.
    #[inline(always)]
    pub(super) fn trace(&self, parent: Option<&Span>, label: &str) -> Trace {
        if !self.spans {
            return None;
        }
        Self::traced(parent, label)
    }

    /// [`trace`](Self::trace) when spans are recorded, out of line.
    #[inline(never)]
    fn traced(parent: Option<&Span>, label: &str) -> Trace {
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
                    Some(linger) => pending.clone().with_linger_set(linger.clone()),
                    None => pending.clone(),
                };
                let label = member.label(self.detailed || timeout.is_some());
                let trace = parent.and_then(|p| self.trace(Some(p), &label));
                let until = self.until(timeout);
                let outcome = match member.release().0 {
                    Released::Group(nested) => {
                        queue.push((nested, timeout, linger));
                        continue;
                    }
                    Released::Sync(exit) => {
                        let run = || catch_unwind(AssertUnwindSafe(|| exit.exit(&told)));
                        flatten(match &trace {
                            Some(t) => t.0.in_scope(run),
                            None => run(),
                        })
                    }
                    Released::Async(exit) => match catch_unwind(AssertUnwindSafe(|| exit.start(told))) {
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
                    },
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
    pub(super) fn until(&self, timeout: Option<Duration>) -> Option<Deadline> {
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
        match crate::timer::sleep_until(at) {
            Some(sleep) => Some(Deadline {
                sleep: Box::pin(sleep),
                given,
            }),
            None => {
                warn!(site = %self.site, ?given, "the deadline of a cleanup could not be kept: the runtime has no time driver (enable_time)");
                None
            }
        }
    }
}

pub(super) fn flatten(outcome: Result<Result<Flow, BoxError>, Box<dyn Any + Send>>) -> Result<Flow, Fail> {
    match outcome {
        Ok(Ok(flow)) => Ok(flow),
        Ok(Err(e)) => Err(Fail::Error(e)),
        Err(payload) => Err(Fail::Panic(payload)),
    }
}
