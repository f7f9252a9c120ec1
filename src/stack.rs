//! The facade: [`AsyncExitStack`] and [`scope`].
//!
//! The layers below, each importing only those under it: `register`
//! (the registering methods, written once for the stack, the group and the
//! builder), `background` (where a dropped or cancelled unwind goes; the
//! trackers and `drain`), `unwind` (the loop), `registry` (the entries;
//! with `owned`, the only `unsafe`), `erased` (values and closures as
//! exits), `traits`, `linger`, `error`. A lower layer that must reach a
//! higher one (an unwind cancelled mid-way hands its rest to the background
//! path) calls a function it was given, never an import.
//!
//! # Ownership: why `&self` hands out `&mut T`
//!
//! The stack must own every resource (so that it can release it from
//! `aclose`, or from `Drop` when the owning future is cancelled), while the
//! caller uses several of them at once, in a `Send` future. The stack is
//! therefore an *arena*: each registration moves the resource into its own
//! heap allocation, records it in the LIFO vector, and returns
//! `&'s mut T`, where `'s` is a shared borrow of the stack. Several such
//! borrows coexist (read one connection while writing a file entered
//! later), and the borrow checker proves that none of them is alive when
//! the stack releases anything, because releasing needs `&mut self`
//! (`aclose`, `pop_all`) or ownership (`Drop`).
//!
//! The alternatives were weighed and rejected:
//! * handles with a lock (`Arc<Mutex<T>>`): a lock on every use, and an
//!   `aclose` that must wait for, or race with, handles still in use;
//! * leases returned to the stack on drop: a lease still alive at `aclose`
//!   (moved into a task, say) is either a deadlock or a cleanup skipped;
//! * `&mut self` registration: only one resource usable at a time.
//!
//! The cost is a few lines of `unsafe` in `owned.rs` and `registry/`,
//! with the soundness argument written there and checked by Miri (and the
//! registry's concurrent pushes by loom).
//!
//! Registration takes `&self`, so the entry vector is pushed to without a
//! lock (see `Registry`): one atomic swap per entry, and threads that
//! register on one stack at once never wait for one another. That is what
//! makes `&AsyncExitStack`, and so a future holding it, `Send`.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;
use tracing::Span;

use crate::background;
use crate::error::{AbandonCause, BoxError, Chain, Error, Link, Suppressed};
use crate::linger::Linger;
use crate::register::{EntryBuilder, Key, registering_methods};
use crate::registry::Registry;
use crate::strict;
use crate::traits::{AsyncExit, Flow, Pending};
use crate::unwind::{Mode, Origin, Reason, Unwind};

/// A LIFO stack of async cleanups: Python's `contextlib.AsyncExitStack`
/// for tokio.
///
/// Register resources as you acquire them; use them through the `&mut`
/// each registration returns; release them all, newest first, with one
/// [`aclose`](Self::aclose). Each exit is told the pending error and may
/// suppress it; every error that is not suppressed is kept in the
/// returned [`Error`].
///
/// If the stack is dropped while it still holds entries (a cancelled
/// future, a panic, a forgotten `aclose`), its cleanup still runs, in one
/// background task on the runtime the stack was created on, and a WARN
/// event names where the stack was created. [`drain`](crate::drain) waits
/// for those tasks before `main` returns.
///
/// Prefer [`scope`] when the stack's life is one block: it cannot forget
/// `aclose`, and it hands the block's error to the exits.
///
/// # Costs
///
/// `new` allocates nothing. Each registration moves the resource (or
/// closure) into one heap allocation and pushes it on a vector; unwinding
/// an async entry allocates its exit future. A dropped stack spawns one
/// task, whatever its number of entries.
///
/// # Example
///
/// ```
/// # #[cfg(feature = "fs")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use tokio::io::AsyncWriteExt;
/// use tokio_exit_stack::{acquire, AsyncExitStack};
///
/// let dir = tempfile::tempdir()?;
/// let mut stack = AsyncExitStack::new();
/// let a = stack.enter_async_context(acquire(tokio::fs::File::create(dir.path().join("a")))).await?;
/// let b = stack.enter_async_context(acquire(tokio::fs::File::create(dir.path().join("b")))).await?;
/// stack.callback(|| println!("released last"));
/// a.write_all(b"both files are in use at once").await?;
/// b.write_all(b"and flushed on aclose").await?;
/// stack.aclose().await?; // b flushed, then a, then the callback runs
/// # Ok(()) }
/// # #[cfg(not(feature = "fs"))] fn main() {}
/// ```
pub struct AsyncExitStack {
    /// Registered entries; the newest is last.
    registry: Registry,
    /// The runtime the stack was created on, for background cleanup.
    handle: Option<Handle>,
    site: &'static Location<'static>,
    unwind_timeout: Option<Duration>,
    /// Whether a drop holding entries is a cancellation by design (a scope's
    /// stack, or one its owner declared so) rather than a forgotten
    /// `aclose`.
    cancellable: bool,
    /// The caller's tracker for background cleanups, if any.
    tracker: Option<TaskTracker>,
    /// The span current at creation (`None` when no dispatcher was ever
    /// set, so none could have been): background cleanup runs in a child
    /// of it (a root span if it is disabled).
    span: Option<Span>,
    /// Close bounds for stream entries without their own.
    linger: Option<Arc<Linger>>,
}

