//! What the stack stores for each registration, and the adapters that turn
//! closures and plain values into exits.
//!
//! Two kinds of entry share one LIFO vector:
//! * `Async`: a `Box<dyn AsyncExit>` (an entered resource, or an async
//!   closure/callback). Unwinding it costs one boxed future.
//! * `Sync`: a `Box<dyn SyncExit>` (a value whose cleanup is its `Drop`, or
//!   a sync closure/callback). Unwinding it runs inline and allocates
//!   nothing.

use std::any::type_name;
use std::borrow::Cow;
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use crate::error::BoxError;
use crate::owned::Owned;
use crate::traits::{AsyncExit, CallbackOutput, Flow, Pending};

/// A synchronous exit: runs inline during the unwind.
pub(crate) trait SyncExit: Send {
    fn exit(self: Box<Self>, pending: &Pending) -> Result<Flow, BoxError>;
    fn label(&self) -> Cow<'static, str>;
}

pub(crate) enum Exit {
    Async(Owned<dyn AsyncExit>),
    Sync(Owned<dyn SyncExit>),
}

/// Per-entry options given through [`EntryBuilder`](crate::EntryBuilder).
#[derive(Default)]
pub(crate) struct Options {
    pub(crate) label: Option<Cow<'static, str>>,
    pub(crate) timeout: Option<Duration>,
}

pub(crate) struct Entry {
    pub(crate) exit: Exit,
    pub(crate) options: Options,
}

impl Entry {
    /// The caller's label, or the exit's own.
    pub(crate) fn label(&self) -> Cow<'static, str> {
        if let Some(label) = &self.options.label {
            return label.clone();
        }
        match &self.exit {
            Exit::Async(exit) => exit.get().label(),
            Exit::Sync(exit) => exit.get().label(),
        }
    }

    /// Whether unwinding this entry needs a runtime (see
    /// [`AsyncExit::needs_runtime`]).
    pub(crate) fn needs_runtime(&self) -> bool {
        self.options.timeout.is_some()
            || match &self.exit {
                Exit::Async(exit) => exit.get().needs_runtime(),
                Exit::Sync(_) => false,
            }
    }
}

/// `enter_context(value)`: the value's cleanup is its `Drop`.
pub(crate) struct DropGuard<T>(pub(crate) T);

impl<T: Send> SyncExit for DropGuard<T> {
    fn exit(self: Box<Self>, _: &Pending) -> Result<Flow, BoxError> {
        drop(self);
        Ok(Flow::Propagate)
    }
    fn label(&self) -> Cow<'static, str> {
        Cow::Borrowed(type_name::<T>())
    }
}

/// `push_exit(f)`: a sync exit closure.
pub(crate) struct ExitFn<F, E>(pub(crate) F, pub(crate) PhantomData<fn() -> E>);

impl<F, E> SyncExit for ExitFn<F, E>
where
    F: FnOnce(&Pending) -> Result<Flow, E> + Send,
    E: Into<BoxError>,
{
    fn exit(self: Box<Self>, pending: &Pending) -> Result<Flow, BoxError> {
        (self.0)(pending).map_err(Into::into)
    }
    fn label(&self) -> Cow<'static, str> {
        Cow::Borrowed(type_name::<F>())
    }
}

/// `callback(f)`: a sync callback; told nothing, cannot suppress.
pub(crate) struct CallbackFn<F>(pub(crate) F);

impl<F, R> SyncExit for CallbackFn<F>
where
    F: FnOnce() -> R + Send,
    R: CallbackOutput,
{
    fn exit(self: Box<Self>, _: &Pending) -> Result<Flow, BoxError> {
        (self.0)().into_result().map(|()| Flow::Propagate)
    }
    fn label(&self) -> Cow<'static, str> {
        Cow::Borrowed(type_name::<F>())
    }
}

/// `push_async_exit(f)`: an async exit closure.
pub(crate) struct AsyncExitFn<F, E>(pub(crate) F, pub(crate) PhantomData<fn() -> E>);

#[async_trait::async_trait]
impl<F, Fut, E> AsyncExit for AsyncExitFn<F, E>
where
    F: FnOnce(Pending) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Flow, E>> + Send,
    E: Into<BoxError> + 'static,
{
    async fn exit(self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
        (self.0)(pending).await.map_err(Into::into)
    }
    fn label(&self) -> Cow<'static, str> {
        Cow::Borrowed(type_name::<F>())
    }
}

/// `push_async_callback(f)`: an async callback; told nothing, cannot
/// suppress.
pub(crate) struct AsyncCallbackFn<F>(pub(crate) F);

#[async_trait::async_trait]
impl<F, Fut> AsyncExit for AsyncCallbackFn<F>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future + Send,
    Fut::Output: CallbackOutput,
{
    async fn exit(self: Box<Self>, _: Pending) -> Result<Flow, BoxError> {
        (self.0)().await.into_result().map(|()| Flow::Propagate)
    }
    fn label(&self) -> Cow<'static, str> {
        Cow::Borrowed(type_name::<F>())
    }
}
