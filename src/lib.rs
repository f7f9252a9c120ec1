//! Python's [`contextlib.AsyncExitStack`](https://docs.python.org/3/library/contextlib.html#contextlib.AsyncExitStack),
//! done right for Rust and tokio.
//!
//! # The problem
//!
//! A tokio task acquires resources one by one: a connection, a file, a
//! permit. Each needs an *async* release (flush the file, shut the
//! connection down cleanly), in reverse order, even when something failed
//! half way, and the release itself can fail. Rust's `Drop` cannot await,
//! and tokio cancels a future by dropping it, at any `.await`: a timed-out
//! request, a lost `select!` branch, a panic. Hand-written cleanup loses
//! buffered bytes, resets peers, and silently skips whole cleanups.
//!
//! # The answer
//!
//! An [`AsyncExitStack`] collects any mix of resources as the task acquires
//! them, lends each back for use, and releases them newest first with one
//! [`aclose`](AsyncExitStack::aclose)`().await`. Each exit is told what
//! went wrong and may suppress it; no error is ever lost ([`Error`] keeps
//! them all, newest first). And what Python cannot do: a stack dropped
//! without `aclose` still runs its cleanup, in one background task, and
//! [`drain`] lets `main` wait for those tasks before it returns.
//!
//! ```
//! # #[cfg(all(feature = "net", feature = "fs", feature = "sync"))]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use std::sync::Arc;
//! use tokio::io::AsyncWriteExt;
//! use tokio::net::{TcpListener, TcpStream};
//! use tokio::sync::Semaphore;
//! use tokio_exit_stack::{acquire, AsyncExitStack};
//!
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let limit = Arc::new(Semaphore::new(1));
//! let log = tempfile::NamedTempFile::new()?;
//!
//! let mut stack = AsyncExitStack::new();
//! let _permit = stack.enter_async_context(limit.clone()).await?; // acquires
//! let conn = stack
//!     .enter_async_context(acquire(TcpStream::connect(listener.local_addr()?)))
//!     .await?;
//! let file = stack
//!     .enter_async_context(acquire(tokio::fs::File::create(log.path())))
//!     .await?;
//! conn.write_all(b"ping").await?; // both in use at once
//! file.write_all(b"sent ping").await?;
//! assert_eq!(limit.available_permits(), 0);
//!
//! stack.aclose().await?; // file flushed, connection shut down, permit released
//! assert_eq!(limit.available_permits(), 1);
//! assert_eq!(std::fs::read(log.path())?, b"sent ping");
//! # Ok(()) }
//! # #[cfg(not(all(feature = "net", feature = "fs", feature = "sync")))] fn main() {}
//! ```
//!
//! # From Python to Rust
//!
//! | Python `AsyncExitStack` | This crate |
//! |---|---|
//! | `AsyncExitStack()` | [`AsyncExitStack::new`] |
//! | `async with AsyncExitStack() as stack:` | [`scope`]`(async \|stack\| { ... })` |
//! | `await stack.enter_async_context(cm)` | [`enter_async_context`](AsyncExitStack::enter_async_context)`(cm)` (any [`AsyncEnter`]; [`acquire`] wraps a future) |
//! | `stack.enter_context(cm)` | [`enter_context`](AsyncExitStack::enter_context)`(value)`: cleanup is `Drop` |
//! | `stack.push_async_exit(fn)` | [`push_async_exit`](AsyncExitStack::push_async_exit)`(\|pending\| async { ... })` |
//! | `stack.push(fn)` | [`push_exit`](AsyncExitStack::push_exit)`(\|pending\| ...)` |
//! | `stack.push_async_callback(fn, *args)` | [`push_async_callback`](AsyncExitStack::push_async_callback)`(move \|\| async move { ... })` |
//! | `stack.callback(fn, *args)` | [`callback`](AsyncExitStack::callback)`(move \|\| ...)` |
//! | `stack.pop_all()` | [`pop_all`](AsyncExitStack::pop_all); to take resources back out, owned: [`enter_keyed`](AsyncExitStack::enter_keyed), then [`take`](AsyncExitStack::take) |
//! | a stack entered in another | `outer.push_resource(inner)`: a stack is itself a resource |
//! | `await stack.aclose()` | [`aclose`](AsyncExitStack::aclose)`().await` |
//! | `await stack.__aexit__(type(e), e, tb)` | [`aclose_with`](AsyncExitStack::aclose_with)`(e).await` |
//! | `__aexit__` returns `True` | an exit returns [`Flow::Suppress`] |
//! | exception passed to `__aexit__` | [`Pending`] |
//! | `__context__` chain | [`Error`]: every error, newest first, each the very object raised; [`Pending::iter`] inside an exit |
//! | `raise New from exc` in `__aexit__` | return an error holding [`Pending::cause`] as its `source()`: it replaces `exc` in the chain |
//! | — | a dropped stack cleans up in the background; [`drain`] waits for it |
//!
//! # Supported tokio types
//!
//! Each tokio family is behind a cargo feature named like tokio's; all are
//! on by default. With `default-features = false` the crate needs only
//! tokio's `rt` and `time`. The integrations with other crates are off by
//! default, each behind a feature named after the crate it serves:
//! `rustls` (tokio-rustls 0.26, rustls 0.23), `sqlx` (0.8), `deadpool`
//! (0.13); each builds on the crate's Rust version, 1.85.
//!
//! | Type | Feature | Exit when the scope succeeded | Exit on failure or abandonment | No runtime left (`abandon`) |
//! |---|---|---|---|---|
//! | `TcpStream`, `UnixStream` | `net` | shut down the write side, then drain unread input (bounded by the entry's [`Linger`](crate::linger::Linger): by default [`DRAIN_LIMIT`](crate::linger::DRAIN_LIMIT) bytes, [`DRAIN_TIMEOUT`](crate::linger::DRAIN_TIMEOUT)), so the peer sees a clean EOF, never a reset | same | shut down the write side, drain what is already buffered |
//! | `fs::File` | `fs` | flush, reporting the error a drop would lose | same | dropped |
//! | [`fs::Durable`] (a `File`) | `fs` | flush, then `sync_all` | same | dropped |
//! | `BufWriter<W>` | `io-util` | flush and shut down: no buffered byte lost (bounded by the entry's [`Linger`](crate::linger::Linger): by default [`FLUSH_TIMEOUT`](crate::linger::FLUSH_TIMEOUT), then a `TimedOut` error) | same | dropped (its buffer is lost) |
//! | `BufStream<S>` | `io-util` | flush, shut down, drain (bounded likewise) | same | dropped |
//! | `Arc<Semaphore>` (enters as `OwnedSemaphorePermit`) | `sync` | release, inline, no task | same | release |
//! | `Arc<Mutex<T>>` (enters as `OwnedMutexGuard`), owned rwlock guards | `sync` | unlock, inline, no task | same | unlock |
//! | `process::Child` | `process` | wait for it to exit | kill, then reap: no zombie | kill; reap if it already exited |
//! | `JoinHandle<T>` (enters as a [`Task`]) | `rt` | await it, unless the caller did; a panicked task is a [`TaskError`](crate::error::TaskError), an aborted one a finished entry | abort, then await (reap) | abort |
//! | `JoinSet<T>` | `rt` | await every task; each panicked one is a [`TaskError`](crate::error::TaskError), aborted ones are not failures | abort all, await all | abort all |
//! | tokio-rustls `client::TlsStream<S>`, `server::TlsStream<S>`, `TlsStream<S>`, over any `S` with an exit (`TcpStream`, `UnixStream`, ...) | `rustls` | send `close_notify` (within the entry's [`Linger`](crate::linger::Linger) flush bound), then the transport's own exit (shut down, bounded drain): the peer reads a clean TLS closure | same | over a TCP or Unix socket, write `close_notify` straight to the socket without waiting; then the transport's own |
//! | sqlx `Transaction<'static, DB>` (entered by `sqlx::begin(&pool)`, or as itself) | `sqlx` | commit; a failed commit is the scope's error, a `sqlx::TransactionError` | roll back, finished before the unwind goes on | dropped without sqlx's panic outside a runtime: the connection closes, the database rolls back |
//! | deadpool `managed::Object<M>` whose `M::Type` has an exit; `deadpool::DetachOnError` for any other | `deadpool` | returned to the pool, unless an error was raised in the scope and suppressed since ([`Pending::saw_error`]): then detached as on failure | detached (`Object::take`), then closed through the connection's own exit | detached, then the connection's own |
//!
//! The stream exits bound their flush and drain with timers ([`Linger`](crate::linger::Linger),
//! settable per entry or per stack), as do entry timeouts and [`drain`]:
//! they need the runtime's time driver, which `#[tokio::main]`,
//! `#[tokio::test]` and `Builder::enable_all` turn on.
//!
//! A release that fails returns a [`ResourceError`](crate::error::ResourceError) naming the resource
//! and the step (`shutdown of TcpStream(127.0.0.1:40312 -> 127.0.0.1:8080)
//! failed during cleanup`, with the I/O error as its `source()`), and the
//! unwind carries on with the next entry.
//!
//! # Beyond Python
//!
//! * **Dropped without `aclose`** (a timed-out request, a lost `select!`
//!   branch, a panic): the remaining entries run in one background task on
//!   the runtime the stack was created on, told [`Pending::is_abandoned`].
//!   A stack of permits and guards only is released inline.
//! * **Cancelled `aclose`**: the entries that had not finished run in the
//!   background, each exactly once; the one in flight is resumed, not
//!   restarted. The unwind is shielded: the exits that had not started are
//!   told what they would have been told had it been awaited, with
//!   [`Pending::is_detached`] set, so a request whose body succeeded still
//!   commits. [`aclose_with`](AsyncExitStack::aclose_with) closes a stack
//!   with the caller's own error pending.
//! * **Shutdown**: call [`drain`] before `main` returns to let background
//!   cleanups finish, with a deadline; it reports how many finished, failed,
//!   were lost or cut off. A cleanup lost to shutdown, or dropped where no
//!   runtime exists, is an ERROR event naming it, never silent.
//! * **Panics** in a cleanup do not stop the others; `aclose` resumes the
//!   first once all have run. This needs unwinding panics: under
//!   `panic = "abort"` the first panic in any user code the stack calls
//!   (an exit, a callback, a label, a resource's `Drop`) ends the process,
//!   and no later entry runs.
//! * **Cancellation** is normal life: a [`scope`] whose future is dropped
//!   in its body (a timeout, a lost `select!` branch) runs its cleanup in
//!   the background, its exits told [`AbandonCause::Cancelled`](error::AbandonCause::Cancelled), with a DEBUG
//!   event only; dropped during its unwind, the unwind is shielded as
//!   above. A stack made with `new()` and dropped holding entries is a
//!   WARN (a forgotten `aclose`) unless it was declared
//!   [`set_cancellable`](AsyncExitStack::set_cancellable).
//! * **An enter cut short** is finished when the enter asks for it
//!   ([`AsyncEnter::enter_finishing`]; the crate's `sqlx::begin` does) or
//!   the caller does ([`EntryBuilder::finish_on_cancel`]): its resource is
//!   released through its exit, never dropped half acquired (see
//!   [`finish`]).
//! * **Timeouts**: per entry ([`EntryBuilder::timeout`]) and for a whole
//!   unwind ([`AsyncExitStack::set_unwind_timeout`]).
//! * **Concurrent groups** ([`AsyncExitStack::enter_group`]) close many
//!   similar resources at once, in their place in the LIFO order.
//! * **Strict mode** ([`strict::set`], or `TOKIO_EXIT_STACK_STRICT=1`) makes
//!   a forgotten `aclose` panic at the drop site, for test suites.
//!
//! Nothing in the crate blocks in `Drop`, builds a runtime, uses
//! `block_in_place`, or calls `Handle::current()`.
//!
//! # Ownership
//!
//! The stack owns every resource, so it can release it even from `Drop`;
//! registration takes `&self` and lends back `&mut Resource`, so several
//! resources are in use at once and a future holding the stack is `Send`.
//! `aclose` takes `&mut self`, so the borrow checker proves no resource is
//! in use while it is released. The borrow checker also refuses a lent
//! resource used after `aclose`, after `pop_all`, or after the stack moved,
//! a group kept past its stack, and a `!Send` value registered (each is a
//! `compile_fail` test of this crate).
//!
//! # Implementing your own resource
//!
//! Implement [`AsyncExit`] (with [`macro@async_trait`]); it then also enters as
//! itself. See the trait's docs.
//!
//! # Costs
//!
//! `new()` allocates nothing. An async callback costs one allocation, an
//! entered resource two (itself, and its exit future); a stack of more than
//! 16 entries also grows its entry vector (32 bytes a slot), as a `Vec`
//! does. The small entry vector a finished unwind leaves behind (at most
//! 16 slots, 512 bytes) is kept, one per thread, for the next stack on that
//! thread, so a stack holds memory in proportion to its own entries.
//! Measured against a hand-rolled list of boxed futures and against Python
//! in `BENCHMARKS.md`.
//!
//! # Observability
//!
//! Every unwind is a `tracing` span `unwind` (site, entry count, reason:
//! aclose, scope end, drop, cancel) with a child span `exit` per entry
//! (resource, outcome, duration). Failed cleanups and timeouts are WARN
//! events, panics and cleanups that could not run are ERROR events, and a
//! stack dropped without `aclose` is a WARN event naming where it was
//! created. Run `cargo run --example tracing` to see it.
//!
//! # Versions and what is not supported
//!
//! Rust 1.85 for the crate and every feature; tokio 1.38 or later;
//! tokio-util 0.7.11 or later, whose `TaskTracker`
//! [`set_tracker`](AsyncExitStack::set_tracker) takes. Resources must be
//! `Send + 'static`, since a stack may release them in a background task on
//! any worker thread: `!Send` resources, and futures that only run on a
//! `LocalSet`, are not supported.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(rust_2018_idioms, unreachable_pub, missing_debug_implementations)]