impl AsyncExitStack {
    /// An empty stack, bound to the current tokio runtime if there is one.
    ///
    /// Remembers where it was created (`#[track_caller]`) for tracing
    /// output, and the current runtime (if any) for background cleanup.
    /// Allocates nothing.
    #[track_caller]
    pub fn new() -> Self {
        Self::with_site(Location::caller())
    }

    fn with_site(site: &'static Location<'static>) -> Self {
        Self {
            registry: Registry::default(),
            handle: Handle::try_current().ok(),
            site,
            unwind_timeout: None,
            cancellable: false,
            tracker: None,
            // With no dispatcher ever set, nothing could record a span:
            // skip the lookup (one atomic load instead; `has_been_set` is
            // what tracing's own macro expansions call, so it stays).
            span: if tracing::dispatcher::has_been_set() {
                Some(Span::current())
            } else {
                None
            },
            linger: None,
        }
    }

    /// Declares that dropping this stack while it holds entries is a normal
    /// cancellation, not a forgotten `aclose`: for a stack owned by a future
    /// that a timeout or a lost `select!` branch may drop, and for tests
    /// that drop stacks on purpose. Such a drop still runs the cleanup in
    /// the background, but its exits are told the stack was cancelled
    /// ([`AbandonCause::Cancelled`]), it is a DEBUG event instead of a WARN,
    /// and strict mode does not panic for it. A [`scope`]'s stack is
    /// always cancellable.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use tokio_exit_stack::AsyncExitStack;
    ///
    /// let request = async {
    ///     let mut stack = AsyncExitStack::new();
    ///     stack.set_cancellable(true); // a timeout may drop this future
    ///     stack.push_async_callback(|| async { /* release */ });
    ///     std::future::pending::<()>().await;
    ///     stack.aclose().await
    /// };
    /// assert!(tokio::time::timeout(Duration::from_millis(1), request).await.is_err());
    /// # }
    /// ```
    pub fn set_cancellable(&mut self, cancellable: bool) {
        self.cancellable = cancellable;
    }

    /// Has this stack's background cleanups (a drop holding entries, a
    /// cancelled `aclose`) tracked by `tracker`, the caller's own, instead
    /// of the process-wide default that [`drain`](crate::drain) waits for.
    ///
    /// Use it in a service that already shuts down through a tokio-util
    /// `TaskTracker`: `tracker.close(); tracker.wait().await` then covers
    /// the stacks' cleanups too, and `drain` neither waits for nor counts
    /// them. Stacks made by [`pop_all`](Self::pop_all) keep the tracker.
    /// Costs one reference count.
    ///
    /// Not covered: the background finish of an enter cut short (see
    /// [`finish`](crate::finish)) is tracked by `drain`, whatever the
    /// stack's tracker; the entry it leaves on the stack waits for it, so
    /// the stack's own cleanup still ends after it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tokio_util::task::TaskTracker;
    ///
    /// let tracker = TaskTracker::new();
    /// let mut stack = tokio_exit_stack::AsyncExitStack::new();
    /// stack.set_tracker(tracker.clone());
    /// stack.set_cancellable(true); // owned by a request a timeout may drop
    /// stack.push_async_callback(|| tokio::time::sleep(std::time::Duration::from_millis(5)));
    /// drop(stack); // cleanup runs in a task of `tracker`
    /// assert_eq!(tracker.len(), 1);
    /// tracker.close();
    /// tracker.wait().await;
    /// # }
    /// ```
    pub fn set_tracker(&mut self, tracker: TaskTracker) {
        self.tracker = Some(tracker);
    }

