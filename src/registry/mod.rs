//! The registry: the LIFO list of entries behind a stack or a group, the
//! only place entries are allocated, and, with the arena (`owned.rs`), the
//! only place with `unsafe` code. Its storage, pushed to from `&self`
//! without a lock, is [`slots`].
//!
//! Each entry is one allocation: an [`ErasedExit`] (an entered resource or
//! an async closure), a [`SyncExit`] (a `Drop` value or a sync closure), or
//! an [`ExitGroup`], a nested registry whose members close concurrently.
//!
//! # Soundness
//!
//! Registration takes `&self` and lends the value back as `&mut T` for as
//! long as that `&self` lives (the arena pattern, argued in `owned.rs`).
//! So nothing may read or free an entry while a `&self` borrow might be
//! alive, and the API makes that so:
//!
//! * under `&self`, the registry only pushes and counts;
//! * entries leave it only through methods taking `&mut self` ([`take`],
//!   [`take_keyed`], [`keyed_mut`]) or by dropping it; and
//! * an [`Entry`] taken out is therefore free of lent borrows: its methods
//!   may read and consume the allocation.
//!
//! [`take`]: Registry::take
//! [`take_keyed`]: Registry::take_keyed
//! [`keyed_mut`]: Registry::keyed_mut
#![allow(unsafe_code)]

use std::borrow::Cow;
use std::num::NonZeroU64;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::erased::{ErasedExit, SyncExit, label_of};
use crate::error::panic_message;
use crate::linger::Linger;
use crate::owned::{self, Owned};

mod slots;

use slots::Slots;

/// What an entry holds, in the arena.
enum Exit {
    Async(Owned<dyn ErasedExit>),
    Sync(Owned<dyn SyncExit>),
    /// Members that close concurrently.
    Group(Owned<ExitGroup>),
}

/// An entry's exit, out of the arena and owned: what the unwind runs.
pub(crate) enum Released {
    Async(Box<dyn ErasedExit>),
    Sync(Box<dyn SyncExit>),
    Group(Box<ExitGroup>),
}

/// Per-entry options given through `EntryBuilder`.
#[derive(Default)]
pub(crate) struct Options {
    pub(crate) label: Option<Cow<'static, str>>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) linger: Option<Arc<Linger>>,
    /// Set for a keyed registration: what its `Key` names.
    pub(crate) key: Option<NonZeroU64>,
    /// How long a cancelled enter of this entry may take to finish.
    pub(crate) finish: Option<Duration>,
}

/// One registration. Inside a [`Registry`] it is only pushed and counted;
/// taken out (under `&mut Registry`) it may be read and consumed.
pub(crate) struct Entry {
    exit: Exit,
    /// Boxed, and only when given: most entries have none, and a small
    /// entry keeps the LIFO vector cheap to grow.
    options: Option<Box<Options>>,
}

impl Entry {
    #[inline]
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.options.as_ref().and_then(|o| o.timeout)
    }

    /// A sync or async exit with no options: the unwind's short path.
    #[inline]
    pub(crate) fn is_plain(&self) -> bool {
        self.options.is_none() && !matches!(self.exit, Exit::Group(_))
    }

    /// Whether the exit is synchronous (runs inline, needs no runtime).
    #[inline]
    pub(crate) fn is_sync(&self) -> bool {
        matches!(self.exit, Exit::Sync(_))
    }

    #[inline]
    fn key(&self) -> Option<NonZeroU64> {
        self.options.as_ref().and_then(|o| o.key)
    }

    #[inline]
    pub(crate) fn linger(&self) -> Option<&Arc<Linger>> {
        self.options.as_ref().and_then(|o| o.linger.as_ref())
    }

    /// The caller's label, else the exit's own (`detailed`: as its
    /// `AsyncExit::label` says, which may format, and may panic: then the
    /// type name; otherwise the type name, which costs nothing).
    ///
    /// Only for an entry taken out of its registry (module docs).
    #[inline]
    pub(crate) fn label(&self, detailed: bool) -> Cow<'static, str> {
        if let Some(label) = self.options.as_ref().and_then(|o| o.label.as_ref()) {
            return label.clone();
        }
        // SAFETY: an `Entry` outside its registry was taken under `&mut`:
        // no borrow lent at registration is alive (module docs).
        unsafe {
            match &self.exit {
                Exit::Async(exit) if detailed => label_of(exit.get()),
                Exit::Async(exit) => Cow::Borrowed(exit.get().type_name()),
                Exit::Sync(exit) => exit.get().label(),
                Exit::Group(group) if detailed => Cow::Owned(format!("group of {}", group.get().len())),
                Exit::Group(_) => Cow::Borrowed("group"),
            }
        }
    }

    /// Whether unwinding this entry needs a runtime (see
    /// `AsyncExit::needs_runtime`); `true` when that method panics, which
    /// is reported. Only for an entry taken out of its registry.
    pub(crate) fn needs_runtime(&mut self) -> bool {
        if self.timeout().is_some() {
            return true;
        }
        // SAFETY: as in `label`.
        unsafe {
            match &mut self.exit {
                Exit::Async(exit) => {
                    let exit = exit.get();
                    catch_unwind(AssertUnwindSafe(|| exit.needs_runtime())).unwrap_or_else(|payload| {
                        tracing::error!(
                            resource = exit.type_name(),
                            panic = %panic_message(&*payload),
                            "AsyncExit::needs_runtime panicked; the entry is run as one that needs a runtime",
                        );
                        true
                    })
                }
                Exit::Sync(_) => false,
                // The group was taken with this entry: its members too.
                Exit::Group(group) => group
                    .get_mut()
                    .registry
                    .entries
                    .as_mut_slice()
                    .iter_mut()
                    .any(Entry::needs_runtime),
            }
        }
    }

    /// The exit, out of the arena, and the entry's options.
    #[inline]
    pub(crate) fn release(self) -> (Released, Option<Box<Options>>) {
        // SAFETY: as in `label`.
        let exit = unsafe {
            match self.exit {
                Exit::Async(exit) => Released::Async(exit.into_box()),
                Exit::Sync(exit) => Released::Sync(exit.into_box()),
                Exit::Group(group) => Released::Group(group.into_box()),
            }
        };
        (exit, self.options)
    }
}

