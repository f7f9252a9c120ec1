//! The registry's storage: a vector that threads push to through `&self`
//! without waiting for one another, read only under `&mut self` or by
//! value.
//!
//! # Design
//!
//! Registration is almost always uncontended (one task registers on its
//! own stack), so the common path is made as cheap as a lock-free push can
//! be: one atomic swap and one plain store.
//!
//! * A push claims the vector by swapping `busy` to `true`. If it was
//!   `false`, the push owns the vector: it appends its value, publishes
//!   the length, and releases `busy` with a plain store.
//! * If another push holds the vector (threads registering on one stack at
//!   the same instant), the push does not wait: it boxes its value onto
//!   `overflow`, a lock-free LIFO list (one compare-and-swap of its head).
//! * Whoever next holds the vector, before appending its own value, moves
//!   the overflow into it, oldest first; so does `take`. An overflow value
//!   whose push returned before another push began is therefore always
//!   ahead of that one: the order of pushes one thread can observe is
//!   the order in the vector, and pushes that overlap in time have no
//!   order to keep.
//!
//! Nothing waits and nothing spins: a contended push completes after a
//! compare-and-swap loop that retries only when another overflow push
//! succeeded in between (or, as a weak compare-and-swap may, spuriously). A push that unwinds while holding the vector (only on
//! capacity overflow, as `Vec::push` does) leaves `busy` set, and every
//! later push takes the overflow path: slower, still correct.
//!
//! # Checked by
//!
//! Miri (the tests below push from several threads at once), and loom:
//! `RUSTFLAGS="--cfg tokio_exit_stack_loom" cargo test --lib
//! registry::slots::model` explores every interleaving of a few concurrent
//! pushes, with the vector in loom's checked cell, so a data race on it,
//! a lost or duplicated value, or a thread's own pushes out of order fails.
#![allow(unsafe_code)]

use std::mem::ManuallyDrop;
use std::ptr;

#[cfg(all(test, tokio_exit_stack_loom))]
use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
#[cfg(not(all(test, tokio_exit_stack_loom)))]
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

#[cfg(all(test, tokio_exit_stack_loom))]
use loom::cell::UnsafeCell;
#[cfg(not(all(test, tokio_exit_stack_loom)))]
use std_cell::UnsafeCell;

/// `std`'s cell with loom's closure-based access, so that one body of code
/// runs under both.
#[cfg(not(all(test, tokio_exit_stack_loom)))]
mod std_cell {
    pub(super) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(super) fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }

        #[inline(always)]
        pub(super) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

/// A vector pushed to through `&self` (module docs).
pub(crate) struct Slots<T> {
    /// `true` while a push holds `values`.
    busy: AtomicBool,
    /// Oldest first; touched only by the push holding `busy`, or under
    /// `&mut self`. Dropped by hand, and only if it has a buffer: the drop
    /// glue of an empty vector is an out-of-line call, per stack.
    values: UnsafeCell<ManuallyDrop<Vec<T>>>,
    /// `values.len()`, published by the push holding `busy`, for `len`.
    in_values: AtomicUsize,
    /// Values pushed while another push held `values`, newest first.
    overflow: AtomicPtr<Node<T>>,
    /// How many values `overflow` holds (counted before they join it and
    /// uncounted after they leave it, so it never runs below the truth).
    in_overflow: AtomicUsize,
}

// SAFETY: `Slots<T>` owns its values like a `Vec<T>`. Shared, it only lets
// a thread move a `T` in (push) and count; values are read, moved out or
// dropped only by the push holding `busy` (which moves overflow values
// into the vector, never reads one in place), under `&mut self` or by
// value. So, like `Mutex<Vec<T>>`, sending or sharing it needs `T: Send`.
unsafe impl<T: Send> Send for Slots<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Slots<T> {}

/// One overflow value.
struct Node<T> {
    value: T,
    /// The next older overflow value.
    next: *mut Node<T>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self::from(Vec::new())
    }
}

impl<T> From<Vec<T>> for Slots<T> {
    /// The vector becomes the storage: no copy.
    fn from(values: Vec<T>) -> Self {
        Self {
            busy: AtomicBool::new(false),
            in_values: AtomicUsize::new(values.len()),
            values: UnsafeCell::new(ManuallyDrop::new(values)),
            overflow: AtomicPtr::new(ptr::null_mut()),
            in_overflow: AtomicUsize::new(0),
        }
    }
}

