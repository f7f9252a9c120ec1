//! Outcomes against a real PostgreSQL server (started by the test setup on
//! loopback, see `common/postgres.rs`), counted from the server's side:
//! rows in its tables, sessions in `pg_stat_activity`, the backend pid a
//! checkout gets.
//!
//! * a task its owner aborts is a finished entry, not a failure: the
//!   transaction beside it commits;
//! * a commit cut off by its entry's timeout is reported as a cleanup
//!   whose outcome is unknown, and may indeed have been applied;
//! * a newer exit that suppresses the body's error makes the scope a
//!   success for an older transaction (it commits), but not for a pooled
//!   connection: the session that saw the error is never handed out again.
#![cfg(all(unix, feature = "sqlx"))]

mod common;

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use tokio_exit_stack::error::TimeoutError;
use tokio_exit_stack::sqlx::begin;
use tokio_exit_stack::{Flow, scope, scope_suppressible};

/// A fresh database of its own on the binary's server, with an `orders`
/// table, and a pool on it; `None` (skipped, loudly) without PostgreSQL.
async fn database(name: &str) -> Option<(PgPool, String)> {
    let server = common::postgres::server()?;
    let mut admin = PgConnection::connect(&server.url).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let url = format!("{}/{name}", server.url.rsplit_once('/').unwrap().0);
    let pool = PgPoolOptions::new().max_connections(4).connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    Some((pool, url))
}

/// The order ids in the table, as a new session sees them.
async fn orders(url: &str) -> Vec<i32> {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let ids = sqlx::query_scalar("SELECT id FROM orders ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    ids
}

/// How many sessions of database `name` the server shows in `state`.
async fn sessions_in(url: &str, name: &str, state: &str) -> i64 {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let n = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = $2")
        .bind(name)
        .bind(state)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    n
}

/// A task its owner aborted, through the `Task`, its abort handle, or a
/// `JoinSet`'s `abort_all`, ended as asked: the scope's result is the
/// body's, and the older transaction commits the request's insert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_task_is_a_finished_entry_and_the_transaction_beside_it_commits() {
    let Some((pool, url)) = database("aborted_task").await else {
        return;
    };
    for (id, how) in [(1, "task"), (2, "abort handle"), (3, "join set")] {
        let result = scope(async |stack| {
            let tx = stack.enter_async_context(begin(&pool)).await?;
            sqlx::query("INSERT INTO orders (id) VALUES ($1)")
                .bind(id)
                .execute(&mut **tx)
                .await?;
            let forever = || tokio::time::sleep(Duration::from_secs(3600));
            match how {
                "task" => stack.enter_async_context(tokio::spawn(forever())).await?.abort(),
                "abort handle" => {
                    let task = stack.enter_async_context(tokio::spawn(forever())).await?;
                    task.abort_handle().unwrap().abort();
                }
                _ => {
                    let set = stack.push_resource(tokio::task::JoinSet::new());
                    set.spawn(forever());
                    set.spawn(forever());
                    set.abort_all();
                }
            }
            Ok(id)
        })
        .await;
        assert_eq!(result.unwrap(), id, "aborted through the {how}: the scope succeeded");
    }
    assert_eq!(orders(&url).await, [1, 2, 3], "every insert committed");
    assert_eq!(sessions_in(&url, "aborted_task", "idle in transaction").await, 0);
}

/// A COMMIT that takes 1 s (a deferred constraint trigger that sleeps)
/// under an entry timeout of 200 ms: the scope fails with a `TimeoutError`
/// that says the outcome is unknown, and the database shows why: the row
/// is committed shortly after. A caller that retried blindly would insert
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_cut_off_by_its_timeout_is_reported_as_of_unknown_outcome_and_did_commit() {
    let Some((pool, url)) = database("cut_commit").await else {
        return;
    };
    for ddl in [
        "CREATE FUNCTION slow_check() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON orders \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_check()",
    ] {
        sqlx::query(ddl).execute(&pool).await.unwrap();
    }
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
    let timeout = err.downcast_ref::<TimeoutError>().expect("a TimeoutError");
    assert!(
        timeout.to_string().contains("outcome is unknown"),
        "the message says so: {timeout}"
    );
    assert_eq!(timeout.resource, "sqlx::Transaction<PostgreSQL>");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while orders(&url).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the cut-off COMMIT was applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(orders(&url).await, [7]);
}

