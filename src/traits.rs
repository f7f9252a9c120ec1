//! The enter/exit trait pair and what an exit is told.
//!
//! * [`AsyncEnter`] turns something into a live resource (connect, open,
//!   acquire). It is generic (not boxed): the caller gets the concrete
//!   resource type back, and entering costs no allocation.
//! * [`AsyncExit`] is the cleanup half. It is object safe: the stack stores
//!   every entry as a `Box<dyn AsyncExit>`, so one stack holds any mix of
//!   resources.
//!
//! Every `T: AsyncExit` is also `AsyncEnter` (entering it is the identity),
//! so an already open resource is entered as it is.

use std::any::type_name;
use std::borrow::Cow;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::{Abandoned, BoxError, Cause, Link};
use crate::linger::Linger;

/// What an exit tells the unwinder to do with the pending error.
///
/// This is the return value of Python's `__aexit__`: `Propagate` is a falsy
/// return (or a bare `raise` of the error it was given), `Suppress` a truthy
/// one. To raise a *new* error, an exit returns `Err`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
// A word wide, not a byte: an exit's result is written by the exit and
// read back by the unwinder as whole words; a one-byte store read back
// as a word cannot be forwarded, and stalls the unwind on every entry.
#[repr(usize)]
pub enum Flow {
    /// Leave the pending error (if any) as it is; outer entries see it too.
    Propagate,
    /// Clear the pending error: outer entries see none, and if nothing else
    /// fails the unwind (or scope) succeeds. Ignored when nothing is pending.
    Suppress,
}

/// The error travelling through an unwind when an exit runs, or none.
///
/// An exit uses it to tell commit from rollback: [`is_ok`](Self::is_ok)
/// when the body succeeded and every newer entry cleaned up fine;
/// [`is_abandoned`](Self::is_abandoned) when the stack was dropped without
/// `aclose` or its owner was cancelled before the unwind began; otherwise
/// [`error`](Self::error) says what failed, and [`iter`](Self::iter) walks
/// every error still pending, newest first: what the newest replaced, and
/// so on back to the body's (Python's walk of `exc.__context__`).
///
/// It also carries the bounds of a stream's close ([`linger`](Self::linger)),
/// as the entry or its stack set them.
///
/// `Pending` is an owned, cheap handle (at most two reference-counted
/// pointers), so an async exit may keep it across `.await`s, or past the
/// unwind. Cloning it costs one atomic increment per pointer set, and
/// nothing otherwise. The errors it holds are the very objects the
/// final [`Error`](crate::Error) will hold; to chain the pending error as
/// the `source()` of a new one, take it with [`cause`](Self::cause).
///
/// It is one pointer wide. When nothing is pending and no close bounds are
/// set it holds nothing, and handing it to an exit costs no allocation and
/// no atomic operation; otherwise every exit told the same shares one.
#[derive(Clone, Default)]
pub struct Pending(pub(crate) Option<Arc<Told>>);

/// What a [`Pending`] holds when it holds anything: one allocation, shared
/// by every exit told the same.
pub(crate) struct Told {
    /// Every pending error, oldest first; the last is the one `error`
    /// returns. `None` when nothing is pending, never an empty slice.
    pub(crate) chain: Option<Arc<[Link]>>,
    /// The close bounds set for this entry or its stack, if any.
    pub(crate) linger: Option<Arc<Linger>>,
    /// Whether an error was raised in this scope before this exit ran,
    /// pending or suppressed since; always `true` when `chain` is set.
    pub(crate) saw_error: bool,
    /// Whether no one will see the unwind's result.
    pub(crate) detached: bool,
}

impl Pending {
    /// No error is pending: the body succeeded and so did every newer exit.
    pub const fn none() -> Self {
        Self(None)
    }

