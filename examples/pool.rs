//! A deadpool connection pool whose connections are held and released
//! through exit stacks: the crate's first user story.
//!
//! Run it with `cargo run --example pool --features deadpool`.
//!
//! The pattern to copy into a real service:
//! * a checkout is `acquire(pool.get())`: a failed checkout leaves the
//!   request's stack untouched;
//! * the checked-out `deadpool::managed::Object` *commits* (returns to the
//!   pool) when the request succeeded, and *rolls back* when anything
//!   failed or the request was cancelled: it is detached from the pool and
//!   closed cleanly (shutdown, drain), since a connection in an unknown
//!   state (half a reply unread) must not be reused;
//! * detaching frees the request's pool slot at once, *before* the
//!   lingering close, and that close is kept short ([`Linger`]): a
//!   cancelled request must not hold a slot while its discarded connection
//!   drains (under load, that turns timeouts into timeout storms);
//! * each request runs in [`scope`], so its connection is released on
//!   every path: success, error, timeout, panic;
//! * at shutdown, the idle connections close concurrently in one group (one
//!   drain bound for all, not one each), and [`drain`] waits for the
//!   cleanups of cancelled requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool::managed::{Manager, Metrics, Pool, RecycleResult};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_exit_stack::{AsyncExitStack, BoxError, acquire, drain, linger::Linger, scope};

/// How long a discarded connection may linger for the peer's EOF.
const DISCARD_LINGER: Linger = Linger {
    drain_timeout: Duration::from_millis(20),
    ..Linger::DEFAULT
};

/// The pool's manager: opens loopback connections to the backend.
struct Backend {
    addr: SocketAddr,
    opened: AtomicUsize,
}

impl Manager for Backend {
    type Type = TcpStream;
    type Error = std::io::Error;

    async fn create(&self) -> std::io::Result<TcpStream> {
        let conn = TcpStream::connect(self.addr).await?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(conn)
    }

    async fn recycle(&self, _: &mut TcpStream, _: &Metrics) -> RecycleResult<std::io::Error> {
        Ok(())
    }
}

/// One request: a pooled connection, one exchange, on every path released.
async fn request(pool: Pool<Backend>, key: u32) -> Result<String, tokio_exit_stack::Error> {
    scope(async |stack| {
        let conn = stack
            .entry()
            .linger(DISCARD_LINGER) // only a discarded connection lingers
            .enter_async_context(acquire(pool.get()))
            .await?;
        conn.write_all(format!("{key}\n").as_bytes()).await?;
        let mut reply = String::new();
        BufReader::new(&mut **conn).read_line(&mut reply).await?;
        Ok(reply.trim_end().to_owned())
    })
    .await
}

/// Closes every idle connection of the pool, concurrently, through one
/// stack; returns how many.
async fn close_idle(pool: &Pool<Backend>) -> Result<usize, tokio_exit_stack::Error> {
    let idle = pool.retain(|_, _| false).removed;
    let n = idle.len();
    let mut stack = AsyncExitStack::new();
    let group = stack.enter_group();
    for conn in idle {
        group.push_resource(conn);
    }
    stack.aclose().await.map(|()| n)
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
    let pool = Pool::builder(Backend {
        addr,
        opened: AtomicUsize::new(0),
    })
    .max_size(8)
    .build()?;

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
    let idle = close_idle(&pool).await?;
    pool.close();

    let opened = pool.manager().opened.load(Ordering::Relaxed);
    println!("requests: {ok} answered, {timed_out} timed out");
    println!(
        "connections: {opened} opened, {} discarded after a cancelled request, {idle} idle closed at shutdown",
        opened - idle
    );
    println!("background cleanups of cancelled requests: {report:?}");
    // The backend notices a close once it is done with the request it was
    // serving (a slow one takes 200 ms): give it a second at most.
    for _ in 0..100 {
        if clean_closes.load(Ordering::Relaxed) >= opened {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "backend saw {} clean closes (EOF) of {opened} connections",
        clean_closes.load(Ordering::Relaxed)
    );
    Ok(())
}