    /// Sets the close bounds (flush, lingering drain) of every stream entry
    /// of this stack that has none of its own
    /// ([`EntryBuilder::linger`]); see [`Linger`](crate::linger::Linger) for the trade-off.
    /// Stacks made by [`pop_all`](Self::pop_all) keep them.
    pub fn set_linger(&mut self, linger: Linger) {
        self.linger = Some(Arc::new(linger));
    }

    /// Where this stack was created.
    pub fn site(&self) -> &'static Location<'static> {
        self.site
    }

    /// The number of entries registered and not yet unwound.
    pub fn len(&self) -> usize {
        self.registry.len()
    }

    /// `true` when the stack holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gives every later unwind of this stack (by `aclose`, a scope's end,
    /// or in the background) a deadline `timeout` after it starts.
    /// The entry running at the deadline is abandoned with a
    /// [`TimeoutError`](crate::error::TimeoutError), and each later entry gets one
    /// poll to finish (enough for a permit or a guard) before it is
    /// abandoned too. `None` removes the deadline.
    ///
    /// Needs the runtime's time driver (`enable_time`, on by default with
    /// `#[tokio::main]`).
    pub fn set_unwind_timeout(&mut self, timeout: Option<Duration>) {
        self.unwind_timeout = timeout;
    }

