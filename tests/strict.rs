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

/// Cancellation is normal life: in strict mode, a scope dropped by a
/// timeout or a lost `select!` branch, a cancelled `aclose`, and a stack
/// declared cancellable never panic; their cleanup still runs.
#[tokio::test(flavor = "current_thread")]
async fn s20_strict_mode_never_panics_for_a_cancelled_scope_or_aclose() {
    let _strict = StrictGuard::on();
    let (tx, mut ran) = tokio::sync::mpsc::unbounded_channel();
    let body = |tx: tokio::sync::mpsc::UnboundedSender<&'static str>, name| {
        tokio_exit_stack::scope(async move |stack| {
            stack.push_async_callback(move || async move {
                let _ = tx.send(name);
            });
            std::future::pending::<()>().await;
            Ok(())
        })
    };
    let timed_out = tokio::time::timeout(std::time::Duration::from_millis(1), body(tx.clone(), "timeout")).await;
    assert!(timed_out.is_err());
    tokio::select! {
        _ = body(tx.clone(), "select") => unreachable!(),
        () = tokio::task::yield_now() => {}
    }
    let mut stack = AsyncExitStack::new();
    let t = tx.clone();
    stack.push_async_callback(move || async move {
        tokio::task::yield_now().await;
        let _ = t.send("aclose");
    });
    {
        let mut closing = std::pin::pin!(stack.aclose());
        assert!(futures_util::poll!(closing.as_mut()).is_pending());
    } // the aclose is cancelled here
    let mut declared = AsyncExitStack::new();
    declared.set_cancellable(true);
    let t = tx.clone();
    declared.push_async_callback(move || async move {
        let _ = t.send("declared");
    });
    drop(declared);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(ran.recv().await.unwrap());
    }
    seen.sort();
    assert_eq!(seen, ["aclose", "declared", "select", "timeout"]);
}

/// Strict mode on until dropped; the tests of this binary take turns, since
/// the switch is process-wide.
struct StrictGuard(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
impl StrictGuard {
    fn on() -> Self {
        let turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        tokio_exit_stack::strict::set(true);
        StrictGuard(turn)
    }
}
impl Drop for StrictGuard {
    fn drop(&mut self) {
        tokio_exit_stack::strict::set(false);
    }
}
