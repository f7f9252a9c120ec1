//! Panics (S18), timeouts (S19), no runtime (S22), concurrent groups (S24)
//! and strict mode. Time-dependent tests run on tokio's paused clock.

mod common;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Capture, Log};
use futures_util::FutureExt as _;
use tokio::time::Instant;
use tokio_exit_stack::{AsyncExitStack, BoxError, Flow, Pending, error::PanicError, error::TimeoutError, scope};

/// Panics with a `&'static str` payload, returning `()` to the type checker.
fn boom(message: &'static str) {
    std::panic::panic_any(message)
}

both_flavours! {
    async fn s18_a_panicking_entry_does_not_stop_the_others_and_aclose_resumes_it() {
        let log = Log::default();
        let mut stack = AsyncExitStack::new();
        let l = log.clone();
        stack.push_async_exit(move |pending: Pending| async move {
            let e = pending.downcast_ref::<PanicError>().expect("told about the panic");
            l.push(format!("oldest saw: {e}"));
            Ok::<_, BoxError>(Flow::Propagate)
        });
        stack.entry().label("sync hook").callback(|| boom("sync boom"));
        let l = log.clone();
        stack.callback(move || l.push("middle"));
        stack
            .entry()
            .label("async hook")
            .push_async_callback(|| async { boom("async boom") });
        let resumed = AssertUnwindSafe(stack.aclose()).catch_unwind().await.unwrap_err();
        assert_eq!(resumed.downcast_ref::<&str>(), Some(&"async boom"), "the first panic is resumed");
        assert_eq!(
            log.take(),
            ["middle", "oldest saw: cleanup of sync hook panicked: sync boom"],
            "every entry ran; each saw the newest panic as its pending error"
        );
        assert!(stack.is_empty());
    }
}

/// In background cleanup a panic is an ERROR event and nothing else fails.
#[tokio::test(flavor = "current_thread")]
async fn s18_a_panic_in_background_cleanup_is_an_error_event_only() {
    let capture = Capture::default();
    let _guard = capture.install();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stack = AsyncExitStack::new();
    stack.push_async_callback(move || async move {
        let _ = tx.send(());
    });
    stack.entry().label("bad hook").callback(|| boom("boom in background"));
    common::drop_forgotten(stack);
    rx.await.unwrap(); // the older entry still ran
    let error = capture
        .events()
        .into_iter()
        .find(|e| e.level == tracing::Level::ERROR)
        .unwrap_or_else(|| panic!("an ERROR event in {:#?}", capture.events()));
    assert_eq!(error.field("resource"), Some("bad hook"));
    assert_eq!(error.field("panic"), Some("boom in background"));
}

#[tokio::test(start_paused = true)]
async fn s19_a_hung_exit_times_out_is_reported_and_the_next_runs_at_the_timeout() {
    let start = Instant::now();
    let log = Log::default();
    let mut stack = AsyncExitStack::new();
    let l = log.clone();
    stack.push_async_exit(move |pending: Pending| async move {
        let timeout = pending.downcast_ref::<TimeoutError>().expect("told about the timeout");
        l.push(format!("next ran at {:?}: {timeout}", start.elapsed()));
        Ok::<_, BoxError>(Flow::Propagate)
    });
    let dropped = Arc::new(AtomicUsize::new(0));
    let guard = DropCounter(dropped.clone());
    stack
        .entry()
        .label("hung flush")
        .timeout(Duration::from_secs(1))
        .push_async_callback(move || async move {
            let _guard = guard; // the resource, owned by the exit future
            std::future::pending::<()>().await;
        });
    let err = stack.aclose().await.unwrap_err();
    assert_eq!(
        log.take(),
        ["next ran at 1s: cleanup of hung flush timed out after 1s and was cut off: its outcome is unknown"]
    );
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the abandoned exit's resource was dropped"
    );
    let timeout = err.downcast_ref::<TimeoutError>().unwrap();
    assert_eq!(timeout.resource, "hung flush");
    assert_eq!(timeout.after, Duration::from_secs(1));
}

struct DropCounter(Arc<AtomicUsize>);
impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn s19_a_whole_unwind_deadline_cuts_off_slow_entries_and_still_runs_quick_ones() {
    let start = Instant::now();
    let log = Log::default();
    let mut stack = AsyncExitStack::new();
    stack.set_unwind_timeout(Some(Duration::from_secs(3)));
    let l = log.clone();
    stack.callback(move || l.push(format!("sync ran at {:?}", start.elapsed())));
    for i in 0..3 {
        let l = log.clone();
        stack
            .entry()
            .label(format!("sleeper {i}"))
            .push_async_callback(move || async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                l.push(format!("sleeper {i} finished"));
            });
    }
    let err = stack.aclose().await.unwrap_err();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(3),
        "the unwind ends at its deadline"
    );
    assert_eq!(log.take(), ["sleeper 2 finished", "sync ran at 3s"]);
    let cut: Vec<String> = err
        .iter()
        .map(|e| e.downcast_ref::<TimeoutError>().unwrap().resource.to_string())
        .collect();
    assert_eq!(cut, ["sleeper 0", "sleeper 1"]);
}