    /// Options for the next registration: a label, a timeout.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// let mut stack = tokio_exit_stack::AsyncExitStack::new();
    /// stack
    ///     .entry()
    ///     .label("flush audit log")
    ///     .timeout(Duration::from_secs(1))
    ///     .push_async_callback(|| async { /* ... */ });
    /// stack.aclose().await.unwrap();
    /// # }
    /// ```
    pub fn entry(&self) -> EntryBuilder<'_> {
        EntryBuilder::new(&self.registry)
    }

    registering_methods!();

    /// Takes a keyed resource back out of the stack, its exit unregistered:
    /// from here on it is the caller's, to keep, move into a spawned task,
    /// or release. The analogue of scopeguard's `into_inner` and
    /// tokio-util's `DropGuard::disarm`.
    ///
    /// `None` if the key is of another stack (one made by
    /// [`pop_all`](Self::pop_all) keeps its entries' keys valid), or names
    /// a member of a group (a group's members are released with it).
    /// Costs a search of the entries, newest first, and the removal.
    ///
    /// ```
    /// # #[cfg(feature = "net")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use tokio::io::AsyncWriteExt;
    /// use tokio_exit_stack::{acquire, AsyncExitStack};
    ///
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let mut stack = AsyncExitStack::new();
    /// let (key, _conn) = stack
    ///     .enter_keyed(acquire(tokio::net::TcpStream::connect(listener.local_addr()?)))
    ///     .await?;
    /// // Hand the connection to a task of its own, with a stack of its own.
    /// let mut conn = stack.take(key).expect("registered here");
    /// tokio::spawn(async move { conn.write_all(b"hello").await }).await??;
    /// stack.aclose().await?; // the connection is no longer this stack's
    /// # Ok(()) }
    /// # #[cfg(not(feature = "net"))] fn main() {}
    /// ```
    pub fn take<T: 'static>(&mut self, key: Key<T>) -> Option<T> {
        self.registry.take_keyed(key.id())
    }

    /// Lends a keyed resource again, after the borrow its registration
    /// returned has ended (for example on a stack made by
    /// [`pop_all`](Self::pop_all)). `None` as for [`take`](Self::take).
    pub fn get_mut<T: 'static>(&mut self, key: &Key<T>) -> Option<&mut T> {
        self.registry.keyed_mut(key.id())
    }

    /// Moves every entry into a new stack and leaves this one empty and
    /// usable. The new stack unwinds them in their original order.
    ///
    /// Use it to keep resources past the block that acquired them: enter
    /// them all, and once the last enter succeeded, `pop_all` hands them to
    /// whatever will own them.
    #[track_caller]
    pub fn pop_all(&mut self) -> AsyncExitStack {
        let entries = self.registry.take();
        AsyncExitStack {
            registry: Registry::from(entries),
            handle: self.handle.clone(),
            site: Location::caller(),
            unwind_timeout: self.unwind_timeout,
            cancellable: false,
            tracker: self.tracker.clone(),
            span: self.span.clone(),
            linger: self.linger.clone(),
        }
    }

    /// Unwinds the stack: every entry runs, newest first, one at a time,
    /// with no pending error at the start. Returns `Ok` if no
    /// error survived, else every unsuppressed error, newest first.
    ///
    /// An empty stack, or a second `aclose`, does nothing and returns `Ok`.
    /// The stack is empty and reusable afterwards.
    ///
    /// # Cancel safety
    ///
    /// Dropping this future at any point is safe and loses nothing, and the
    /// unwind is shielded: once `aclose` is first polled, every entry runs
    /// once (the one in flight resumed, not restarted), and the entries
    /// that had not started yet run in a background task told exactly what
    /// they would have been told had this future been awaited, with
    /// [`Pending::is_detached`] set (no one will see the result); a DEBUG
    /// event says so. So an outer `tokio::time::timeout` around `aclose`
    /// does not bound cleanup that had not started, nor turn a success
    /// into a rollback: bound the cleanup itself with
    /// [`set_unwind_timeout`](Self::set_unwind_timeout) or an entry's
    /// [`timeout`](crate::EntryBuilder::timeout), and wait for the
    /// background remainder at shutdown with [`drain`](crate::drain). The
    /// stack is empty afterwards either way.
    ///
    /// # Panics
    ///
    /// If an entry panicked, the remaining entries still run, then the
    /// first panic is resumed here.
    pub async fn aclose(&mut self) -> Result<(), Error> {
        self.unwind(Chain::default, Reason::Aclose).await.map(|_| ())
    }

    /// Unwinds the stack with `error` as the pending error, as if a body
    /// had failed with it: CPython's `await stack.__aexit__(type(e), e,
    /// tb)`. For code that owns the outcome and holds the stack outside a
    /// [`scope`]: a framework layer closing a request's stack with its
    /// handler's error, a retry loop.
    ///
    /// Every exit is told `error` (or the newer errors raised since), and
    /// may suppress it. Returns `Ok(())` only if every pending error,
    /// `error` included, was suppressed; otherwise every unsuppressed
    /// error, newest first, `error` last if it is still there
    /// ([`Error::contains_given`] says whether it is). An empty stack
    /// returns `Err` holding `error` as its one link, the very object
    /// ([`Error::into_single`] gives it back). An [`Error`] given is
    /// flattened into its links, as a scope's body's is.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tokio_exit_stack::{AsyncExitStack, Flow};
    ///
    /// let mut stack = AsyncExitStack::new();
    /// stack.push_exit(|pending| {
    ///     assert_eq!(pending.error().unwrap().to_string(), "handler failed"); // roll back
    ///     Ok::<_, std::io::Error>(Flow::Propagate)
    /// });
    /// let err = stack.aclose_with(std::io::Error::other("handler failed")).await.unwrap_err();
    /// assert!(err.contains_given());
    /// let handler_error = err.into_single().unwrap(); // the very object
    /// assert!(handler_error.is::<std::io::Error>());
    ///
    /// stack.push_exit(|_| Ok::<_, std::io::Error>(Flow::Suppress));
    /// assert!(stack.aclose_with(std::io::Error::other("handled")).await.is_ok());
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As [`aclose`](Self::aclose): shielded once first polled; the exits
    /// that start after this future was dropped are told `error` as they
    /// would have been.
    pub async fn aclose_with(&mut self, error: impl Into<BoxError>) -> Result<(), Error> {
        let chain = Chain::of(error.into());
        self.unwind_given(chain, Reason::Aclose).await.map(|_| ())
    }

    /// Unwinds with the caller's `chain` pending, and marks in the error
    /// whether the caller's links are still among its links.
    async fn unwind_given(&mut self, chain: Chain, reason: Reason) -> Result<Option<Cow<'static, str>>, Error> {
        let given: Vec<Link> = chain.links().to_vec();
        self.unwind(move || chain, reason).await.map_err(|mut e| {
            e.mark_given(&given);
            e
        })
    }

    /// What an unwind of this stack inherits: its site, its runtime
    /// (moved, not cloned: two atomic operations fewer per unwind; `aclose`
    /// moves it back, or clones it back if cancelled), its deadline, its
    /// tracker, its close bounds.
    #[inline(always)]
    fn origin(&mut self) -> Origin {
        Origin {
            site: self.site,
            orphaned: background::orphaned,
            handle: self.handle.take(),
            budget: self.unwind_timeout,
            tracker: self.tracker.clone(),
            linger: self.linger.clone(),
        }
    }

    /// Unwinds with `chain` pending; `Ok` carries the first entry that
    /// suppressed an error, if one did.
    ///
    /// The chain is made here, not passed in: an argument of an `async fn`
    /// is stored in its future and moved out again, which for `aclose`'s
    /// empty chain cost a stall on every call.
    async fn unwind(
        &mut self,
        chain: impl FnOnce() -> Chain,
        reason: Reason,
    ) -> Result<Option<Cow<'static, str>>, Error> {
        let chain = chain();
        let entries = self.registry.take();
        if entries.is_empty() && chain.is_empty() {
            return Ok(None);
        }
        let origin = self.origin();
        let mut run = HandBack {
            handle: &mut self.handle,
            unwind: Unwind::new(entries, chain, reason, Mode::Foreground, origin),
        };
        run.unwind.run().await;
        // Back to the stack, which stays usable.
        *run.handle = run.unwind.handle.take();
        run.unwind.finish()
    }
}

