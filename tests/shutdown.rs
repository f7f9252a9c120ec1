//! Runtime shutdown (S23) and drops during it (S22, pitfall P4), in their
//! own test binary: `drain` counts process-wide, so these tests take turns.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::Capture;
use tokio_exit_stack::{background::DrainReport, drain};

static SERIAL: Mutex<()> = Mutex::new(());
static FINISHED: AtomicUsize = AtomicUsize::new(0);

fn runtime(multi: bool) -> tokio::runtime::Runtime {
    if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }
}

/// A `current_thread` runtime on tokio's paused clock.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Resets the process-wide counters.
fn reset() {
    runtime(false).block_on(drain(Duration::from_secs(30)));
    FINISHED.store(0, Ordering::SeqCst);
}

/// `main` drops 10,000 stacks just before it returns, each with a cleanup
/// that takes 10 ms; `drain` waits for all of them.
#[test]
fn s23_drain_lets_ten_thousand_background_cleanups_finish_before_main_returns() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for multi in [false, true] {
        reset();
        let report = runtime(multi).block_on(async {
            // The cleanups wait for a gate that opens once `drain` waits:
            // a report counts what ended during its call.
            let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
            for _ in 0..10_000 {
                let stack = common::cancellable();
                let gate = gate.clone();
                stack.push_async_callback(|| async move {
                    let _pass = gate.acquire().await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    FINISHED.fetch_add(1, Ordering::SeqCst);
                });
                drop(stack);
            }
            let (report, ()) = tokio::join!(drain(Duration::from_secs(60)), async {
                gate.add_permits(10_000);
            });
            report
        });
        assert_eq!(
            report,
            DrainReport {
                finished: 10_000,
                failed: 0,
                lost: 0,
                cut_off: 0
            },
            "multi_thread={multi}"
        );
        assert!(report.is_complete());
        assert_eq!(FINISHED.load(Ordering::SeqCst), 10_000);
    }
}

/// Without `drain`, the runtime drops the unfinished cleanups when `main`
/// returns: each loss is reported (an ERROR event naming the cleanup, and
/// the `lost` count), never silent, and nothing panics.
#[test]
fn s23_without_drain_cleanups_lost_to_shutdown_are_reported() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    reset();
    let capture = Capture::default();
    let _guard = capture.install();
    runtime(false).block_on(async {
        for i in 0..10_000 {
            let stack = common::cancellable();
            stack
                .entry()
                .label(format!("slow cleanup {i}"))
                .push_async_callback(|| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    FINISHED.fetch_add(1, Ordering::SeqCst);
                });
            drop(stack);
        }
        tokio::task::yield_now().await; // let them start
    }); // main returns: the runtime shuts down
    assert_eq!(FINISHED.load(Ordering::SeqCst), 0);
    let lost: Vec<_> = capture
        .events()
        .into_iter()
        .filter(|e| e.level == tracing::Level::ERROR && e.field("reason").is_some_and(|r| r.contains("shut down")))
        .collect();
    assert_eq!(lost.len(), 10_000, "one ERROR event per lost cleanup");
    assert!(lost[0].field("not_run").unwrap().contains("slow cleanup"));
    // A later drain counts only what ended during its own wait.
    let report = runtime(false).block_on(drain(Duration::from_secs(1)));
    assert_eq!(report, DrainReport::default());
    assert!(report.is_complete());
}

/// A drain on a second runtime counts the cleanups lost while the first
/// runtime shuts down during its wait.
#[test]
fn s23_a_drain_on_another_runtime_counts_cleanups_lost_to_a_shutdown_during_its_wait() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    reset();
    let doomed = runtime(false);
    doomed.block_on(async {
        for _ in 0..100 {
            let stack = common::cancellable();
            stack.push_async_callback(|| tokio::time::sleep(Duration::from_secs(3600)));
            drop(stack);
        }
        tokio::task::yield_now().await;
    });
    let report = common::drain_during(|| drop(doomed));
    assert_eq!(
        report,
        DrainReport {
            finished: 0,
            failed: 0,
            lost: 100,
            cut_off: 0
        }
    );
}

/// Two drains at once (a test harness, two runtimes) each end as soon as
/// the work is done, and each reports every cleanup that ended during its
/// wait: neither waits out its deadline, neither takes the other's counts.
#[test]
fn s23_concurrent_drains_each_end_when_the_work_is_done_and_count_it_all() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    reset();
    let rt = paused_runtime();
    rt.block_on(async {
        for _ in 0..100 {
            let stack = common::cancellable();
            stack.push_async_callback(|| tokio::time::sleep(Duration::from_millis(300)));
            drop(stack);
        }
        let start = tokio::time::Instant::now();
        let timed = |d| async move {
            let report = drain(d).await;
            (report, start.elapsed())
        };
        let (a, b) = tokio::join!(timed(Duration::from_secs(3)), timed(Duration::from_secs(3)));
        let all = DrainReport {
            finished: 100,
            failed: 0,
            lost: 0,
            cut_off: 0,
        };
        assert_eq!(a, (all, Duration::from_millis(300)));
        assert_eq!(b, (all, Duration::from_millis(300)));
    });
}

