//! Cancellation at a scope's end: once the body has returned, the unwind
//! is shielded (what the exits that start after a cancellation are told
//! does not change, only `Pending::is_detached`), and a caller that owns
//! the outcome closes a stack with it (`aclose_with`).
//!
//! The audit-and-commit race is made deterministic on tokio's paused
//! clock: the request's timeout is armed on the real clock, and the test
//! pauses the clock at the point where the timeout must fire (after the
//! commit, during the audit, in the body); the next sleep then auto-advances
//! to the timeout's deadline, and it fires exactly there.
#![cfg(feature = "sqlx")]

mod common;

use std::io;
use std::time::Duration;

use common::Log;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tokio_exit_stack::error::{AbandonCause, Abandoned};
use tokio_exit_stack::sqlx::begin;
use tokio_exit_stack::{AsyncExitStack, BoxError, Error, Flow, Pending, drain, scope};

/// A request's deadline, on the real clock when it is armed.
const DEADLINE: Duration = Duration::from_secs(60);
/// Longer than the deadline: a wait the deadline always cuts.
const HANG: Duration = Duration::from_secs(3600);

async fn pool() -> (tempfile::TempDir, SqlitePool) {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("orders.db"))
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    (dir, pool)
}

async fn orders(pool: &SqlitePool) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM orders")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// How an audit exit saw the request end.
fn seen(pending: &Pending) -> String {
    let how = match pending.downcast_ref::<Abandoned>() {
        Some(a) => format!("abandoned ({:?})", a.cause),
        None if pending.is_ok() => "ok".to_owned(),
        None => "failed".to_owned(),
    };
    format!("{how}, detached={}", pending.is_detached())
}

/// Where the request's deadline fires.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cut {
    /// After the transaction committed, before the audit exit started.
    AfterCommit,
    /// While the audit exit runs.
    DuringAudit,
    /// In the body, after its insert.
    InBody,
}

/// One request: an audit exit, then a transaction; the body inserts order
/// 1 and returns `Ok`. The request's deadline fires at `cut`. Returns what
/// the audit logged and the orders in the table once everything ended.
async fn request_cut(cut: Cut) -> (Vec<String>, Vec<i64>) {
    let (_dir, pool) = pool().await;
    let log = Log::default();
    let audit = log.clone();
    let result = tokio::time::timeout(
        DEADLINE,
        scope(async |stack| {
            stack.push_async_exit(move |pending: Pending| async move {
                audit.push(format!("audit told {}", seen(&pending)));
                if cut == Cut::DuringAudit {
                    tokio::time::pause();
                    tokio::time::sleep(HANG).await; // the deadline fires here
                }
                audit.push("audit finished");
                Ok::<_, BoxError>(Flow::Propagate)
            });
            if cut == Cut::AfterCommit {
                // Runs right after the commit, before the audit.
                stack.push_async_callback(|| async {
                    tokio::time::pause();
                    tokio::time::sleep(HANG).await; // the deadline fires here
                });
            }
            let tx = stack.enter_async_context(begin(&pool)).await?;
            sqlx::query("INSERT INTO orders (id) VALUES (1)")
                .execute(&mut **tx)
                .await?;
            if cut == Cut::InBody {
                tokio::time::pause();
                tokio::time::sleep(HANG).await; // the deadline fires here
            }
            Ok(())
        }),
    )
    .await;
    assert!(result.is_err(), "the request's deadline fired ({cut:?})");
    // What is left runs in the background.
    if cut == Cut::InBody {
        // A rollback on SQLite's thread: on the real clock again.
        tokio::time::resume();
        let report = drain(Duration::from_secs(30)).await;
        assert!(report.is_complete(), "{report:?}");
    } else {
        // The hung sleep, then the audit: the paused clock runs through.
        tokio::time::sleep(2 * HANG).await;
        tokio::time::resume(); // sqlx's pool keeps real time
    }
    common::eventually("the audit finished", || log.get().len() == 2).await;
    (log.take(), orders(&pool).await)
}

/// The deadline fires after the transaction committed and before the audit
/// exit started: the order is in the database, and the audit is told the
/// request succeeded (and that no one awaits the unwind), not that it was
/// abandoned.
#[tokio::test(flavor = "current_thread")]
async fn a_deadline_after_the_commit_leaves_the_audit_told_ok_and_detached() {
    let (audit, orders) = request_cut(Cut::AfterCommit).await;
    assert_eq!(orders, [1], "committed");
    assert_eq!(audit, ["audit told ok, detached=true", "audit finished"]);
}