    /// A pending error, as an exit of a hand-driven unwind (or a test of an
    /// [`AsyncExit`] implementation) would see it.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self::told(Some(Arc::new([Arc::new(error.into())])), None, true, false)
    }

    /// The pending errors `chain` with the bounds `linger`; `saw_error`
    /// when an error was raised in the scope (suppressed since, if `chain`
    /// is `None`); `detached` when no one will see the unwind's result.
    pub(crate) fn told(
        chain: Option<Arc<[Link]>>,
        linger: Option<Arc<Linger>>,
        saw_error: bool,
        detached: bool,
    ) -> Self {
        let saw_error = saw_error || chain.is_some();
        if !saw_error && !detached && linger.is_none() {
            return Self(None);
        }
        Self(Some(Arc::new(Told {
            chain,
            linger,
            saw_error,
            detached,
        })))
    }

    /// The pending errors, oldest first; `None` when nothing is pending.
    pub(crate) fn chain(&self) -> Option<&Arc<[Link]>> {
        self.0.as_ref().and_then(|told| told.chain.as_ref())
    }

    /// The close bounds set for this entry or its stack, if any.
    pub(crate) fn linger_set(&self) -> Option<&Arc<Linger>> {
        self.0.as_ref().and_then(|told| told.linger.as_ref())
    }

    /// The newest pending error, if any. Downcast it with `downcast_ref`.
    pub fn error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.chain().and_then(|chain| chain.last()).map(|link| &***link)
    }

    /// Every pending error, newest first, each downcastable: the same
    /// objects the final [`Error`](crate::Error) would hold if the unwind
    /// stopped here. Empty when nothing is pending.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tokio_exit_stack::{scope, Flow};
    ///
    /// let err = scope(async |stack| {
    ///     stack.push_exit(|pending| {
    ///         // told the newest error, and can see what it replaced
    ///         let seen: Vec<String> = pending.iter().map(|e| e.to_string()).collect();
    ///         assert_eq!(seen, ["close failed", "request failed"]);
    ///         Ok::<_, std::io::Error>(Flow::Propagate)
    ///     });
    ///     stack.callback(|| Err::<(), _>(std::io::Error::other("close failed")));
    ///     Err(std::io::Error::other("request failed"))?;
    ///     Ok(())
    /// })
    /// .await
    /// .unwrap_err();
    /// assert_eq!(err.len(), 2);
    /// # }
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = &(dyn StdError + Send + Sync + 'static)> {
        self.chain()
            .map_or(&[][..], |chain| &chain[..])
            .iter()
            .rev()
            .map(|link| &***link)
    }

    /// The newest pending error as a shared handle to keep: the `source()`
    /// of a new error this exit raises, or something to log later. See
    /// [`Cause`](crate::error::Cause).
    pub fn cause(&self) -> Option<Cause> {
        self.chain().and_then(|chain| chain.last()).cloned().map(Cause)
    }

    /// The bounds this exit should keep when it closes a stream: the
    /// entry's own, else its stack's, else [`Linger::DEFAULT`]. The stream
    /// exits of this crate read it; an exit of your own that wraps a stream
    /// passes its `Pending` on, or reads this.
    pub fn linger(&self) -> Linger {
        self.linger_set().map(|linger| **linger).unwrap_or_default()
    }

    /// This `Pending` with other close bounds: for an exit of your own that
    /// closes a stream through the stream's exit with bounds of its choice
    /// (a short drain for a connection discarded after a failed request).
    ///
    /// ```
    /// # #[cfg(feature = "net")]
    /// # mod example {
    /// use std::time::Duration;
    /// use tokio_exit_stack::{AsyncExit, BoxError, Flow, linger::Linger, Pending, async_trait};
    ///
    /// struct Pooled(tokio::net::TcpStream);
    ///
    /// #[async_trait]
    /// impl AsyncExit for Pooled {
    ///     async fn exit(self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
    ///         let short = Linger { drain_timeout: Duration::from_millis(10), ..pending.linger() };
    ///         Box::new(self.0).exit(pending.with_linger(short)).await
    ///     }
    /// }
    /// # }
    /// ```
    pub fn with_linger(self, linger: Linger) -> Self {
        self.with_linger_set(Arc::new(linger))
    }

    /// This `Pending` with the bounds `linger`.
    pub(crate) fn with_linger_set(self, linger: Arc<Linger>) -> Self {
        Self::told(
            self.chain().cloned(),
            Some(linger),
            self.saw_error(),
            self.is_detached(),
        )
    }

    /// `true` when no error is pending (commit).
    pub fn is_ok(&self) -> bool {
        self.chain().is_none()
    }

    /// `true` when an error is pending (roll back).
    pub fn is_err(&self) -> bool {
        self.chain().is_some()
    }

    /// `true` when an error was raised in this scope before this exit
    /// runs, whether it is still pending ([`is_err`](Self::is_err)) or a
    /// newer exit suppressed it since; `false` only when the body and every
    /// newer exit succeeded.
    ///
    /// Python's rule, which [`is_ok`](Self::is_ok) follows, is that a
    /// suppressed error is handled: the scope succeeded, and a transaction
    /// commits. That is the wrong rule for deciding whether a *connection*
    /// may be reused: the request that used it failed part way, and the
    /// connection may hold that request's session state, half a reply, or
    /// an open transaction. The pooled-connection exits of this crate
    /// decide reuse on this method instead (see the `deadpool` feature).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tokio_exit_stack::{scope_suppressible, Flow};
    ///
    /// let value = scope_suppressible(async |stack| {
    ///     stack.push_exit(|pending| {
    ///         // older than the suppressor: the scope succeeded, but it failed on the way
    ///         assert!(pending.is_ok() && pending.saw_error());
    ///         Ok::<_, std::io::Error>(Flow::Propagate)
    ///     });
    ///     stack.push_exit(|_| Ok::<_, std::io::Error>(Flow::Suppress)); // handles the error
    ///     Err(std::io::Error::other("out of stock"))?;
    ///     Ok(())
    /// })
    /// .await;
    /// assert!(matches!(value, Ok(None)));
    /// # }
    /// ```
    pub fn saw_error(&self) -> bool {
        self.0.as_ref().is_some_and(|told| told.saw_error)
    }

    /// `true` when no one will see this unwind's result: the future that
    /// awaited it (`aclose`, a scope) was dropped after the unwind began,
    /// or the stack was dropped without `aclose`; the exit runs in a
    /// background task.
    ///
    /// An unwind that has begun is shielded: dropping the future that
    /// drives it does not change what the exits that start afterwards are
    /// told (the body's outcome and the errors of newer exits, as if it had
    /// been awaited), only this flag. So an audit exit still records a
    /// request whose transaction committed as a success; an exit that
    /// would report to the caller knows no one is listening, and may log
    /// instead. An exit already running when the future was dropped keeps
    /// the `Pending` it was given.
    pub fn is_detached(&self) -> bool {
        self.0.as_ref().is_some_and(|told| told.detached)
    }

    /// `true` when the pending error says the scope was abandoned before
    /// its unwind began: the stack was dropped without `aclose`, its owner
    /// (a scope's body) was cancelled, or a panic is unwinding through it.
    /// This is the analogue of asyncio's `CancelledError` reaching
    /// `__aexit__`. An unwind cancelled after it began does not make its
    /// exits abandoned ([`is_detached`](Self::is_detached)).
    pub fn is_abandoned(&self) -> bool {
        self.downcast_ref::<Abandoned>().is_some()
    }

    /// The newest pending error as `E`, if it is one.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        self.error()?.downcast_ref::<E>()
    }
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.error() {
            None => f.write_str("Pending(none)"),
            Some(e) => f.debug_tuple("Pending").field(&e).finish(),
        }
    }
}

