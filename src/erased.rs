//! The adapters that turn values and closures into exits, behind two
//! object-safe traits the registry stores:
//!
//! * [`ErasedExit`]: an entered resource (any `AsyncExit`, whose unwind
//!   allocates its boxed exit future), or an async closure in an
//!   [`ExitCell`] (whose own allocation becomes its exit future, so an async
//!   callback costs one allocation, not two);
//! * [`SyncExit`]: a value whose cleanup is its `Drop`, or a sync closure;
//!   unwinding it runs inline and allocates nothing.
//!
//! Every method here that calls user code may panic; the unwind loop calls
//! them under `catch_unwind`, and [`label_of`] catches on its own.

use std::any::{Any, type_name};
use std::borrow::Cow;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::{BoxError, panic_message};
use crate::traits::{AsyncExit, CallbackOutput, Flow, Pending};

/// A synchronous exit: runs inline during the unwind.
pub(crate) trait SyncExit: Send {
    fn exit(self: Box<Self>, pending: &Pending) -> Result<Flow, BoxError>;
    /// Its type's name: a sync exit's label.
    fn name(&self) -> &'static str;
    fn label(&self) -> Cow<'static, str> {
        Cow::Borrowed(self.name())
    }
    /// [`exit`](Self::exit) under `catch_unwind`, with the name it fails
    /// under: the unwind's short path asks for a name only if it fails.
    fn run(self: Box<Self>, pending: &Pending) -> SyncRun {
        SyncRun {
            name: self.name(),
            outcome: catch_unwind(AssertUnwindSafe(|| self.exit(pending))),
        }
    }
}

/// What [`SyncExit::run`] did.
pub(crate) struct SyncRun {
    pub(crate) name: &'static str,
    /// `Err`: the panic's payload.
    pub(crate) outcome: std::thread::Result<Result<Flow, BoxError>>,
}

/// `enter_context(value)`: the value's cleanup is its `Drop`.
pub(crate) struct DropGuard<T>(pub(crate) T);

impl<T: Send> SyncExit for DropGuard<T> {
    fn exit(self: Box<Self>, _: &Pending) -> Result<Flow, BoxError> {
        drop(self);
        Ok(Flow::Propagate)
    }
    fn name(&self) -> &'static str {
        type_name::<T>()
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
    fn name(&self) -> &'static str {
        type_name::<F>()
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
    fn name(&self) -> &'static str {
        type_name::<F>()
    }
}

/// An exit's own label, or its type name if `label` panics (user code: a
/// panic there must not lose the entry).
pub(crate) fn label_of(exit: &dyn ErasedExit) -> Cow<'static, str> {
    catch_unwind(AssertUnwindSafe(|| exit.label())).unwrap_or_else(|payload| {
        tracing::error!(
            resource = exit.type_name(),
            panic = %panic_message(&*payload),
            "AsyncExit::label panicked; the entry is named by its type",
        );
        Cow::Borrowed(exit.type_name())
    })
}

/// The type-erased form of every async entry: an entered resource (any
/// [`AsyncExit`]), or an async closure held in an [`ExitCell`].
pub(crate) trait ErasedExit: Send {
    /// Hands back the exit future. For a resource it is its `exit`; for a
    /// closure, the entry's own allocation becomes the future.
    fn start(self: Box<Self>, pending: Pending) -> ExitFuture;
    fn label(&self) -> Cow<'static, str>;
    /// The type's name: the label when detailed labels are not needed.
    fn type_name(&self) -> &'static str;
    fn needs_runtime(&self) -> bool;
    fn abandon(self: Box<Self>);
    /// The entry as `Any`, for taking a keyed resource back.
    fn as_any(&mut self) -> &mut dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

pub(crate) type ExitFuture = Pin<Box<dyn Future<Output = Result<Flow, BoxError>> + Send>>;

impl<T: AsyncExit> ErasedExit for T {
    fn start(self: Box<Self>, pending: Pending) -> ExitFuture {
        self.exit(pending)
    }
    fn label(&self) -> Cow<'static, str> {
        AsyncExit::label(self)
    }
    fn type_name(&self) -> &'static str {
        type_name::<T>()
    }
    fn needs_runtime(&self) -> bool {
        AsyncExit::needs_runtime(self)
    }
    fn abandon(self: Box<Self>) {
        AsyncExit::abandon(self)
    }
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// An async closure registered as an entry: what it is told, how it is
/// called, and how its output becomes the entry's outcome.
pub(crate) trait ExitClosure: Send + 'static {
    type Future: Future + Send;
    fn call(self, pending: Pending) -> Self::Future;
    fn finish(output: <Self::Future as Future>::Output) -> Result<Flow, BoxError>;
    fn name() -> &'static str;
}