// Layers, top to bottom; each module uses only modules below it
// (`tests/layers.rs` checks it):
//
//   stack       the facade: AsyncExitStack, scope
//   register    the registering methods, written once; EntryBuilder, Key
//   background  dropped or cancelled unwinds, the trackers, drain
//   strict      strict mode
//   unwind      the unwind loop
//   registry    the entries, the LIFO registry, ExitGroup; with owned, the only unsafe
//   erased      values and closures as exits
//   integrations  exits for rustls, sqlx, deadpool (optional features)
//   resources   the tokio types' exits, one file per area and feature
//   traits      AsyncEnter, AsyncExit, Pending, Flow, acquire
//   linger      the bounds of a stream's close
//   timer       timers that never panic (no time driver)
//   error       Error, and the errors the stack raises itself
//   owned       the arena pointer and its soundness argument
pub mod background;
mod erased;
pub mod error;
pub mod finish;
mod integrations;
pub mod linger;
mod owned;
mod register;
mod registry;
mod resources;
mod stack;
pub mod strict;
mod timer;
mod traits;
mod unwind;

pub use async_trait::async_trait;
#[cfg(feature = "rt")]
#[cfg_attr(docsrs, doc(cfg(feature = "rt")))]
pub use resources::Task;

/// File exits: [`Durable`](fs::Durable), a file that is synced to disk at
/// exit. (`tokio::fs::File` itself implements [`AsyncExit`] directly.)
#[cfg(feature = "fs")]
#[cfg_attr(docsrs, doc(cfg(feature = "fs")))]
pub mod fs {
    pub use crate::resources::fs::Durable;
}
/// Transactions of [sqlx](https://docs.rs/sqlx) 0.8: [`begin`](sqlx::begin)
/// a transaction that commits when the scope succeeds and rolls back
/// otherwise. (`sqlx::Transaction<'static, DB>` itself implements
/// [`AsyncExit`], so a transaction begun by hand enters as itself.)
#[cfg(feature = "sqlx")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
pub mod sqlx {
    pub use crate::integrations::sqlx::{Begin, TransactionError, begin};
}