/// A stack given the caller's own `TaskTracker` runs its background
/// cleanup in that tracker: `tracker.wait()` covers it, and the
/// process-wide `drain` neither waits for it nor counts it.
#[test]
fn s23_a_callers_task_tracker_tracks_the_stacks_background_cleanup() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    reset();
    let rt = paused_runtime();
    rt.block_on(async {
        let tracker = tokio_util::task::TaskTracker::new();
        for _ in 0..10 {
            let mut stack = common::cancellable();
            stack.set_tracker(tracker.clone());
            stack.push_async_callback(|| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                FINISHED.fetch_add(1, Ordering::SeqCst);
            });
            drop(stack);
        }
        assert_eq!(tracker.len(), 10);
        assert_eq!(tokio_exit_stack::background::running(), 0);
        let start = tokio::time::Instant::now();
        assert_eq!(drain(Duration::from_secs(60)).await, DrainReport::default());
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "drain does not wait for the caller's tracker"
        );
        tracker.close();
        tracker.wait().await;
        assert_eq!(FINISHED.load(Ordering::SeqCst), 10);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    });
}

/// A stack created on a runtime since shut down, dropped inside another
/// live runtime, cleans up there instead of being reported lost, on both
/// flavours.
#[test]
fn s35_a_stack_whose_runtime_is_gone_cleans_up_in_the_runtime_it_is_dropped_in() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for multi in [false, true] {
        reset();
        let capture = Capture::default();
        let _guard = capture.install();
        let first = runtime(multi);
        let stack = first.block_on(async {
            let stack = common::cancellable();
            stack.push_async_callback(|| async {
                tokio::task::yield_now().await;
                FINISHED.fetch_add(1, Ordering::SeqCst);
            });
            stack
        });
        drop(first);
        let report = runtime(multi).block_on(async move {
            drop(stack);
            drain(Duration::from_secs(30)).await
        });
        assert_eq!(report.finished, 1, "multi_thread={multi}: {report:?}");
        assert_eq!(report.lost, 0);
        assert_eq!(FINISHED.load(Ordering::SeqCst), 1);
        assert!(capture.events().iter().all(|e| e.level != tracing::Level::ERROR));
    }
}

/// A cleanup lost because there is no runtime at all says so, not that a
/// runtime shut down.
#[test]
fn s35_a_cleanup_lost_with_no_runtime_gives_that_reason() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let capture = Capture::default();
    let _guard = capture.install();
    let stack = common::cancellable();
    stack.entry().label("needs a runtime").push_async_callback(|| async {});
    drop(stack);
    let lost: Vec<_> = capture.at(tracing::Level::ERROR);
    assert_eq!(lost.len(), 1);
    assert!(
        lost[0].field("reason").unwrap().contains("no tokio runtime"),
        "{:?}",
        lost[0]
    );
    assert!(lost[0].field("not_run").unwrap().contains("needs a runtime"));
}

/// A drain with a deadline that passes reports what it cut off, on the
/// paused clock.
#[test]
fn s23_a_drain_deadline_reports_the_cleanups_it_cut_off() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    reset();
    let rt = paused_runtime();
    rt.block_on(async {
        for secs in [1, 2, 10, 20] {
            let stack = common::cancellable();
            stack.push_async_callback(move || tokio::time::sleep(Duration::from_secs(secs)));
            drop(stack);
        }
        let start = tokio::time::Instant::now();
        let report = drain(Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(
            report,
            DrainReport {
                finished: 2,
                failed: 0,
                lost: 0,
                cut_off: 2
            }
        );
        // The cut-off ones keep running; a later drain sees them finish.
        let report = drain(Duration::from_secs(60)).await;
        assert_eq!(
            report,
            DrainReport {
                finished: 2,
                failed: 0,
                lost: 0,
                cut_off: 0
            }
        );
    });
}

/// A stack lost to a runtime's shutdown while its background cleanup was
/// running a nested stack's cleanup is one lost stack: one ERROR event,
/// naming the nested stack and what it had not run, and one `lost` count.
#[test]
fn a_stack_lost_to_shutdown_inside_a_nested_stack_is_one_error_and_one_loss() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for multi in [false, true] {
        reset();
        let capture = Capture::default();
        let _guard = capture.install();
        let doomed = runtime(multi);
        doomed.block_on(async {
            let outer = common::cancellable();
            let inner = tokio_exit_stack::AsyncExitStack::new();
            inner
                .entry()
                .label("slow inner cleanup")
                .push_async_callback(|| tokio::time::sleep(Duration::from_secs(3600)));
            outer.push_resource(inner);
            outer.entry().label("outer cleanup").push_async_callback(|| async {});
            drop(outer);
            // Let the background cleanup reach the inner stack's exit.
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
        let report = common::drain_during(|| drop(doomed));
        assert_eq!(
            report,
            DrainReport {
                finished: 0,
                failed: 0,
                lost: 1,
                cut_off: 0
            },
            "multi_thread={multi}"
        );
        if multi {
            // The workers drop the task as they shut down, and the capture
            // sees only this thread's events: the count above is the check.
            continue;
        }
        let errors: Vec<_> = capture.at(tracing::Level::ERROR);
        assert_eq!(errors.len(), 1, "one ERROR event for one lost stack: {errors:#?}");
        let not_run = errors[0].field("not_run").unwrap();
        assert!(not_run.contains("AsyncExitStack"), "{not_run}");
        assert!(not_run.contains("slow inner cleanup"), "{not_run}");
    }
}