/// The LIFO list of entries behind a stack or a group.
///
/// Registration takes `&self` (that is what lets a stack lend several
/// resources at once, and makes `&AsyncExitStack`, and a future holding it,
/// `Send`), and takes no lock: an uncontended push costs one atomic swap
/// and a plain store, and threads registering on one stack at once (scoped
/// threads sharing it) never wait for one another (see [`slots`]).
#[derive(Default)]
pub(crate) struct Registry {
    /// Oldest first. Under `&self`, only pushed to and counted (module
    /// docs).
    entries: Slots<Entry>,
}

impl From<Vec<Entry>> for Registry {
    fn from(entries: Vec<Entry>) -> Self {
        Self {
            entries: Slots::from(entries),
        }
    }
}

impl Registry {
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entry; exact under `&mut self`.
    #[inline]
    pub(crate) fn is_empty(&mut self) -> bool {
        self.entries.len() == 0
    }

    /// Takes every entry out, newest last; needs `&mut`, so no lent
    /// resource is alive.
    pub(crate) fn take(&mut self) -> Vec<Entry> {
        self.entries.take()
    }

    /// The keyed resource `key` names, if it is registered here and is a
    /// `T`; needs `&mut`, so no lent resource is alive.
    pub(crate) fn keyed_mut<T: 'static>(&mut self, key: NonZeroU64) -> Option<&mut T> {
        let entry = self
            .entries
            .as_mut_slice()
            .iter_mut()
            .rev()
            .find(|e| e.key() == Some(key))?;
        match &mut entry.exit {
            // SAFETY: `&mut self`: no borrow lent at registration is alive,
            // and the one returned ends before the next `&self` use.
            Exit::Async(exit) => unsafe { exit.get_mut() }.as_any().downcast_mut::<T>(),
            Exit::Sync(_) | Exit::Group(_) => None,
        }
    }

    /// Unregisters the keyed resource `key` names and hands it back, if it
    /// is registered here and is a `T`.
    pub(crate) fn take_keyed<T: 'static>(&mut self, key: NonZeroU64) -> Option<T> {
        // Checked before it leaves the vector: a mismatch leaves it there.
        self.keyed_mut::<T>(key)?;
        let entry = self.entries.with_vec(|entries| {
            let at = entries.iter().rposition(|e| e.key() == Some(key))?;
            Some(entries.remove(at))
        })?;
        match entry.release().0 {
            Released::Async(exit) => exit.into_any().downcast::<T>().ok().map(|t| *t),
            Released::Sync(_) | Released::Group(_) => None,
        }
    }

    /// A key no other registration in the process has.
    pub(crate) fn new_key() -> NonZeroU64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        // 2^64 registrations would take centuries; wrapping to 0 is the
        // only way to fail, and then the key starts over at 1.
        NonZeroU64::new(id).unwrap_or(NonZeroU64::MIN)
    }

    /// Registers the exit `exit` makes, with `options`. The entry is
    /// built only once its slot is ready (see `Slots::push_with`), from
    /// the parts the closure holds.
    #[inline(always)]
    fn push(&self, exit: impl FnOnce() -> Exit, options: Option<Box<Options>>) {
        self.entries
            .push_with(move || Entry { exit: exit(), options }, spare::take);
    }

    /// Moves `value` into its own allocation, registers it as the newest
    /// entry, and lends it to the caller for as long as `&self` lives.
    #[allow(clippy::mut_from_ref)] // the arena design: see `owned.rs`
    pub(crate) fn register_async<T: ErasedExit + 'static>(&self, value: T, options: Option<Box<Options>>) -> &mut T {
        // SAFETY: the borrow lives as long as `&self`; entries are read or
        // freed only under `&mut self`, by value, or by dropping the
        // registry (module docs).
        let (owner, borrow) = unsafe { owned::alloc(value, |p| p as *mut dyn ErasedExit) };
        self.push(move || Exit::Async(owner), options);
        borrow
    }

    /// [`register_async`](Self::register_async) for synchronous exits.
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn register_sync<T: SyncExit + 'static>(&self, value: T, options: Option<Box<Options>>) -> &mut T {
        // SAFETY: as in `register_async`.
        let (owner, borrow) = unsafe { owned::alloc(value, |p| p as *mut dyn SyncExit) };
        self.push(move || Exit::Sync(owner), options);
        borrow
    }

    /// [`register_async`](Self::register_async) for a new, empty group.
    pub(crate) fn register_group(&self, options: Option<Box<Options>>) -> &ExitGroup {
        let group = ExitGroup {
            registry: Registry::default(),
        };
        // SAFETY: as in `register_async`.
        let (owner, borrow) = unsafe { owned::alloc(group, |p| p) };
        self.push(move || Exit::Group(owner), options);
        borrow
    }
}

