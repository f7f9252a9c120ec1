//! A subscriber set after a stack was dropped (S20, S26). tracing decides
//! once per process, at the first event or span of each call site, whether
//! anything wants it, and keeps that answer; so this test is a binary of
//! its own: what it checks is what the first cleanup of a process leaves
//! behind for every later one.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::Capture;
use tokio_exit_stack::AsyncExitStack;

/// A stack dropped while no subscriber is set is cleaned up in the
/// background; when a subscriber is set before that cleanup runs, the
/// cleanup must not teach tracing that nobody listens to the crate's
/// events: the next cleanup's span and events still reach the subscriber.
#[test]
fn s26_a_cleanup_begun_before_any_subscriber_does_not_silence_later_cleanups() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // No subscriber yet: the stack is dropped, its cleanup spawned.
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let first_ran = Arc::new(AtomicBool::new(false));
        {
            let mut stack = AsyncExitStack::new();
            stack.set_cancellable(true);
            let ran = first_ran.clone();
            stack.push_async_callback(move || async move {
                let _ = released.await;
                ran.store(true, Ordering::SeqCst);
            });
            drop(stack);
        }

        // The application sets its subscriber; the first cleanup then runs
        // to its end.
        let capture = Capture::default();
        let _guard = capture.install();
        release.send(()).unwrap();
        common::eventually("the first cleanup ran", || first_ran.load(Ordering::SeqCst)).await;
        tokio::task::yield_now().await; // and reported

        // A second stack, dropped under the subscriber.
        let second_ran = Arc::new(AtomicBool::new(false));
        {
            let mut stack = AsyncExitStack::new();
            stack.set_cancellable(true);
            let ran = second_ran.clone();
            stack.push_async_callback(move || async move {
                tokio::task::yield_now().await;
                ran.store(true, Ordering::SeqCst);
            });
            drop(stack);
        }
        common::eventually("the second cleanup ran", || second_ran.load(Ordering::SeqCst)).await;
        tokio::task::yield_now().await;

        let finished = capture
            .events()
            .iter()
            .filter(|e| e.message.starts_with("background cleanup finished"))
            .count();
        assert!(
            finished >= 1,
            "the second cleanup's end reaches the subscriber: {:#?}",
            capture.events()
        );
        let unwinds = capture.spans().iter().filter(|s| s.name == "unwind").count();
        assert!(unwinds >= 1, "the second cleanup's span reaches the subscriber");
    });
}
