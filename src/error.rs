//! Errors: the final error of an unwind, the chain of pending errors it is
//! built from, and the errors the stack raises itself (timeouts, panics,
//! abandonment).
//!
//! # The chain
//!
//! An unwind threads a chain of errors through its entries, oldest first:
//! the body's error, then each error an entry raised. Every link is one
//! reference-counted allocation holding the very object that was raised, so
//! an exit that kept its [`Pending`](crate::Pending) (to chain it as the
//! `source()` of a new error, or to log it later) shares the object with
//! the chain instead of forcing a copy or a wrapper.
//!
//! When an entry raises, the chain applies two rules before the new
//! error becomes the newest link:
//!
//! * an [`Error`] (a nested stack's or scope's) is flattened into its
//!   links, so nested scopes give one flat chain;
//! * every pending link that the new errors already hold, by identity,
//!   either as themselves or somewhere in their `source()` chains, leaves
//!   the chain: the new error takes its place, and no error is reachable
//!   twice (Python's bpo-20317).

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::ops::Deref;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

/// A boxed, thread-safe error: what exits and callbacks return.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// One error of a chain, shared between the unwind, the exits that were
/// told it, and the final [`Error`].
pub(crate) type Link = Arc<BoxError>;

/// How deep a `source()` chain is walked when looking for pending links;
/// a defence against a hand-written `source()` that loops.
const MAX_CAUSES: usize = 1024;

/// Whether `a` and `b` are the same error object: the same address and
/// the same type (a wrapper's first field shares its address).
#[inline]
fn same(a: &(dyn StdError + 'static), b: &(dyn StdError + 'static)) -> bool {
    std::ptr::eq(a as *const dyn StdError, b as *const dyn StdError)
}

/// `true` if `link` is one of `error`'s causes (its `source()` chain, not
/// `error` itself). A zero-sized error has no address of its own: one of
/// the same type among the causes counts as held.
fn holds(error: &(dyn StdError + 'static), link: &(dyn StdError + 'static)) -> bool {
    let mut next = error.source();
    for _ in 0..MAX_CAUSES {
        match next {
            Some(e) if same(e, link) => return true,
            Some(e) => next = e.source(),
            None => return false,
        }
    }
    false
}

/// The unwind's pending errors, oldest first; the last is the one exits
/// are told.
#[derive(Default)]
pub(crate) struct Chain {
    links: Vec<Link>,
    /// What exits are handed: a copy of `links`, made once per change of
    /// the chain and shared by every exit told the same errors.
    told: Option<Arc<[Link]>>,
    /// Whether any error was ever pending in this scope, even if an exit
    /// suppressed it since: what [`Pending::saw_error`](crate::Pending::saw_error) reports.
    seen: bool,
    /// Whether no one will see the unwind's result (its `aclose` or scope
    /// was dropped, or its stack was): what
    /// [`Pending::is_detached`](crate::Pending::is_detached) reports.
    detached: bool,
}

impl Chain {
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether any error was ever pending, suppressed ones included.
    #[inline]
    pub(crate) fn seen(&self) -> bool {
        self.seen
    }

    /// Whether no one will see the unwind's result.
    #[inline]
    pub(crate) fn detached(&self) -> bool {
        self.detached
    }

    /// Nothing to tell an exit: no error pending or seen, not detached.
    #[inline]
    pub(crate) fn is_quiet(&self) -> bool {
        self.links.is_empty() && !self.seen && !self.detached
    }

    /// No one will see the unwind's result from now on.
    pub(crate) fn detach(&mut self) {
        self.detached = true;
    }

    /// The pending errors as exits see them, shared. Costs nothing when
    /// none is pending, and one allocation per change of the chain
    /// otherwise.
    #[inline]
    pub(crate) fn shared(&mut self) -> Option<&Arc<[Link]>> {
        if self.links.is_empty() {
            return None;
        }
        Some(self.told.get_or_insert_with(|| self.links.as_slice().into()))
    }

