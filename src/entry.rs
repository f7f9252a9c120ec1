//! What the stack stores for each registration, and the adapters that turn
//! closures and plain values into exits.
//!
//! Three kinds of entry share one LIFO vector, each one allocation:
//! * `Async`: a `Box<dyn ErasedExit>`: an entered resource (any
//!   `AsyncExit`, whose unwind allocates its boxed exit future), or an async
//!   closure in an `ExitCell` (whose own allocation becomes its exit future).
//! * `Sync`: a `Box<dyn SyncExit>`: a value whose cleanup is its `Drop`, or
//!   a sync closure. Unwinding it runs inline and allocates nothing.
//! * `Group`: an `ExitGroup`, whose members close concurrently.

use std::any::{Any, type_name};
use std::borrow::Cow;
use std::future::Future;
use std::marker::PhantomData;
use std::num::NonZeroU64;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::error::{BoxError, panic_message};
use crate::group::ExitGroup;
use crate::linger::Linger;
use crate::owned::{self, Owned};
use crate::stack::EntryBuilder;
use crate::traits::{AsyncExit, CallbackOutput, Flow, Pending};

/// A synchronous exit: runs inline during the unwind.
pub(crate) trait SyncExit: Send {
    fn exit(self: Box<Self>, pending: &Pending) -> Result<Flow, BoxError>;
    fn label(&self) -> Cow<'static, str>;
}

pub(crate) enum Exit {
    Async(Owned<dyn ErasedExit>),
    Sync(Owned<dyn SyncExit>),
    /// Members that close concurrently.
    Group(Owned<ExitGroup>),
}

/// Per-entry options given through [`EntryBuilder`](crate::EntryBuilder).
#[derive(Default)]
pub(crate) struct Options {
    pub(crate) label: Option<Cow<'static, str>>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) linger: Option<Arc<Linger>>,
    /// Set for a keyed registration: what its `Key` names.
    pub(crate) key: Option<NonZeroU64>,
}

pub(crate) struct Entry {
    pub(crate) exit: Exit,
    /// Boxed, and only when given: most entries have none, and a small
    /// entry keeps the LIFO vector cheap to grow.
    pub(crate) options: Option<Box<Options>>,
}

impl Options {
    /// `None` for the defaults, so that plain registrations allocate nothing
    /// for them.
    #[inline]
    pub(crate) fn boxed(self) -> Option<Box<Options>> {
        (self.label.is_some() || self.timeout.is_some() || self.linger.is_some() || self.key.is_some())
            .then(|| Box::new(self))
    }
}

impl Entry {
    #[inline]
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.options.as_ref().and_then(|o| o.timeout)
    }

    #[inline]
    pub(crate) fn key(&self) -> Option<NonZeroU64> {
        self.options.as_ref().and_then(|o| o.key)
    }

    #[inline]
    pub(crate) fn linger(&self) -> Option<&Arc<Linger>> {
        self.options.as_ref().and_then(|o| o.linger.as_ref())
    }

    /// The caller's label, else the exit's own (`detailed`: as its
    /// `AsyncExit::label` says, which may format, and may panic: then the
    /// type name; otherwise the type name, which costs nothing).
    #[inline]
    pub(crate) fn label(&self, detailed: bool) -> Cow<'static, str> {
        if let Some(label) = self.options.as_ref().and_then(|o| o.label.as_ref()) {
            return label.clone();
        }
        match &self.exit {
            Exit::Async(exit) if detailed => label_of(exit.get()),
            Exit::Async(exit) => Cow::Borrowed(exit.get().type_name()),
            Exit::Sync(exit) => exit.get().label(),
            Exit::Group(group) if detailed => Cow::Owned(format!("group of {}", group.get().len())),
            Exit::Group(_) => Cow::Borrowed("group"),
        }
    }

    /// Whether unwinding this entry needs a runtime (see
    /// [`AsyncExit::needs_runtime`]); `true` when that method panics.
    pub(crate) fn needs_runtime(&self) -> bool {
        self.timeout().is_some()
            || match &self.exit {
                Exit::Async(exit) => {
                    let exit = exit.get();
                    catch_unwind(AssertUnwindSafe(|| exit.needs_runtime())).unwrap_or_else(|payload| {
                        tracing::error!(
                            resource = exit.type_name(),
                            panic = %panic_message(&*payload),
                            "AsyncExit::needs_runtime panicked; the entry is run as one that needs a runtime",
                        );
                        true
                    })
                }
                Exit::Sync(_) => false,
                Exit::Group(group) => group.get().needs_runtime(),
            }
    }
}

