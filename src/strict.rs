//! Strict mode: a forgotten `aclose` panics at the drop site, for test
//! suites. A process-wide switch ([`set`]), also turned on by the
//! environment variable [`ENV`] (read once, at first use).
//!
//! A stack declared cancellable
//! ([`AsyncExitStack::set_cancellable`](crate::AsyncExitStack::set_cancellable)),
//! a `scope`'s stack, and a cancelled `aclose` never trip it: cancellation
//! is normal life. Tests that drop a stack on purpose declare it.

use std::sync::atomic::{AtomicU8, Ordering};

/// Strict mode: 0 = not decided yet, 1 = off, 2 = on.
static STRICT: AtomicU8 = AtomicU8::new(0);

/// The environment variable that turns strict mode on (`1` or `true`):
/// `TOKIO_EXIT_STACK_STRICT`.
///
/// ```
/// assert_eq!(tokio_exit_stack::strict::ENV, "TOKIO_EXIT_STACK_STRICT");
/// ```
pub const ENV: &str = "TOKIO_EXIT_STACK_STRICT";

/// Turns strict mode on or off for the whole process.
///
/// In strict mode a stack dropped while holding entries (outside a panic)
/// still hands its cleanup to the background, then **panics at the drop
/// site**, so a test suite catches every forgotten `aclose`. Off by
/// default; also turned on by the environment variable
/// `TOKIO_EXIT_STACK_STRICT=1` (read once, at the first drop that needs
/// it). Meant for tests and debugging, never for production.
pub fn set(on: bool) {
    STRICT.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether strict mode is on (see [`set`]).
pub fn is_on() -> bool {
    match STRICT.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var(ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
            // Only the first decision sticks, so a racing `set` wins.
            let _ = STRICT.compare_exchange(0, if on { 2 } else { 1 }, Ordering::Relaxed, Ordering::Relaxed);
            STRICT.load(Ordering::Relaxed) == 2
        }
        state => state == 2,
    }
}
