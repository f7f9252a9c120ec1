//! Enters cut short, finished: the part of an enter that leaves state
//! behind once begun (a `BEGIN` sent, a handshake under way) runs to its
//! end in the background when the caller's future is dropped, and the
//! resource it produces is released through its exit.
//!
//! # How it works
//!
//! An enter opts in through [`AsyncEnter::enter_finishing`](crate::AsyncEnter::enter_finishing)
//! (or the caller forces it for a whole `'static` enter with
//! [`EntryBuilder::finish_on_cancel`](crate::EntryBuilder::finish_on_cancel)),
//! handing the stack a [`Finish`]: an owned, boxed future.
//! The stack polls it in the caller's future. If that future is dropped
//! before it ended:
//!
//! * an entry is registered on the stack at once, where the resource's
//!   entry would have gone, whose exit waits until the background work
//!   below has ended: no older entry (a permit bounding backend work) is
//!   released before the resource is;
//! * one background task (tracked by [`drain`](crate::drain), counted in
//!   its report as one background cleanup) finishes the enter, within
//!   [`FINISH_TIMEOUT`] or the entry's
//!   [`finish_timeout`](crate::EntryBuilder::finish_timeout); then:
//!   * the resource came: its exit runs (with the entry's label, timeout
//!     and close bounds), told
//!     [`AbandonCause::EnterCancelled`]: a transaction
//!     rolls back, a connection closes cleanly;
//!   * the enter failed: a DEBUG event names the entry: nothing was
//!     acquired, so it is not a cleanup failure;
//!   * the bound passed: the enter is dropped, and a WARN event names the
//!     resource and where it was entered.
//!
//! With no runtime to run the task on, the rest of the enter is dropped,
//! as any future is, and a WARN event says so. A runtime that shuts down
//! drops the task like any background cleanup: an ERROR event names it,
//! and [`drain`](crate::drain) counts it lost.

use std::any::type_name;
use std::borrow::Cow;
use std::future::Future;
use std::panic::{AssertUnwindSafe, Location, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::{debug, error, warn};

use crate::background;
use crate::error::{AbandonCause, BoxError, Chain, panic_message};
use crate::registry::{Options, Registry};
use crate::traits::{AsyncExit, Finish, FinishFuture, Flow, Pending};
use crate::unwind::{Mode, Origin, Reason, Unwind};

/// How long a cancelled enter may take to finish in the background, unless
/// its entry says otherwise
/// ([`EntryBuilder::finish_timeout`](crate::EntryBuilder::finish_timeout)):
/// ten seconds. Past it, the enter is dropped and a WARN event names it.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(tokio_exit_stack::finish::FINISH_TIMEOUT, Duration::from_secs(10));
/// ```
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// The caller's side of a [`Finish`]: polls it; dropped before it ended,
/// hands it to the background (module docs).
pub(crate) struct Finishing<'s, R: AsyncExit, E> {
    finish: Option<Finish<R, E>>,
    registry: &'s Registry,
    options: Option<Box<Options>>,
    site: &'static Location<'static>,
}

impl<'s, R: AsyncExit, E> Finishing<'s, R, E> {
    pub(crate) fn new(
        finish: Finish<R, E>,
        registry: &'s Registry,
        options: Option<Box<Options>>,
        site: &'static Location<'static>,
    ) -> Self {
        Self {
            finish: Some(finish),
            registry,
            options,
            site,
        }
    }
}

impl<R: AsyncExit, E> Future for Finishing<'_, R, E> {
    /// The enter's result, and the entry's options back.
    type Output = (Result<R, E>, Option<Box<Options>>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(finish) = this.finish.as_mut() else {
            return Poll::Pending; // polled after it ended: never, from this crate
        };
        let polled = match catch_unwind(AssertUnwindSafe(|| finish.future.as_mut().poll(cx))) {
            Ok(polled) => polled,
            Err(payload) => {
                // The enter panicked in its caller's future: the panic is the
                // caller's, as any enter's is; a future that panicked is not
                // finished in the background.
                this.finish = None;
                std::panic::resume_unwind(payload);
            }
        };
        let result = std::task::ready!(polled);
        this.finish = None;
        Poll::Ready((result, this.options.take()))
    }
}

impl<R: AsyncExit, E> Drop for Finishing<'_, R, E> {
    fn drop(&mut self) {
        if let Some(finish) = self.finish.take() {
            cancelled(finish, self.registry, self.options.take(), self.site);
        }
    }
}

