//! sqlx transactions (feature `sqlx`) on a real SQLite database file: a
//! scope that succeeds commits with no commit call, one that fails or is
//! cancelled rolls back (finished before the scope returns), and a commit
//! that fails is the scope's error while the unwind goes on.
#![cfg(feature = "sqlx")]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection, SqlitePool};
use tokio_exit_stack::sqlx::{TransactionError, begin};
use tokio_exit_stack::{drain, scope};

/// A database file in a fresh temporary directory.
struct Database {
    _dir: tempfile::TempDir,
    options: SqliteConnectOptions,
}

impl Database {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("orders.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
        for ddl in [
            "CREATE TABLE orders (scope INTEGER NOT NULL, line INTEGER NOT NULL, PRIMARY KEY (scope, line))",
            "CREATE TABLE customers (id INTEGER PRIMARY KEY)",
            "CREATE TABLE invoices (id INTEGER PRIMARY KEY, \
             customer INTEGER NOT NULL REFERENCES customers(id) DEFERRABLE INITIALLY DEFERRED)",
        ] {
            sqlx::query(ddl).execute(&mut conn).await.unwrap();
        }
        conn.close().await.unwrap();
        Self { _dir: dir, options }
    }

    async fn pool(&self, connections: u32) -> SqlitePool {
        SqlitePoolOptions::new()
            .max_connections(connections)
            .connect_with(self.options.clone())
            .await
            .unwrap()
    }

    /// A connection of its own, that gives up at once on a locked database.
    /// (Connecting itself waits: it sets the journal mode.)
    async fn impatient(&self) -> SqliteConnection {
        let mut conn = SqliteConnection::connect_with(&self.options).await.unwrap();
        sqlx::query("PRAGMA busy_timeout = 0").execute(&mut conn).await.unwrap();
        conn
    }
}

async fn orders(pool: &SqlitePool) -> BTreeSet<(i64, i64)> {
    sqlx::query_as("SELECT scope, line FROM orders")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Can another connection take the write lock now?
async fn write_lock_is_free(conn: &mut SqliteConnection) -> bool {
    match sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
        Ok(_) => {
            sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
            true
        }
        Err(e) => {
            assert!(e.to_string().contains("locked"), "{e}");
            false
        }
    }
}