/// `push_async_exit(f)`: told the pending error, may suppress.
pub(crate) struct AsyncExitFn<F, E>(pub(crate) F, pub(crate) PhantomData<fn() -> E>);

impl<F, Fut, E> ExitClosure for AsyncExitFn<F, E>
where
    F: FnOnce(Pending) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Flow, E>> + Send,
    E: Into<BoxError> + 'static,
{
    type Future = Fut;
    fn call(self, pending: Pending) -> Fut {
        (self.0)(pending)
    }
    fn finish(output: Result<Flow, E>) -> Result<Flow, BoxError> {
        output.map_err(Into::into)
    }
    fn name() -> &'static str {
        type_name::<F>()
    }
}

/// `push_async_callback(f)`: told nothing, cannot suppress.
pub(crate) struct AsyncCallbackFn<F>(pub(crate) F);

impl<F, Fut> ExitClosure for AsyncCallbackFn<F>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future + Send,
    Fut::Output: CallbackOutput,
{
    type Future = Fut;
    fn call(self, _: Pending) -> Fut {
        (self.0)()
    }
    fn finish(output: Fut::Output) -> Result<Flow, BoxError> {
        output.into_result().map(|()| Flow::Propagate)
    }
    fn name() -> &'static str {
        type_name::<F>()
    }
}

pin_project_lite::pin_project! {
    /// An async closure and, once started, its future, in one allocation:
    /// registering allocates the cell, and unwinding reuses it as the exit
    /// future, so an async callback costs one allocation, not two. The
    /// closure is called when the exit starts (under the unwind's
    /// `catch_unwind`), so polling only drives the future.
    #[project = CellProj]
    pub(crate) enum ExitCell<C: ExitClosure> {
        Ready { closure: C },
        Running { #[pin] future: C::Future },
        Done,
    }
}

impl<C: ExitClosure> ExitCell<C> {
    pub(crate) fn new(closure: C) -> Self {
        Self::Ready { closure }
    }
}

impl<C: ExitClosure> Future for ExitCell<C> {
    type Output = Result<Flow, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.as_mut().project() {
            CellProj::Running { future } => {
                let output = std::task::ready!(future.poll(cx));
                self.set(ExitCell::Done);
                Poll::Ready(C::finish(output))
            }
            // Not reachable through the unwinder, which starts each exit
            // once and polls it to completion once; finishing quietly is
            // the safe answer.
            CellProj::Ready { .. } | CellProj::Done => Poll::Ready(Ok(Flow::Propagate)),
        }
    }
}

impl<C: ExitClosure> ErasedExit for ExitCell<C>
where
    C::Future: 'static,
{
    fn start(mut self: Box<Self>, pending: Pending) -> ExitFuture {
        // Not pinned yet: the closure is moved out and its future written
        // into the same allocation.
        if let ExitCell::Ready { closure } = std::mem::replace(&mut *self, ExitCell::Done) {
            *self = ExitCell::Running {
                future: closure.call(pending),
            };
        }
        Box::into_pin(self)
    }
    fn label(&self) -> Cow<'static, str> {
        Cow::Borrowed(C::name())
    }
    fn type_name(&self) -> &'static str {
        C::name()
    }
    fn needs_runtime(&self) -> bool {
        true
    }
    fn abandon(self: Box<Self>) {}
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
