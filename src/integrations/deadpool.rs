//! deadpool's managed objects: returned to the pool when the scope
//! succeeded, detached and closed when it did not.

use std::any::type_name;
use std::borrow::Cow;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use ::deadpool::managed::{Manager, Object, Pool, PoolError, TimeoutType, Timeouts};

use crate::error::{AbandonCause, Abandoned, BoxError};
use crate::traits::{AsyncEnter, AsyncExit, Entering, Finish, Flow, Pending};

/// A pooled object whose connection has an exit of its own (a `TcpStream`,
/// a TLS stream, a type of yours implementing [`AsyncExit`]):
///
/// * **the scope succeeded, and saw no error on the way**: the object
///   returns to the pool (dropped, as deadpool does; the pool's `recycle`
///   runs on its next checkout). No task, no wait.
/// * **an error was raised in the scope** (the scope failed, was
///   abandoned, or failed and had its error suppressed by a newer exit:
///   [`Pending::saw_error`]): the object is detached from the pool
///   (`Object::take`; the pool's slot is free at once, and the pool opens
///   a new connection when one is next needed), then closed through the
///   connection's own exit with the same [`Pending`]: a connection whose
///   request saw an error (half a reply, session state, an open
///   transaction) is never handed to another request, and its peer still
///   sees a clean close. A newer exit that suppresses the error makes the
///   scope a success for a transaction, not for this connection.
/// * **no runtime left**: detached, then the connection's own best effort
///   ([`AsyncExit::abandon`]).
/// * **an object produced by a checkout whose caller was cancelled**
///   ([`get`], finished in the background): never lent to anyone, so it
///   returns to the pool.
///
/// For a connection type without an exit, wrap the object in
/// [`DetachOnError`].
///
/// ```
/// # #[cfg(feature = "net")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use deadpool::managed::{Manager, Metrics, Pool, RecycleResult};
/// use tokio::net::TcpStream;
/// use tokio_exit_stack::{acquire, scope};
///
/// struct Backend(std::net::SocketAddr);
///
/// impl Manager for Backend {
///     type Type = TcpStream;
///     type Error = std::io::Error;
///     async fn create(&self) -> std::io::Result<TcpStream> { TcpStream::connect(self.0).await }
///     async fn recycle(&self, _: &mut TcpStream, _: &Metrics) -> RecycleResult<std::io::Error> { Ok(()) }
/// }
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let pool = Pool::<Backend>::builder(Backend(listener.local_addr()?)).max_size(4).build()?;
///
/// scope(async |stack| {
///     let _conn = stack.enter_async_context(acquire(pool.get())).await?;
///     Ok(()) // returned to the pool
/// })
/// .await?;
/// assert_eq!(pool.status().available, 1);
///
/// let failed = scope(async |stack| {
///     let _conn = stack.enter_async_context(acquire(pool.get())).await?;
///     Err(std::io::Error::other("bad reply"))?; // detached, shut down, drained
///     Ok(())
/// })
/// .await;
/// assert!(failed.is_err());
/// assert_eq!(pool.status().size, 0);
/// # Ok(()) }
/// # #[cfg(not(feature = "net"))] fn main() {}
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "deadpool")))]
#[async_trait::async_trait]
impl<M> AsyncExit for Object<M>
where
    M: Manager + 'static,
    M::Type: AsyncExit,
{
    async fn exit(self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
        if !pending.saw_error() || never_lent(&pending) {
            drop(self); // back to the pool
            return Ok(Flow::Propagate);
        }
        let connection = Object::take(*self);
        tracing::debug!(resource = %connection.label(), "pooled connection detached");
        Box::new(connection).exit(pending).await
    }

    fn label(&self) -> Cow<'static, str> {
        Cow::Owned(format!("pooled {}", (**self).label()))
    }

    fn abandon(self: Box<Self>) {
        Box::new(Object::take(*self)).abandon();
    }
}

/// A pooled object whose connection type has no exit of its own: returned
/// to the pool when the scope succeeded and saw no error, detached from it
/// and dropped when an error was raised in the scope (the scope failed,
/// was abandoned, or a newer exit suppressed its error:
/// [`Pending::saw_error`]) or with no runtime left, so a connection whose
/// request saw an error is never reused: the next checkout never gets its
/// session state or an open transaction.
///
/// It derefs to the [`Object`], which derefs to the connection. Wrapping
/// costs nothing; the exit needs no runtime, so a stack dropped holding
/// only such entries spawns no task.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use deadpool::managed::{Manager, Metrics, Pool, RecycleResult};
/// use tokio_exit_stack::{scope, deadpool::DetachOnError};
///
/// struct Counter;
///
/// impl Manager for Counter {
///     type Type = Vec<u8>; // a connection with no exit of its own
///     type Error = std::io::Error;
///     async fn create(&self) -> std::io::Result<Vec<u8>> { Ok(Vec::new()) }
///     async fn recycle(&self, _: &mut Vec<u8>, _: &Metrics) -> RecycleResult<std::io::Error> { Ok(()) }
/// }
///
/// let pool = Pool::<Counter>::builder(Counter).max_size(4).build()?;
/// let failed = scope(async |stack| {
///     let buf = stack.push_resource(DetachOnError(pool.get().await?));
///     buf.push(1);
///     Err(std::io::Error::other("half written"))?; // never reused
///     Ok(())
/// })
/// .await;
/// assert!(failed.is_err());
/// assert_eq!(pool.status().size, 0);
/// # Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "deadpool")))]
pub struct DetachOnError<M: Manager>(pub Object<M>);