    /// The chain an exit was told, for a nested stack's unwind: the same
    /// links (so the outer chain recognises them when they come back),
    /// whether the outer scope saw an error, and whether it is detached.
    pub(crate) fn told(told: Option<Arc<[Link]>>, seen: bool, detached: bool) -> Self {
        Self {
            seen: seen || told.is_some(),
            detached,
            links: told.as_deref().map(<[Link]>::to_vec).unwrap_or_default(),
            told,
        }
    }

    /// The chain of a caller's own error (`aclose_with`, a scope's body):
    /// [`raise`](Self::raise)d into a new chain, flattened as any error.
    pub(crate) fn of(error: BoxError) -> Self {
        let mut chain = Self::default();
        chain.raise(error);
        chain
    }

    /// The links, oldest first.
    pub(crate) fn links(&self) -> &[Link] {
        &self.links
    }

    /// Adds what an entry (or a body) raised: see the module docs.
    pub(crate) fn raise(&mut self, error: BoxError) {
        let new: Vec<Link> = match error.downcast::<Error>() {
            Ok(several) => several.links.into_iter().rev().collect(),
            Err(one) => vec![Arc::new(one)],
        };
        self.extend(new);
    }

    /// Adds links, oldest first, each already one error.
    pub(crate) fn extend(&mut self, new: Vec<Link>) {
        self.told = None;
        self.seen = true;
        self.links
            .retain(|pending| !new.iter().any(|n| Arc::ptr_eq(n, pending) || holds(&***n, &***pending)));
        self.links.extend(new);
    }

    /// Adds one error the stack raises itself (a timeout, a panic, an
    /// abandonment): it holds no pending error.
    pub(crate) fn push(&mut self, error: BoxError) {
        self.told = None;
        self.seen = true;
        self.links.push(Arc::new(error));
    }

    /// An exit suppressed the pending error: nothing is pending any more
    /// (but the chain remembers that an error was [`seen`](Self::seen)).
    pub(crate) fn clear(&mut self) {
        self.told = None;
        self.links.clear();
    }

    pub(crate) fn retain(&mut self, keep: impl FnMut(&Link) -> bool) {
        self.told = None;
        self.links.retain(keep);
    }

    /// The final error, or `None` when nothing is pending.
    pub(crate) fn into_error(self) -> Option<Error> {
        Error::from_oldest_first(self.links)
    }
}

