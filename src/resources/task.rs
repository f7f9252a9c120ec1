//! `JoinHandle` (entered as a [`Task`]) and `JoinSet`: await on success;
//! abort, then await (reap), when something failed or the scope was
//! abandoned (a dropped handle detaches its task instead of stopping it).

use std::any::type_name;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle, JoinSet};

use crate::error::{BoxError, Error, TaskError};
use crate::traits::{AsyncEnter, AsyncExit, Flow, Pending};

/// A spawned task owned by a stack: what entering a `JoinHandle` lends
/// back.
///
/// Await it (`task.await`, through the `&mut Task` the stack lends) for
/// the task's output, exactly as the `JoinHandle` would give it. The stack
/// remembers whether the output was taken, so its exit never polls a
/// finished handle again (tokio panics on that), and never drops a result
/// nobody read:
///
/// * output taken by the caller: the exit has nothing left to do;
/// * otherwise, when the unwind succeeded so far: the exit awaits the task.
///   A task that panicked is a [`TaskError`](crate::error::TaskError). A
///   task that was aborted ([`abort`](Self::abort), its
///   [`abort_handle`](Self::abort_handle), `JoinHandle::abort`) ended as
///   its owner asked: that is a finished entry, not a failure, so no error
///   becomes pending for older entries (a DEBUG event says it was
///   aborted);
/// * when an error is pending (or the stack was abandoned): the exit aborts
///   the task and awaits it (reaps it), and a panic it had already died of
///   is still a [`TaskError`](crate::error::TaskError).
///
/// A task cut off by its entry's own timeout is aborted as the exit is
/// dropped, and reported as the timeout ([`TimeoutError`](crate::error::TimeoutError)).
///
/// On success the exit waits for the task **as long as it runs**: give the
/// entry a timeout (`stack.entry().timeout(..)`) for a task that might not
/// end, or [`abort`](Self::abort) it first. Dropping a `Task` (its timeout
/// passed, or the stack could not run its exit) aborts the task: a task a
/// stack owns never outlives it by accident.
/// [`into_join_handle`](Self::into_join_handle) gives the plain handle
/// back, detached from this rule.
///
/// A raw `JoinHandle` cannot be registered as itself: it enters as a
/// `Task` (`stack.enter_async_context(tokio::spawn(..))`), or wrap it with
/// [`Task::new`] for `push_resource`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let mut stack = tokio_exit_stack::AsyncExitStack::new();
/// let task = stack.enter_async_context(tokio::spawn(async { 7 })).await?;
/// assert_eq!(task.await?, 7); // the output is the caller's
/// stack.aclose().await?; // nothing left to reap: no second poll
/// # Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "rt")))]
#[derive(Debug)]
pub struct Task<T> {
    /// `None` only after `into_join_handle`.
    handle: Option<JoinHandle<T>>,
    /// Whether the caller took the output.
    taken: bool,
}

#[cfg_attr(docsrs, doc(cfg(feature = "rt")))]
impl<T> Task<T> {
    /// Owns `handle`'s task; register the result with `push_resource`.
    pub fn new(handle: JoinHandle<T>) -> Self {
        Self {
            handle: Some(handle),
            taken: false,
        }
    }

    /// Aborts the task (see `JoinHandle::abort`); the exit still reaps it.
    pub fn abort(&self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }

    /// Whether the task has finished (its output may or may not have been
    /// taken: see [`is_taken`](Self::is_taken)).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Whether the task's output was taken by awaiting this `Task`.
    pub fn is_taken(&self) -> bool {
        self.taken
    }

    /// An `AbortHandle` for the task, to abort it from elsewhere.
    pub fn abort_handle(&self) -> Option<tokio::task::AbortHandle> {
        self.handle.as_ref().map(JoinHandle::abort_handle)
    }

    /// The plain `JoinHandle`, no longer aborted on drop; `None` if the
    /// output was already taken.
    pub fn into_join_handle(mut self) -> Option<JoinHandle<T>> {
        if self.taken { None } else { self.handle.take() }
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "rt")))]
impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "rt")))]
impl<T> Future for Task<T> {
    type Output = Result<T, JoinError>;

    /// # Panics
    ///
    /// If polled again after it returned the output, as a `JoinHandle`
    /// does (and as `Future` allows): the output exists once.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        assert!(!self.taken, "Task polled after its output was taken");
        let Some(handle) = self.handle.as_mut() else {
            unreachable!("a Task without its handle is consumed")
        };
        let output = std::task::ready!(Pin::new(handle).poll(cx));
        self.taken = true;
        Poll::Ready(output)
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "rt")))]
impl<T: Send + 'static> AsyncEnter for JoinHandle<T> {
    type Resource = Task<T>;
    type Error = Infallible;

    fn enter(self) -> impl Future<Output = Result<Task<T>, Infallible>> + Send {
        std::future::ready(Ok(Task::new(self)))
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "rt")))]
#[async_trait::async_trait]
impl<T: Send + 'static> AsyncExit for Task<T> {
    async fn exit(mut self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
        let name = type_name::<JoinHandle<T>>();
        if self.taken {
            return Ok(Flow::Propagate);
        }
        let failure = |source| Box::new(TaskError { resource: name, source }) as BoxError;
        if pending.is_err() {
            self.abort();
            // Reap: wait until the task is gone; cancellation is expected,
            // a panic nobody read is reported.
            match (&mut *self).await {
                Err(e) if !e.is_cancelled() => Err(failure(e)),
                _ => Ok(Flow::Propagate),
            }
        } else {
            match (&mut *self).await {
                Ok(_) => Ok(Flow::Propagate),
                Err(e) if e.is_cancelled() => {
                    // Aborted by its owner: it ended as asked.
                    tracing::debug!(resource = name, "task was aborted before the stack reached it");
                    Ok(Flow::Propagate)
                }
                Err(e) => Err(failure(e)),
            }
        }
    }

    fn abandon(self: Box<Self>) {
        self.abort();
    }
}

/// When the scope succeeded so far, awaits every task: each task that
/// panicked is a [`TaskError`](crate::error::TaskError) (several become
/// one link each), and a task that was aborted (`JoinSet::abort_all`, an
/// abort handle) ended as its owner asked and is not a failure. When an
/// error is pending or the stack was abandoned: `shutdown` (abort all,
/// await all). With no runtime left: `abort_all`.
#[cfg_attr(docsrs, doc(cfg(feature = "rt")))]
#[async_trait::async_trait]
impl<T: Send + 'static> AsyncExit for JoinSet<T> {
    async fn exit(mut self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
        let name = type_name::<Self>();
        if pending.is_err() {
            self.shutdown().await;
            return Ok(Flow::Propagate);
        }
        // Every failed task is kept, in the order they finished; several
        // become one link each in the unwind's error. An aborted task
        // (`abort_all`, an abort handle) ended as its owner asked.
        let mut failures = Vec::new();
        let mut aborted = 0usize;
        while let Some(result) = self.join_next().await {
            match result {
                Err(source) if source.is_cancelled() => aborted += 1,
                Err(source) => failures.push(Arc::new(Box::new(TaskError { resource: name, source }) as BoxError)),
                Ok(_) => {}
            }
        }
        if aborted > 0 {
            tracing::debug!(
                resource = name,
                aborted,
                "tasks were aborted before the stack reached them"
            );
        }
        match Error::from_oldest_first(failures) {
            None => Ok(Flow::Propagate),
            Some(errors) => match errors.into_single() {
                Ok(one) => Err(one),
                Err(several) => Err(Box::new(several)),
            },
        }
    }

    fn abandon(mut self: Box<Self>) {
        self.abort_all();
    }
}
