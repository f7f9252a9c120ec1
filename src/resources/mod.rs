//! [`AsyncEnter`](crate::AsyncEnter) / [`AsyncExit`](crate::AsyncExit) for
//! the tokio types users most often release wrongly, one file per tokio
//! area, each behind the cargo feature named like tokio's.
//!
//! | Type | Feature | Exit on success | Exit on failure or abandonment | No runtime (`abandon`) |
//! |---|---|---|---|---|
//! | `TcpStream`, `UnixStream` | `net` | shut down the write side, then drain unread input (bounded), so the peer sees a clean EOF, never a reset | same | shut down the write side, drain what is already buffered |
//! | `fs::File` | `fs` | flush, reporting the error a drop would lose | same | dropped |
//! | [`fs::Durable`](crate::fs::Durable)`<File>` | `fs` | flush, then `sync_all` | same | dropped |
//! | `BufWriter<W>` | `io-util` | flush and shut down: no buffered byte lost | same | dropped (buffer lost) |
//! | `BufStream<S>` | `io-util` | flush, shut down, drain (bounded) | same | dropped |
//! | `Arc<Semaphore>` (enters as `OwnedSemaphorePermit`) | `sync` | release, inline | same | release |
//! | `Arc<Mutex<T>>` (enters as `OwnedMutexGuard`), owned rwlock guards | `sync` | unlock, inline | same | unlock |
//! | `process::Child` | `process` | wait for it to exit | kill, then reap: no zombie | kill, reap if already exited |
//! | `JoinHandle<T>` | `rt` | await it; a panicked task is an error | abort, then await | abort |
//! | `JoinSet<T>` | `rt` | await every task; failures are errors | abort all, await all | abort all |
//!
//! A release that fails reports a [`ResourceError`](crate::ResourceError)
//! naming the resource and the step (S32); the unwind carries on.

#[cfg(any(feature = "net", feature = "io-util"))]
mod drain;
#[cfg(feature = "fs")]
pub(crate) mod fs;
#[cfg(feature = "io-util")]
mod io;
#[cfg(feature = "net")]
mod net;
#[cfg(feature = "process")]
mod process;
#[cfg(feature = "sync")]
mod sync;
#[cfg(feature = "rt")]
mod task;

#[cfg(any(feature = "net", feature = "io-util"))]
pub use drain::{DRAIN_LIMIT, DRAIN_TIMEOUT};
#[cfg(feature = "rt")]
pub use task::TaskError;
