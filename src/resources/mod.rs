//! [`AsyncEnter`](crate::AsyncEnter) / [`AsyncExit`](crate::AsyncExit) for
//! the tokio types users most often release wrongly, one file per tokio
//! area, each behind the cargo feature named like tokio's.
//!
//! The table of what each exit does is in the crate docs.
//!
//! A release that fails reports a [`ResourceError`](crate::error::ResourceError)
//! naming the resource and the step; the unwind carries on.

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

#[cfg(feature = "rt")]
pub use task::Task;