/// A foreground unwind and the stack's runtime slot it took the handle
/// from. Dropped unfinished (its `aclose` or scope was cancelled), the
/// unwind keeps the handle for its background remainder and the stack gets
/// a clone, so it stays bound to its runtime if it is used again.
struct HandBack<'a> {
    handle: &'a mut Option<Handle>,
    unwind: Unwind,
}

impl Drop for HandBack<'_> {
    fn drop(&mut self) {
        if self.handle.is_none() {
            self.handle.clone_from(&self.unwind.handle);
        }
    }
}

impl Default for AsyncExitStack {
    #[track_caller]
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for AsyncExitStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncExitStack")
            .field("entries", &self.len())
            .field("site", &format_args!("{}", self.site))
            .finish()
    }
}

impl Drop for AsyncExitStack {
    /// Never blocks: the remaining entries go to one background task on
    /// the stack's runtime (or, with no runtime left, are released with
    /// synchronous best effort and reported).
    ///
    /// # Panics
    ///
    /// Never, outside strict mode. In strict mode
    /// ([`strict::set`](crate::strict::set)) the drop of a stack holding
    /// entries, not declared [cancellable](AsyncExitStack::set_cancellable)
    /// and not part of a panic, panics here, after handing the cleanup off:
    /// the one, opt-in, exception, meant for test suites.
    fn drop(&mut self) {
        if self.registry.is_empty() {
            return; // closed, or never used: the common case
        }
        let entries = self.registry.take();
        let panicking = std::thread::panicking();
        let count = entries.len();
        let cause = if panicking {
            AbandonCause::Panicking
        } else if self.cancellable {
            AbandonCause::Cancelled
        } else {
            AbandonCause::Dropped
        };
        if cause == AbandonCause::Cancelled {
            // Cancellation is the normal life of a tokio service: the owner
            // of the timeout reports it.
            tracing::debug!(
                site = %self.site,
                entries = count,
                "exit stack cancelled; its cleanup runs in the background",
            );
        } else {
            tracing::warn!(
                site = %self.site,
                entries = count,
                "exit stack dropped without aclose; its cleanup runs in the background",
            );
        }
        let origin = self.origin();
        let mut unwind = Unwind::new(entries, Chain::default(), Reason::Drop, Mode::Background, origin);
        unwind.abandon(cause);
        unwind.chain.detach();
        unwind.parent = self.span.take();
        background::hand_off(unwind);
        if cause == AbandonCause::Dropped && strict::is_on() {
            panic!(
                "exit stack created at {} dropped without aclose while holding {count} entries \
                 (strict mode, from strict::set or {}); the cleanup still runs in the background",
                self.site,
                strict::ENV,
            );
        }
    }
}

