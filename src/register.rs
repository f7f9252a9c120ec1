//! Registration: the methods that put an entry on a stack or a group,
//! written once.
//!
//! [`EntryBuilder`] holds the real implementations: each consumes the
//! builder (its options: label, timeout, close bounds) and hands the value
//! to the registry. The stack and the group get the same method set,
//! delegating to their `entry()`, from one macro,
//! [`registering_methods!`], so the three can never drift apart.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::num::NonZeroU64;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use crate::erased::{AsyncCallbackFn, AsyncExitFn, CallbackFn, DropGuard, ExitCell, ExitFn};
use crate::error::BoxError;
use crate::finish::Finishing;
use crate::linger::Linger;
use crate::registry::{ExitGroup, Options, Registry};
use crate::traits::{AsyncEnter, AsyncExit, CallbackOutput, Entering, Finish, Flow, Pending};

/// The registering methods of a stack and of a group: each delegates to
/// `self.entry()`, the [`EntryBuilder`] with default options. Invoked
/// inside `impl AsyncExitStack` and `impl ExitGroup`.
macro_rules! registering_methods {
    () => {
        /// Enters `cm` (runs its [`AsyncEnter::enter`](crate::AsyncEnter::enter) once), registers the
        /// resulting resource's exit, and lends the resource to the caller.
        /// If the enter fails, nothing is registered and its error comes
        /// back unchanged.
        ///
        /// Costs the enter itself plus one allocation for the resource.
        ///
        /// # Cancel safety
        ///
        /// Dropped before the enter finished: nothing of the enter is
        /// registered, and what happens to what it had half acquired is the
        /// enter's choice
        /// ([`AsyncEnter::enter_finishing`](crate::AsyncEnter::enter_finishing)):
        ///
        /// * by default (`acquire(..)`, a semaphore, a mutex, a rwlock), it
        ///   is dropped with the future, as any future's state is; waiting
        ///   for a permit or a lock is given up, and the waiter leaves the
        ///   queue;
        /// * an enter that opted in (`sqlx::begin`: the `BEGIN` once the
        ///   connection is held), or any `'static` enter registered through
        ///   [`finish_on_cancel`](crate::EntryBuilder::finish_on_cancel),
        ///   is finished in a background task and its resource released
        ///   through its exit; the stack keeps an entry at its place that
        ///   waits for that (see [`finish`](crate::finish)).
        ///
        /// Once the enter has finished, registering cannot be interrupted.
        #[track_caller]
        pub fn enter_async_context<C: $crate::AsyncEnter>(
            &self,
            cm: C,
        ) -> impl std::future::Future<Output = Result<&mut C::Resource, C::Error>> {
            self.entry().enter_async_context(cm)
        }

        /// Registers an already open resource's exit without entering anything
        /// (Python's `push_async_exit(cm)` with a context manager), and lends
        /// the resource back. Synchronous and infallible, unlike
        /// [`enter_async_context`](Self::enter_async_context).
        ///
        /// ```
        /// # #[cfg(feature = "net")]
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> std::io::Result<()> {
        /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        /// let conn = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
        /// let mut stack = tokio_exit_stack::AsyncExitStack::new();
        /// let conn = stack.push_resource(conn); // shut down cleanly at aclose
        /// assert!(conn.peer_addr().is_ok());
        /// stack.aclose().await.map_err(std::io::Error::other)?;
        /// # Ok(()) }
        /// # #[cfg(not(feature = "net"))] fn main() {}
        /// ```
        pub fn push_resource<T: $crate::AsyncExit>(&self, resource: T) -> &mut T {
            self.entry().push_resource(resource)
        }

        /// [`push_resource`](Self::push_resource), also handing back a [`Key`](crate::Key)
        /// with which [`take`](crate::AsyncExitStack::take) can unregister the resource and give
        /// it back owned, or [`get_mut`](crate::AsyncExitStack::get_mut) lend it again.
        ///
        /// Costs one allocation more than `push_resource` (the entry's options).
        pub fn push_keyed<T: $crate::AsyncExit>(&self, resource: T) -> ($crate::Key<T>, &mut T) {
            self.entry().push_keyed(resource)
        }

        /// [`enter_async_context`](Self::enter_async_context), also handing back
        /// a [`Key`](crate::Key) for [`take`](crate::AsyncExitStack::take) and [`get_mut`](crate::AsyncExitStack::get_mut).
        ///
        /// Python's "enter several; keep them only if all succeeded" idiom
        /// (`stack.pop_all()`), with the resources handed back:
        ///
        /// ```
        /// # #[cfg(feature = "fs")]
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        /// use tokio::fs::File;
        /// use tokio_exit_stack::{acquire, scope};
        ///
        /// let dir = tempfile::tempdir()?;
        /// let names = ["a", "b", "c"].map(|n| dir.path().join(n));
        /// // If any create fails, the files created so far are closed; if all
        /// // succeed, they are taken out of the stack and outlive the scope.
        /// let files: Vec<File> = scope(async |stack| {
        ///     let mut keys = Vec::new();
        ///     for name in &names {
        ///         let (key, _file) = stack.enter_keyed(acquire(File::create(name))).await?;
        ///         keys.push(key);
        ///     }
        ///     Ok(keys.into_iter().filter_map(|key| stack.take(key)).collect())
        /// })
        /// .await?;
        /// assert_eq!(files.len(), 3);
        /// # Ok(()) }
        /// # #[cfg(not(feature = "fs"))] fn main() {}
        /// ```
        ///
        /// # Cancel safety
        ///
        /// As [`enter_async_context`](Self::enter_async_context)'s. A
        /// cancelled enter that is finished in the background has no key:
        /// its resource is released, never handed out.
        #[track_caller]
        #[allow(clippy::type_complexity)]
        pub fn enter_keyed<C: $crate::AsyncEnter>(
            &self,
            cm: C,
        ) -> impl std::future::Future<Output = Result<($crate::Key<C::Resource>, &mut C::Resource), C::Error>> {
            self.entry().enter_keyed(cm)
        }

        /// Registers `value`, whose cleanup is its `Drop` (a permit, a guard, a
        /// temporary directory), in the same LIFO order as every other entry,
        /// and lends it to the caller.
        pub fn enter_context<T: Send + 'static>(&self, value: T) -> &mut T {
            self.entry().enter_context(value)
        }

        /// Registers an async exit closure: at unwind it is given the pending
        /// error and returns whether to suppress it, or a new error.
        ///
        /// ```
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() {
        /// use tokio_exit_stack::{AsyncExitStack, Flow};
        /// let mut stack = AsyncExitStack::new();
        /// stack.push_async_exit(|pending| async move {
        ///     if pending.is_err() { /* roll back */ }
        ///     Ok::<_, std::io::Error>(Flow::Propagate)
        /// });
        /// stack.aclose().await.unwrap();
        /// # }
        /// ```
        pub fn push_async_exit<F, Fut, E>(&self, exit: F)
        where
            F: FnOnce($crate::Pending) -> Fut + Send + 'static,
            Fut: ::std::future::Future<Output = Result<$crate::Flow, E>> + Send + 'static,
            E: Into<$crate::BoxError> + 'static,
        {
            self.entry().push_async_exit(exit);
        }

        /// Registers a synchronous exit closure; like
        /// [`push_async_exit`](Self::push_async_exit), but it runs inline.
        pub fn push_exit<F, E>(&self, exit: F)
        where
            F: FnOnce(&$crate::Pending) -> Result<$crate::Flow, E> + Send + 'static,
            E: Into<$crate::BoxError> + 'static,
        {
            self.entry().push_exit(exit);
        }

        /// Registers an async callback: it is told nothing and cannot suppress;
        /// it may return `()` or `Result<(), E>`.
        pub fn push_async_callback<F, Fut>(&self, callback: F)
        where
            F: FnOnce() -> Fut + Send + 'static,
            Fut: ::std::future::Future + Send + 'static,
            Fut::Output: $crate::CallbackOutput,
        {
            self.entry().push_async_callback(callback);
        }

        /// Registers a synchronous callback; it runs inline at unwind.
        ///
        /// A synchronous callback or exit may run while a panic unwinds (a
        /// stack dropped by a panic releases its synchronous entries inline). A
        /// panic inside it is caught there as anywhere else: the remaining
        /// entries still run, and the panic is reported as an ERROR event
        /// naming the entry.
        pub fn callback<F, R>(&self, callback: F)
        where
            F: FnOnce() -> R + Send + 'static,
            R: $crate::CallbackOutput + 'static,
        {
            self.entry().callback(callback);
        }

        /// Registers an empty concurrent group as the newest entry and lends it
        /// back: its members close concurrently when its turn comes. See
        /// [`ExitGroup`](crate::ExitGroup).
        pub fn enter_group(&self) -> &$crate::ExitGroup {
            self.entry().enter_group()
        }
    };
}
pub(crate) use registering_methods;

impl ExitGroup {
    /// Options (label, timeout, close bounds) for the next member.
    pub fn entry(&self) -> EntryBuilder<'_> {
        EntryBuilder::new(&self.registry)
    }

    registering_methods!();
}