/// S22: no runtime at all. Nothing panics; sync entries run; the async
/// ones are named in an ERROR event.
#[test]
fn s22_a_stack_dropped_with_no_runtime_does_sync_best_effort_and_reports_the_rest() {
    let capture = Capture::default();
    let _guard = capture.install();
    let log = Log::default();
    let stack = AsyncExitStack::new(); // no runtime here
    let l = log.clone();
    stack.callback(move || l.push("sync callback ran"));
    stack.entry().label("async flush").push_async_callback(|| async {});
    let l = log.clone();
    stack.push_exit(move |pending: &Pending| {
        l.push(format!("sync exit told abandoned={}", pending.is_abandoned()));
        Ok::<_, BoxError>(Flow::Propagate)
    });
    common::drop_forgotten(stack);
    assert_eq!(log.take(), ["sync exit told abandoned=true", "sync callback ran"]);
    let error = capture
        .events()
        .into_iter()
        .find(|e| e.level == tracing::Level::ERROR)
        .expect("an ERROR event naming what could not run");
    assert!(error.field("not_run").unwrap().contains("async flush"), "{error:?}");
    assert_eq!(error.field("reason"), Some("no tokio runtime to run the cleanup on"));
}

/// S22: the runtime the stack was created on is gone. The spawn is
/// refused, and the loss is reported, not silent.
#[test]
fn s22_a_stack_outliving_its_runtime_reports_the_lost_cleanup() {
    let capture = Capture::default();
    let _guard = capture.install();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stack = rt.block_on(async { AsyncExitStack::new() });
    stack
        .entry()
        .label("needs the runtime")
        .push_async_callback(|| async {});
    drop(rt);
    common::drop_forgotten(stack); // must not panic
    let error = capture
        .events()
        .into_iter()
        .find(|e| e.level == tracing::Level::ERROR)
        .expect("an ERROR event");
    assert!(
        error.field("not_run").unwrap().contains("needs the runtime"),
        "{error:?}"
    );
}

/// S30 with S22: a stack of permits and guards is released inline, even
/// with no runtime at all, and without a task.
#[test]
fn s22_sync_only_entries_are_released_inline_without_a_runtime() {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(1));
    let stack = AsyncExitStack::new();
    let permit = semaphore.clone().try_acquire_owned().unwrap();
    stack.enter_context(permit);
    assert_eq!(semaphore.available_permits(), 0);
    common::drop_forgotten(stack);
    assert_eq!(semaphore.available_permits(), 1, "released inline at the drop");
}

#[tokio::test(start_paused = true)]
async fn s24_a_thousand_exits_in_one_group_unwind_in_one_timer_period() {
    let start = Instant::now();
    let ran = Arc::new(AtomicUsize::new(0));
    let mut stack = AsyncExitStack::new();
    let group = stack.enter_group();
    for _ in 0..1000 {
        let ran = ran.clone();
        group.push_async_callback(move || async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ran.fetch_add(1, Ordering::SeqCst);
        });
    }
    stack.aclose().await.unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 1000);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(10),
        "concurrently: 10 ms of virtual time"
    );

    // The same entries in sequence take 1,000 times as long.
    let start = Instant::now();
    for _ in 0..1000 {
        stack.push_async_callback(|| tokio::time::sleep(Duration::from_millis(10)));
    }
    stack.aclose().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(10));
}

both_flavours! {
    async fn s24_groups_and_plain_entries_keep_lifo_order_and_every_member_error_is_kept() {
        let log = Log::default();
        let result = scope(async |stack| {
            let l = log.clone();
            stack.callback(move || l.push("oldest plain"));
            let group = stack.enter_group();
            for i in 0..4 {
                let l = log.clone();
                group.push_async_exit(move |pending: Pending| async move {
                    // finish in the reverse of registration order
                    for _ in 0..(4 - i) {
                        tokio::task::yield_now().await;
                    }
                    l.push(format!("member {i} saw {}", pending.error().unwrap()));
                    if i % 2 == 0 {
                        Err(std::io::Error::other(format!("member {i} failed")))
                    } else {
                        Ok(Flow::Propagate)
                    }
                });
            }
            let l = log.clone();
            stack.callback(move || l.push("newest plain"));
            Err::<(), BoxError>(std::io::Error::other("body").into())
        })
        .await;
        let mut seen = log.take();
        assert_eq!(seen.remove(0), "newest plain");
        assert_eq!(seen.pop().unwrap(), "oldest plain");
        seen.sort();
        assert_eq!(seen, ["member 0 saw body", "member 1 saw body", "member 2 saw body", "member 3 saw body"]);
        let messages: Vec<String> = result.unwrap_err().iter().map(|e| e.to_string()).collect();
        assert_eq!(messages, ["member 0 failed", "member 2 failed", "body"]);
    }
}