/// The errors an unwind did not suppress, newest first. Never empty.
///
/// Returned by [`aclose`](crate::AsyncExitStack::aclose) and
/// [`scope`](crate::scope). Each link is the very error object that was
/// raised (by the scope's body, by an exit, or by the stack itself: a
/// [`TimeoutError`], a [`PanicError`]), in the order Python would chain
/// them through `__context__`: the newest first, the body's last.
///
/// * [`iter`](Self::iter) walks the links, newest first; each downcasts to
///   its own type. [`downcast_ref`](Self::downcast_ref) finds the newest
///   link of a type.
/// * A link's own causes are reached through its `source()`. An exit that
///   chained the pending error as the `source()` of a new error (Python's
///   `raise New from exc`) gives one link, the new error, with the older
///   error as its cause: no error is reachable twice.
/// * An `Error` returned by a scope's body or by an exit (a nested scope's
///   or stack's) is flattened into its links, so nested scopes give one
///   flat chain, as nested `async with` blocks do in Python.
/// * With one link, `Display` and `source()` are that error's own: it is
///   not wrapped in a list of one. With several, `Display` names each
///   link's message once, newest first, and `source()` is `None` (reach
///   the links with `iter`), so an error reporter that walks `source()`
///   prints each message once.
/// * The alternate form (`{:#}`) prints every link followed by its causes
///   (`message: cause: cause`), each error once.
///
/// # Examples
///
/// Walk the whole chain and downcast any link:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tokio_exit_stack::{AsyncExitStack, Error};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("flush failed")]
/// struct FlushFailed(#[source] std::io::Error);
///
/// let mut stack = AsyncExitStack::new();
/// stack.callback(|| Err::<(), _>(std::fmt::Error)); // runs last: LIFO
/// stack.callback(|| Err::<(), _>(FlushFailed(std::io::Error::other("disk full"))));
/// let err: Error = stack.aclose().await.unwrap_err();
///
/// assert_eq!(err.len(), 2);
/// assert!(err.newest().is::<std::fmt::Error>()); // the last raised
/// assert!(err.oldest().is::<FlushFailed>());
/// for link in err.iter() {
///     let mut cause = Some(link as &(dyn std::error::Error + 'static));
///     while let Some(e) = cause {
///         println!("{e}");
///         cause = e.source();
///     }
/// }
/// let flush = err.downcast_ref::<FlushFailed>().unwrap();
/// assert_eq!(flush.0.to_string(), "disk full");
/// assert_eq!(
///     format!("{err:#}"),
///     "2 errors while unwinding, newest first: an error occurred when formatting an argument; \
///      then flush failed: disk full",
/// );
/// # }
/// ```
///
/// Nested scopes give one flat chain:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tokio_exit_stack::{scope, Error};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("key error")]
/// struct KeyError;
/// #[derive(Debug, thiserror::Error)]
/// #[error("value error")]
/// struct ValueError;
///
/// async fn inner() -> Result<(), Error> {
///     scope(async |stack| {
///         stack.callback(|| Err::<(), _>(ValueError));
///         Err(KeyError)?
///     })
///     .await
/// }
///
/// let err = scope(async |stack| {
///     stack.push_exit(|pending| {
///         // the outer exit is told the inner scope's newest error
///         assert!(pending.downcast_ref::<ValueError>().is_some());
///         Ok::<_, Error>(tokio_exit_stack::Flow::Propagate)
///     });
///     inner().await?;
///     Ok(())
/// })
/// .await
/// .unwrap_err();
/// let names: Vec<String> = err.iter().map(|e| e.to_string()).collect();
/// assert_eq!(names, ["value error", "key error"]);
/// # }
/// ```
pub struct Error {
    /// Newest first; at least one link.
    links: Vec<Link>,
    /// Whether the error a caller handed to the unwind (`aclose_with`, a
    /// scope's body) is still among the links.
    given: bool,
}

impl Error {
    /// Whether this error holds exactly `oldest_first`, the very links in
    /// that order, and nothing else.
    pub(crate) fn is_exactly(&self, oldest_first: &[Link]) -> bool {
        self.links.len() == oldest_first.len()
            && self
                .links
                .iter()
                .rev()
                .zip(oldest_first)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// Builds the final error from links stored oldest first.
    pub(crate) fn from_oldest_first(mut links: Vec<Link>) -> Option<Self> {
        if links.is_empty() {
            return None;
        }
        links.reverse();
        Some(Self { links, given: false })
    }

    /// How many links the chain has (at least one).
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Always `false`: an `Error` holds at least one error. Present so that
    /// `len` has its usual companion.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Every link, newest first: each is the very object that was raised.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &(dyn StdError + Send + Sync + 'static)> {
        self.links.iter().map(|e| &***e)
    }

    /// The newest link: the last error raised.
    pub fn newest(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &**self.links[0]
    }

    /// The oldest link: the body's error, when the body failed.
    pub fn oldest(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &**self.links[self.links.len() - 1]
    }