/// Pooled objects of [deadpool](https://docs.rs/deadpool) 0.13:
/// `deadpool::managed::Object<M>` implements [`AsyncExit`] when its
/// connection type does (returned to the pool on success, detached and
/// closed otherwise); [`DetachOnError`](deadpool::DetachOnError) serves
/// connection types without an exit; [`get`](deadpool::get) checks an
/// object out as an enter whose connection, cut short mid-creation, is
/// finished and pooled.
#[cfg(feature = "deadpool")]
#[cfg_attr(docsrs, doc(cfg(feature = "deadpool")))]
pub mod deadpool {
    pub use crate::integrations::deadpool::{DetachOnError, Get, get};
}
pub use background::drain;
pub use error::{BoxError, Error};
pub use register::{EntryBuilder, FinishOnCancel, Key};
pub use registry::ExitGroup;
pub use stack::{AsyncExitStack, scope, scope_suppressible};
pub use traits::{Acquire, AsyncEnter, AsyncExit, CallbackOutput, Entering, Finish, Flow, Pending, acquire};

/// The README's examples, compiled and run as doc tests, so that every
/// snippet there stays true.
#[cfg(all(doctest, feature = "net", feature = "fs", feature = "sync"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// What the borrow checker refuses, kept refused: each of these must not
/// compile.
///
/// A lent resource used after `aclose` (it was released):
///
/// ```compile_fail,E0502
/// # async fn f(listener: tokio::net::TcpListener) {
/// let mut stack = tokio_exit_stack::AsyncExitStack::new();
/// let conn = stack.push_resource(tokio::net::TcpStream::connect("127.0.0.1:1").await.unwrap());
/// stack.aclose().await.unwrap();
/// let _ = conn.peer_addr(); // released: refused
/// # }
/// ```
///
/// A lent resource used after `pop_all` (another stack owns it now):
///
/// ```compile_fail,E0502
/// let mut stack = tokio_exit_stack::AsyncExitStack::new();
/// let value = stack.enter_context(String::from("lent"));
/// let other = stack.pop_all();
/// value.push('!'); // moved to `other`: refused
/// # drop(other);
/// ```
///
/// A lent resource used after the stack moved (into a task, say):
///
/// ```compile_fail,E0505
/// let stack = tokio_exit_stack::AsyncExitStack::new();
/// let value = stack.enter_context(String::from("lent"));
/// let moved = stack;
/// value.push('!'); // refused
/// # drop(moved);
/// ```
///
/// A group kept past its stack:
///
/// ```compile_fail,E0505
/// let stack = tokio_exit_stack::AsyncExitStack::new();
/// let group = stack.enter_group();
/// drop(stack);
/// group.callback(|| ()); // refused
/// ```
///
/// A `!Send` value registered (a stack may release it on any thread):
///
/// ```compile_fail,E0277
/// let stack = tokio_exit_stack::AsyncExitStack::new();
/// stack.enter_context(std::rc::Rc::new(1)); // refused
/// ```
#[cfg(all(doctest, feature = "net"))]
pub struct BorrowCheckerRefuses;
