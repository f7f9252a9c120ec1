//! The allocation budget (issue: performance), counted, not timed, so it
//! cannot flake: a counting global allocator, per thread.
//!
//! * `AsyncExitStack::new()` allocates nothing.
//! * register + unwind makes exactly 1 heap allocation per callback (its
//!   closure's cell becomes its exit future) and 2 per entered resource (the
//!   resource, and the boxed future of the object-safe `AsyncExit::exit`)
//!   for a stack of up to 16 entries, whose entry vector is the thread's
//!   spare one; a larger stack also pays its vector's growth (9
//!   reallocations for 1,000 entries: 1.009 and 2.009 per entry). Each test
//!   holds the exact figures, so any regression fails.
//! * a small stack created right after a large unwind holds memory in
//!   proportion to its own entries, not the large stack's vector.
//! * a dropped stack spawns exactly one task, whatever its size (see also
//!   `lifecycle.rs`, which counts the runtime's live tasks).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use std::future::Future;

use tokio_exit_stack::{AsyncExit, AsyncExitStack, BoxError, Flow, Pending, async_trait};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    /// Bytes allocated and not yet freed on this thread.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn live(delta: isize) {
    let _ = LIVE.try_with(|n| n.set(n.get() + delta));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        live(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        live(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        live(-(layout.size() as isize));
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

/// Entries of a large stack, and of one that fits the thread's spare
/// entry vector.
const N: usize = 1000;
const SMALL: usize = 16;

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
fn first_and_steady(register: fn(&AsyncExitStack, usize), n: usize) -> (usize, usize) {
    std::thread::spawn(move || {
        let rt = runtime();
        let round = || {
            count(|| {
                rt.block_on(async {
                    let mut stack = AsyncExitStack::new();
                    for i in 0..n {
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

/// The entry vector's growth, 4, 8, ..., 1,024 slots: what a stack of `N`
/// entries pays on top of the entries themselves.
const GROWTH: usize = (N.next_power_of_two().trailing_zeros() - 1) as usize;

/// Checks one kind of entry: `per` allocations per entry, exactly, for a
/// small stack in steady state; plus the vector's growth for a large one.
fn check(register: fn(&AsyncExitStack, usize), per: usize, what: &str) {
    let (first, steady) = first_and_steady(register, SMALL);
    println!("{what}: {first} allocations for the thread's first {SMALL}, {steady} after");
    assert_eq!(steady, per * SMALL, "{what}: {per} per entry");
    let (first, steady) = first_and_steady(register, N);
    println!("{what}: {first} allocations for the thread's first {N}, {steady} after");
    assert_eq!(first, per * N + GROWTH, "{what}");
    assert_eq!(steady, per * N + GROWTH, "{what}");
}

#[test]
fn register_and_unwind_of_an_async_callback_costs_one_allocation_each() {
    // The closure's own allocation is reused as its exit future.
    check(
        |stack, i| {
            stack.push_async_callback(move || async move {
                std::hint::black_box(i);
            })
        },
        1,
        "async callbacks",
    );
}

#[test]
fn register_and_unwind_of_an_entered_resource_costs_two_allocations_each() {
    fn register(stack: &AsyncExitStack, i: usize) {
        // Entering an `AsyncExit` value is ready at once.
        let mut entering = std::pin::pin!(stack.enter_async_context(Resource(i as u64)));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(entering.as_mut().poll(&mut cx).is_ready());
    }
    // The resource's own allocation and its boxed exit future.
    check(register, 2, "entered resources");
}

#[test]
fn register_and_unwind_of_a_sync_callback_costs_one_allocation_each() {
    check(
        |stack, i| {
            stack.callback(move || {
                std::hint::black_box(i);
            })
        },
        1,
        "sync callbacks",
    );
}

/// A long-lived stack of one entry, created right after a 1,000-entry
/// unwind on the same thread, holds memory for its one entry, not the
/// large stack's vector (which it used to inherit: 32 KiB).
#[test]
fn a_small_stack_after_a_large_unwind_holds_less_than_a_kibibyte() {
    std::thread::spawn(|| {
        let rt = runtime();
        rt.block_on(async {
            let mut large = AsyncExitStack::new();
            for i in 0..N {
                large.callback(move || {
                    std::hint::black_box(i);
                });
            }
            large.aclose().await.unwrap();
        });
        let before = LIVE.with(Cell::get);
        let small = AsyncExitStack::new();
        small.callback(|| ());
        let held = LIVE.with(Cell::get) - before;
        println!("a one-entry stack after a {N}-entry unwind holds {held} bytes");
        assert!(held < 1024, "{held} bytes");
        rt.block_on(async move {
            let mut small = small;
            small.aclose().await.unwrap();
        });
    })
    .join()
    .unwrap();
}

#[test]
fn an_enter_that_finishes_on_cancellation_costs_one_allocation_more() {
    fn register(stack: &AsyncExitStack, i: usize) {
        let ready = std::future::ready(Ok::<_, std::io::Error>(Resource(i as u64)));
        let mut entering = std::pin::pin!(
            stack
                .entry()
                .finish_on_cancel()
                .enter_async_context(tokio_exit_stack::acquire(ready))
        );
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(entering.as_mut().poll(&mut cx).is_ready());
    }
    // The resource, its boxed exit future, and the enter's boxed future.
    check(register, 3, "resources entered with finish_on_cancel");
}