/// The cleanup half of a resource: what runs when the stack unwinds.
///
/// A complete implementation for a resource of your own (here a database
/// transaction that commits when the scope succeeded and rolls back
/// otherwise), and its use:
///
/// ```
/// use std::borrow::Cow;
/// use tokio_exit_stack::{async_trait, scope, AsyncExit, BoxError, Flow, Pending};
///
/// struct Transaction {
///     id: u64,
/// }
///
/// impl Transaction {
///     async fn commit(&mut self) -> std::io::Result<()> { Ok(()) }
///     async fn roll_back(&mut self) -> std::io::Result<()> { Ok(()) }
/// }
///
/// #[async_trait] // required: see "Without #[async_trait]" below
/// impl AsyncExit for Transaction {
///     async fn exit(mut self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
///         if pending.is_ok() {
///             self.commit().await?; // a failed commit becomes the pending error
///         } else {
///             self.roll_back().await?; // failure, cancellation, or a dropped stack
///         }
///         Ok(Flow::Propagate) // never hide the scope's own error
///     }
///
///     fn label(&self) -> Cow<'static, str> {
///         format!("Transaction({})", self.id).into() // names it in errors and traces
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tokio_exit_stack::Error> {
/// let n = scope(async |stack| {
///     let tx = stack.push_resource(Transaction { id: 7 }); // also enters as itself
///     assert_eq!(tx.id, 7);
///     Ok(1)
/// })
/// .await?; // committed here
/// # assert_eq!(n, 1);
/// # Ok(()) }
/// ```
///
/// The crate implements it for the tokio types users most often get wrong
/// (see the crate docs' table). The stack stores exits as
/// `Box<dyn AsyncExit>`, and calls [`exit`](Self::exit) exactly once, newest
/// entry first, with the [`Pending`] error of that moment.
///
/// # Without `#[async_trait]`
///
/// `exit` is an `async fn` in a trait object, which Rust supports through
/// the [`async_trait`](macro@crate::async_trait) macro (re-exported here, so
/// no extra dependency is needed). Leaving the attribute off the `impl`
/// gives error E0195, "lifetime parameters or bounds on method `exit` do
/// not match the trait declaration", which does not mention the macro: add
/// `#[async_trait]` above the `impl`. For the same reason the rendered
/// documentation shows `exit` as the macro's expansion, a method returning
/// `Pin<Box<dyn Future<Output = Result<Flow, BoxError>> + Send + '_>>`;
/// write it as the `async fn` above.
///
/// # Contract
///
/// * Return `Ok(Flow::Propagate)` after a clean release, `Ok(Flow::Suppress)`
///   to swallow the pending error (rarely right for a resource), or `Err`
///   when the release itself failed. Name the resource in that error: the
///   operator reading it must know *which* connection failed to close.
/// * `exit` may be abandoned part way (a timeout, or a runtime that shuts
///   down): the future is then dropped, and with it the resource.
/// * [`abandon`](Self::abandon) is the synchronous best effort used when no
///   runtime can run `exit` at all. It must not block.
/// * Any method may panic: the stack contains the panic, reports it naming
///   the entry, and runs every other entry.
/// * The resource must be `Send + 'static`: the stack may release it in a
///   background task on any worker thread. `!Send` resources, and futures
///   that need a `LocalSet`, are not supported.
#[async_trait::async_trait]
pub trait AsyncExit: Send + 'static {
    /// Releases the resource. See the trait docs for the contract.
    async fn exit(self: Box<Self>, pending: Pending) -> Result<Flow, BoxError>;

    /// The name of the resource in tracing output and in errors the stack
    /// raises about it (timeouts, panics). Defaults to the type name; the
    /// resource impls of this crate add what identifies the instance (the
    /// peer address of a connection, the pid of a child).
    fn label(&self) -> Cow<'static, str> {
        Cow::Borrowed(type_name::<Self>())
    }

    /// `false` when `exit` finishes on its first poll without needing a
    /// runtime (a semaphore permit, a lock guard). A stack dropped holding
    /// only such entries releases them inline, with no task spawned.
    fn needs_runtime(&self) -> bool {
        true
    }

    /// Synchronous best effort, used instead of `exit` when no runtime can
    /// run it (the stack was dropped outside any runtime, or during runtime
    /// shutdown). Must not block. The default just drops the resource.
    fn abandon(self: Box<Self>) {}
}