impl<T> Slots<T> {
    /// How many values were pushed. Exact when no push is running on
    /// another thread; while one is, it may count that push already, or
    /// count a value moving from the overflow to the vector twice; never
    /// fewer than the pushes that returned on the calling thread.
    ///
    /// The overflow count is read first, with acquire: a merge that moved
    /// values out of the overflow publishes the vector's new length before
    /// it uncounts them (release), so a read that sees them uncounted sees
    /// them in the vector. Read the other way round, a merge falling
    /// between the two reads hid the values it moved from both.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        let in_overflow = self.in_overflow.load(Ordering::Acquire);
        self.in_values.load(Ordering::Relaxed) + in_overflow
    }

    /// Appends `value`. A vector with no buffer yet (a new registry)
    /// starts from `first_buffer()`, an empty vector. (The registry uses
    /// [`push_with`](Self::push_with); this is its short form for tests.)
    #[cfg(test)]
    pub(crate) fn push(&self, value: T, first_buffer: impl FnOnce() -> Vec<T>) {
        self.push_with(|| value, first_buffer);
    }

    /// Appends the value `make` returns, made once the slot is ready.
    ///
    /// Always inlined, and `make` called after the last call that could
    /// grow the vector: the value is then written where it goes, not
    /// built on the stack first and copied in with wider loads than the
    /// stores that built it (a store-forwarding stall of several
    /// nanoseconds a registration).
    #[inline(always)]
    pub(crate) fn push_with(&self, make: impl FnOnce() -> T, first_buffer: impl FnOnce() -> Vec<T>) {
        if self.busy.swap(true, Ordering::Acquire) {
            return self.push_overflow(make());
        }
        self.values.with_mut(|values| {
            // SAFETY: `busy` was `false` and is now set by this push: no
            // other thread touches `values` until it is cleared below, and
            // the acquire above orders this after the last holder's writes.
            let values: &mut Vec<T> = unsafe { &mut *values };
            if values.capacity() == 0 {
                // Written over, not dropped: an empty vector owns nothing,
                // and its drop glue is an out-of-line call.
                std::mem::forget(std::mem::replace(values, first_buffer()));
            }
            self.merge_overflow(values);
            values.reserve(1);
            let len = values.len();
            // SAFETY: `reserve(1)` left room for one more value at `len`;
            // it is written before the length covers it.
            unsafe {
                values.as_mut_ptr().add(len).write(make());
                values.set_len(len + 1);
            }
            self.in_values.store(len + 1, Ordering::Relaxed);
        });
        self.busy.store(false, Ordering::Release);
    }

    /// A push while another holds the vector: onto the overflow list.
    #[cold]
    #[inline(never)]
    fn push_overflow(&self, value: T) {
        self.in_overflow.fetch_add(1, Ordering::Relaxed);
        let node = Box::into_raw(Box::new(Node {
            value,
            next: ptr::null_mut(),
        }));
        let mut head = self.overflow.load(Ordering::Relaxed);
        loop {
            // SAFETY: `node` is not shared until the exchange succeeds.
            unsafe { (*node).next = head };
            match self
                .overflow
                .compare_exchange_weak(head, node, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// [`drain_overflow`](Self::drain_overflow) if there is any: one
    /// load on the common path.
    #[inline(always)]
    fn merge_overflow(&self, values: &mut Vec<T>) {
        if !self.overflow.load(Ordering::Relaxed).is_null() {
            self.drain_overflow(values);
        }
    }

    /// Moves every overflow value into `values`, oldest first. Called by
    /// the push holding `busy`, or under `&mut self`.
    #[cold]
    #[inline(never)]
    fn drain_overflow(&self, values: &mut Vec<T>) {
        // Acquire: pairs with the pushes' release, for the nodes' contents.
        let mut newest = self.overflow.swap(ptr::null_mut(), Ordering::Acquire);
        // Reverse the list (oldest first), then move each value out.
        let mut oldest = ptr::null_mut::<Node<T>>();
        while !newest.is_null() {
            // SAFETY: the swap made this list ours alone; each node is
            // visited once.
            unsafe {
                let next = (*newest).next;
                (*newest).next = oldest;
                oldest = newest;
                newest = next;
            }
        }
        let mut moved = 0;
        while !oldest.is_null() {
            // SAFETY: each node came from `Box::into_raw` in
            // `push_overflow` and is freed here once.
            let node = unsafe { Box::from_raw(oldest) };
            oldest = node.next;
            values.push(node.value);
            moved += 1;
        }
        self.in_values.store(values.len(), Ordering::Relaxed);
        // Release: `len` that sees these uncounted sees the store above.
        self.in_overflow.fetch_sub(moved, Ordering::Release);
    }

    /// Runs `f` on the vector, under `&mut self`, after moving any
    /// overflow into it.
    #[inline]
    pub(crate) fn with_vec<R>(&mut self, f: impl FnOnce(&mut Vec<T>) -> R) -> R {
        self.values.with_mut(|values| {
            // SAFETY: `&mut self`: no push is running.
            let values: &mut Vec<T> = unsafe { &mut *values };
            self.merge_overflow(values);
            let out = f(values);
            self.in_values.store(values.len(), Ordering::Relaxed);
            out
        })
    }

    /// Takes every value out, oldest first, leaving the storage empty.
    #[inline]
    pub(crate) fn take(&mut self) -> Vec<T> {
        self.with_vec(std::mem::take)
    }

    /// The values, oldest first, under `&mut self`.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        let values = self.with_vec(|values| ptr::slice_from_raw_parts_mut(values.as_mut_ptr(), values.len()));
        // SAFETY: the vector is not touched again while `&mut self` is
        // borrowed by the slice returned.
        unsafe { &mut *values }
    }
}

impl<T> Drop for Slots<T> {
    fn drop(&mut self) {
        self.values.with_mut(|values| {
            // SAFETY: `&mut self`: no push is running; the vector is
            // dropped here once, and never used again.
            let values = unsafe { &mut *values };
            self.merge_overflow(values);
            if values.capacity() != 0 {
                // SAFETY: as above.
                unsafe { ManuallyDrop::drop(values) };
            }
        });
    }
}

#[cfg(all(test, not(tokio_exit_stack_loom)))]
mod tests {
    use super::*;

    #[test]
    fn values_come_out_oldest_first() {
        let mut slots = Slots::default();
        for i in 0..100 {
            slots.push(Box::new(i), Vec::new);
        }
        assert_eq!(slots.len(), 100);
        assert_eq!(slots.as_mut_slice().len(), 100);
        let values: Vec<i32> = slots.take().into_iter().map(|b| *b).collect();
        assert_eq!(values, (0..100).collect::<Vec<_>>());
        assert_eq!(slots.len(), 0);
        slots.push(Box::new(7), Vec::new);
        assert_eq!(slots.take().len(), 1);
    }

    #[test]
    fn a_new_storage_starts_from_the_first_buffer_and_a_vector_is_kept_as_is() {
        let slots = Slots::default();
        slots.push(1u64, || Vec::with_capacity(16));
        let mut taken = Slots::from(Vec::with_capacity(5));
        let ptr = taken.as_mut_slice().as_ptr();
        taken.push(2u64, || unreachable!("the vector has a buffer"));
        assert_eq!(taken.as_mut_slice().as_ptr(), ptr);
        for (mut s, capacity) in [(slots, 16), (taken, 5)] {
            let values = s.take();
            assert_eq!(values.len(), 1);
            assert_eq!(values.capacity(), capacity, "the buffer it was given, not a new one");
        }
    }

    /// The contended path, driven by hand: a push that finds the vector
    /// held goes to the overflow, and comes out after what was already in
    /// the vector and before anything pushed after it.
    #[test]
    fn a_push_that_finds_the_vector_held_overflows_and_keeps_its_place() {
        let mut slots = Slots::default();
        slots.push(Box::new(0), Vec::new);
        slots.busy.store(true, Ordering::Relaxed); // as if a push held it
        slots.push(Box::new(1), Vec::new);
        slots.push(Box::new(2), Vec::new);
        assert_eq!(slots.len(), 3);
        slots.busy.store(false, Ordering::Relaxed);
        slots.push(Box::new(3), Vec::new);
        assert!(slots.overflow.load(Ordering::Relaxed).is_null());
        assert_eq!(slots.len(), 4);
        // And the overflow left at the end is taken too.
        slots.busy.store(true, Ordering::Relaxed);
        slots.push(Box::new(4), Vec::new);
        slots.busy.store(false, Ordering::Relaxed);
        let values: Vec<i32> = slots.take().into_iter().map(|b| *b).collect();
        assert_eq!(values, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn dropping_frees_every_value_once_the_overflow_included() {
        use std::sync::Arc;
        let token = Arc::new(());
        let slots = Slots::default();
        slots.push(Arc::clone(&token), Vec::new);
        slots.busy.store(true, Ordering::Relaxed);
        for _ in 0..5 {
            slots.push(Arc::clone(&token), Vec::new);
        }
        assert_eq!(Arc::strong_count(&token), 7);
        drop(slots);
        assert_eq!(Arc::strong_count(&token), 1);
    }

    #[test]
    fn threads_pushing_at_once_lose_none_duplicate_none_and_keep_their_own_order() {
        let threads = 4;
        let each = if cfg!(miri) { 30 } else { 5_000 };
        for _ in 0..if cfg!(miri) { 2 } else { 20 } {
            let mut slots = Slots::default();
            std::thread::scope(|s| {
                for t in 0..threads {
                    let slots = &slots;
                    s.spawn(move || {
                        for i in 0..each {
                            slots.push((t, i), Vec::new);
                        }
                    });
                }
            });
            assert_eq!(slots.len(), threads * each);
            let values = slots.take();
            for t in 0..threads {
                let own: Vec<usize> = values.iter().filter(|(from, _)| *from == t).map(|(_, i)| *i).collect();
                assert_eq!(own, (0..each).collect::<Vec<_>>(), "thread {t}'s pushes, in its order");
            }
        }
    }
}

/// Every interleaving of a few concurrent pushes, under loom (module docs).
#[cfg(all(test, tokio_exit_stack_loom))]
mod model {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// `per_thread` pushes from each of `threads` threads (the main one
    /// included) at once; every value comes out once, each thread's in its
    /// own order, and the count is exact once they have all returned.
    fn model(threads: usize, per_thread: usize) {
        loom::model(move || {
            let slots = Arc::new(Slots::default());
            let handles: Vec<_> = (1..threads)
                .map(|t| {
                    let slots = Arc::clone(&slots);
                    thread::spawn(move || {
                        for i in 0..per_thread {
                            slots.push(Box::new((t, i)), Vec::new);
                        }
                    })
                })
                .collect();
            for i in 0..per_thread {
                slots.push(Box::new((0, i)), Vec::new);
            }
            for handle in handles {
                handle.join().unwrap();
            }
            let mut slots = Arc::try_unwrap(slots).unwrap_or_else(|_| panic!("a thread kept the slots"));
            assert_eq!(slots.len(), threads * per_thread);
            let values: Vec<(usize, usize)> = slots.take().into_iter().map(|b| *b).collect();
            for t in 0..threads {
                let own: Vec<usize> = values.iter().filter(|(from, _)| *from == t).map(|(_, i)| *i).collect();
                assert_eq!(own, (0..per_thread).collect::<Vec<_>>());
            }
        });
    }

    /// One thread pushes once, then counts, while another pushes twice
    /// (its second push merges what the first thread may have put in the
    /// overflow): the count never misses the first thread's own value.
    #[test]
    fn len_counts_the_callers_own_push_while_another_thread_merges() {
        loom::model(|| {
            let slots = Arc::new(Slots::default());
            let other = {
                let slots = Arc::clone(&slots);
                thread::spawn(move || {
                    slots.push(1, Vec::new);
                    slots.push(2, Vec::new);
                })
            };
            slots.push(0, Vec::new);
            assert!(slots.len() >= 1, "len counts fewer than this thread pushed");
            other.join().unwrap();
        });
    }

    #[test]
    fn two_threads_pushing_twice_each() {
        model(2, 2);
    }

    #[test]
    fn three_threads_pushing_once_each() {
        model(3, 1);
    }
}