/// Names one resource registered with
/// [`push_keyed`](crate::AsyncExitStack::push_keyed) or
/// [`enter_keyed`](crate::AsyncExitStack::enter_keyed), to take it back out of the
/// stack ([`take`](crate::AsyncExitStack::take)) or lend it again
/// ([`get_mut`](crate::AsyncExitStack::get_mut)).
///
/// A key is unique in the process, typed, and consumed by `take`, so a key
/// of another stack, or of a resource already taken, can only ever give
/// `None`. Eight bytes; not `Clone`.
#[must_use = "without its key, a keyed resource can no longer be taken back"]
pub struct Key<T> {
    id: NonZeroU64,
    resource: PhantomData<fn() -> T>,
}

impl<T> Key<T> {
    pub(crate) fn id(&self) -> NonZeroU64 {
        self.id
    }
}

impl<T> fmt::Debug for Key<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Key")
            .field(&self.id)
            .field(&std::any::type_name::<T>())
            .finish()
    }
}

/// Options for one registration, from [`AsyncExitStack::entry`](crate::AsyncExitStack::entry).
///
/// Has the same registering methods as the stack; each consumes the
/// builder and applies its options to that one entry.
#[must_use = "an EntryBuilder registers nothing until one of its registering methods is called"]
pub struct EntryBuilder<'s> {
    registry: &'s Registry,
    /// Allocated on the first option set: a plain registration carries
    /// none, and pays nothing for them.
    options: Option<Box<Options>>,
}

