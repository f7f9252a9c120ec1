//! A connection pool whose connections are held and released through exit
//! stacks: the crate's first user story.
//!
//! Run it with `cargo run --example pool`.
//!
//! The pattern to copy into a real service:
//! * a checkout is an [`AsyncEnter`]: it takes a permit, then an idle
//!   connection or a new one, so a failed connect leaves the request's
//!   stack untouched;
//! * the checked-out connection is an [`AsyncExit`] that *commits* (returns
//!   the connection to the pool) when the request succeeded, and *rolls
//!   back* (closes it cleanly: shutdown, drain) when anything failed or the
//!   request was cancelled, since a connection in an unknown state must not
//!   be reused;
//! * the rollback gives the permit back *before* the lingering close, and
//!   keeps that close short ([`Linger`]): a cancelled request must not hold
//!   a pool slot while its discarded connection drains (under load, that
//!   turns timeouts into timeout storms);
//! * each request runs in [`scope`], so its connection and its permit are
//!   released on every path: success, error, timeout, panic;
//! * at shutdown, the idle connections close concurrently in one group
//!   (one drain bound for all, not one each), and [`drain`] waits for the
//!   cleanups of cancelled requests.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_exit_stack::{
    AsyncEnter, AsyncExit, AsyncExitStack, BoxError, Flow, Pending, async_trait, drain, linger::Linger, scope,
};

/// How long a discarded connection may linger for the peer's EOF.
const DISCARD_LINGER: Linger = Linger {
    drain_timeout: Duration::from_millis(20),
    ..Linger::DEFAULT
};

/// The pool: idle connections, and a limit on connections in use.
struct Pool {
    addr: SocketAddr,
    idle: Mutex<VecDeque<TcpStream>>,
    limit: Arc<Semaphore>,
    opened: AtomicUsize,
    reused: AtomicUsize,
    discarded: AtomicUsize,
}

impl Pool {
    fn new(addr: SocketAddr, size: usize) -> Arc<Self> {
        Arc::new(Self {
            addr,
            idle: Mutex::new(VecDeque::new()),
            limit: Arc::new(Semaphore::new(size)),
            opened: AtomicUsize::new(0),
            reused: AtomicUsize::new(0),
            discarded: AtomicUsize::new(0),
        })
    }

    /// Closes every idle connection, concurrently, through one stack.
    async fn close(&self) -> Result<usize, tokio_exit_stack::Error> {
        let mut stack = AsyncExitStack::new();
        let group = stack.enter_group();
        let idle: Vec<TcpStream> = self.idle.lock().unwrap().drain(..).collect();
        let n = idle.len();
        for conn in idle {
            group.push_resource(conn);
        }
        stack.aclose().await.map(|()| n)
    }
}

/// Entering a `Checkout` takes a permit, then a connection from the pool.
struct Checkout(Arc<Pool>);

impl AsyncEnter for Checkout {
    type Resource = Pooled;
    type Error = std::io::Error;

    async fn enter(self) -> Result<Pooled, std::io::Error> {
        let pool = self.0;
        let permit = pool
            .limit
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        let idle = pool.idle.lock().unwrap().pop_front();
        let conn = match idle {
            Some(conn) => {
                pool.reused.fetch_add(1, Ordering::Relaxed);
                conn
            }
            None => {
                let conn = TcpStream::connect(pool.addr).await?;
                pool.opened.fetch_add(1, Ordering::Relaxed);
                conn
            }
        };
        Ok(Pooled {
            conn: Some(conn),
            permit: Some(permit),
            pool,
        })
    }
}

/// A checked-out connection and its permit. Derefs to the stream.
struct Pooled {
    conn: Option<TcpStream>,
    permit: Option<OwnedSemaphorePermit>,
    pool: Arc<Pool>,
}

impl Deref for Pooled {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        self.conn.as_ref().expect("present until exit")
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut TcpStream {
        self.conn.as_mut().expect("present until exit")
    }
}