/// Python's rule, kept on purpose: a newer exit that suppresses the body's
/// error makes the scope a success for every older entry, so the older
/// transaction commits the insert made before the error. Registering the
/// suppressing exit before the transaction gives a rollback instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_exit_that_suppresses_the_error_makes_the_older_transaction_commit() {
    let Some((pool, url)) = database("suppressed_commit").await else {
        return;
    };
    let value = scope_suppressible(async |stack| {
        let tx = stack.enter_async_context(begin(&pool)).await?;
        sqlx::query("INSERT INTO orders (id) VALUES (1)")
            .execute(&mut **tx)
            .await?;
        stack.push_exit(|_| Ok::<_, std::io::Error>(Flow::Suppress));
        Err(std::io::Error::other("out of stock"))?;
        Ok(())
    })
    .await
    .unwrap();
    assert!(value.is_none());
    assert_eq!(orders(&url).await, [1], "the suppressed scope committed");

    let value = scope_suppressible(async |stack| {
        stack.push_exit(|_| Ok::<_, std::io::Error>(Flow::Suppress)); // older: sees the rollback's outcome
        let tx = stack.enter_async_context(begin(&pool)).await?;
        sqlx::query("INSERT INTO orders (id) VALUES (2)")
            .execute(&mut **tx)
            .await?;
        Err(std::io::Error::other("out of stock"))?;
        Ok(())
    })
    .await
    .unwrap();
    assert!(value.is_none());
    assert_eq!(orders(&url).await, [1], "suppressed after the transaction: rolled back");
    assert_eq!(sessions_in(&url, "suppressed_commit", "idle in transaction").await, 0);
}

#[cfg(feature = "deadpool")]
mod pooled {
    use super::*;
    use deadpool::managed::{Manager, Metrics, Object, Pool, RecycleResult};
    use tokio_exit_stack::deadpool::DetachOnError;
    use tokio_exit_stack::{AsyncExit, BoxError, Pending, async_trait};

    /// A pooled PostgreSQL session: closed (Terminate sent) by its exit.
    struct Session(PgConnection);

    #[async_trait]
    impl AsyncExit for Session {
        async fn exit(self: Box<Self>, _: Pending) -> Result<Flow, BoxError> {
            self.0.close().await?;
            Ok(Flow::Propagate)
        }
    }

    struct Sessions<T>(String, fn(PgConnection) -> T);

    impl<T: Send + Sync + 'static> Manager for Sessions<T> {
        type Type = T;
        type Error = sqlx::Error;

        async fn create(&self) -> Result<T, sqlx::Error> {
            Ok((self.1)(PgConnection::connect(&self.0).await?))
        }

        async fn recycle(&self, _: &mut T, _: &Metrics) -> RecycleResult<sqlx::Error> {
            Ok(())
        }
    }

    async fn backend_pid(conn: &mut PgConnection) -> i32 {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(conn)
            .await
            .unwrap()
    }

    /// What a request leaves on its session: a transaction left open, a
    /// session setting, a temporary table; then it fails.
    async fn fail_with_state_on(conn: &mut PgConnection) -> Result<(), BoxError> {
        for statement in [
            "BEGIN",
            "SET application_name = 'failed request'",
            "CREATE TEMP TABLE scratch (x INTEGER)",
        ] {
            sqlx::query(statement).execute(&mut *conn).await?;
        }
        Err(std::io::Error::other("out of stock"))?
    }

    /// The same request twice on a pool of one session: `first` runs with
    /// a newer exit that suppresses its error. Returns the backend pids
    /// the two checkouts got, and checks the second's session is clean.
    async fn two_requests<T: Send + Sync + 'static>(
        url: &str,
        wrap: fn(PgConnection) -> T,
        register: for<'a> fn(&'a tokio_exit_stack::AsyncExitStack, Object<Sessions<T>>) -> &'a mut PgConnection,
        first_fails: bool,
    ) -> (i32, i32) {
        let pool = Pool::builder(Sessions(url.to_owned(), wrap))
            .max_size(1)
            .build()
            .unwrap();
        let mut pids = Vec::new();
        for request in 0..2 {
            let fails = first_fails && request == 0;
            let pid = std::sync::Arc::new(std::sync::Mutex::new(0));
            let seen = pid.clone();
            let pool = &pool;
            let value = scope_suppressible(async |stack| {
                let conn = register(stack, pool.get().await?);
                *seen.lock().unwrap() = backend_pid(conn).await;
                if request == 1 {
                    let state: Option<String> = sqlx::query_scalar("SELECT current_setting('application_name')")
                        .fetch_optional(&mut *conn)
                        .await?;
                    assert_ne!(
                        state.as_deref(),
                        Some("failed request"),
                        "no session state of the failed request"
                    );
                    let clean: bool = sqlx::query_scalar(
                        "SELECT to_regclass('pg_temp.scratch') IS NULL AND pg_current_xact_id_if_assigned() IS NULL",
                    )
                    .fetch_one(&mut *conn)
                    .await?;
                    assert!(clean, "no temporary table of the failed request, no transaction of its");
                }
                stack.push_exit(|_| Ok::<_, std::io::Error>(Flow::Suppress)); // handles the request's error
                if fails {
                    fail_with_state_on(conn).await?;
                }
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(value.is_none(), fails);
            pids.push(*pid.lock().unwrap());
        }
        (pids[0], pids[1])
    }

    fn detach_on_error(conn: PgConnection) -> PgConnection {
        conn
    }

    fn register_detach(
        stack: &tokio_exit_stack::AsyncExitStack,
        object: Object<Sessions<PgConnection>>,
    ) -> &mut PgConnection {
        let entry: &mut DetachOnError<_> = stack.push_resource(DetachOnError(object));
        entry
    }

    fn register_object(
        stack: &tokio_exit_stack::AsyncExitStack,
        object: Object<Sessions<Session>>,
    ) -> &mut PgConnection {
        &mut stack.push_resource(object).0
    }

    /// A request fails with an open transaction, a session setting and a
    /// temporary table on its pooled session, and a newer exit suppresses
    /// its error: the pool never hands that session out again (the next
    /// checkout gets another backend pid, with none of that state), and no
    /// session is left "idle in transaction". A request that saw no error
    /// gives its session back (same pid next time): the test can tell.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_suppressed_error_still_keeps_its_session_from_the_next_request() {
        let Some((_pool, url)) = database("tainted_session").await else {
            return;
        };
        let (a, b) = two_requests(&url, detach_on_error, register_detach, true).await;
        assert_ne!(a, b, "DetachOnError: the failed request's session was not reused");
        let (a, b) = two_requests(&url, Session, register_object, true).await;
        assert_ne!(a, b, "Object: the failed request's session was not reused");
        let (a, b) = two_requests(&url, detach_on_error, register_detach, false).await;
        assert_eq!(a, b, "a clean request's session is reused");
        let (a, b) = two_requests(&url, Session, register_object, false).await;
        assert_eq!(a, b, "a clean request's session is reused");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sessions_in(&url, "tainted_session", "idle in transaction").await != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the detached sessions end, and their transactions with them"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `url` through a loopback proxy that holds every chunk the server sends
/// for 2 ms before passing it on: a slower network.
async fn through_latency_proxy(url: &str) -> String {
    let (head, rest) = url.rsplit_once('@').unwrap();
    let (server, db) = rest.split_once('/').unwrap();
    let server: std::net::SocketAddr = server.parse().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(upstream) = tokio::net::TcpStream::connect(server).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = upstream.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    let _ = server_write.shutdown().await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match server_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            if client_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = client_write.shutdown().await;
                let _ = up.await;
            });
        }
    });
    format!("{head}@{proxy}/{db}")
}