/// The enter half: turns a value into the live resource the stack owns.
///
/// `enter` runs exactly once, before anything is registered; if it fails,
/// the stack is left as it was and the caller gets `Self::Error` unchanged.
///
/// # An enter cut short
///
/// tokio cancels a future by dropping it, and an enter dropped half way
/// drops what it had half acquired: a connection mid-handshake, a `BEGIN`
/// sent and not yet acknowledged. An enter whose second half leaves state
/// behind can opt in to having that half finished when it is cancelled,
/// by implementing [`enter_finishing`](Self::enter_finishing) (and setting
/// [`FINISHES`](Self::FINISHES) to `true`): it runs the
/// part that may be dropped (waiting for a pool slot, a permit, a lock:
/// a dead waiter must not keep its place in a queue), then hands over the
/// rest as a [`Finish`]. If the caller's future is dropped while that rest
/// runs, the stack finishes it in a background task (tracked by
/// [`drain`](crate::drain)), bounded by
/// [`FINISH_TIMEOUT`](crate::finish::FINISH_TIMEOUT) (or the entry's
/// [`finish_timeout`](crate::EntryBuilder::finish_timeout)), and releases
/// the resource through its exit, told
/// [`AbandonCause::EnterCancelled`](crate::error::AbandonCause::EnterCancelled);
/// meanwhile it keeps an entry at the cancelled enter's place that waits
/// for that, so no older entry is released first. Any `'static` enter can
/// be finished whole, per entry:
/// [`EntryBuilder::finish_on_cancel`](crate::EntryBuilder::finish_on_cancel).
///
/// Every [`AsyncExit`] type enters as itself (with `Error = Infallible`).
/// Use [`acquire`] to enter the result of a future, such as
/// `TcpStream::connect(addr)` or `File::create(path)`.
///
/// Unlike [`AsyncExit`], this trait is not boxed: the caller receives the
/// concrete `Resource` type back, and entering allocates nothing.
pub trait AsyncEnter: Send + Sized {
    /// The live resource the stack owns and lends to the caller.
    type Resource: AsyncExit;
    /// What a failed enter returns, unchanged, to the caller.
    type Error;