impl std::fmt::Debug for EntryBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryBuilder")
            .field("label", &self.options.as_ref().and_then(|o| o.label.as_ref()))
            .field("timeout", &self.options.as_ref().and_then(|o| o.timeout))
            .finish()
    }
}

impl<'s> EntryBuilder<'s> {
    pub(crate) fn new(registry: &'s Registry) -> Self {
        Self {
            registry,
            options: None,
        }
    }

    /// Names the entry in tracing output and in the stack's own errors,
    /// instead of its type name.
    pub fn label(mut self, label: impl Into<Cow<'static, str>>) -> Self {
        self.options.get_or_insert_default().label = Some(label.into());
        self
    }

    /// Sets this entry's close bounds (flush, lingering drain), winning over
    /// its stack's ([`AsyncExitStack::set_linger`](crate::AsyncExitStack::set_linger)); for a group, the
    /// bounds of its members that have none of their own. See [`Linger`](crate::linger::Linger).
    pub fn linger(mut self, linger: Linger) -> Self {
        self.options.get_or_insert_default().linger = Some(Arc::new(linger));
        self
    }

    /// Abandons the entry's exit if it has not finished after `timeout`:
    /// its future, and the resource it owns, are dropped, a
    /// [`TimeoutError`](crate::error::TimeoutError) naming the entry becomes the
    /// pending error, and the next entry runs. Needs the runtime's time
    /// driver.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.get_or_insert_default().timeout = Some(timeout);
        self
    }

    /// How long this entry's enter, if its caller is cancelled while a
    /// part of it that must be finished runs, may take to finish in the
    /// background before it is dropped (see [`finish`](crate::finish)).
    /// Defaults to [`FINISH_TIMEOUT`](crate::finish::FINISH_TIMEOUT). Not
    /// the exit's [`timeout`](Self::timeout).
    pub fn finish_timeout(mut self, bound: Duration) -> Self {
        self.options.get_or_insert_default().finish = Some(bound);
        self
    }

    /// Finishes this entry's whole enter, and releases its resource, if the
    /// caller's future is dropped before the enter returned it, whatever
    /// the enter's own choice: for a `'static` enter that leaves state
    /// behind once begun (`acquire(TcpStream::connect(addr))`, a TLS
    /// handshake). Costs one allocation (the enter's future is boxed).
    ///
    /// Use it only for an enter that does not wait in a queue: a waiter
    /// for a pool slot or a permit finished in the background keeps its
    /// place in the queue after its caller is gone.
    ///
    /// ```
    /// # #[cfg(feature = "net")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// use std::time::Duration;
    /// use tokio::net::{TcpListener, TcpStream};
    /// use tokio_exit_stack::{acquire, AsyncExitStack};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").await?;
    /// let addr = listener.local_addr()?;
    /// let mut stack = AsyncExitStack::new();
    /// let connect = stack.entry().finish_on_cancel().enter_async_context(acquire(TcpStream::connect(addr)));
    /// // cut short: the connection is finished, then shut down cleanly
    /// let _ = tokio::time::timeout(Duration::ZERO, connect).await;
    /// stack.aclose().await.map_err(std::io::Error::other)?;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "net"))] fn main() {}
    /// ```
    pub fn finish_on_cancel(self) -> FinishOnCancel<'s> {
        FinishOnCancel(self)
    }

    /// [`AsyncExitStack::enter_async_context`](crate::AsyncExitStack::enter_async_context) with these options.
    #[track_caller]
    pub fn enter_async_context<C: AsyncEnter>(
        self,
        cm: C,
    ) -> impl Future<Output = Result<&'s mut C::Resource, C::Error>> + use<'s, C> {
        let site = Location::caller();
        async move {
            if !C::FINISHES {
                let resource = cm.enter().await?;
                return Ok(self.registry.register_async(resource, self.options));
            }
            let (resource, options) = entered(self.registry, self.options, cm.enter_finishing(), site).await?;
            Ok(self.registry.register_async(resource, options))
        }
    }

    /// [`AsyncExitStack::enter_group`](crate::AsyncExitStack::enter_group) with these options.
    pub fn enter_group(self) -> &'s ExitGroup {
        self.registry.register_group(self.options)
    }

    /// [`AsyncExitStack::push_resource`](crate::AsyncExitStack::push_resource) with these options.
    pub fn push_resource<T: AsyncExit>(self, resource: T) -> &'s mut T {
        self.registry.register_async(resource, self.options)
    }

    /// [`AsyncExitStack::push_keyed`](crate::AsyncExitStack::push_keyed) with these options.
    pub fn push_keyed<T: AsyncExit>(mut self, resource: T) -> (Key<T>, &'s mut T) {
        let key = Registry::new_key();
        self.options.get_or_insert_default().key = Some(key);
        let resource = self.registry.register_async(resource, self.options);
        (
            Key {
                id: key,
                resource: PhantomData,
            },
            resource,
        )
    }

    /// [`AsyncExitStack::enter_keyed`](crate::AsyncExitStack::enter_keyed) with these options.
    #[track_caller]
    #[allow(clippy::type_complexity)]
    pub fn enter_keyed<C: AsyncEnter>(
        self,
        cm: C,
    ) -> impl Future<Output = Result<(Key<C::Resource>, &'s mut C::Resource), C::Error>> + use<'s, C> {
        let site = Location::caller();
        async move {
            if !C::FINISHES {
                let resource = cm.enter().await?;
                return Ok(self.push_keyed(resource));
            }
            let Self { registry, options } = self;
            let (resource, options) = entered(registry, options, cm.enter_finishing(), site).await?;
            Ok(Self { registry, options }.push_keyed(resource))
        }
    }

    /// [`AsyncExitStack::enter_context`](crate::AsyncExitStack::enter_context) with these options.
    pub fn enter_context<T: Send + 'static>(self, value: T) -> &'s mut T {
        &mut self.registry.register_sync(DropGuard(value), self.options).0
    }

    /// [`AsyncExitStack::push_async_exit`](crate::AsyncExitStack::push_async_exit) with these options.
    pub fn push_async_exit<F, Fut, E>(self, exit: F)
    where
        F: FnOnce(Pending) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Flow, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.registry
            .register_async(ExitCell::new(AsyncExitFn(exit, PhantomData)), self.options);
    }

    /// [`AsyncExitStack::push_exit`](crate::AsyncExitStack::push_exit) with these options.
    pub fn push_exit<F, E>(self, exit: F)
    where
        F: FnOnce(&Pending) -> Result<Flow, E> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.registry.register_sync(ExitFn(exit, PhantomData), self.options);
    }

    /// [`AsyncExitStack::push_async_callback`](crate::AsyncExitStack::push_async_callback) with these options.
    pub fn push_async_callback<F, Fut>(self, callback: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: CallbackOutput,
    {
        self.registry
            .register_async(ExitCell::new(AsyncCallbackFn(callback)), self.options);
    }

    /// [`AsyncExitStack::callback`](crate::AsyncExitStack::callback) with these options.
    pub fn callback<F, R>(self, callback: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: CallbackOutput + 'static,
    {
        self.registry.register_sync(CallbackFn(callback), self.options);
    }
}

/// An [`EntryBuilder`] whose enter is finished if its caller is cancelled:
/// from [`EntryBuilder::finish_on_cancel`].
#[must_use = "a FinishOnCancel registers nothing until its enter_async_context is called"]
#[derive(Debug)]
pub struct FinishOnCancel<'s>(EntryBuilder<'s>);

