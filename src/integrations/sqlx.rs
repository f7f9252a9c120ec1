//! sqlx transactions: begun on entering, committed or rolled back by the
//! scope's outcome.

use std::borrow::Cow;
use std::fmt;

use ::sqlx::{Database, Pool, Transaction};

use crate::error::BoxError;
use crate::traits::{AsyncEnter, AsyncExit, Entering, Finish, Flow, Pending};

/// A transaction's commit or rollback failed: which transaction, which
/// step, and sqlx's error in `source()`.
///
/// Downcast the scope's error to it, or walk its `source()` to the
/// `sqlx::Error` (a constraint violated at commit, a locked database).
#[derive(Debug, thiserror::Error)]
#[error("{operation} of {resource} failed during cleanup")]
pub struct TransactionError {
    /// The transaction, e.g. `sqlx::Transaction<SQLite>`.
    pub resource: String,
    /// `commit` or `rollback`.
    pub operation: &'static str,
    /// What sqlx said.
    #[source]
    pub source: ::sqlx::Error,
}

/// Begins a transaction on a pool when entered into a stack, which then
/// commits it if the scope succeeds and rolls it back otherwise.
///
/// Entering it lends `&mut Transaction<'static, DB>`, which is an
/// executor: `query(..).execute(&mut **tx)`. The transaction's exit:
///
/// * **the scope succeeded** (no error pending): commits. No success path
///   needs its own `commit` call. A commit that fails (a deferred
///   constraint, a locked database) is reported as a [`TransactionError`]
///   (`commit of sqlx::Transaction<SQLite> failed during cleanup`, the
///   `sqlx::Error` as its source), which becomes the scope's error; the
///   unwind goes on.
/// * **the scope failed or was abandoned** (an error pending, a request
///   cancelled in its body, a dropped stack): rolls back, and the rollback has finished
///   before the unwind moves to the next entry (and so before `scope`
///   returns). sqlx alone would roll a dropped transaction back lazily, on
///   the connection's next use.
/// * **cancelled during the unwind** (the body had returned, then the
///   request's timeout fired before this exit started): the unwind is
///   shielded, so the exit is told what it would have been told: after a
///   body that returned `Ok` it still **commits**, in the background
///   ([`Pending::is_detached`](crate::Pending::is_detached)). A timeout
///   that fires while the commit runs leaves it running to its end.
/// * **the body failed, and a newer exit suppressed its error**: Python's
///   rule, kept on purpose: a suppressed error is handled, the scope
///   succeeded for every older entry, and the transaction **commits** what
///   the body wrote before its error. To roll back instead, register the
///   suppressing exit *before* the transaction (it then runs after the
///   rollback), or roll back in the body. (A pooled connection is the
///   other way round: the `deadpool` exits detach a connection whose
///   request saw an error even if it was suppressed;
///   [`Pending::saw_error`](crate::Pending::saw_error).)
/// * **cut off by the entry's timeout** (`stack.entry().timeout(..)`, or the
///   stack's unwind timeout): decided: the timeout may cut a commit or a
///   rollback, since a database that hangs must not hold the unwind
///   forever. A cut is reported as a
///   [`TimeoutError`](crate::error::TimeoutError), whose outcome is
///   unknown ([`Error::outcome_unknown`](crate::Error::outcome_unknown)):
///   the `COMMIT` may have reached the database and been applied (the
///   connection, dropped mid-commit, still reads its reply before it is
///   used again). Do not retry such a scope blindly: check for the write
///   first (an idempotency key), or give a transaction no entry timeout and
///   bound it on the server (`statement_timeout`), which fails the commit
///   definitely (a [`TransactionError`]).
/// * **no runtime left** (the stack dropped outside any runtime): the
///   transaction is dropped, and sqlx queues its rollback on the
///   connection. sqlx needs a runtime to return a connection to its pool
///   and would panic without one; the exit gives it one that never runs,
///   so the connection is closed instead of returned: SQLite's connection
///   thread runs the queued rollback first, and a server database rolls
///   back the transaction of a closed session. Nothing blocks.
///
/// Each outcome is a DEBUG event in the exit's span (`transaction =
/// "committed"` or `"rolled back"`).
///
/// Beginning costs what `Pool::begin` costs; the exit adds no allocation
/// to sqlx's own. A transaction begun by hand enters as itself
/// (`stack.push_resource(pool.begin().await?)`) with the same exit.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use sqlx::SqlitePool;
/// use tokio_exit_stack::scope;
///
/// let pool = SqlitePool::connect("sqlite::memory:").await?;
/// sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY)").execute(&pool).await?;
///
/// scope(async |stack| {
///     let tx = stack.enter_async_context(tokio_exit_stack::sqlx::begin(&pool)).await?;
///     sqlx::query("INSERT INTO orders (id) VALUES (1)").execute(&mut **tx).await?;
///     Ok(()) // committed as the scope returns
/// })
/// .await?;
///
/// let failed = scope(async |stack| {
///     let tx = stack.enter_async_context(tokio_exit_stack::sqlx::begin(&pool)).await?;
///     sqlx::query("INSERT INTO orders (id) VALUES (2)").execute(&mut **tx).await?;
///     Err(std::io::Error::other("payment declined"))?; // rolled back
///     Ok(())
/// })
/// .await;
/// assert!(failed.is_err());
///
/// let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM orders").fetch_all(&pool).await?;
/// assert_eq!(ids, [1]);
/// # Ok(()) }
/// ```
#[must_use = "a Begin does nothing until it is entered into a stack"]
pub struct Begin<DB: Database> {
    pool: Pool<DB>,
}