impl<M: Manager> fmt::Debug for DetachOnError<M>
where
    Object<M>: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DetachOnError").field(&self.0).finish()
    }
}

impl<M: Manager> Deref for DetachOnError<M> {
    type Target = Object<M>;
    fn deref(&self) -> &Object<M> {
        &self.0
    }
}

impl<M: Manager> DerefMut for DetachOnError<M> {
    fn deref_mut(&mut self) -> &mut Object<M> {
        &mut self.0
    }
}

#[async_trait::async_trait]
impl<M> AsyncExit for DetachOnError<M>
where
    M: Manager + 'static,
{
    async fn exit(self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
        if pending.saw_error() {
            drop(Object::take(self.0));
        }
        Ok(Flow::Propagate)
    }

    fn label(&self) -> Cow<'static, str> {
        Cow::Borrowed(type_name::<M::Type>())
    }

    fn needs_runtime(&self) -> bool {
        false
    }

    fn abandon(self: Box<Self>) {
        drop(Object::take(self.0));
    }
}

/// Whether `pending` says the object was produced by an enter whose caller
/// was cancelled, so that no one ever used it.
fn never_lent(pending: &Pending) -> bool {
    pending
        .downcast_ref::<Abandoned>()
        .is_some_and(|a| a.cause == AbandonCause::EnterCancelled)
}

/// Checks an object out of `pool` when entered into a stack: the object
/// returns to the pool when the scope succeeded and saw no error, and is
/// detached and closed through its connection's exit otherwise (see the
/// exit of [`Object`]).
///
/// It owns a clone of the pool (one atomic increment), so that a checkout
/// cut short can be finished in the background.
///
/// # Cancel safety
///
/// * **the pool has room** (fewer checkouts in progress or held than its
///   `max_size`): the checkout (taking an idle object and recycling it, or
///   creating a new connection) is finished if the caller's future is
///   dropped, so that a connection half made (a TLS handshake under way) is
///   completed, never dropped half open; the object, which no one ever
///   used, then returns to the pool. Costs one allocation (the checkout's
///   future is boxed). Should another task take the room first, the
///   checkout waits in line within that finished part, bounded by
///   [`FINISH_TIMEOUT`](crate::finish::FINISH_TIMEOUT).
/// * **the pool is full**: the checkout waits in deadpool's fair queue,
///   and a caller cancelled while it waits leaves the queue at once (a dead
///   waiter never keeps its place); a connection created right after such
///   a wait (the freed slot was a discarded connection's) is dropped with
///   the future, as deadpool's own `get` would.
///
/// deadpool's `Pool::get` is one future from its queue to the manager's
/// `create`; the crate cannot tell from outside which of the two a
/// checkout is in, so it decides by the pool's room when the checkout
/// starts.
///
/// ```
/// # #[cfg(feature = "net")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use deadpool::managed::{Manager, Metrics, Pool, RecycleResult};
/// use tokio::net::TcpStream;
/// use tokio_exit_stack::scope;
///
/// struct Backend(std::net::SocketAddr);
///
/// impl Manager for Backend {
///     type Type = TcpStream;
///     type Error = std::io::Error;
///     async fn create(&self) -> std::io::Result<TcpStream> { TcpStream::connect(self.0).await }
///     async fn recycle(&self, _: &mut TcpStream, _: &Metrics) -> RecycleResult<std::io::Error> { Ok(()) }
/// }
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let pool = Pool::<Backend>::builder(Backend(listener.local_addr()?)).max_size(4).build()?;
/// scope(async |stack| {
///     let conn = stack.enter_async_context(tokio_exit_stack::deadpool::get(&pool)).await?;
///     assert!(conn.peer_addr().is_ok());
///     Ok(())
/// })
/// .await?;
/// assert_eq!(pool.status().available, 1); // back in the pool
/// # Ok(()) }
/// # #[cfg(not(feature = "net"))] fn main() {}
/// ```
pub fn get<M: Manager>(pool: &Pool<M>) -> Get<M> {
    Get { pool: pool.clone() }
}

/// A checkout from a deadpool pool, to enter into a stack: from [`get`].
#[must_use = "a Get does nothing until it is entered into a stack"]
pub struct Get<M: Manager> {
    pool: Pool<M>,
}

impl<M: Manager> fmt::Debug for Get<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Get").field("pool", &self.pool.status()).finish()
    }
}

impl<M> AsyncEnter for Get<M>
where
    M: Manager + 'static,
    M::Type: AsyncExit,
    M::Error: fmt::Display + Send + 'static,
{
    type Resource = Object<M>;
    type Error = PoolError<M::Error>;

    const FINISHES: bool = true;

    async fn enter(self) -> Result<Object<M>, PoolError<M::Error>> {
        self.pool.get().await
    }

    async fn enter_finishing(self) -> Result<Entering<Object<M>, PoolError<M::Error>>, PoolError<M::Error>> {
        let status = self.pool.status();
        // Checkouts in progress or held: each holds a slot or waits for one.
        let users = if status.available > 0 {
            status.size - status.available
        } else {
            status.size + status.waiting
        };
        if users >= status.max_size {
            // Full: wait in line, given up if cancelled.
            return self.pool.get().await.map(Entering::Ready);
        }
        let pool = self.pool;
        Ok(Entering::Finish(Finish::new(async move {
            let now = Timeouts {
                wait: Some(Duration::ZERO),
                ..pool.timeouts()
            };
            match pool.timeout_get(&now).await {
                // Another task took the room first.
                Err(PoolError::Timeout(TimeoutType::Wait)) => pool.get().await,
                done => done,
            }
        })))
    }
}
