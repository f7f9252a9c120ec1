//! Strict mode, in its own test binary: it is process-wide, and the other
//! binaries drop stacks without `aclose` on purpose.

use std::panic::AssertUnwindSafe;

use tokio_exit_stack::AsyncExitStack;

/// Strict mode turns a forgotten `aclose` into a panic at the drop site;
/// the cleanup still runs.
#[tokio::test(flavor = "current_thread")]
async fn strict_mode_panics_at_the_drop_of_a_stack_that_was_never_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stack = AsyncExitStack::new();
    stack.push_async_callback(move || async move {
        let _ = tx.send(());
    });
    let panic = {
        let _strict = StrictGuard::on();
        std::panic::catch_unwind(AssertUnwindSafe(move || drop(stack))).unwrap_err()
    };
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("dropped without aclose"), "{message}");
    assert!(
        message.contains("tests/strict.rs"),
        "names the creation site: {message}"
    );
    rx.await.unwrap();

    // A closed stack, or an empty one, is fine in strict mode.
    let _strict = StrictGuard::on();
    let mut stack = AsyncExitStack::new();
    stack.callback(|| ());
    stack.aclose().await.unwrap();
    drop(stack);
}

struct StrictGuard;
impl StrictGuard {
    fn on() -> Self {
        tokio_exit_stack::set_strict(true);
        StrictGuard
    }
}
impl Drop for StrictGuard {
    fn drop(&mut self) {
        tokio_exit_stack::set_strict(false);
    }
}