/// A [`Begin`] on `pool` (a clone of the handle: one atomic increment).
pub fn begin<DB: Database>(pool: &Pool<DB>) -> Begin<DB> {
    Begin { pool: pool.clone() }
}

impl<DB: Database> fmt::Debug for Begin<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Begin")
            .field("database", &DB::NAME)
            .finish_non_exhaustive()
    }
}

/// Entering acquires a connection from the pool, then sends `BEGIN` on it.
///
/// # Cancel safety
///
/// Cancelled while waiting for a connection: the wait is dropped (the
/// waiter leaves the pool's queue; nothing was acquired). Cancelled once
/// the connection is held: the `BEGIN` is finished in the background, and
/// the transaction it opens is rolled back (its exit is told
/// [`AbandonCause::EnterCancelled`](crate::error::AbandonCause::EnterCancelled))
/// before the connection returns to the pool. Dropped half way, sqlx
/// (0.8.4 and later) could return a connection whose `BEGIN` the server
/// had run to the pool, leaving a session "idle in transaction"
/// (launchbadge/sqlx#4385); finished, it cannot. This costs no allocation
/// beyond sqlx's own (`Pool::begin` boxes the same future).
impl<DB: Database> AsyncEnter for Begin<DB> {
    type Resource = Transaction<'static, DB>;
    type Error = ::sqlx::Error;

    const FINISHES: bool = true;

    async fn enter(self) -> Result<Transaction<'static, DB>, ::sqlx::Error> {
        self.pool.begin().await
    }

    async fn enter_finishing(self) -> Result<Entering<Transaction<'static, DB>, ::sqlx::Error>, ::sqlx::Error> {
        let connection = self.pool.acquire().await?;
        // What `Pool::begin` does after its `acquire` (sqlx 0.8): the
        // `BEGIN` on the owned connection, already a boxed future.
        Ok(Entering::Finish(Finish::boxed(Transaction::begin(connection, None))))
    }
}

/// A transaction's name in errors and traces: `sqlx::Transaction<SQLite>`.
fn label<DB: Database>() -> String {
    format!("sqlx::Transaction<{}>", DB::NAME)
}

/// Commits when the scope succeeded; rolls back, and waits for the
/// rollback, when it failed or was abandoned; a failure of either is a
/// [`TransactionError`]. See [`Begin`] for the whole story, no runtime
/// included.
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
#[async_trait::async_trait]
impl<DB: Database> AsyncExit for Transaction<'static, DB> {
    async fn exit(self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
        let (operation, outcome, result) = if pending.is_ok() {
            ("commit", "committed", self.commit().await)
        } else {
            ("rollback", "rolled back", self.rollback().await)
        };
        if let Err(source) = result {
            let resource = label::<DB>();
            return Err(TransactionError {
                resource,
                operation,
                source,
            }
            .into());
        }
        tracing::debug!(database = DB::NAME, transaction = outcome, "transaction {outcome}");
        Ok(Flow::Propagate)
    }

    fn label(&self) -> Cow<'static, str> {
        Cow::Owned(label::<DB>())
    }

    fn abandon(self: Box<Self>) {
        if tokio::runtime::Handle::try_current().is_ok() {
            return; // dropped: sqlx rolls back as the connection returns
        }
        // No runtime: sqlx's drop would panic spawning the connection's
        // return to the pool. Give it a runtime that is never run: the
        // return is dropped with it, so the connection closes instead
        // (after the rollback queued on it, for SQLite), and nothing
        // blocks or panics.
        let built = tokio::runtime::Builder::new_current_thread().build(); // a context for sqlx's drop, never run
        let Ok(context) = built else {
            std::mem::forget(self); // leaked, never a panic
            return;
        };
        let entered = context.enter();
        drop(self);
        drop(entered);
        drop(context);
    }
}