    /// The newest link of type `E`, if any. (Causes of a link are reached
    /// through the link's own `source()`.)
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        self.iter().find_map(|e| e.downcast_ref::<E>())
    }

    /// `true` if any link is an `E`.
    pub fn is<E: StdError + 'static>(&self) -> bool {
        self.downcast_ref::<E>().is_some()
    }

    /// `true` when the error given to
    /// [`aclose_with`](crate::AsyncExitStack::aclose_with) (or returned by a
    /// [`scope`](crate::scope)'s body) is still among the links: no exit
    /// suppressed it, and no exit replaced it with a new error holding it
    /// as its cause. With an [`Error`] given, flattened into several
    /// links, `true` while any of them is.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tokio_exit_stack::AsyncExitStack;
    ///
    /// let mut stack = AsyncExitStack::new();
    /// stack.callback(|| Err::<(), _>(std::fmt::Error)); // a cleanup that fails too
    /// let err = stack.aclose_with(std::io::Error::other("handler failed")).await.unwrap_err();
    /// assert!(err.contains_given());
    /// assert_eq!(err.len(), 2);
    /// assert_eq!(err.oldest().to_string(), "handler failed");
    /// # }
    /// ```
    pub fn contains_given(&self) -> bool {
        self.given
    }

    /// Marks whether any of `given` (a caller's links) is among the links.
    pub(crate) fn mark_given(&mut self, given: &[Link]) {
        self.given = self.links.iter().any(|l| given.iter().any(|g| Arc::ptr_eq(l, g)));
    }

    /// `true` when some cleanup was cut off by a timeout after it had
    /// started (a [`TimeoutError`] link): what it did is unknown. A
    /// transaction's commit may have been applied though the scope failed;
    /// check before retrying.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use tokio_exit_stack::AsyncExitStack;
    ///
    /// let mut stack = AsyncExitStack::new();
    /// stack
    ///     .entry()
    ///     .timeout(Duration::from_millis(200))
    ///     .push_async_callback(|| tokio::time::sleep(Duration::from_secs(1))); // a slow COMMIT, say
    /// let err = stack.aclose().await.unwrap_err();
    /// assert!(err.outcome_unknown(), "{err}");
    /// # }
    /// ```
    pub fn outcome_unknown(&self) -> bool {
        self.is::<TimeoutError>()
    }

    /// The one error, owned, when the chain has exactly one link and no
    /// exit still holds it (an exit that kept its `Pending` past the
    /// unwind shares it); otherwise `self`, unchanged.
    pub fn into_single(mut self) -> Result<BoxError, Self> {
        if self.links.len() != 1 {
            return Err(self);
        }
        match self.links.pop().map(Arc::try_unwrap) {
            Some(Ok(error)) => Ok(error),
            Some(Err(shared)) => {
                self.links.push(shared);
                Err(self)
            }
            None => Err(self),
        }
    }

    /// Writes one link and its causes, skipping any error already written.
    fn write_with_causes(
        f: &mut fmt::Formatter<'_>,
        link: &(dyn StdError + 'static),
        seen: &mut Vec<*const dyn StdError>,
    ) -> fmt::Result {
        let mut next = Some(link);
        let mut first = true;
        for _ in 0..MAX_CAUSES {
            let Some(e) = next else { break };
            // Zero-sized errors share one address: each is written.
            let zero_sized = std::mem::size_of_val(e) == 0;
            if zero_sized || !seen.iter().any(|s| std::ptr::eq(*s, e as *const dyn StdError)) {
                if !zero_sized {
                    seen.push(e as *const dyn StdError);
                }
                if !first {
                    f.write_str(": ")?;
                }
                write!(f, "{e}")?;
                first = false;
            }
            next = e.source();
        }
        Ok(())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            let mut seen = Vec::new();
            if self.links.len() > 1 {
                write!(f, "{} errors while unwinding, newest first: ", self.links.len())?;
            }
            for (i, link) in self.iter().enumerate() {
                if i > 0 {
                    f.write_str("; then ")?;
                }
                Self::write_with_causes(f, link, &mut seen)?;
            }
            return Ok(());
        }
        if let [single] = self.links.as_slice() {
            return fmt::Display::fmt(&***single, f);
        }
        write!(f, "{} errors while unwinding, newest first: ", self.links.len())?;
        for (i, e) in self.iter().enumerate() {
            if i > 0 {
                f.write_str("; then ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [single] = self.links.as_slice() {
            return fmt::Debug::fmt(&***single, f);
        }
        f.debug_list().entries(self.iter()).finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self.links.as_slice() {
            [single] => single.source(),
            _ => None,
        }
    }
}

/// So that `stack.aclose().await?` works in a function returning
/// `io::Result`.
///
/// * One link that is an `io::Error` comes back as itself when no exit
///   still holds it; otherwise as a new `io::Error` of the same kind
///   wrapping the `Error`.
/// * One [`ResourceError`] gives an `io::Error` of its source's kind,
///   wrapping the `Error`.
/// * Anything else, several links included, gives
///   [`ErrorKind::Other`](io::ErrorKind::Other) wrapping the `Error`.
impl From<Error> for io::Error {
    fn from(mut error: Error) -> io::Error {
        if let [single] = error.links.as_slice() {
            if let Some(io) = single.downcast_ref::<io::Error>() {
                let kind = io.kind();
                if let Some(link) = error.links.pop() {
                    match Arc::try_unwrap(link) {
                        Ok(boxed) => match boxed.downcast::<io::Error>() {
                            Ok(io) => return *io,
                            Err(other) => error.links.push(Arc::new(other)),
                        },
                        Err(shared) => error.links.push(shared),
                    }
                }
                return io::Error::new(kind, error);
            }
            if let Some(resource) = single.downcast_ref::<ResourceError>() {
                return io::Error::new(resource.source.kind(), error);
            }
        }
        io::Error::other(error)
    }
}

/// A shared handle to one pending error, for an exit that keeps it: as
/// the `source()` of a new error it raises (Python's `raise New from exc`),
/// or to log it later. From [`Pending::cause`](crate::Pending::cause).
///
/// It derefs to the error itself, and deliberately does not implement
/// `std::error::Error`: a `#[source]` field of this type (thiserror) then
/// hands out the very error object the unwind holds, so the unwind sees
/// that the new error replaces it and no error appears twice in the final
/// [`Error`]. Cloning costs one atomic increment.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tokio_exit_stack::{scope, error::Cause, Error, Flow};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("rollback failed")]
/// struct RollbackFailed {
///     #[source]
///     cause: Cause,
/// }
///
/// let err: Error = scope(async |stack| {
///     stack.push_exit(|pending| match pending.cause() {
///         Some(cause) => Err(RollbackFailed { cause }),
///         None => Ok(Flow::Propagate),
///     });
///     Err(std::io::Error::other("write refused"))?;
///     Ok(())
/// })
/// .await
/// .unwrap_err();
/// assert_eq!(err.len(), 1, "the body's error is the new error's cause, not a second link");
/// assert_eq!(format!("{err:#}"), "rollback failed: write refused");
/// # }
/// ```
#[derive(Clone)]
pub struct Cause(pub(crate) Link);

impl Deref for Cause {
    type Target = dyn StdError + Send + Sync + 'static;
    fn deref(&self) -> &Self::Target {
        &**self.0
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self.0, f)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self.0, f)
    }
}