#[async_trait]
impl AsyncExit for Pooled {
    async fn exit(mut self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
        let Some(conn) = self.conn.take() else {
            return Ok(Flow::Propagate);
        };
        if pending.is_ok() {
            // Commit: the request finished its exchange; reuse the connection.
            self.pool.idle.lock().unwrap().push_back(conn);
            drop(self.permit.take());
            Ok(Flow::Propagate)
        } else {
            // Roll back: the connection may hold half a reply. Free the
            // pool slot first, then close the connection cleanly with the
            // stream's own exit (shutdown, then a short drain).
            drop(self.permit.take());
            self.pool.discarded.fetch_add(1, Ordering::Relaxed);
            Box::new(conn).exit(pending.with_linger(DISCARD_LINGER)).await
        }
    }
}

/// One request: a permit and a connection, one exchange, on every path
/// released.
async fn request(pool: Arc<Pool>, key: u32) -> Result<String, tokio_exit_stack::Error> {
    scope(async |stack| {
        let conn = stack.enter_async_context(Checkout(pool.clone())).await?;
        conn.write_all(format!("{key}\n").as_bytes()).await?;
        let mut reply = String::new();
        BufReader::new(&mut **conn).read_line(&mut reply).await?;
        Ok(reply.trim_end().to_owned())
    })
    .await
}

/// The backend: replies `value-<key>` to each line, slowly for every 25th key.
async fn backend() -> std::io::Result<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let clean_closes = Arc::new(AtomicUsize::new(0));
    let closes = clean_closes.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let closes = closes.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                loop {
                    match lines.next_line().await {
                        Ok(Some(key)) => {
                            if key.parse::<u32>().is_ok_and(|k| k % 25 == 7) {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            if write.write_all(format!("value-{key}\n").as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            closes.fetch_add(1, Ordering::Relaxed); // clean EOF
                            return;
                        }
                        Err(_) => return, // reset
                    }
                }
            });
        }
    });
    Ok((addr, clean_closes))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (addr, clean_closes) = backend().await?;
    let pool = Pool::new(addr, 8);

    // 100 requests, at most 8 at a time; each must answer within 50 ms, so
    // the slow keys time out: their futures are dropped mid-request.
    let mut requests = tokio::task::JoinSet::new();
    for key in 0..100 {
        let pool = pool.clone();
        requests.spawn(async move { tokio::time::timeout(Duration::from_millis(50), request(pool, key)).await });
    }
    let (mut ok, mut timed_out) = (0, 0);
    while let Some(result) = requests.join_next().await {
        match result? {
            Ok(reply) => {
                reply?;
                ok += 1;
            }
            Err(_elapsed) => timed_out += 1,
        }
    }
    // The timed-out requests' stacks were dropped: their connections are
    // being closed in the background. Wait for that, then close the pool.
    let report = drain(Duration::from_secs(5)).await;
    let idle = pool.close().await?;

    println!("requests: {ok} answered, {timed_out} timed out");
    println!(
        "connections: {} opened, {} reuses, {} discarded after a failed or cancelled request, {idle} idle closed at shutdown",
        pool.opened.load(Ordering::Relaxed),
        pool.reused.load(Ordering::Relaxed),
        pool.discarded.load(Ordering::Relaxed),
    );
    println!("background cleanups of cancelled requests: {report:?}");
    println!("permits available at the end: {} of 8", pool.limit.available_permits());
    // The backend notices a close once it is done with the request it was
    // serving (a slow one takes 200 ms): give it a second at most.
    let opened = pool.opened.load(Ordering::Relaxed);
    for _ in 0..100 {
        if clean_closes.load(Ordering::Relaxed) >= opened {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "backend saw {} clean closes (EOF) of {} connections",
        clean_closes.load(Ordering::Relaxed),
        pool.opened.load(Ordering::Relaxed)
    );
    Ok(())
}