/// A set of entries that close concurrently, registered on a stack with
/// [`AsyncExitStack::enter_group`](crate::AsyncExitStack::enter_group).
///
/// Use it for many independent resources of one kind: closing 1,000 pool
/// connections one at a time takes 1,000 round trips, concurrently it takes
/// one. Plain entries and groups keep LIFO order among themselves; inside a
/// group there is no order.
///
/// Members are registered exactly as on the stack, with the same methods
/// (each lends the resource back), and are unwound with the group. Each
/// member may have its own label, timeout and close bounds through
/// [`entry`](Self::entry).
///
/// Costs one allocation for the group, one per member, and a
/// `FuturesUnordered` of the members' exit futures at unwind.
///
/// ```
/// # #[cfg(feature = "net")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use tokio::net::{TcpListener, TcpStream};
/// use tokio_exit_stack::{acquire, AsyncExitStack};
///
/// let listener = TcpListener::bind("127.0.0.1:0").await?;
/// let addr = listener.local_addr()?;
/// let mut stack = AsyncExitStack::new();
/// let pool = stack.enter_group();
/// let mut conns = Vec::new();
/// for _ in 0..8 {
///     conns.push(pool.enter_async_context(acquire(TcpStream::connect(addr))).await?);
/// }
/// assert_eq!(pool.len(), 8);
/// stack.aclose().await?; // the 8 connections shut down concurrently
/// # Ok(()) }
/// # #[cfg(not(feature = "net"))] fn main() {}
/// ```
///
/// A group only ever lives inside its stack, which lends it out by shared
/// reference: it cannot be built, moved out or swapped away, so no member
/// can escape its exit.
pub struct ExitGroup {
    /// The members; registered through `&self` like a stack's entries.
    pub(crate) registry: Registry,
}

impl std::fmt::Debug for ExitGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitGroup").field("members", &self.len()).finish()
    }
}

impl ExitGroup {
    /// How many members the group holds.
    pub fn len(&self) -> usize {
        self.registry.len()
    }

    /// `true` when the group has no members.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One spare entry vector per thread: a finished unwind leaves its (empty)
/// vector here, and the next stack registered on the thread starts from it
/// instead of growing a new one (4, 8, 16 slots). Only small vectors are
/// kept (`MAX_SLOTS`, 512 bytes), so that a stack holds memory in
/// proportion to its own entries: a long-lived stack of one entry never
/// pins the vector a large unwind left behind.
pub(crate) mod spare {
    use std::cell::Cell;

    use super::Entry;

    pub(crate) const MAX_SLOTS: usize = 16;

    thread_local! {
        static SPARE: Cell<Vec<Entry>> = const { Cell::new(Vec::new()) };
    }

    /// The thread's spare vector (empty), or a new one.
    pub(crate) fn take() -> Vec<Entry> {
        SPARE.try_with(Cell::take).unwrap_or_default()
    }

    /// Keeps `entries` (emptied) as the thread's spare if it is larger than
    /// the one kept, and not too large; frees it otherwise.
    pub(crate) fn give(mut entries: Vec<Entry>) {
        if entries.capacity() == 0 || entries.capacity() > MAX_SLOTS {
            return discard(entries);
        }
        if !entries.is_empty() {
            entries.clear();
        }
        let _ = SPARE.try_with(|spare| {
            let kept = spare.take();
            if kept.capacity() >= entries.capacity() {
                discard(spare.replace(kept));
                discard(entries);
            } else {
                discard(spare.replace(entries));
                discard(kept);
            }
        });
    }

    /// Drops a vector, skipping the out-of-line drop glue when it owns
    /// nothing (no buffer): the common case, once or twice per stack.
    #[inline(always)]
    fn discard(entries: Vec<Entry>) {
        if entries.capacity() == 0 {
            std::mem::forget(entries);
        } else {
            drop(entries);
        }
    }
}