/// The error [`scope`](crate::scope) returns when an exit suppressed the
/// body's error: the body failed, so there is no value to return. Names
/// the entry that suppressed it; the suppressed error itself appears
/// nowhere. Use [`scope_suppressible`](crate::scope_suppressible) to get
/// `Ok(None)` instead.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the scope's body failed and {by} suppressed its error, so the scope has no value")]
pub struct Suppressed {
    /// The entry that suppressed the body's error: its label, or its type.
    pub by: Cow<'static, str>,
}

impl Suppressed {
    pub(crate) fn error(by: Option<Cow<'static, str>>) -> Error {
        let by = by.unwrap_or(Cow::Borrowed("an exit"));
        Error {
            links: vec![Arc::new(Box::new(Suppressed { by }))],
            given: false,
        }
    }
}

/// Why a stack was unwound without `aclose`.
///
/// An unwind that had begun (`aclose` called, a scope's body returned) is
/// never abandoned: dropping the future that drives it leaves what the
/// remaining exits are told as it was (see
/// [`Pending::is_detached`](crate::Pending::is_detached)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AbandonCause {
    /// The stack was dropped while still holding entries.
    Dropped,
    /// The stack was dropped by a panic unwinding through its owner.
    Panicking,
    /// The future owning the stack was dropped before its unwind began: a
    /// scope cancelled in its body, or a stack declared
    /// [cancellable](crate::AsyncExitStack::set_cancellable) and dropped.
    Cancelled,
    /// The resource comes from an enter whose caller was cancelled before
    /// the enter returned it: the stack finished the enter in the
    /// background and releases the resource, which no one ever used (see
    /// [`AsyncEnter::enter_finishing`](crate::AsyncEnter::enter_finishing)).
    EnterCancelled,
}

