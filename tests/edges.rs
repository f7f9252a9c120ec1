//! Edges that production reaches: timeouts on groups, any `Duration`, a
//! runtime without the time driver, user code that panics where the stack
//! calls it, long unwinds that must yield, and cancellation as the normal
//! life of a service (S19, S20, S33, S34).

mod common;

use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Capture, Log};
use futures_util::FutureExt as _;
use tokio_exit_stack::{
    AsyncExit, AsyncExitStack, BoxError, Flow, Pending, async_trait, error::AbandonCause, error::Abandoned,
    error::TimeoutError, scope,
};

/// A resource whose exit never finishes.
struct Stuck;

#[async_trait]
impl AsyncExit for Stuck {
    async fn exit(self: Box<Self>, _: Pending) -> Result<Flow, BoxError> {
        std::future::pending().await
    }
}

/// A resource whose exit never finishes and whose `Drop` panics.
struct StuckAndPanicsInDrop;

#[async_trait]
impl AsyncExit for StuckAndPanicsInDrop {
    async fn exit(self: Box<Self>, _: Pending) -> Result<Flow, BoxError> {
        std::future::pending().await
    }
}

impl Drop for StuckAndPanicsInDrop {
    fn drop(&mut self) {
        panic!("drop panicked");
    }
}

#[tokio::test(start_paused = true)]
async fn s19_a_timeout_on_a_group_abandons_its_members_and_the_unwind_goes_on() {
    let log = Log::default();
    let mut stack = AsyncExitStack::new();
    let l = log.clone();
    stack.callback(move || l.push("older entry ran"));
    let group = stack
        .entry()
        .label("pool")
        .timeout(Duration::from_millis(10))
        .enter_group();
    group.push_resource(Stuck);
    let l = log.clone();
    group.callback(move || l.push("member ran"));
    let started = tokio::time::Instant::now();
    let err = stack.aclose().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the group's timeout was kept"
    );
    let timeout = err.downcast_ref::<TimeoutError>().expect("the group timed out");
    assert_eq!(timeout.resource, "pool");
    assert_eq!(log.take(), ["member ran", "older entry ran"]);

    // A nested group's timeout is kept too (groups are flattened).
    let mut stack = AsyncExitStack::new();
    let outer = stack.enter_group();
    let inner = outer
        .entry()
        .label("inner")
        .timeout(Duration::from_millis(10))
        .enter_group();
    inner.push_resource(Stuck);
    let started = tokio::time::Instant::now();
    let err = stack.aclose().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the nested group's timeout was kept"
    );
    assert!(err.is::<TimeoutError>());
}

#[tokio::test(start_paused = true)]
async fn s19_any_duration_is_accepted_and_too_large_means_no_deadline() {
    let ran = Arc::new(AtomicUsize::new(0));
    let mut stack = AsyncExitStack::new();
    stack.set_unwind_timeout(Some(Duration::MAX));
    let r = ran.clone();
    stack
        .entry()
        .timeout(Duration::MAX)
        .push_async_callback(move || async move {
            tokio::task::yield_now().await;
            r.fetch_add(1, Ordering::SeqCst);
        });
    stack.aclose().await.unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 1);

    // Dropped with such a deadline: every cleanup still runs.
    let mut stack = AsyncExitStack::new();
    stack.set_unwind_timeout(Some(Duration::MAX));
    stack.set_cancellable(true);
    for _ in 0..3 {
        let r = ran.clone();
        stack
            .entry()
            .timeout(Duration::MAX)
            .push_async_callback(move || async move {
                r.fetch_add(1, Ordering::SeqCst);
            });
    }
    drop(stack);
    common::eventually("every cleanup ran", || ran.load(Ordering::SeqCst) == 4).await;
}

