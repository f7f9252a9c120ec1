//! Concurrent groups: many similar resources (the connections of a
//! pool) registered as one entry whose members close concurrently.
//!
//! A group takes its place in the stack's LIFO order like any entry; when
//! its turn comes, every member's exit starts at once, each told the same
//! pending error, and the group finishes when the last member has. Member
//! outcomes are then folded into the pending error newest member first, as
//! if they had run in sequence, so every member error is kept and the
//! result does not depend on which finished first.

use std::future::Future;

use crate::entry::Registry;
use crate::error::BoxError;
use crate::stack::EntryBuilder;
use crate::traits::{AsyncEnter, AsyncExit, CallbackOutput, Flow, Pending};

/// A set of entries that close concurrently, registered on a stack with
/// [`AsyncExitStack::enter_group`](crate::AsyncExitStack::enter_group).
///
/// Use it for many independent resources of one kind: closing 1,000 pool
/// connections one at a time takes 1,000 round trips, concurrently it takes
/// one. Plain entries and groups keep LIFO order among themselves; inside a
/// group there is no order.
///
/// Members are registered exactly as on the stack, with the same methods
/// (each lends the resource back), and are unwound with the group. Each
/// member may have its own label, timeout and close bounds through
/// [`entry`](Self::entry).
///
/// Costs one allocation for the group, one per member, and a
/// `FuturesUnordered` of the members' exit futures at unwind.
///
/// ```
/// # #[cfg(feature = "net")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use tokio::net::{TcpListener, TcpStream};
/// use tokio_exit_stack::{acquire, AsyncExitStack};
///
/// let listener = TcpListener::bind("127.0.0.1:0").await?;
/// let addr = listener.local_addr()?;
/// let mut stack = AsyncExitStack::new();
/// let pool = stack.enter_group();
/// let mut conns = Vec::new();
/// for _ in 0..8 {
///     conns.push(pool.enter_async_context(acquire(TcpStream::connect(addr))).await?);
/// }
/// assert_eq!(pool.len(), 8);
/// stack.aclose().await?; // the 8 connections shut down concurrently
/// # Ok(()) }
/// # #[cfg(not(feature = "net"))] fn main() {}
/// ```
///
/// A group only ever lives inside its stack, which lends it out by shared
/// reference: it cannot be built, moved out or swapped away, so no member
/// can escape its exit.
pub struct ExitGroup {
    pub(crate) registry: Registry,
}

impl std::fmt::Debug for ExitGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitGroup").field("members", &self.len()).finish()
    }
}

impl ExitGroup {
    pub(crate) fn new() -> Self {
        Self {
            registry: Registry::default(),
        }
    }

    /// How many members the group holds.
    pub fn len(&self) -> usize {
        self.registry.len()
    }

    /// `true` when the group has no members.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn needs_runtime(&self) -> bool {
        self.registry.needs_runtime()
    }

    /// Options (label, timeout, close bounds) for the next member.
    pub fn entry(&self) -> EntryBuilder<'_> {
        self.registry.entry()
    }

    /// Enters `cm` as a member; see
    /// [`AsyncExitStack::enter_async_context`](crate::AsyncExitStack::enter_async_context).
    pub async fn enter_async_context<C: AsyncEnter>(&self, cm: C) -> Result<&mut C::Resource, C::Error> {
        self.entry().enter_async_context(cm).await
    }

    /// Registers an already open resource as a member; see
    /// [`AsyncExitStack::push_resource`](crate::AsyncExitStack::push_resource).
    pub fn push_resource<T: AsyncExit>(&self, resource: T) -> &mut T {
        self.entry().push_resource(resource)
    }

    /// Registers `value` (cleanup: its `Drop`) as a member; see
    /// [`AsyncExitStack::enter_context`](crate::AsyncExitStack::enter_context).
    pub fn enter_context<T: Send + 'static>(&self, value: T) -> &mut T {
        self.entry().enter_context(value)
    }

    /// Registers an async exit closure as a member; see
    /// [`AsyncExitStack::push_async_exit`](crate::AsyncExitStack::push_async_exit).
    pub fn push_async_exit<F, Fut, E>(&self, exit: F)
    where
        F: FnOnce(Pending) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Flow, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.entry().push_async_exit(exit);
    }

    /// Registers a synchronous exit closure as a member; see
    /// [`AsyncExitStack::push_exit`](crate::AsyncExitStack::push_exit).
    pub fn push_exit<F, E>(&self, exit: F)
    where
        F: FnOnce(&Pending) -> Result<Flow, E> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.entry().push_exit(exit);
    }

    /// Registers an async callback as a member; see
    /// [`AsyncExitStack::push_async_callback`](crate::AsyncExitStack::push_async_callback).
    pub fn push_async_callback<F, Fut>(&self, callback: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: CallbackOutput,
    {
        self.entry().push_async_callback(callback);
    }

    /// Registers a synchronous callback as a member; see
    /// [`AsyncExitStack::callback`](crate::AsyncExitStack::callback).
    pub fn callback<F, R>(&self, callback: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: CallbackOutput + 'static,
    {
        self.entry().callback(callback);
    }

    /// Registers a nested group as a member: its members close at the same
    /// time as this group's (groups nest by flattening), each bounded by
    /// the nested group's timeout if it has one.
    pub fn enter_group(&self) -> &ExitGroup {
        self.entry().enter_group()
    }
}
