//! Runtime shutdown (S23) and drops during it (S22, pitfall P4), in their
//! own test binary: `drain` counts process-wide, so these tests take turns.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::Capture;
use tokio_exit_stack::{AsyncExitStack, DrainReport, drain};

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

/// Resets the process-wide counters.
fn reset() {
    runtime(false).block_on(drain(Duration::from_secs(30)));
    FINISHED.store(0, Ordering::SeqCst);
}

/// `main` drops 10,000 stacks just before it returns, each with a cleanup
/// that takes 10 ms; `drain` waits for all of them.
#[test]
fn s23_drain_lets_ten_thousand_background_cleanups_finish_before_main_returns() {
    let _serial = SERIAL.lock().unwrap();
    for multi in [false, true] {
        reset();
        let report = runtime(multi).block_on(async {
            for _ in 0..10_000 {
                let stack = AsyncExitStack::new();
                stack.push_async_callback(|| async {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    FINISHED.fetch_add(1, Ordering::SeqCst);
                });
                drop(stack);
            }
            drain(Duration::from_secs(60)).await
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
    let _serial = SERIAL.lock().unwrap();
    reset();
    let capture = Capture::default();
    let _guard = capture.install();
    runtime(false).block_on(async {
        for i in 0..10_000 {
            let stack = AsyncExitStack::new();
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
    let report = runtime(false).block_on(drain(Duration::from_secs(1)));
    assert_eq!(report.lost, 10_000);
    assert!(!report.is_complete());
}

/// A drain with a deadline that passes reports what it cut off, on the
/// paused clock.
#[test]
fn s23_a_drain_deadline_reports_the_cleanups_it_cut_off() {
    let _serial = SERIAL.lock().unwrap();
    reset();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        for secs in [1, 2, 10, 20] {
            let stack = AsyncExitStack::new();
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