/// `enter_async_context(sqlx::begin(&pool))` dropped right after its k-th
/// `Pending`, for k = 0, 1, ... until an uncancelled enter completes; after
/// each k, what the server shows: no session "idle in transaction", and
/// every connection of the pool back and idle. A `BEGIN` dropped half way
/// left a session in a transaction on the pool (launchbadge/sqlx#4385);
/// finished in the background and rolled back, it cannot.
async fn begin_cancelled_at_every_poll(name: &str) {
    let Some((_direct, url)) = database(name).await else {
        return;
    };
    // Through a proxy that holds each reply from the server for 2 ms, so
    // that waiting for the reply to `BEGIN` is always a `Pending` of its
    // own (on loopback it may come back within the poll that sent it).
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&through_latency_proxy(&url).await)
        .await
        .unwrap();
    let mut k = 0;
    loop {
        let completed = scope(async |stack| {
            match common::cancel_after_pendings(stack.enter_async_context(begin(&pool)), k).await {
                Some(tx) => {
                    let tx = tx?;
                    sqlx::query("INSERT INTO orders (id) VALUES ($1)")
                        .bind(k as i32)
                        .execute(&mut **tx)
                        .await?;
                    Ok(true)
                }
                None => Ok(false), // cut short: the scope goes on without it
            }
        })
        .await
        .unwrap();
        let report = tokio_exit_stack::drain(Duration::from_secs(30)).await;
        assert!(report.is_complete(), "k={k}: {report:?}");
        assert_eq!(sessions_in(&url, name, "idle in transaction").await, 0, "k={k}");
        common::eventually("every connection is back in the pool", || {
            pool.num_idle() == pool.size() as usize
        })
        .await;
        if completed {
            break;
        }
        k += 1;
        assert!(k < 1000, "the enter completes uncancelled at some k");
    }
    assert_eq!(orders(&url).await, [k as i32], "only the uncancelled enter's insert");
    assert_eq!(sessions_in(&url, name, "idle in transaction").await, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn begin_cancelled_at_every_poll_leaves_no_session_in_a_transaction_current_thread() {
    begin_cancelled_at_every_poll("every_poll_ct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_cancelled_at_every_poll_leaves_no_session_in_a_transaction_multi_thread() {
    begin_cancelled_at_every_poll("every_poll_mt").await;
}