/// A stack is itself a resource, as in Python, where an `AsyncExitStack`
/// is an async context manager: register one stack on another
/// (`outer.push_resource(inner)`, or `enter_async_context`) to hand its
/// entries to an owner that lives longer, or to nest them as a unit.
///
/// When the outer stack reaches it, the inner stack unwinds told the outer
/// pending error, exactly as its own `aclose` would, and the outer chain
/// then holds what CPython's gives for an `ExitStack` entered in another:
/// the inner errors as their own links, none twice. If an inner exit
/// suppressed the outer pending error, the inner stack suppresses it. The
/// inner stack's entries without close bounds of their own get the outer
/// entry's ([`Linger`](crate::linger::Linger)).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tokio_exit_stack::AsyncExitStack;
///
/// let mut outer = AsyncExitStack::new();
/// let inner = AsyncExitStack::new();
/// inner.callback(|| Err::<(), _>(std::io::Error::other("inner cleanup failed")));
/// outer.push_resource(inner); // unwound as one entry of `outer`
/// outer.callback(|| Err::<(), _>(std::fmt::Error));
/// let err = outer.aclose().await.unwrap_err();
/// assert_eq!(err.len(), 2); // each error its own link, newest first
/// assert!(err.oldest().is::<std::fmt::Error>());
/// assert_eq!(err.newest().to_string(), "inner cleanup failed");
/// # }
/// ```
#[async_trait::async_trait]
impl AsyncExit for AsyncExitStack {
    async fn exit(mut self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
        if self.linger.is_none() {
            self.linger = pending.linger_set().cloned();
        }
        let told = Chain::told(pending.chain().cloned(), pending.saw_error(), pending.is_detached());
        let was_pending = pending.is_err();
        match self.unwind(move || told, Reason::Nested).await {
            Ok(Some(_suppressor)) if was_pending => Ok(Flow::Suppress),
            Ok(_) => Ok(Flow::Propagate),
            // Nothing new: the pending error goes on unchanged.
            Err(e) if e.is_exactly(pending.chain().map_or(&[][..], |chain| &chain[..])) => Ok(Flow::Propagate),
            Err(e) => Err(Box::new(e)),
        }
    }

    fn label(&self) -> Cow<'static, str> {
        Cow::Owned(format!("AsyncExitStack({})", self.site))
    }

    /// Always `true`: answering from the entries would read them while
    /// this `&self` may still have lent borrows of them out.
    fn needs_runtime(&self) -> bool {
        true
    }

    /// No runtime is left: the outer stack reports this stack as a
    /// cleanup that could not run; here its sync entries still run, and
    /// its async ones get their own `abandon`.
    fn abandon(mut self: Box<Self>) {
        let entries = self.registry.take();
        let origin = Origin {
            site: self.site,
            orphaned: background::orphaned,
            handle: None,
            budget: None,
            tracker: None,
            linger: None,
        };
        let mut unwind = Unwind::new(entries, Chain::default(), Reason::Drop, Mode::Background, origin);
        unwind.abandon(AbandonCause::Dropped);
        background::abandon_nested(&mut unwind);
    }
}

