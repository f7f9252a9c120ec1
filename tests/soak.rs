//! Soak: 100,000 stacks on a multi-thread runtime with random faults, some
//! closed, some dropped, some cancelled mid-unwind. Afterwards every
//! registered cleanup has run exactly once (each counted on its own), and
//! live heap memory is back to where it started.
//!
//! Each run draws a new program unless `SOAK_SEED` fixes it; the seed is
//! printed, and named in every failure. The default run takes seconds; the
//! long version:
//! `SOAK_STACKS=5000000 SOAK_SEED=7 cargo test --release --test soak -- --nocapture`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use tokio_exit_stack::{AsyncExitStack, BoxError, Flow, Pending};

/// Counts live heap bytes, to show that nothing leaks.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The next entry's number: each entry counts its own runs in `RUNS`.
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// Runs per entry, indexed by entry number; sized before the measured round.
static RUNS: std::sync::OnceLock<Box<[AtomicU8]>> = std::sync::OnceLock::new();

/// Registers one entry: its number, for `ran`.
fn register() -> usize {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(
        id < RUNS.get().map_or(0, |r| r.len()),
        "more entries than the soak sized for"
    );
    id
}

/// Entry `id` ran.
fn ran(id: usize) {
    if let Some(runs) = RUNS.get() {
        runs[id].fetch_add(1, Ordering::Relaxed);
    }
}

/// The most entries one stack registers: 8 entries, each a group of up to
/// 3 members at most.
const MAX_ENTRIES_PER_STACK: usize = 8 * 3;

/// A small deterministic generator (xorshift), one per task.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

async fn one_stack(rng: &mut Rng) {
    let mut stack = AsyncExitStack::new();
    let n = 1 + rng.below(8);
    for _ in 0..n {
        let fault = rng.below(10);
        match rng.below(4) {
            0 => {
                let id = register();
                stack.callback(move || {
                    ran(id);
                    if fault == 0 {
                        Err(std::io::Error::other("fault"))
                    } else {
                        Ok(())
                    }
                })
            }
            1 => {
                let id = register();
                stack.push_async_callback(move || async move {
                    ran(id);
                    tokio::task::yield_now().await;
                    if fault == 0 {
                        std::panic::panic_any("soak panic");
                    }
                })
            }
            2 => {
                let id = register();
                stack.push_async_exit(move |_: Pending| async move {
                    ran(id);
                    tokio::task::yield_now().await;
                    match fault {
                        0 => Err::<Flow, BoxError>("fault".into()),
                        1 => Ok(Flow::Suppress),
                        _ => Ok(Flow::Propagate),
                    }
                })
            }
            _ => {
                let group = stack.enter_group();
                for _ in 0..1 + rng.below(3) {
                    let id = register();
                    group.push_async_callback(move || async move {
                        ran(id);
                        tokio::task::yield_now().await;
                    });
                }
            }
        }
    }
    match rng.below(3) {
        0 => {
            let closing = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(stack.aclose()));
            let _ = closing.await;
        }
        1 => common::drop_forgotten(stack),
        _ => {
            // cancel the aclose after a few polls
            let polls = rng.below(4);
            let mut closing = Box::pin(futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
                stack.aclose(),
            )));
            let _ = std::future::poll_fn(|cx| {
                for _ in 0..=polls {
                    if let std::task::Poll::Ready(r) = closing.as_mut().poll(cx) {
                        return std::task::Poll::Ready(Some(r));
                    }
                }
                std::task::Poll::Ready(None)
            })
            .await;
        }
    }
}

async fn round(stacks: u64, seed: u64) {
    let tasks = 200u64;
    let per_task = stacks / tasks;
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        set.spawn(async move {
            let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for _ in 0..per_task {
                one_stack(&mut rng).await;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let report = tokio_exit_stack::drain(Duration::from_secs(120)).await;
    assert!(report.is_complete(), "{report:?}");
}

#[test]
fn soak_every_cleanup_runs_once_and_memory_returns_to_its_start() {
    // The soak's own panics, and strict mode's at forgotten drops (with
    // `TOKIO_EXIT_STACK_STRICT=1`), are expected by the thousand: printing
    // each would grow the harness's captured output, which the memory
    // check counts.
    std::panic::set_hook(Box::new(|info| {
        let strict = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.contains("(strict mode"));
        if info.payload().downcast_ref::<&str>() != Some(&"soak panic") && !strict {
            eprintln!("{info}");
        }
    }));
    let stacks: u64 = std::env::var("SOAK_STACKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = match std::env::var("SOAK_SEED") {
        Ok(v) => v.parse().expect("SOAK_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 | 1),
    };
    eprintln!("soak: SOAK_SEED={seed} SOAK_STACKS={stacks}");
    // Sized before the baseline is measured, so it is part of it.
    let capacity = (stacks as usize + 10_000) * MAX_ENTRIES_PER_STACK;
    RUNS.get_or_init(|| (0..capacity).map(|_| AtomicU8::new(0)).collect());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm up: let the runtime and the allocator reach their steady size.
        round(10_000, seed.wrapping_add(1)).await;
        let baseline = LIVE.load(Ordering::SeqCst);

        round(stacks, seed).await;
        let registered = NEXT.load(Ordering::SeqCst);
        assert!(registered as u64 > stacks, "SOAK_SEED={seed}: {registered}");
        let runs = RUNS.get().unwrap();
        for (id, count) in runs[..registered].iter().enumerate() {
            let count = count.load(Ordering::SeqCst);
            assert_eq!(
                count, 1,
                "SOAK_SEED={seed}: entry {id} ran {count} times, not exactly once"
            );
        }

        let after = LIVE.load(Ordering::SeqCst);
        eprintln!("soak: {stacks} stacks, {registered} cleanups; live heap {baseline} -> {after} bytes");
        // A leak of a single byte per stack would exceed this.
        assert!(
            after <= baseline + (stacks as usize) / 2,
            "SOAK_SEED={seed}: live heap grew from {baseline} to {after} bytes"
        );
    });
}