/// The LIFO vector of entries behind a stack or a group, and the only
/// place entries are allocated.
///
/// Registration takes `&self`, so the vector sits behind a lock: that is
/// what makes `&AsyncExitStack` (and a future holding it) `Send`. The lock
/// is a spin lock (`spin::Mutex`): it is held only for a `Vec::push`, never
/// across an `.await`, and is contended only if two threads register on
/// one stack at the same instant, which needs scoped threads sharing it.
/// Uncontended it costs one compare-and-swap and a plain release store,
/// where `std::sync::Mutex` pays two atomic read-modify-writes and a poison
/// check: 7 ns less per entry, measured (BENCHMARKS.md).
#[derive(Default)]
pub(crate) struct Registry {
    entries: spin::Mutex<Vec<Entry>>,
}

impl From<Vec<Entry>> for Registry {
    fn from(entries: Vec<Entry>) -> Self {
        Self {
            entries: spin::Mutex::new(entries),
        }
    }
}

impl Registry {
    #[inline]
    fn lock(&self) -> spin::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Takes every entry out; needs `&mut`, so no lent resource is alive.
    pub(crate) fn take(&mut self) -> Vec<Entry> {
        std::mem::take(self.entries.get_mut())
    }

    /// The keyed resource `key` names, if it is registered here and is a
    /// `T`; needs `&mut`, so no lent resource is alive.
    pub(crate) fn keyed_mut<T: 'static>(&mut self, key: NonZeroU64) -> Option<&mut T> {
        let entry = self.entries.get_mut().iter_mut().rev().find(|e| e.key() == Some(key))?;
        match &mut entry.exit {
            Exit::Async(exit) => exit.get_mut().as_any().downcast_mut::<T>(),
            Exit::Sync(_) | Exit::Group(_) => None,
        }
    }

    /// Unregisters the keyed resource `key` names and hands it back, if it
    /// is registered here and is a `T`.
    pub(crate) fn take_keyed<T: 'static>(&mut self, key: NonZeroU64) -> Option<T> {
        // Checked before it leaves the vector: a mismatch leaves it there.
        self.keyed_mut::<T>(key)?;
        let entries = self.entries.get_mut();
        let at = entries.iter().rposition(|e| e.key() == Some(key))?;
        match entries.remove(at).exit {
            Exit::Async(exit) => exit.into_box().into_any().downcast::<T>().ok().map(|t| *t),
            Exit::Sync(_) | Exit::Group(_) => None,
        }
    }

    /// A key no other registration in the process has.
    pub(crate) fn new_key() -> NonZeroU64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        // 2^64 registrations would take centuries; wrapping to 0 is the
        // only way to fail, and then the key starts over at 1.
        NonZeroU64::new(id).unwrap_or(NonZeroU64::MIN)
    }

    pub(crate) fn needs_runtime(&self) -> bool {
        self.lock().iter().any(Entry::needs_runtime)
    }

    pub(crate) fn entry(&self) -> EntryBuilder<'_> {
        EntryBuilder::new(self)
    }

    #[inline]
    fn push(&self, exit: Exit, options: Options) {
        let options = options.boxed();
        let mut entries = self.lock();
        if entries.capacity() == 0 {
            *entries = spare::take();
        }
        entries.push(Entry { exit, options });
    }

    /// Moves `value` into its own allocation, registers it as the newest
    /// entry, and lends it to the caller for as long as `&self` lives.
    #[allow(unsafe_code, clippy::mut_from_ref)] // the arena design: see `stack.rs`
    pub(crate) fn register_async<T: ErasedExit + 'static>(&self, value: T, options: Options) -> &mut T {
        // SAFETY: the borrow lives as long as `&self`; entries are freed only
        // through `take(&mut self)` or by dropping the registry (`owned.rs`).
        let (owner, borrow) = unsafe { owned::alloc(value, |p| p as *mut dyn ErasedExit) };
        self.push(Exit::Async(owner), options);
        borrow
    }

    /// [`register_async`](Self::register_async) for synchronous exits.
    #[allow(unsafe_code, clippy::mut_from_ref)]
    pub(crate) fn register_sync<T: SyncExit + 'static>(&self, value: T, options: Options) -> &mut T {
        // SAFETY: as in `register_async`.
        let (owner, borrow) = unsafe { owned::alloc(value, |p| p as *mut dyn SyncExit) };
        self.push(Exit::Sync(owner), options);
        borrow
    }

    /// [`register_async`](Self::register_async) for a concurrent group.
    #[allow(unsafe_code)]
    pub(crate) fn register_group(&self, group: ExitGroup, options: Options) -> &ExitGroup {
        // SAFETY: as in `register_async`.
        let (owner, borrow) = unsafe { owned::alloc(group, |p| p) };
        self.push(Exit::Group(owner), options);
        borrow
    }
}