impl fmt::Display for AbandonCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dropped => "dropped without aclose",
            Self::Panicking => "dropped while a panic unwound through it",
            Self::Cancelled => "its owner was cancelled",
            Self::EnterCancelled => "the enter of this resource was cancelled before it returned it",
        })
    }
}

/// The pending error that exits see when their stack was abandoned: the
/// analogue of asyncio's `CancelledError`.
///
/// Check for it with [`Pending::is_abandoned`](crate::Pending::is_abandoned).
#[derive(Debug, Clone, thiserror::Error)]
#[error("exit stack created at {site} was abandoned: {cause}")]
pub struct Abandoned {
    /// What happened to the stack.
    pub cause: AbandonCause,
    /// Where the stack was created.
    pub site: &'static Location<'static>,
}

/// An exit that did not finish within its timeout (the entry's own, its
/// group's, or the unwind's) and was cut off: **its outcome is unknown.**
///
/// The stack polls every exit before it looks at the exit's timer, so an
/// exit cut off by a timeout had always started, and may have done what
/// it exists to do before it was cut: a transaction's `COMMIT` may have
/// reached the database and been applied, a TLS `close_notify` may have
/// been written, a file's buffer partly flushed. Do not treat this error
/// as "it did not happen" and retry blindly: a retried insert may insert
/// twice. Check the effect first (an idempotency key, a read-back), or
/// leave such an exit without a timeout shorter than the work it bounds.
/// [`Error::outcome_unknown`] tells a caller whether any link is one.
///
/// The exit's future (and the resource it owned) is dropped when it is
/// cut off.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cleanup of {resource} timed out after {after:?} and was cut off: its outcome is unknown")]
pub struct TimeoutError {
    /// The resource whose exit timed out.
    pub resource: Cow<'static, str>,
    /// How long it was given.
    pub after: Duration,
}

/// An exit that panicked. The remaining entries still ran;
/// `aclose` resumes the panic once they have.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cleanup of {resource} panicked: {message}")]
pub struct PanicError {
    /// The resource whose exit panicked.
    pub resource: Cow<'static, str>,
    /// The panic message, when it was a string.
    pub message: String,
}

/// A resource's release failed: which resource, which step, and
/// the I/O error underneath in `source()`.
#[derive(Debug, thiserror::Error)]
#[error("{operation} of {resource} failed during cleanup")]
pub struct ResourceError {
    /// The resource, e.g. `TcpStream(127.0.0.1:5000)` or `File(/tmp/a)`.
    pub resource: String,
    /// The step that failed: `flush`, `shutdown`, `sync`, `kill`, ...
    pub operation: &'static str,
    /// What the operating system said.
    #[source]
    pub source: std::io::Error,
}

impl ResourceError {
    /// Builds the error: `operation` of `resource` failed with `source`.
    pub fn new(resource: impl Into<String>, operation: &'static str, source: std::io::Error) -> Self {
        Self {
            resource: resource.into(),
            operation,
            source,
        }
    }
}

#[cfg(feature = "rt")]
/// A task the stack awaited failed: it panicked, or something else
/// cancelled it.
#[cfg_attr(docsrs, doc(cfg(feature = "rt")))]
#[derive(Debug, thiserror::Error)]
#[error("task {resource} failed")]
pub struct TaskError {
    /// The task's handle type.
    pub resource: &'static str,
    /// What the runtime reported.
    #[source]
    pub source: tokio::task::JoinError,
}

/// The message of a caught panic, for reports.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