    /// `true` when the stack is to enter through
    /// [`enter_finishing`](Self::enter_finishing) instead of
    /// [`enter`](Self::enter): set it where you implement
    /// `enter_finishing`. `false` by default, so that an enter that does
    /// not opt in costs nothing for it.
    const FINISHES: bool = false;

    /// Produces the resource.
    fn enter(self) -> impl Future<Output = Result<Self::Resource, Self::Error>> + Send;

    /// Produces the resource, or the part of entering that must be
    /// finished even if the caller's future is dropped from here on (see
    /// "An enter cut short" above). The stack's entering methods call this
    /// instead of [`enter`](Self::enter) when
    /// [`FINISHES`](Self::FINISHES) is `true`.
    ///
    /// The default runs [`enter`](Self::enter) and returns
    /// [`Entering::Ready`]: the whole enter is dropped on cancellation, as
    /// any future is. Override it (and set `FINISHES`) for an enter whose
    /// later part leaves state behind (the crate's `sqlx::begin` does: the
    /// pool slot is awaited here, the `BEGIN` on the owned connection is
    /// finished).
    fn enter_finishing(
        self,
    ) -> impl Future<Output = Result<Entering<Self::Resource, Self::Error>, Self::Error>> + Send {
        let enter = self.enter();
        async move { enter.await.map(Entering::Ready) }
    }
}

/// What [`AsyncEnter::enter_finishing`] gives: the resource, or the part of
/// the enter that the stack finishes even if the caller is cancelled.
pub enum Entering<R, E> {
    /// The resource, entered.
    Ready(R),
    /// The rest of the enter, to be finished once begun.
    Finish(Finish<R, E>),
}