/// 1,000 scopes on a 2-worker runtime: a third succeed, a third fail
/// between their two writes, a third are cancelled by a timeout mid-body,
/// after their first write. The committed rows are exactly the succeeded
/// scopes' (both lines each), no other scope left a row, and the pool has
/// every connection back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_scopes_commit_exactly_the_succeeded_ones() {
    const SCOPES: i64 = 1000;
    let db = Database::new().await;
    let pool = db.pool(8).await;
    let mut scopes = tokio::task::JoinSet::new();
    for i in 0..SCOPES {
        let pool = pool.clone();
        scopes.spawn(async move {
            let (first_written, written) = tokio::sync::oneshot::channel();
            let mut body = std::pin::pin!(scope(async |stack| {
                let tx = stack.enter_async_context(begin(&pool)).await?;
                sqlx::query("INSERT INTO orders (scope, line) VALUES (?, 1)")
                    .bind(i)
                    .execute(&mut **tx)
                    .await?;
                match i % 3 {
                    0 => {}
                    1 => Err(std::io::Error::other("payment declined"))?,
                    _ => {
                        let _ = first_written.send(());
                        std::future::pending::<()>().await;
                    }
                }
                sqlx::query("INSERT INTO orders (scope, line) VALUES (?, 2)")
                    .bind(i)
                    .execute(&mut **tx)
                    .await?;
                Ok(()) // no commit call: the exit commits
            }));
            tokio::select! {
                outcome = &mut body => match outcome {
                    Ok(()) => "succeeded",
                    Err(e) => {
                        assert_eq!(e.to_string(), "payment declined", "{e:?}");
                        "failed"
                    }
                },
                Ok(()) = written => {
                    // mid-body: the request's deadline passes
                    tokio::time::timeout(Duration::from_millis(1), &mut body)
                        .await
                        .expect_err("the body never finishes");
                    "cancelled"
                }
            }
        });
    }
    let mut outcomes = std::collections::HashMap::new();
    while let Some(outcome) = scopes.join_next().await {
        *outcomes.entry(outcome.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(outcomes["succeeded"], 334);
    assert_eq!(outcomes["failed"], 333);
    assert_eq!(outcomes["cancelled"], 333);
    let report = drain(Duration::from_secs(60)).await;
    assert_eq!(
        report.failed, 0,
        "every rollback of a cancelled scope succeeded: {report:?}"
    );

    let expected: BTreeSet<(i64, i64)> = (0..SCOPES)
        .filter(|i| i % 3 == 0)
        .flat_map(|i| [(i, 1), (i, 2)])
        .collect();
    assert_eq!(orders(&pool).await, expected);

    common::eventually("every connection is back in the pool", || {
        pool.size() > 0 && pool.num_idle() == pool.size() as usize
    })
    .await;
}

/// A commit that fails (a deferred foreign key, checked at commit) is the
/// scope's error, naming the transaction, with sqlx's error as its
/// source; older entries still run, told of it.
#[tokio::test(flavor = "current_thread")]
async fn a_failing_commit_is_the_scopes_error_and_the_unwind_goes_on() {
    let db = Database::new().await;
    let pool = db.pool(2).await;
    let told = common::Log::default();
    let err = scope(async |stack| {
        let log = told.clone();
        stack.push_exit(move |pending| {
            log.push(pending.error().map(|e| e.to_string()).unwrap_or_default());
            Ok::<_, std::io::Error>(tokio_exit_stack::Flow::Propagate)
        });
        let tx = stack.enter_async_context(begin(&pool)).await?;
        sqlx::query("INSERT INTO invoices (id, customer) VALUES (1, 42)") // no customer 42
            .execute(&mut **tx)
            .await?; // deferred: accepted here
        Ok(())
    })
    .await
    .unwrap_err();

    assert_eq!(err.len(), 1, "{err:?}");
    let failed = err.downcast_ref::<TransactionError>().expect("the commit's error");
    assert_eq!(failed.operation, "commit");
    assert_eq!(failed.resource, "sqlx::Transaction<SQLite>");
    assert!(
        failed.source.to_string().contains("FOREIGN KEY constraint failed"),
        "{}",
        failed.source
    );
    assert_eq!(
        err.to_string(),
        "commit of sqlx::Transaction<SQLite> failed during cleanup"
    );
    assert_eq!(
        told.get(),
        ["commit of sqlx::Transaction<SQLite> failed during cleanup"],
        "the older entry ran, told of the failed commit"
    );
    let invoices: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(invoices, 0);
}

/// The control for "no commit call": a transaction that is not in the
/// stack, on the same success path, is rolled back when dropped (sqlx's
/// own behaviour), so the write is lost without an error. The exit is what
/// commits.
#[tokio::test(flavor = "current_thread")]
async fn control_a_success_path_without_the_exit_and_without_commit_loses_the_write() {
    let db = Database::new().await;
    let pool = db.pool(2).await;
    scope(async |_stack| {
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO orders (scope, line) VALUES (1, 1)")
            .execute(&mut *tx)
            .await?;
        Ok(()) // forgot `tx.commit()`
    })
    .await
    .unwrap();
    scope(async |stack| {
        let tx = stack.enter_async_context(begin(&pool)).await?;
        sqlx::query("INSERT INTO orders (scope, line) VALUES (2, 1)")
            .execute(&mut **tx)
            .await?;
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(orders(&pool).await, BTreeSet::from([(2, 1)]));
}

/// A query that keeps a connection's SQLite worker busy for a second or
/// more in one step, so that a command queued behind it (sqlx's rollback
/// of a dropped transaction) waits.
const SLOW_QUERY: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) \
                          SELECT count(*) FROM c";

/// A request whose query timed out (the query's future dropped, SQLite
/// still running it), on a transaction that wrote first.
async fn timed_out_request(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    scope_id: i64,
) -> Result<(), tokio_exit_stack::BoxError> {
    sqlx::query("INSERT INTO orders (scope, line) VALUES (?, 1)")
        .bind(scope_id)
        .execute(&mut **tx)
        .await?;
    let slow = sqlx::query(SLOW_QUERY).execute(&mut **tx);
    let _ = tokio::time::timeout(Duration::from_millis(20), slow).await?;
    unreachable!("the slow query takes longer than its deadline")
}

/// The rollback has finished when the scope returns: another connection
/// can take the write lock at once, though the connection was still busy
/// with a timed-out query when the scope failed. The control, the same
/// scope with sqlx's own rollback of a dropped transaction, returns while
/// the rollback still waits behind that query: the database is locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollback_has_finished_when_the_scope_returns() {
    let db = Database::new().await;
    let pool = db.pool(2).await;
    let mut other = db.impatient().await;

    // The exit: the rollback waited for the connection, and finished.
    let failed = scope(async |stack| {
        let tx = stack.enter_async_context(begin(&pool)).await?;
        timed_out_request(tx, 1).await
    })
    .await;
    assert!(
        failed
            .unwrap_err()
            .downcast_ref::<tokio::time::error::Elapsed>()
            .is_some()
    );
    assert!(write_lock_is_free(&mut other).await, "the rollback has finished");

    // The control: the same scope holding a plain transaction.
    let failed = scope(async |_stack| {
        let mut tx = pool.begin().await?;
        timed_out_request(&mut tx, 2).await
    })
    .await;
    assert!(failed.is_err());
    assert!(
        !write_lock_is_free(&mut other).await,
        "sqlx's own rollback is queued, not finished, when the scope returns"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !write_lock_is_free(&mut other).await {
        assert!(tokio::time::Instant::now() < deadline, "the queued rollback never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(orders(&pool).await, BTreeSet::new());
}

/// With no runtime left (the stack dropped after its runtime), the
/// transaction is dropped without the panic sqlx's drop would raise
/// outside a runtime, and rolled back: the database is free and unchanged
/// afterwards.
#[test]
fn a_transaction_abandoned_with_no_runtime_is_rolled_back() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(Database::new());
    let (pool, stack) = rt.block_on(async {
        let pool = db.pool(2).await;
        let stack = common::cancellable();
        let tx = stack.enter_async_context(begin(&pool)).await.unwrap();
        sqlx::query("INSERT INTO orders (scope, line) VALUES (1, 1)")
            .execute(&mut **tx)
            .await
            .unwrap();
        (pool, stack)
    });
    drop(rt);
    let capture = common::Capture::default();
    let guard = capture.install();
    drop(stack); // no runtime: `abandon`
    drop(guard);
    let panics: Vec<_> = capture
        .events()
        .into_iter()
        .filter(|e| e.message.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "sqlx's drop did not panic: {panics:?}");
    drop(pool);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut other = db.impatient().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !write_lock_is_free(&mut other).await {
            assert!(tokio::time::Instant::now() < deadline, "never rolled back");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(&mut other)
            .await
            .unwrap();
        assert_eq!(rows, 0);
    });
}

/// A task its owner aborted is a finished entry: the scope's result is
/// the body's, and the older transaction commits (what PostgreSQL shows
/// in tests/postgres.rs, here on a SQLite file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_task_beside_a_transaction_leaves_the_scope_a_success_and_commits() {
    let db = Database::new().await;
    let pool = db.pool(2).await;
    scope(async |stack| {
        let tx = stack.enter_async_context(begin(&pool)).await?;
        sqlx::query("INSERT INTO orders (scope, line) VALUES (1, 1)")
            .execute(&mut **tx)
            .await?;
        let task = stack
            .enter_async_context(tokio::spawn(tokio::time::sleep(Duration::from_secs(3600))))
            .await?;
        task.abort();
        Ok(())
    })
    .await
    .expect("an aborted task does not fail the scope");
    assert_eq!(orders(&pool).await, BTreeSet::from([(1, 1)]));
}

/// Python's rule, kept on purpose: a newer exit that suppresses the body's
/// error makes the older transaction commit what the body wrote before
/// its error; the suppressing exit registered before the transaction
/// gives a rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_exit_that_suppresses_the_error_makes_the_older_transaction_commit_on_sqlite() {
    let db = Database::new().await;
    let pool = db.pool(2).await;
    for (line, suppress_first) in [(1, false), (2, true)] {
        let value = tokio_exit_stack::scope_suppressible(async |stack| {
            if suppress_first {
                stack.push_exit(|_| Ok::<_, std::io::Error>(tokio_exit_stack::Flow::Suppress));
            }
            let tx = stack.enter_async_context(begin(&pool)).await?;
            sqlx::query("INSERT INTO orders (scope, line) VALUES (1, ?)")
                .bind(line)
                .execute(&mut **tx)
                .await?;
            if !suppress_first {
                stack.push_exit(|_| Ok::<_, std::io::Error>(tokio_exit_stack::Flow::Suppress));
            }
            Err(std::io::Error::other("out of stock"))?;
            Ok(())
        })
        .await
        .unwrap();
        assert!(value.is_none());
    }
    assert_eq!(
        orders(&pool).await,
        BTreeSet::from([(1, 1)]),
        "suppressed by a newer exit: committed; by an older one: rolled back"
    );
}

