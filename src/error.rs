//! Errors: the final error of an unwind, and the errors the stack raises
//! itself (timeouts, panics, abandonment).
//!
//! The shape follows SPEC S14: every error that was not suppressed is kept,
//! newest first (newest entry error, then the one it replaced, ..., then
//! the body's error); each can be reached and downcast to its own type; a
//! single error behaves as itself (`Display`, `source()` and downcasting go
//! straight to it).

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

/// A boxed, thread-safe error: what exits and callbacks return.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The errors an unwind did not suppress, newest first. Never empty.
///
/// Returned by [`aclose`](crate::AsyncExitStack::aclose) and
/// [`scope`](crate::scope).
///
/// * [`iter`](Self::iter) walks every error, newest first; each is the
///   entry's (or the body's) own error and downcasts to its own type.
/// * With one error, `Display` and `source()` are that error's own: it is
///   not wrapped in a list of one.
/// * With several, `Display` lists each top-level message newest first and
///   `source()` is the newest error.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tokio_exit_stack::AsyncExitStack;
///
/// let mut stack = AsyncExitStack::new();
/// stack.callback(|| Err::<(), _>(std::io::Error::other("runs last")));
/// stack.callback(|| Err::<(), _>(std::fmt::Error)); // runs first: LIFO
/// let err = stack.aclose().await.unwrap_err();
/// assert_eq!(err.len(), 2);
/// assert!(err.newest().is::<std::io::Error>()); // newest first
/// assert!(err.oldest().is::<std::fmt::Error>());
/// assert_eq!(err.downcast_ref::<std::io::Error>().unwrap().to_string(), "runs last");
/// # }
/// ```
pub struct Error {
    /// Newest first; at least one element.
    chain: Vec<BoxError>,
}

impl Error {
    /// Builds the final error from a chain stored oldest first.
    pub(crate) fn from_oldest_first(links: Vec<Arc<BoxError>>) -> Option<Self> {
        if links.is_empty() {
            return None;
        }
        let chain = links
            .into_iter()
            .rev()
            .map(|link| match Arc::try_unwrap(link) {
                Ok(error) => error,
                Err(shared) => Box::new(SharedError(shared)) as BoxError,
            })
            .collect();
        Some(Self { chain })
    }

    /// How many errors survived the unwind (at least one).
    pub fn len(&self) -> usize {
        self.chain.len()
    }

    /// Always `false`: an `Error` holds at least one error. Present so that
    /// `len` has its usual companion.
    pub fn is_empty(&self) -> bool {
        self.chain.is_empty()
    }

    /// Every error, newest first.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &(dyn StdError + Send + Sync + 'static)> {
        self.chain.iter().map(|e| &**e)
    }

    /// The newest error: the last one raised.
    pub fn newest(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.chain[0]
    }

    /// The oldest error: the body's, when the body failed.
    pub fn oldest(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.chain[self.chain.len() - 1]
    }

    /// The newest error of type `E`, if any.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        self.iter().find_map(|e| e.downcast_ref::<E>())
    }

    /// `true` if any error in the chain is an `E`.
    pub fn is<E: StdError + 'static>(&self) -> bool {
        self.downcast_ref::<E>().is_some()
    }

    /// Every error, owned, newest first.
    pub fn into_errors(self) -> Vec<BoxError> {
        self.chain
    }

    /// The one error, owned, when there is exactly one; otherwise `self`.
    pub fn into_single(mut self) -> Result<BoxError, Self> {
        if self.chain.len() == 1 {
            Ok(self.chain.remove(0))
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [single] = self.chain.as_slice() {
            return fmt::Display::fmt(single, f);
        }
        write!(f, "{} errors while unwinding, newest first: ", self.chain.len())?;
        for (i, e) in self.chain.iter().enumerate() {
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
        if let [single] = self.chain.as_slice() {
            return fmt::Debug::fmt(single, f);
        }
        f.debug_list().entries(self.chain.iter()).finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self.chain.as_slice() {
            [single] => single.source(),
            [newest, ..] => Some(&**newest),
            [] => None,
        }
    }
}

/// An error that an exit kept a reference to past its unwind, so it could
/// not be handed back by value. Displays and chains as the original.
struct SharedError(Arc<BoxError>);

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self.0, f)
    }
}
impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self.0, f)
    }
}
impl StdError for SharedError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

/// Why a stack was unwound without `aclose`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AbandonCause {
    /// The stack was dropped while still holding entries.
    Dropped,
    /// The stack was dropped by a panic unwinding through its owner.
    Panicking,
    /// An `aclose()` or scope future was dropped before it finished.
    Cancelled,
}

impl fmt::Display for AbandonCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dropped => "dropped without aclose",
            Self::Panicking => "dropped while a panic unwound through it",
            Self::Cancelled => "its unwind was cancelled",
        })
    }
}

/// The pending error that exits see when their stack was abandoned (SPEC
/// S20, S21): the analogue of asyncio's `CancelledError`.
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

/// An exit that did not finish in time and was abandoned (SPEC S19).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cleanup of {resource} timed out after {after:?} and was abandoned")]
pub struct TimeoutError {
    /// The resource whose exit timed out.
    pub resource: Cow<'static, str>,
    /// How long it was given.
    pub after: Duration,
}

/// An exit that panicked (SPEC S18). The remaining entries still ran;
/// `aclose` resumes the panic once they have.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cleanup of {resource} panicked: {message}")]
pub struct PanicError {
    /// The resource whose exit panicked.
    pub resource: Cow<'static, str>,
    /// The panic message, when it was a string.
    pub message: String,
}

/// A resource's release failed (SPEC S32): which resource, which step, and
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
