//! Exits for the crates a tokio service releases through most, each behind
//! an off-by-default cargo feature named after the crate it serves:
//!
//! * `rustls` (tokio-rustls 0.26, rustls 0.23): a `TlsStream` ends with
//!   `close_notify`, then its transport's own close;
//! * `sqlx` (0.8): a transaction commits when the scope succeeded and
//!   rolls back otherwise;
//! * `deadpool` (0.13): a pooled object returns to its pool when the scope
//!   succeeded, and is detached and closed otherwise.
//!
//! They depend on the traits, the close bounds and the errors only: an
//! integration is an [`AsyncExit`](crate::AsyncExit) implementation like
//! one a user would write, and the stack knows nothing of it.

#[cfg(feature = "deadpool")]
pub(crate) mod deadpool;
#[cfg(feature = "rustls")]
mod rustls;
#[cfg(feature = "sqlx")]
pub(crate) mod sqlx;