/// A COMMIT held up by another connection's read lock (a rollback-journal
/// database: the commit must wait for readers) past the entry's 200 ms
/// timeout: the scope fails with a `TimeoutError` that says its outcome
/// is unknown, and once the reader lets go the row is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_cut_off_by_its_timeout_on_sqlite_is_of_unknown_outcome_and_did_commit() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("journal.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Delete)
        .busy_timeout(Duration::from_secs(30));
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options.clone())
        .await
        .unwrap();
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let mut reader = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::query("BEGIN").execute(&mut reader).await.unwrap();
    let _: Vec<i64> = sqlx::query_scalar("SELECT id FROM orders")
        .fetch_all(&mut reader)
        .await
        .unwrap(); // holds a shared lock until it ends
    let err = scope(async |stack| {
        let tx = stack
            .entry()
            .timeout(Duration::from_millis(200))
            .enter_async_context(begin(&pool))
            .await?;
        sqlx::query("INSERT INTO orders (id) VALUES (7)")
            .execute(&mut **tx)
            .await?;
        Ok(())
    })
    .await
    .unwrap_err();
    assert!(err.outcome_unknown(), "{err}");
    assert!(err.to_string().contains("outcome is unknown"), "{err}");
    sqlx::query("COMMIT").execute(&mut reader).await.unwrap(); // lets the COMMIT through
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM orders")
            .fetch_all(&mut reader)
            .await
            .unwrap();
        if ids == [7] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cut-off COMMIT was applied: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The cancel-at-every-poll harness of tests/postgres.rs on a SQLite file:
/// `enter_async_context(sqlx::begin(&pool))` dropped right after its k-th
/// `Pending`, for every k until the enter completes uncancelled; after
/// each k, the write lock is free (no transaction left open) and every
/// connection is back in the pool. A regression test: sqlx-sqlite 0.8.6
/// already rolls back an unacknowledged `BEGIN`, so this passed before
/// cancelled enters were finished too.
async fn begin_cancelled_at_every_poll_on_sqlite() {
    let db = Database::new().await;
    let pool = db.pool(2).await;
    let mut probe = db.impatient().await;
    let mut k = 0;
    loop {
        let completed = scope(async |stack| {
            match common::cancel_after_pendings(stack.enter_async_context(begin(&pool)), k).await {
                Some(tx) => {
                    let tx = tx?;
                    sqlx::query("INSERT INTO orders (scope, line) VALUES (?, 1)")
                        .bind(k as i64)
                        .execute(&mut **tx)
                        .await?;
                    Ok(true)
                }
                None => Ok(false),
            }
        })
        .await
        .unwrap();
        assert!(drain(Duration::from_secs(30)).await.is_complete(), "k={k}");
        common::eventually("every connection is back in the pool", || {
            pool.num_idle() == pool.size() as usize
        })
        .await;
        assert!(write_lock_is_free(&mut probe).await, "k={k}: no transaction left open");
        if completed {
            break;
        }
        k += 1;
        assert!(k < 1000, "the enter completes uncancelled at some k");
    }
    assert_eq!(orders(&pool).await, BTreeSet::from([(k as i64, 1)]));
}

#[tokio::test(flavor = "current_thread")]
async fn begin_cancelled_at_every_poll_on_sqlite_current_thread() {
    begin_cancelled_at_every_poll_on_sqlite().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_cancelled_at_every_poll_on_sqlite_multi_thread() {
    begin_cancelled_at_every_poll_on_sqlite().await;
}