/// The deadline fires while the audit exit runs: it keeps the `Pending` it
/// was given (ok, not detached) and finishes in the background.
#[tokio::test(flavor = "current_thread")]
async fn a_deadline_during_the_audit_lets_it_finish_with_what_it_was_told() {
    let (audit, orders) = request_cut(Cut::DuringAudit).await;
    assert_eq!(orders, [1], "committed");
    assert_eq!(audit, ["audit told ok, detached=false", "audit finished"]);
}

/// The deadline fires in the body: the body never returned, so the scope
/// was abandoned: the transaction rolls back and the audit is told so.
#[tokio::test(flavor = "current_thread")]
async fn a_deadline_in_the_body_rolls_back_and_the_audit_is_told_abandoned() {
    let (audit, orders) = request_cut(Cut::InBody).await;
    assert!(orders.is_empty(), "rolled back: {orders:?}");
    assert_eq!(
        audit,
        [
            format!("audit told abandoned ({:?}), detached=true", AbandonCause::Cancelled),
            "audit finished".to_owned()
        ]
    );
}

both_flavours! {
    /// `aclose_with` tells every exit the caller's error, the very object,
    /// and returns it, the very object, when no exit suppressed it.
    async fn aclose_with_tells_the_exits_the_callers_error_and_returns_it() {
        #[derive(Debug, thiserror::Error)]
        #[error("handler failed")]
        struct HandlerFailed;

        let log = Log::default();
        let mut stack = AsyncExitStack::new();
        let l = log.clone();
        stack.push_exit(move |pending: &Pending| {
            l.push(format!("told {}", pending.error().unwrap()));
            Ok::<_, io::Error>(Flow::Propagate)
        });
        let err = stack.aclose_with(HandlerFailed).await.unwrap_err();
        assert_eq!(log.take(), ["told handler failed"]);
        assert!(err.contains_given());
        assert_eq!(err.len(), 1);
        let error = err.into_single().expect("one link, held by no one");
        assert!(error.is::<HandlerFailed>());
        assert!(stack.is_empty());
    }
}

both_flavours! {
    /// An empty stack gives the caller's error back as its one link.
    async fn aclose_with_on_an_empty_stack_returns_the_callers_error() {
        let mut stack = AsyncExitStack::new();
        let err = stack.aclose_with(io::Error::other("refused")).await.unwrap_err();
        assert!(err.contains_given());
        let error = err.into_single().unwrap();
        assert_eq!(error.downcast::<io::Error>().unwrap().to_string(), "refused");
    }
}

both_flavours! {
    /// `Ok` only if every pending error, the caller's included, was
    /// suppressed; an exit that raises a new error keeps the caller's
    /// beside it; one that replaces it (the caller's as its cause) leaves
    /// it out of the links.
    async fn aclose_with_is_ok_only_when_the_callers_error_was_suppressed() {
        let mut stack = AsyncExitStack::new();
        stack.push_exit(|_| Ok::<_, io::Error>(Flow::Suppress));
        assert!(stack.aclose_with(io::Error::other("handled")).await.is_ok());

        stack.callback(|| Err::<(), _>(std::fmt::Error));
        let err = stack.aclose_with(io::Error::other("handler failed")).await.unwrap_err();
        assert!(err.contains_given());
        assert_eq!(err.len(), 2);
        assert!(err.newest().is::<std::fmt::Error>());

        #[derive(Debug, thiserror::Error)]
        #[error("rollback failed")]
        struct RollbackFailed(#[source] tokio_exit_stack::error::Cause);
        stack.push_exit(|pending: &Pending| Err::<Flow, _>(RollbackFailed(pending.cause().unwrap())));
        let err = stack.aclose_with(io::Error::other("handler failed")).await.unwrap_err();
        assert!(!err.contains_given(), "replaced: it is the new error's cause, not a link");
        assert_eq!(format!("{err:#}"), "rollback failed: handler failed");
    }
}

both_flavours! {
    /// An `Error` given (a nested scope's) is flattened into its links, as
    /// a scope's body's is.
    async fn aclose_with_flattens_an_error_it_is_given() {
        let inner: Error = scope(async |stack| {
            stack.callback(|| Err::<(), _>(io::Error::other("inner cleanup failed")));
            Err::<(), BoxError>("inner body failed".into())
        })
        .await
        .unwrap_err();
        assert_eq!(inner.len(), 2);
        let mut stack = AsyncExitStack::new();
        stack.push_exit(|pending: &Pending| {
            assert_eq!(pending.iter().count(), 2, "both links pending");
            Ok::<_, io::Error>(Flow::Propagate)
        });
        let err = stack.aclose_with(inner).await.unwrap_err();
        assert_eq!(err.len(), 2, "flattened, not one link holding two");
        assert!(err.contains_given());
    }
}