/// The caller's future was dropped while `finish` ran: see the module docs.
fn cancelled<R: AsyncExit, E>(
    finish: Finish<R, E>,
    registry: &Registry,
    options: Option<Box<Options>>,
    site: &'static Location<'static>,
) {
    let options = options.map(|o| *o).unwrap_or_default();
    let resource: Cow<'static, str> = options.label.clone().unwrap_or(Cow::Borrowed(type_name::<R>()));
    let Ok(handle) = Handle::try_current() else {
        warn!(resource = %resource, site = %site, "an enter was cancelled where no runtime can finish it; what it had acquired is dropped");
        if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(finish))) {
            error!(resource = %resource, site = %site, panic = %panic_message(&*payload), "dropping a cancelled enter panicked");
        }
        return;
    };
    let future = (finish.detach)(finish.future);
    let (done, waiting) = oneshot::channel();
    let placeholder = Options {
        label: Some(Cow::Owned(format!("cancelled enter of {resource}"))),
        ..Options::default()
    };
    registry.register_async(Waiting(waiting), Some(Box::new(placeholder)));
    debug!(resource = %resource, site = %site, "enter cancelled; it is finished in the background and its resource released");
    let bound = options.finish.unwrap_or(FINISH_TIMEOUT);
    let exit_options = Options {
        label: options.label,
        timeout: options.timeout,
        linger: options.linger,
        key: None,
        finish: None,
    };
    // Made here, not in the task: a task dropped before its first poll
    // (a runtime shutting down at once) is reported lost too.
    let lost = LostIfDropped(Some((resource.clone(), site)));
    let task = finish_and_release::<R>(future, exit_options, (resource, site), bound, done, lost);
    background::spawn_counted(&handle, task);
}

/// The background task of a cancelled enter: finish it within `bound`,
/// then release what it produced. Counts its own outcome for `drain`.
async fn finish_and_release<R: AsyncExit>(
    future: FinishFuture<R, String>,
    options: Options,
    (resource, site): (Cow<'static, str>, &'static Location<'static>),
    bound: Duration,
    done: oneshot::Sender<()>,
    mut lost: LostIfDropped,
) {
    // Dropped when this task ends or is dropped: the entry left on the
    // stack stops waiting.
    let _done = done;
    let finishing = AssertUnwindSafe(future).catch_unwind();
    let outcome = match tokio::time::Instant::now()
        .checked_add(bound)
        .and_then(crate::timer::sleep_until)
    {
        Some(sleep) => crate::timer::race(finishing, sleep).await,
        // A bound too far to add to the clock, or no time driver: none.
        None => Some(finishing.await),
    };
    lost.0 = None;
    match outcome {
        None => {
            warn!(resource = %resource, site = %site, ?bound, "a cancelled enter did not finish within its bound and was dropped");
            background::count_finished(true);
        }
        Some(Err(payload)) => {
            error!(resource = %resource, site = %site, panic = %panic_message(&*payload), "a cancelled enter panicked while it was finished");
            background::count_finished(true);
        }
        Some(Ok(Err(error))) => {
            debug!(resource = %resource, site = %site, %error, "a cancelled enter failed; nothing was acquired");
            background::count_finished(false);
        }
        Some(Ok(Ok(resource))) => {
            let mut registry = Registry::default();
            registry.register_async(resource, Some(Box::new(options)));
            let origin = Origin {
                site,
                orphaned: background::orphaned,
                handle: None,
                budget: None,
                tracker: None,
                linger: None,
            };
            let mut unwind = Unwind::new(
                registry.take(),
                Chain::default(),
                Reason::Cancel,
                Mode::Background,
                origin,
            );
            unwind.abandon(AbandonCause::EnterCancelled);
            unwind.chain.detach();
            background::run(unwind).await; // reports and counts
        }
    }
}

/// Reports the background finish of an enter as lost if it is dropped
/// before it ended (a runtime shutting down).
struct LostIfDropped(Option<(Cow<'static, str>, &'static Location<'static>)>);

impl Drop for LostIfDropped {
    fn drop(&mut self) {
        if let Some((resource, site)) = self.0.take() {
            error!(resource = %resource, site = %site, reason = "the runtime shut down before the background cleanup finished", "a cancelled enter could not be finished; what it had acquired is dropped");
            background::count_lost();
        }
    }
}

/// The entry a cancelled enter leaves on its stack: its exit waits until
/// the enter was finished and its resource released in the background.
struct Waiting(oneshot::Receiver<()>);

#[async_trait::async_trait]
impl AsyncExit for Waiting {
    async fn exit(self: Box<Self>, _: Pending) -> Result<Flow, BoxError> {
        let _ended = self.0.await; // `Err`: the task ended, as it does
        Ok(Flow::Propagate)
    }
}