#[test]
fn s19_without_the_time_driver_a_timed_entry_still_runs_and_an_event_says_so() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap(); // no enable_time
    let capture = Capture::default();
    let _guard = capture.install();
    let ran = Arc::new(AtomicUsize::new(0));
    rt.block_on(async {
        let mut stack = AsyncExitStack::new();
        let r = ran.clone();
        stack
            .entry()
            .timeout(Duration::from_secs(1))
            .push_async_callback(move || async move {
                r.fetch_add(1, Ordering::SeqCst);
            });
        stack.aclose().await.unwrap();
    });
    assert_eq!(ran.load(Ordering::SeqCst), 1, "the entry ran, without its deadline");
    assert!(
        capture.events().iter().any(|e| e.message.contains("no time driver")),
        "an event says the deadline could not be kept: {:?}",
        capture.events()
    );
}

both_flavours! {
    #[allow(clippy::async_yields_async)]
    async fn s33_a_timed_out_exit_whose_resource_panics_in_drop_is_reported_and_the_rest_run() {
        let capture = Capture::default();
        let _guard = capture.install();
        let panics_named = |name: &str| {
            capture
                .events()
                .iter()
                .filter(|e| e.level == tracing::Level::ERROR && e.message.contains("panicked"))
                .filter(|e| e.field("resource").is_some_and(|r| r.contains(name)))
                .count()
        };
        let log = Log::default();
        let mut stack = AsyncExitStack::new();
        let l = log.clone();
        stack.callback(move || l.push("older entry ran"));
        stack.entry().label("panicky").timeout(Duration::from_millis(5)).push_resource(StuckAndPanicsInDrop);
        let resumed = AssertUnwindSafe(stack.aclose()).catch_unwind().await;
        let payload = resumed.expect_err("aclose resumes the panic once every entry ran");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"drop panicked"));
        assert_eq!(log.take(), ["older entry ran"]);
        assert_eq!(panics_named("panicky"), 1, "the panic is reported naming the entry");

        // The same for a timed-out group member.
        let mut stack = AsyncExitStack::new();
        let l = log.clone();
        stack.callback(move || l.push("older entry ran"));
        let group = stack.entry().timeout(Duration::from_millis(5)).enter_group();
        group.push_resource(StuckAndPanicsInDrop);
        let resumed = AssertUnwindSafe(stack.aclose()).catch_unwind().await;
        assert!(resumed.is_err());
        assert_eq!(log.take(), ["older entry ran"]);
        assert_eq!(panics_named("StuckAndPanicsInDrop"), 1, "the member's panic is reported naming it");

        // In a dropped stack: reported, and nothing escapes the drop.
        let stack = AsyncExitStack::new();
        let l = log.clone();
        stack.callback(move || l.push("older entry ran"));
        stack.entry().timeout(Duration::from_millis(5)).push_resource(StuckAndPanicsInDrop);
        let mut stack = stack;
        stack.set_cancellable(true);
        drop(stack);
        common::eventually("the older entry ran", || !log.get().is_empty()).await;
    }
}

/// A resource whose trait methods panic, as user code may.
struct Faulty {
    label: bool,
    needs_runtime: bool,
    ran: Arc<AtomicBool>,
}

#[async_trait]
impl AsyncExit for Faulty {
    async fn exit(self: Box<Self>, _: Pending) -> Result<Flow, BoxError> {
        self.ran.store(true, Ordering::SeqCst);
        Ok(Flow::Propagate)
    }
    fn label(&self) -> Cow<'static, str> {
        if self.label {
            panic!("label panicked");
        }
        Cow::Borrowed("faulty")
    }
    fn needs_runtime(&self) -> bool {
        if self.needs_runtime {
            panic!("needs_runtime panicked");
        }
        true
    }
}

