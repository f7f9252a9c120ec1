//! What an entry's outcome does to the unwind: the pending error, the
//! first panic, the first suppressor; and the foreground result.

use std::borrow::Cow;
use std::mem;

use tracing::{Span, debug, error, warn};

use super::Unwind;
use super::flight::{Fail, GroupRun, InFlight, Member, Trace, Work, drop_caught};
use crate::error::{Error, PanicError, TimeoutError, panic_message};
use crate::traits::Flow;

impl Unwind {
    #[inline]
    pub(super) fn finish_flight(&mut self, flight: InFlight, outcome: Result<Flow, Fail>) {
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
        self.settle(label, trace, outcome);
    }

    /// Folds one entry's outcome into the pending error. Inline for the
    /// common case (a clean exit, no span): nothing to record, nothing
    /// pending changes, no call.
    #[inline(always)]
    pub(super) fn settle(&mut self, label: Cow<'static, str>, trace: Trace, outcome: Result<Flow, Fail>) {
        if trace.is_none() && matches!(outcome, Ok(Flow::Propagate)) {
            // A clean outcome owns nothing: skip its drop glue, which the
            // compiler calls out of line (10 instructions per entry).
            std::mem::forget(outcome);
            return;
        }
        self.settle_recorded(label, trace, outcome);
    }

    /// [`settle`](Self::settle) when there is something to record.
    #[inline(never)]
    fn settle_recorded(&mut self, label: Cow<'static, str>, trace: Trace, outcome: Result<Flow, Fail>) {
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
    pub(crate) fn finish(&mut self) -> Result<Option<Cow<'static, str>>, Error> {
        self.done = true;
        if let Some(payload) = self.panic.take() {
            std::panic::resume_unwind(payload);
        }
        if self.chain.is_empty() {
            return Ok(self.suppressed_by.take());
        }
        match mem::take(&mut self.chain).into_error() {
            None => Ok(self.suppressed_by.take()),
            Some(e) => Err(e),
        }
    }
}