/// One spare entry vector per thread: a finished unwind leaves its (empty)
/// vector here, and the next stack registered on the thread starts from it
/// instead of growing a new one (4, 8, 16, ... slots). A service creates a
/// stack per request on the same few worker threads, so in steady state
/// registering allocates only the entries themselves. At most
/// `MAX_SLOTS` slots (32 KiB) are kept per thread.
pub(crate) mod spare {
    use std::cell::Cell;

    use super::Entry;

    const MAX_SLOTS: usize = 1024;

    thread_local! {
        static SPARE: Cell<Vec<Entry>> = const { Cell::new(Vec::new()) };
    }

    /// The thread's spare vector (empty), or a new one.
    pub(crate) fn take() -> Vec<Entry> {
        SPARE.try_with(Cell::take).unwrap_or_default()
    }

    /// Keeps `entries` (emptied) as the thread's spare if it is larger than
    /// the one kept, and not too large; frees it otherwise.
    pub(crate) fn give(mut entries: Vec<Entry>) {
        entries.clear();
        if entries.capacity() == 0 || entries.capacity() > MAX_SLOTS {
            return;
        }
        let _ = SPARE.try_with(|spare| {
            let kept = spare.take();
            spare.set(if kept.capacity() >= entries.capacity() {
                kept
            } else {
                entries
            });
        });
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
    /// future, so an async callback costs one allocation, not two.
    #[project = CellProj]
    #[project_replace = CellTake]
    pub(crate) enum ExitCell<C: ExitClosure> {
        Ready { closure: C, pending: Pending },
        Running { #[pin] future: C::Future },
        Done,
    }
}

impl<C: ExitClosure> ExitCell<C> {
    pub(crate) fn new(closure: C) -> Self {
        Self::Ready {
            closure,
            pending: Pending::none(),
        }
    }
}

impl<C: ExitClosure> Future for ExitCell<C> {
    type Output = Result<Flow, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let CellProj::Ready { .. } = self.as_mut().project() {
            if let CellTake::Ready { closure, pending } = self.as_mut().project_replace(ExitCell::Done) {
                self.set(ExitCell::Running {
                    future: closure.call(pending),
                });
            }
        }
        match self.as_mut().project() {
            CellProj::Running { future } => {
                let output = std::task::ready!(future.poll(cx));
                self.set(ExitCell::Done);
                Poll::Ready(C::finish(output))
            }
            // Not reachable through the unwinder, which polls each exit
            // future to completion once; finishing quietly is the safe answer.
            CellProj::Ready { .. } | CellProj::Done => Poll::Ready(Ok(Flow::Propagate)),
        }
    }
}

impl<C: ExitClosure> ErasedExit for ExitCell<C>
where
    C::Future: 'static,
{
    fn start(mut self: Box<Self>, pending: Pending) -> ExitFuture {
        if let ExitCell::Ready { pending: slot, .. } = &mut *self {
            *slot = pending;
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