#[tokio::test(flavor = "current_thread")]
async fn s33_a_panicking_label_or_needs_runtime_loses_no_entry_and_never_escapes_drop() {
    let capture = Capture::default();
    let _guard = capture.install(); // WARN enabled: labels are computed
    for (label, needs_runtime) in [(true, false), (false, true), (true, true)] {
        // aclose
        let ran = Arc::new(AtomicBool::new(false));
        let mut stack = AsyncExitStack::new();
        stack.push_resource(Faulty {
            label,
            needs_runtime,
            ran: ran.clone(),
        });
        stack.callback(|| Err::<(), _>(std::io::Error::other("so that labels are reported")));
        assert!(stack.aclose().await.is_err());
        assert!(ran.load(Ordering::SeqCst), "the exit ran");

        // a dropped stack
        let ran = Arc::new(AtomicBool::new(false));
        let mut stack = AsyncExitStack::new();
        stack.set_cancellable(true);
        stack.push_resource(Faulty {
            label,
            needs_runtime,
            ran: ran.clone(),
        });
        drop(stack); // must not panic
        common::eventually("the dropped stack's exit ran", || ran.load(Ordering::SeqCst)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn s34_a_long_background_unwind_yields_to_the_scheduler() {
    const ENTRIES: usize = 200_000;
    let done = Arc::new(AtomicBool::new(false));
    let mut stack = AsyncExitStack::new();
    stack.set_cancellable(true);
    let d = done.clone();
    stack.push_async_callback(move || async move { d.store(true, Ordering::SeqCst) }); // runs last
    for _ in 0..ENTRIES {
        stack.push_async_callback(|| async {});
    }
    let turns = Arc::new(AtomicUsize::new(0));
    let (t, d) = (turns.clone(), done.clone());
    let other = tokio::spawn(async move {
        while !d.load(Ordering::SeqCst) {
            t.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
        }
    });
    tokio::task::yield_now().await; // let the other task start
    drop(stack);
    other.await.unwrap();
    // One poll runs a few hundred entries: the other task ran in between.
    let turns = turns.load(Ordering::SeqCst);
    assert!(
        turns > ENTRIES / 1000,
        "the other task ran only {turns} times during the unwind"
    );
}

both_flavours! {
    async fn s20_a_cancelled_scope_is_told_cancelled_and_is_not_a_warn() {
        let capture = Capture::default();
        let _guard = capture.install();
        let told = Arc::new(std::sync::Mutex::new(Vec::new()));
        for round in 0..2 {
            let t = told.clone();
            let body = scope(async move |stack| {
                stack.push_exit(move |pending: &Pending| {
                    t.lock().unwrap().push(pending.downcast_ref::<Abandoned>().map(|a| a.cause));
                    Ok::<_, BoxError>(Flow::Propagate)
                });
                std::future::pending::<Result<(), BoxError>>().await
            });
            if round == 0 {
                // a timed-out request
                assert!(tokio::time::timeout(Duration::from_millis(5), body).await.is_err());
            } else {
                // a lost select! branch
                tokio::select! {
                    _ = body => unreachable!(),
                    () = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
        }
        common::eventually("both exits ran", || told.lock().unwrap().len() == 2).await;
        assert_eq!(*told.lock().unwrap(), [Some(AbandonCause::Cancelled); 2]);
        let warns: Vec<_> = capture.events().into_iter().filter(|e| e.level <= tracing::Level::WARN).collect();
        assert!(warns.is_empty(), "a cancelled scope is not a WARN: {warns:?}");
    }
}

both_flavours! {
    async fn s20_a_dropped_stack_outside_a_scope_stays_a_warn_unless_it_is_cancellable() {
        let capture = Capture::default();
        let _guard = capture.install();
        let stack = AsyncExitStack::new();
        stack.callback(|| ());
        common::drop_forgotten(stack);
        let mut stack = AsyncExitStack::new();
        stack.set_cancellable(true);
        stack.callback(|| ());
        drop(stack);
        let warns: Vec<_> = capture.events().into_iter().filter(|e| e.level == tracing::Level::WARN).collect();
        assert_eq!(warns.len(), 1, "{warns:?}");
        assert!(warns[0].message.contains("dropped without aclose"));
    }
}

/// A scope's stack binds to the runtime the scope first runs in, not to
/// where its future was built: built outside any runtime, polled once in
/// one, then dropped outside it, its cleanup still runs on that runtime.
#[test]
fn s20_a_scope_binds_to_the_runtime_it_first_runs_in() {
    let released = Arc::new(AtomicBool::new(false));
    let flag = released.clone();
    let mut request = Box::pin(scope(async move |stack| {
        stack.push_async_callback(move || async move { flag.store(true, Ordering::SeqCst) });
        std::future::pending::<()>().await;
        Ok(())
    }));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert!(futures_util::poll!(request.as_mut()).is_pending());
    });
    drop(request); // outside the runtime
    let report = rt.block_on(tokio_exit_stack::drain(Duration::from_secs(5)));
    assert!(released.load(Ordering::SeqCst), "{report:?}");
}

/// Which method of [`Panicky`] panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Exit,
    Label,
    NeedsRuntime,
    Abandon,
    /// `Drop`, reached when the exit timed out (or, with no runtime, after
    /// `abandon`).
    Drop,
}

/// Where the stack holding it is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    Aclose,
    Scope,
    /// Dropped inside a runtime: cleaned up in the background.
    Dropped,
    /// Dropped with no runtime: synchronous best effort.
    DroppedNoRuntime,
}

/// A user resource whose one method panics; its exit never ends when its
/// `Drop` is the fault (so its timeout drops it).
struct Panicky(Fault);

#[async_trait]
impl AsyncExit for Panicky {
    async fn exit(self: Box<Self>, _: Pending) -> Result<Flow, BoxError> {
        match self.0 {
            Fault::Exit => panic!("Panicky::exit panicked"),
            Fault::Drop => std::future::pending().await,
            _ => Ok(Flow::Propagate),
        }
    }
    fn label(&self) -> Cow<'static, str> {
        assert!(self.0 != Fault::Label, "Panicky::label panicked");
        Cow::Borrowed("Panicky resource")
    }
    fn needs_runtime(&self) -> bool {
        assert!(self.0 != Fault::NeedsRuntime, "Panicky::needs_runtime panicked");
        true
    }
    fn abandon(self: Box<Self>) {
        assert!(self.0 != Fault::Abandon, "Panicky::abandon panicked");
    }
}

