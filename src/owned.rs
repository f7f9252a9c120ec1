//! The one place the crate uses `unsafe`: an owning pointer whose pointee
//! the caller may borrow mutably while the stack still owns it.
//!
//! # Why this exists
//!
//! [`AsyncExitStack`](crate::AsyncExitStack) must *own* every resource it
//! was given (to clean it up from `aclose`, or from `Drop` when a future is
//! cancelled) while handing the caller a `&mut` to it, for several resources
//! at once. That is the arena pattern (`typed-arena`, `bumpalo`): the
//! resource lives in its own heap allocation whose address never changes,
//! the stack keeps a raw pointer to it, and the caller gets a `&'s mut T`
//! tied to a *shared* borrow `&'s AsyncExitStack`.
//!
//! # Soundness argument
//!
//! * Each allocation comes from `Box::into_raw`, is reachable only through
//!   its one [`Owned`], and is freed exactly once, by [`Owned::into_box`] or
//!   by `Drop`.
//! * The stack hands out at most one `&mut T` per allocation, right after
//!   registering it, and never reads through the raw pointer while that
//!   borrow can be alive: the pointer is only turned back into a `Box` by
//!   `aclose`, `pop_all` (both take `&mut AsyncExitStack`) or the stack's
//!   `Drop`. The borrow checker guarantees that none of these can run while
//!   a `&'s mut T` derived from `&'s AsyncExitStack` is alive.
//! * Moving an [`Owned`] (for example when the entry vector grows) moves the
//!   raw pointer, not the pointee, so outstanding `&mut T` stay valid. A
//!   `Box` would not do here: moving a `Box` asserts unique ownership and
//!   would invalidate the caller's borrow under Rust's aliasing model.
//!
//! Miri checks this module (`cargo +nightly miri test --lib owned`), see
//! the tests at the bottom of `stack.rs` and here.
#![allow(unsafe_code)]

use std::ptr::NonNull;

/// A heap allocation owned through a raw pointer.
pub(crate) struct Owned<T: ?Sized> {
    ptr: NonNull<T>,
}

// SAFETY: `Owned<T>` owns a `T` exactly like `Box<T>` does; sending it to
// another thread sends the `T`, which is allowed when `T: Send`.
unsafe impl<T: ?Sized + Send> Send for Owned<T> {}

impl<T: ?Sized> Owned<T> {
    /// Takes ownership of a pointer produced by `Box::into_raw`.
    ///
    /// # Safety
    /// `ptr` must come from `Box::into_raw` and must not be owned by
    /// anything else.
    pub(crate) unsafe fn from_raw(ptr: *mut T) -> Self {
        // `Box::into_raw` never returns null.
        match NonNull::new(ptr) {
            Some(ptr) => Self { ptr },
            None => unreachable!("Box::into_raw returned null"),
        }
    }

    /// Gives the allocation back as a `Box`.
    ///
    /// # Safety
    /// No `&mut T` handed out by [`alloc`] for this allocation may be alive
    /// (the registry calls this only on entries taken under `&mut`).
    pub(crate) unsafe fn into_box(self) -> Box<T> {
        let ptr = self.ptr.as_ptr();
        std::mem::forget(self);
        // SAFETY: `ptr` came from `Box::into_raw` (see `from_raw`), is owned
        // only by `self`, which was just forgotten, so it is freed once; the
        // caller guarantees no lent borrow is alive.
        unsafe { Box::from_raw(ptr) }
    }

    /// A shared view, to read a label before the entry runs.
    ///
    /// # Safety
    /// As for [`into_box`](Self::into_box): no lent `&mut T` alive.
    pub(crate) unsafe fn get(&self) -> &T {
        // SAFETY: the pointee is alive while `self` is; the caller
        // guarantees no lent borrow is alive.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: ?Sized> Owned<T> {
    /// A mutable view, for `AsyncExitStack::get_mut`.
    ///
    /// # Safety
    /// As for [`into_box`](Self::into_box): no lent `&mut T` alive.
    pub(crate) unsafe fn get_mut(&mut self) -> &mut T {
        // SAFETY: the pointee is alive while `self` is; the caller
        // guarantees no lent borrow is alive.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T: ?Sized> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: as in `into_box`: sole owner, freed once.
        drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
    }
}

/// Boxes `value`, returning the owner (erased by `erase`) and a mutable
/// borrow of the value that the caller may keep for `'a`.
///
/// # Safety
/// The returned `&'a mut T` must not outlive the point where the returned
/// `Owned` is turned back into a box or dropped; the stack ties `'a` to a
/// shared borrow of itself, and only frees entries through `&mut self` or
/// by value.
pub(crate) unsafe fn alloc<'a, T, U: ?Sized>(value: T, erase: impl FnOnce(*mut T) -> *mut U) -> (Owned<U>, &'a mut T) {
    let raw: *mut T = Box::into_raw(Box::new(value));
    // SAFETY: `erase` only unsizes the pointer, so it still comes from
    // `Box::into_raw` and has no other owner.
    let owned = unsafe { Owned::from_raw(erase(raw)) };
    // SAFETY: `raw` is valid and aligned; the caller upholds the lifetime
    // contract above.
    (owned, unsafe { &mut *raw })
}

#[cfg(test)]
mod tests {
    use super::*;

    trait Named {
        fn name(&self) -> String;
    }
    impl Named for String {
        fn name(&self) -> String {
            self.clone()
        }
    }

    #[test]
    fn borrow_survives_moves_of_the_owner_and_frees_once() {
        let mut owners: Vec<Owned<dyn Named>> = Vec::new();
        // SAFETY: the borrows end before the owners are consumed below.
        let (o1, r1) = unsafe { alloc(String::from("a"), |p| p as *mut dyn Named) };
        owners.push(o1);
        let (o2, r2) = unsafe { alloc(String::from("b"), |p| p as *mut dyn Named) };
        owners.push(o2);
        for i in 0..64 {
            // force reallocation of the vector while r1 and r2 are alive
            let (o, _) = unsafe { alloc(format!("x{i}"), |p| p as *mut dyn Named) };
            owners.push(o);
        }
        r1.push('1');
        r2.push('2');
        // SAFETY: r1 and r2 are no longer used.
        assert_eq!(unsafe { owners[0].get() }.name(), "a1");
        let b = unsafe { owners.remove(1).into_box() };
        assert_eq!(b.name(), "b2");
        drop(owners);
    }
}