/// The part of an enter that must run to its end once begun: an owned,
/// boxed future (`'static`, so that the stack can finish it in a
/// background task if the caller's future is dropped), and how to name its
/// error in the event that reports a failed background finish.
///
/// Made by [`Finish::new`] (one allocation, the box) or [`Finish::boxed`]
/// (none, for a future already boxed).
pub struct Finish<R, E> {
    pub(crate) future: FinishFuture<R, E>,
    /// The same future with its error as a message, for a background
    /// finish (made only where `E`'s bounds are known).
    pub(crate) detach: fn(FinishFuture<R, E>) -> FinishFuture<R, String>,
}

/// The boxed future of a [`Finish`].
pub(crate) type FinishFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<R: 'static, E: fmt::Display + 'static> Finish<R, E> {
    /// Boxes `future` as the part to finish: one allocation.
    pub fn new(future: impl Future<Output = Result<R, E>> + Send + 'static) -> Self {
        Self::boxed(Box::pin(future))
    }

    /// A future already boxed as the part to finish: no allocation.
    pub fn boxed(future: Pin<Box<dyn Future<Output = Result<R, E>> + Send>>) -> Self {
        Self {
            future,
            detach: |future| Box::pin(async move { future.await.map_err(|e| e.to_string()) }),
        }
    }
}

impl<R, E> fmt::Debug for Finish<R, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Finish").finish_non_exhaustive()
    }
}

impl<R, E> fmt::Debug for Entering<R, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready(_) => f.write_str("Entering::Ready(..)"),
            Self::Finish(_) => f.write_str("Entering::Finish(..)"),
        }
    }
}

impl<T: AsyncExit> AsyncEnter for T {
    type Resource = T;
    type Error = Infallible;

    fn enter(self) -> impl Future<Output = Result<T, Infallible>> + Send {
        std::future::ready(Ok(self))
    }
}

/// An [`AsyncEnter`] made from a future that produces a resource.
///
/// Created by [`acquire`].
#[derive(Debug)]
#[must_use = "an Acquire does nothing until it is entered into a stack"]
pub struct Acquire<F>(F);

/// Enters the resource a future produces: the enter *is* the future.
///
/// A failed future (connection refused, file not found) leaves the stack
/// untouched and hands back its own error.
///
/// ```
/// # #[cfg(feature = "net")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use tokio::net::{TcpListener, TcpStream};
/// use tokio_exit_stack::{acquire, AsyncExitStack};
///
/// let listener = TcpListener::bind("127.0.0.1:0").await?;
/// let addr = listener.local_addr()?;
/// let mut stack = AsyncExitStack::new();
/// let conn = stack.enter_async_context(acquire(TcpStream::connect(addr))).await?;
/// assert_eq!(conn.peer_addr()?, addr);
/// stack.aclose().await.map_err(std::io::Error::other)?;
/// # Ok(()) }
/// # #[cfg(not(feature = "net"))] fn main() {}
/// ```
pub fn acquire<F, R, E>(future: F) -> Acquire<F>
where
    F: Future<Output = Result<R, E>> + Send,
    R: AsyncExit,
{
    Acquire(future)
}

impl<F, R, E> AsyncEnter for Acquire<F>
where
    F: Future<Output = Result<R, E>> + Send,
    R: AsyncExit,
{
    type Resource = R;
    type Error = E;

    fn enter(self) -> impl Future<Output = Result<R, E>> + Send {
        self.0
    }
}

/// What a callback may return: `()` or `Result<(), E>`.
///
/// Lets `stack.callback(|| println!("bye"))` and
/// `stack.callback(|| std::fs::remove_file(path))` both work. Sealed: the
/// two shapes above are the whole set.
pub trait CallbackOutput: Send + sealed::Sealed {
    /// The callback's outcome as the unwinder sees it.
    fn into_result(self) -> Result<(), BoxError>;
}

impl CallbackOutput for () {
    fn into_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<E: Into<BoxError> + Send> CallbackOutput for Result<(), E> {
    fn into_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

mod sealed {
    /// Keeps [`CallbackOutput`](super::CallbackOutput) to `()` and
    /// `Result<(), E>`.
    pub trait Sealed {}
    impl Sealed for () {}
    impl<E> Sealed for Result<(), E> {}
}