impl Drop for Panicky {
    fn drop(&mut self) {
        if self.0 == Fault::Drop && !std::thread::panicking() {
            panic!("Panicky::drop panicked");
        }
    }
}

/// Builds a stack: a counted callback, the faulty resource (with a timeout
/// when its `Drop` is the fault), another counted callback.
fn panicky_stack(stack: &AsyncExitStack, fault: Fault, ran: &Arc<AtomicUsize>) {
    let r = ran.clone();
    stack.callback(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    let entry = stack.entry();
    let entry = if fault == Fault::Drop {
        entry.timeout(Duration::from_millis(10))
    } else {
        entry
    };
    entry.push_resource(Panicky(fault));
    let r = ran.clone();
    stack.push_async_callback(move || async move {
        r.fetch_add(1, Ordering::SeqCst);
    });
}

/// Every trait method of a user resource that panics, in `aclose`, in a
/// scope, and in a dropped stack (with and without a runtime): every other
/// entry runs once, the panic is reported naming the entry, and nothing
/// panics out of a `Drop`. (A method the path never calls is skipped:
/// `abandon` runs only without a runtime, `needs_runtime` only at a drop.)
#[test]
fn s33_every_trait_method_that_panics_is_contained_reported_and_skips_nothing() {
    use futures_util::FutureExt as _;
    let faults = [
        Fault::Exit,
        Fault::Label,
        Fault::NeedsRuntime,
        Fault::Abandon,
        Fault::Drop,
    ];
    let releases = [
        Release::Aclose,
        Release::Scope,
        Release::Dropped,
        Release::DroppedNoRuntime,
    ];
    let mut checked = 0;
    for fault in faults {
        for release in releases {
            let called = match fault {
                Fault::Abandon => release == Release::DroppedNoRuntime,
                Fault::NeedsRuntime => matches!(release, Release::Dropped | Release::DroppedNoRuntime),
                Fault::Drop | Fault::Label => true,
                Fault::Exit => release != Release::DroppedNoRuntime,
            };
            if !called {
                continue;
            }
            let case = format!("{fault:?} in {release:?}");
            let capture = Capture::default();
            let _guard = capture.install();
            let ran = Arc::new(AtomicUsize::new(0));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let outcome: Result<(), Box<dyn std::any::Any + Send>> = match release {
                Release::Aclose => rt.block_on(async {
                    let mut stack = AsyncExitStack::new();
                    panicky_stack(&stack, fault, &ran);
                    AssertUnwindSafe(stack.aclose()).catch_unwind().await.map(|_| ())
                }),
                Release::Scope => rt.block_on(async {
                    AssertUnwindSafe(scope(async |stack| {
                        panicky_stack(stack, fault, &ran);
                        Ok(())
                    }))
                    .catch_unwind()
                    .await
                    .map(|_| ())
                }),
                Release::Dropped => {
                    let dropped = rt.block_on(async {
                        let mut stack = AsyncExitStack::new();
                        stack.set_cancellable(true);
                        panicky_stack(&stack, fault, &ran);
                        let dropped = std::panic::catch_unwind(AssertUnwindSafe(|| drop(stack)));
                        // Its background cleanup: both other entries run.
                        common::eventually("the background cleanup ran", || ran.load(Ordering::SeqCst) == 2).await;
                        tokio::task::yield_now().await; // and its report
                        dropped
                    });
                    assert!(dropped.is_ok(), "{case}: the stack's Drop panicked");
                    Ok(())
                }
                Release::DroppedNoRuntime => {
                    let mut stack = AsyncExitStack::new();
                    stack.set_cancellable(true);
                    panicky_stack(&stack, fault, &ran);
                    drop(rt);
                    let dropped = std::panic::catch_unwind(AssertUnwindSafe(|| drop(stack)));
                    assert!(dropped.is_ok(), "{case}: the stack's Drop panicked");
                    // The async callback cannot run without a runtime.
                    ran.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            };
            assert_eq!(ran.load(Ordering::SeqCst), 2, "{case}: every other entry ran once");
            // A panic while the entry itself is released (its exit, or its
            // resource's `Drop` at its timeout) is resumed by aclose and
            // scope once every entry ran (S18); a panic in a method that
            // only describes the entry is contained, and reported.
            let released_by_caller = matches!(release, Release::Aclose | Release::Scope);
            let resumed = matches!(fault, Fault::Exit | Fault::Drop) && released_by_caller;
            assert_eq!(outcome.is_err(), resumed, "{case}");
            let events = capture.events();
            let named = events.iter().any(|e| {
                e.level == tracing::Level::ERROR
                    && e.field("resource").is_some_and(|r| r.contains("Panicky"))
                    && e.field("panic").is_some_and(|p| p.contains("Panicky::"))
            });
            assert!(
                named,
                "{case}: an ERROR event names the entry and the panic: {events:#?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 14);
}

/// `drain` on a runtime without the time driver cannot keep its deadline:
/// it does not panic and does not wait, and reports what still runs as
/// cut off.
#[test]
fn s23_drain_without_the_time_driver_neither_panics_nor_hangs() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let (_keep, never) = tokio::sync::oneshot::channel::<()>();
    let report = rt.block_on(async {
        let stack = common::cancellable();
        stack.push_async_callback(|| async {
            let _ = never.await;
        });
        drop(stack);
        tokio_exit_stack::drain(Duration::from_secs(3600)).await
    });
    assert!(report.cut_off >= 1, "{report:?}");
}