/// Runs `body` with a fresh stack, then unwinds the stack with the body's
/// error as the pending error: the `async with AsyncExitStack() as stack:`
/// of this crate.
///
/// Returns the body's value when the body and every exit succeeded, and
/// otherwise every unsuppressed error, newest first, the body's last (see
/// [`Error`]).
///
/// The body's error type is [`BoxError`], so `?` works on errors of any
/// type and `Ok(value)` needs no annotation. A body that returns an
/// [`Error`] (from a nested scope) has it flattened into its links.
///
/// # When an exit suppresses the body's error
///
/// In Python a suppressed error means the `async with` block completes,
/// and the code after it runs. In Rust the scope must return a `T`, and a
/// body that failed has none: `scope` then returns an `Error` holding one
/// [`Suppressed`](crate::error::Suppressed) link, which names the entry that suppressed the body's
/// error (the suppressed error itself appears nowhere). Use
/// [`scope_suppressible`] when an exit may legitimately suppress the
/// body's error: it returns `Ok(None)` instead.
///
/// The scope's stack is created when the returned future is first polled:
/// it binds to the runtime, and to the `tracing` span, that the scope runs
/// in, so a scope built outside a runtime and awaited inside one works.
///
/// # Cancel safety
///
/// Dropping the returned future is how tokio cancels it, and is safe at
/// any point: every entry that has not finished still runs, exactly once,
/// in a background task. What the entries are told depends on when:
///
/// * **in the body** (the body had not returned): the scope was
///   abandoned ([`AbandonCause::Cancelled`]): a transaction rolls back;
/// * **during the unwind** (the body had returned): the unwind is
///   shielded: the body's outcome is final, and each exit that had not
///   started is told what it would have been told had the scope been
///   awaited (after a body that returned `Ok`, a transaction not yet
///   reached still commits), with [`Pending::is_detached`] set; the exit
///   running at the drop keeps the `Pending` it was given. An outer
///   `timeout()` therefore does not bound cleanup that had not started:
///   [`AsyncExitStack::set_unwind_timeout`] and entry timeouts do, and
///   [`drain`](crate::drain) at shutdown.
///
/// # Panics
///
/// If the body panics, the panic passes through: the stack is dropped as
/// the future is, and its entries run in the background. If an entry
/// panics, the remaining entries still run, then the panic is resumed
/// here.
///
/// ```
/// # #[cfg(feature = "net")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tokio_exit_stack::Error> {
/// use tokio::net::{TcpListener, TcpStream};
/// use tokio::io::AsyncWriteExt;
/// use tokio_exit_stack::{acquire, scope};
///
/// let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let addr = listener.local_addr().unwrap();
/// let sent: usize = scope(async |stack| {
///     let conn = stack.enter_async_context(acquire(TcpStream::connect(addr))).await?;
///     conn.write_all(b"hello").await?;
///     Ok(5)
/// })
/// .await?; // the connection is shut down cleanly here
/// assert_eq!(sent, 5);
/// # Ok(()) }
/// # #[cfg(not(feature = "net"))] fn main() {}
/// ```
///
/// An exit that suppresses the body's error:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tokio_exit_stack::{scope, Flow, error::Suppressed};
///
/// let err = scope(async |stack| {
///     stack.entry().label("ignore errors").push_exit(|_| Ok::<_, std::io::Error>(Flow::Suppress));
///     Err(std::io::Error::other("lost"))?;
///     Ok(1)
/// })
/// .await
/// .unwrap_err();
/// assert_eq!(err.downcast_ref::<Suppressed>().unwrap().by, "ignore errors");
/// # }
/// ```
#[track_caller]
pub fn scope<F, T>(body: F) -> impl Future<Output = Result<T, Error>>
where
    F: AsyncFnOnce(&mut AsyncExitStack) -> Result<T, BoxError>,
{
    let site = Location::caller();
    async move {
        match run_scope(site, body).await? {
            (Some(value), _) => Ok(value),
            (None, by) => Err(Suppressed::error(by)),
        }
    }
}

/// [`scope`] for a body whose error an exit may legitimately suppress:
/// returns `Ok(None)` when the body failed and an exit suppressed its
/// error (so the block "completes", as in Python, but has no value), and
/// otherwise what `scope` returns, in `Some`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tokio_exit_stack::Error> {
/// use tokio_exit_stack::{scope_suppressible, Flow};
///
/// let value = scope_suppressible(async |stack| {
///     stack.push_exit(|pending| {
///         // a missing cache entry is not a failure of the request
///         let missing = pending.downcast_ref::<std::io::Error>()
///             .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound);
///         Ok::<_, std::io::Error>(if missing { Flow::Suppress } else { Flow::Propagate })
///     });
///     Err(std::io::Error::from(std::io::ErrorKind::NotFound))?;
///     Ok("cached")
/// })
/// .await?;
/// assert_eq!(value, None);
/// # Ok(()) }
/// ```
#[track_caller]
pub fn scope_suppressible<F, T>(body: F) -> impl Future<Output = Result<Option<T>, Error>>
where
    F: AsyncFnOnce(&mut AsyncExitStack) -> Result<T, BoxError>,
{
    let site = Location::caller();
    async move { run_scope(site, body).await.map(|(value, _)| value) }
}

