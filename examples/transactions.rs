//! A small order service on SQLite: each request's scope holds a permit, a
//! transaction and an audit exit. Requests that succeed commit, with no
//! commit call; requests that fail, and requests that time out, roll back.
//!
//! Run it with `cargo run --example transactions --features sqlx`.
//!
//! The pattern to copy into a real service:
//! * a permit first (`Arc<Semaphore>` enters as an owned permit), so the
//!   service bounds its requests in flight;
//! * then an audit exit, registered before the transaction so that it runs
//!   after it (newest first) and is told how the request really ended,
//!   commit included: it records the outcome, and never hides an error;
//! * then the transaction, `tokio_exit_stack::sqlx::begin(&pool)`: the
//!   body writes through it and never commits by hand;
//! * a request that fails (out of stock) rolls back before its scope
//!   returns; one that times out is rolled back by the background cleanup
//!   of its dropped stack, and [`drain`] waits for those.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::Semaphore;
use tokio_exit_stack::{BoxError, Flow, drain, scope};

/// What the audit exits saw, by outcome.
#[derive(Default)]
struct Audit {
    committed: AtomicUsize,
    failed: AtomicUsize,
    abandoned: AtomicUsize,
    log: Mutex<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
#[error("out of stock: {item}")]
struct OutOfStock {
    item: String,
}

/// One order: a permit, an audit exit, a transaction; then the payment and
/// the writes.
async fn place_order(
    pool: &SqlitePool,
    limit: &Arc<Semaphore>,
    audit: &Arc<Audit>,
    order: i64,
    item: &str,
    slow_payment: bool,
) -> Result<(), tokio_exit_stack::Error> {
    scope(async |stack| {
        stack.enter_async_context(limit.clone()).await?;
        let seen = audit.clone();
        stack.entry().label("audit").push_exit(move |pending| {
            let outcome = if pending.is_ok() {
                seen.committed.fetch_add(1, Ordering::Relaxed);
                "committed".to_owned()
            } else if pending.is_abandoned() {
                seen.abandoned.fetch_add(1, Ordering::Relaxed);
                "rolled back: timed out".to_owned()
            } else {
                seen.failed.fetch_add(1, Ordering::Relaxed);
                format!(
                    "rolled back: {}",
                    pending.error().map(|e| e.to_string()).unwrap_or_default()
                )
            };
            seen.log.lock().unwrap().push(format!("order {order}: {outcome}"));
            Ok::<_, BoxError>(Flow::Propagate)
        });
        let tx = stack.enter_async_context(tokio_exit_stack::sqlx::begin(pool)).await?;
        if slow_payment {
            // The payment provider hangs, past the request's deadline. (It
            // is asked before the writes: SQLite has one writer, and a
            // transaction that hung holding the write lock would stall
            // every other request.)
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        sqlx::query("INSERT INTO orders (id, item) VALUES (?, ?)")
            .bind(order)
            .bind(item)
            .execute(&mut **tx)
            .await?;
        let left: i64 =
            sqlx::query_scalar("UPDATE stock SET quantity = quantity - 1 WHERE item = ? RETURNING quantity")
                .bind(item)
                .fetch_one(&mut **tx)
                .await?;
        if left < 0 {
            Err(OutOfStock { item: item.to_owned() })?;
        }
        Ok(()) // committed as the scope returns
    })
    .await
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("orders.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal);
    let pool = SqlitePoolOptions::new()
        .max_connections(16)
        .connect_with(options)
        .await?;
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("CREATE TABLE stock (item TEXT PRIMARY KEY, quantity INTEGER NOT NULL, initial INTEGER NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO stock (item, quantity, initial) VALUES ('tea', 1000, 1000), ('coffee', 10, 10)")
        .execute(&pool)
        .await?;

    let limit = Arc::new(Semaphore::new(16));
    let audit = Arc::new(Audit::default());
    let mut requests = tokio::task::JoinSet::new();
    for order in 0..60_i64 {
        let (pool, limit, audit) = (pool.clone(), limit.clone(), audit.clone());
        // every other order is coffee, of which there are 10; every 10th
        // order's payment hangs past the request's 1 s deadline
        let item = if order % 2 == 0 { "coffee" } else { "tea" };
        let slow = order % 10 == 3;
        requests.spawn(async move {
            let placing = place_order(&pool, &limit, &audit, order, item, slow);
            tokio::time::timeout(Duration::from_secs(1), placing).await
        });
    }
    let (mut ok, mut failed, mut timed_out) = (0, 0, 0);
    while let Some(result) = requests.join_next().await {
        match result? {
            Ok(Ok(())) => ok += 1,
            Ok(Err(_)) => failed += 1,
            Err(_elapsed) => timed_out += 1,
        }
    }
    // The timed-out requests' transactions roll back in the background:
    // wait for those.
    let report = drain(Duration::from_secs(5)).await;
    assert!(report.failed == 0 && report.is_complete(), "{report:?}");

    let committed = audit.committed.load(Ordering::Relaxed);
    let rolled_back = audit.failed.load(Ordering::Relaxed) + audit.abandoned.load(Ordering::Relaxed);
    println!("requests: {ok} succeeded, {failed} failed, {timed_out} timed out");
    println!(
        "committed: {committed}; rolled back: {rolled_back} ({} failed, {} timed out)",
        audit.failed.load(Ordering::Relaxed),
        audit.abandoned.load(Ordering::Relaxed)
    );
    let log = audit.log.lock().unwrap().clone();
    for kind in ["committed", "out of stock", "timed out"] {
        if let Some(line) = log.iter().find(|line| line.contains(kind)) {
            println!("  for example, {line}");
        }
    }

    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await?;
    let sold: i64 = sqlx::query_scalar("SELECT sum(initial - quantity) FROM stock")
        .fetch_one(&pool)
        .await?;
    println!("database: {orders} orders, {sold} items taken from stock");
    let matches = orders as usize == committed && sold == orders && committed == ok;
    println!(
        "committed count matches the database: {}",
        if matches { "yes" } else { "NO" }
    );
    pool.close().await;
    if !matches {
        return Err("the database does not match the committed count".into());
    }
    Ok(())
}
