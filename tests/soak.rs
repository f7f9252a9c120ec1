//! Soak: 100,000 stacks on a multi-thread runtime with random faults, some
//! closed, some dropped, some cancelled mid-unwind. Afterwards every
//! registered cleanup has run exactly once, and live heap memory is back to
//! where it started.
//!
//! The default run takes seconds; the long version:
//! `SOAK_STACKS=5000000 cargo test --release --test soak -- --nocapture`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

static REGISTERED: AtomicU64 = AtomicU64::new(0);
static RAN: AtomicU64 = AtomicU64::new(0);

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
        REGISTERED.fetch_add(1, Ordering::Relaxed);
        let fault = rng.below(10);
        match rng.below(4) {
            0 => stack.callback(move || {
                RAN.fetch_add(1, Ordering::Relaxed);
                if fault == 0 {
                    Err(std::io::Error::other("fault"))
                } else {
                    Ok(())
                }
            }),
            1 => stack.push_async_callback(move || async move {
                RAN.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
                if fault == 0 {
                    std::panic::panic_any("soak panic");
                }
            }),
            2 => stack.push_async_exit(move |_: Pending| async move {
                RAN.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
                match fault {
                    0 => Err::<Flow, BoxError>("fault".into()),
                    1 => Ok(Flow::Suppress),
                    _ => Ok(Flow::Propagate),
                }
            }),
            _ => {
                let group = stack.enter_group();
                REGISTERED.fetch_sub(1, Ordering::Relaxed); // the group itself runs nothing
                for _ in 0..1 + rng.below(3) {
                    REGISTERED.fetch_add(1, Ordering::Relaxed);
                    group.push_async_callback(|| async {
                        RAN.fetch_add(1, Ordering::Relaxed);
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
        1 => drop(stack),
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
    std::panic::set_hook(Box::new(|info| {
        if info.payload().downcast_ref::<&str>() != Some(&"soak panic") {
            eprintln!("{info}");
        }
    }));
    let stacks: u64 = std::env::var("SOAK_STACKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm up: let the runtime and the allocator reach their steady size.
        round(10_000, 1).await;
        let baseline = LIVE.load(Ordering::SeqCst);
        REGISTERED.store(0, Ordering::SeqCst);
        RAN.store(0, Ordering::SeqCst);

        round(stacks, 2).await;
        let registered = REGISTERED.load(Ordering::SeqCst);
        assert!(registered > stacks, "{registered}");
        assert_eq!(
            RAN.load(Ordering::SeqCst),
            registered,
            "every registered cleanup ran exactly once"
        );

        let after = LIVE.load(Ordering::SeqCst);
        eprintln!("soak: {stacks} stacks, {registered} cleanups; live heap {baseline} -> {after} bytes");
        // A leak of a single byte per stack would exceed this.
        assert!(
            after <= baseline + (stacks as usize) / 2,
            "live heap grew from {baseline} to {after} bytes"
        );
    });
}