/// Runs a scope: its value (none if the body failed) and, when an exit
/// suppressed an error, the first that did.
///
/// The stack is made here, at the scope's first poll, so that it binds to
/// the runtime (and the span) the scope runs in, not where it was built.
async fn run_scope<F, T>(
    site: &'static Location<'static>,
    body: F,
) -> Result<(Option<T>, Option<Cow<'static, str>>), Error>
where
    F: AsyncFnOnce(&mut AsyncExitStack) -> Result<T, BoxError>,
{
    let mut stack = AsyncExitStack::with_site(site);
    stack.set_cancellable(true);
    match body(&mut stack).await {
        Ok(value) => {
            let by = stack.unwind(Chain::default, Reason::ScopeEnd).await?;
            Ok((Some(value), by))
        }
        // `aclose_with`'s unwind, with the body's error.
        Err(e) => Ok((None, stack.unwind_given(Chain::of(e), Reason::ScopeEnd).await?)),
    }
}

#[cfg(test)]
mod tests {
    //! The arena under Miri: `cargo +nightly miri test --lib`. No runtime:
    //! every future here finishes on its first poll.
    use super::*;
    use std::pin::pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Waker};

    fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
        }
    }

    struct Resource {
        data: Vec<u8>,
        closed: Arc<AtomicUsize>,
    }

    #[async_trait::async_trait]
    impl AsyncExit for Resource {
        async fn exit(self: Box<Self>, _: Pending) -> Result<Flow, BoxError> {
            self.closed.fetch_add(self.data.len(), Ordering::SeqCst);
            Ok(Flow::Propagate)
        }
        fn needs_runtime(&self) -> bool {
            false
        }
    }

    #[test]
    fn lent_resources_stay_valid_while_the_stack_grows_and_are_freed_once() {
        let closed = Arc::new(AtomicUsize::new(0));
        let mut stack = AsyncExitStack::new();
        {
            let a = stack.push_resource(Resource {
                data: vec![1],
                closed: closed.clone(),
            });
            let b = block_on(stack.enter_async_context(Resource {
                data: vec![2, 2],
                closed: closed.clone(),
            }))
            .unwrap();
            let c = stack.enter_context(String::from("c"));
            // grow the entry vector many times while a, b and c are borrowed
            for i in 0..100 {
                stack.callback(move || {
                    std::hint::black_box(i);
                });
                stack.push_async_callback(|| async {});
            }
            let group = stack.enter_group();
            let d = group.push_resource(Resource {
                data: vec![4; 4],
                closed: closed.clone(),
            });
            a.data.push(1);
            b.data.push(2);
            c.push('!');
            d.data.push(4);
            assert_eq!((a.data.len(), b.data.len(), c.as_str(), d.data.len()), (2, 3, "c!", 5));
        }
        let mut moved = stack.pop_all();
        block_on(moved.aclose()).unwrap();
        assert_eq!(closed.load(Ordering::SeqCst), 2 + 3 + 5);
    }

    #[test]
    fn threads_registering_on_one_stack_at_once_lose_no_entry() {
        let closed = Arc::new(AtomicUsize::new(0));
        let mut stack = AsyncExitStack::new();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (stack, closed) = (&stack, closed.clone());
                s.spawn(move || {
                    for i in 0..25 {
                        let r = stack.push_resource(Resource {
                            data: vec![t; 1],
                            closed: closed.clone(),
                        });
                        r.data.push(i);
                        stack.callback(|| {});
                    }
                });
            }
        });
        assert_eq!(stack.len(), 4 * 25 * 2);
        block_on(stack.aclose()).unwrap();
        assert_eq!(
            closed.load(Ordering::SeqCst),
            4 * 25 * 2,
            "every resource, each two bytes"
        );
    }

    #[test]
    fn keyed_resources_are_lent_again_and_taken_back_once() {
        let closed = Arc::new(AtomicUsize::new(0));
        let mut stack = AsyncExitStack::new();
        let (key, r) = stack.push_keyed(Resource {
            data: vec![1],
            closed: closed.clone(),
        });
        r.data.push(2);
        for _ in 0..10 {
            stack.callback(|| {});
        }
        let mut moved = stack.pop_all();
        moved.get_mut(&key).unwrap().data.push(3);
        let taken = moved.take(key).unwrap();
        assert_eq!(taken.data, [1, 2, 3]);
        block_on(moved.aclose()).unwrap();
        assert_eq!(closed.load(Ordering::SeqCst), 0, "taken: its exit is unregistered");
    }

    #[test]
    fn a_stack_dropped_without_a_runtime_frees_every_entry() {
        let closed = Arc::new(AtomicUsize::new(0));
        let mut stack = AsyncExitStack::new();
        stack.set_cancellable(true); // dropped on purpose, also in strict mode
        let r = stack.push_resource(Resource {
            data: vec![1, 2, 3],
            closed: closed.clone(),
        });
        r.data.clear();
        stack.push_async_callback(|| async {}); // needs a runtime: abandoned
        stack.enter_context(vec![0u8; 16]);
        drop(stack); // no runtime: synchronous best effort, and no leak
    }
}