impl<'s> FinishOnCancel<'s> {
    /// [`AsyncExitStack::enter_async_context`](crate::AsyncExitStack::enter_async_context),
    /// the whole enter finished in the background if this future is
    /// dropped before it returned.
    #[track_caller]
    pub fn enter_async_context<C>(
        self,
        cm: C,
    ) -> impl Future<Output = Result<&'s mut C::Resource, C::Error>> + use<'s, C>
    where
        C: AsyncEnter + 'static,
        C::Error: fmt::Display + 'static,
    {
        let site = Location::caller();
        let EntryBuilder { registry, options } = self.0;
        let finish = Finish::new(cm.enter());
        async move {
            let (resource, options) = entered(registry, options, async { Ok(Entering::Finish(finish)) }, site).await?;
            Ok(registry.register_async(resource, options))
        }
    }
}

/// Runs an enter (`entering`, from `enter_finishing`): a ready resource
/// comes back at once; a part to finish is polled here, and handed to the
/// background if this future is dropped first (see `finish`).
async fn entered<R: AsyncExit, E>(
    registry: &Registry,
    options: Option<Box<Options>>,
    entering: impl Future<Output = Result<Entering<R, E>, E>>,
    site: &'static Location<'static>,
) -> Result<(R, Option<Box<Options>>), E> {
    match entering.await? {
        Entering::Ready(resource) => Ok((resource, options)),
        Entering::Finish(finish) => {
            let (result, options) = Finishing::new(finish, registry, options, site).await;
            result.map(|resource| (resource, options))
        }
    }
}
