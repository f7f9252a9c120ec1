//! Enters cut short: an enter that opted in (or was registered with
//! `finish_on_cancel`) is finished in the background when its caller's
//! future is dropped, and its resource released through its exit, told
//! the enter was cancelled; meanwhile the stack keeps an entry at its
//! place, so no older entry is released first. In a binary of its own:
//! `drain` counts process-wide, so these tests take turns.
// The turns are whole tests, each on its own runtime and thread: a test
// holding the lock across its awaits blocks only other tests' threads.
#![allow(clippy::await_holding_lock)]

mod common;

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use common::{Capture, Log};
use tokio::sync::oneshot;
use tokio_exit_stack::background::DrainReport;
use tokio_exit_stack::error::{AbandonCause, Abandoned};
use tokio_exit_stack::{
    AsyncEnter, AsyncExit, AsyncExitStack, BoxError, Entering, Finish, Flow, Pending, async_trait, drain, scope,
};

static SERIAL: Mutex<()> = Mutex::new(());

/// A resource that records what its exit was told.
struct Probe(Log);

#[async_trait]
impl AsyncExit for Probe {
    async fn exit(self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
        let how = match pending.downcast_ref::<Abandoned>() {
            Some(a) => format!("abandoned ({:?})", a.cause),
            None if pending.is_ok() => "ok".to_owned(),
            None => "failed".to_owned(),
        };
        self.0
            .push(format!("probe told {how}, detached={}", pending.is_detached()));
        Ok(Flow::Propagate)
    }
}

/// An enter in two parts: the first is ready at once; the second, which
/// it asks to be finished, waits for `gate` and then gives the probe (or
/// fails, if the gate sends an error).
struct TwoPart {
    log: Log,
    gate: oneshot::Receiver<Result<(), io::Error>>,
}

impl AsyncEnter for TwoPart {
    type Resource = Probe;
    type Error = io::Error;

    const FINISHES: bool = true;

    async fn enter(self) -> io::Result<Probe> {
        self.gate.await.map_err(io::Error::other)??;
        Ok(Probe(self.log))
    }

    async fn enter_finishing(self) -> io::Result<Entering<Probe, io::Error>> {
        let Self { log, gate } = self;
        Ok(Entering::Finish(Finish::new(async move {
            gate.await.map_err(io::Error::other)??;
            Ok(Probe(log))
        })))
    }
}

fn two_part(log: &Log) -> (TwoPart, oneshot::Sender<Result<(), io::Error>>) {
    let (open, gate) = oneshot::channel();
    (TwoPart { log: log.clone(), gate }, open)
}

both_flavours! {
    /// The enter is cut short while its second part waits: the stack keeps
    /// an entry at its place; once the part finishes, the resource's exit
    /// runs told `EnterCancelled` (detached), and only then does the older
    /// entry run.
    async fn a_cancelled_enter_is_finished_and_released_before_older_entries() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let log = Log::default();
        let mut stack = AsyncExitStack::new();
        let older = log.clone();
        stack.callback(move || older.push("older entry released"));
        let (enter, open) = two_part(&log);
        assert!(common::cancel_after_pendings(stack.enter_async_context(enter), 1).await.is_none());
        assert_eq!(stack.len(), 2, "an entry kept at the cancelled enter's place");
        let closing = tokio::spawn(async move {
            stack.aclose().await.unwrap();
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(log.get().is_empty(), "nothing released while the enter is unfinished");
        open.send(Ok(())).unwrap();
        closing.await.unwrap();
        assert_eq!(
            log.take(),
            [
                format!("probe told abandoned ({:?}), detached=true", AbandonCause::EnterCancelled),
                "older entry released".to_owned(),
            ]
        );
    }
}

/// A cancelled enter whose second part then fails acquired nothing: a
/// DEBUG event names it, no WARN, and the scope's result is the body's.
/// (`current_thread`: the capture sees this thread's events, and the
/// background finish runs here.)
#[tokio::test(flavor = "current_thread")]
async fn a_cancelled_enter_that_fails_is_a_debug_event_not_a_failure() {
    {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let capture = Capture::default();
        let _guard = capture.install();
        let log = Log::default();
        let (enter, open) = two_part(&log);
        let value = scope(async |stack| {
            let entering = stack.entry().label("flaky backend").enter_async_context(enter);
            assert!(common::cancel_after_pendings(entering, 1).await.is_none());
            open.send(Err(io::Error::other("connection refused"))).unwrap();
            Ok(7)
        })
        .await
        .unwrap();
        assert_eq!(value, 7);
        assert!(log.get().is_empty(), "nothing to release");
        let events = capture.events();
        let failed: Vec<_> = events
            .iter()
            .filter(|e| e.message.contains("cancelled enter failed"))
            .collect();
        assert_eq!(failed.len(), 1, "{events:#?}");
        assert_eq!(failed[0].level, tracing::Level::DEBUG);
        assert_eq!(failed[0].field("resource"), Some("flaky backend"));
        assert!(failed[0].field("error").unwrap().contains("connection refused"));
        assert!(events.iter().all(|e| e.level > tracing::Level::WARN), "{events:#?}");
    }
}

/// A cancelled enter that does not finish within its bound is dropped: a
/// WARN names the resource and where it was entered, and the stack's
/// close goes on. On the paused clock.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_cancelled_enter_past_its_bound_is_dropped_with_a_warn_naming_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let capture = Capture::default();
    let _guard = capture.install();
    let log = Log::default();
    let (enter, _never) = two_part(&log);
    let mut stack = AsyncExitStack::new();
    let entering = stack
        .entry()
        .label("stuck handshake")
        .finish_timeout(Duration::from_secs(3))
        .enter_async_context(enter);
    assert!(common::cancel_after_pendings(entering, 1).await.is_none());
    let start = tokio::time::Instant::now();
    stack.aclose().await.unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(3),
        "the close waited for the bound, no longer"
    );
    assert!(log.get().is_empty());
    let warns: Vec<_> = capture.at(tracing::Level::WARN);
    assert_eq!(warns.len(), 1, "{warns:#?}");
    assert!(warns[0].message.contains("did not finish within its bound"));
    assert_eq!(warns[0].field("resource"), Some("stuck handshake"));
    assert!(warns[0].field("site").unwrap().contains("tests/finish.rs"), "{warns:?}");
}

/// `drain` waits for a cancelled enter's background finish and counts it
/// as one background cleanup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_a_cancelled_enter_and_counts_it_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    drain(Duration::from_secs(30)).await;
    let log = Log::default();
    let (enter, open) = two_part(&log);
    let stack = AsyncExitStack::new();
    assert!(
        common::cancel_after_pendings(stack.enter_async_context(enter), 1)
            .await
            .is_none()
    );
    let (report, ()) = tokio::join!(drain(Duration::from_secs(30)), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        open.send(Ok(())).unwrap();
    });
    assert_eq!(
        report,
        DrainReport {
            finished: 1,
            failed: 0,
            lost: 0,
            cut_off: 0
        }
    );
    assert_eq!(log.get().len(), 1, "released before drain returned");
    let mut stack = stack;
    stack.aclose().await.unwrap(); // the kept entry: the enter already ended
}

/// A runtime that shuts down while a cancelled enter is being finished
/// drops it like any background cleanup: an ERROR event names it, and a
/// drain running meanwhile counts it lost.
#[test]
fn a_cancelled_enter_lost_to_shutdown_is_reported_and_counted() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let capture = Capture::default();
    let _guard = capture.install();
    let doomed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let log = Log::default();
    let (enter, open) = two_part(&log);
    let mut stack = doomed.block_on(async {
        let stack = common::cancellable();
        let entering = stack.entry().label("half-open session").enter_async_context(enter);
        assert!(common::cancel_after_pendings(entering, 1).await.is_none());
        stack
    });
    let report = common::drain_during(|| drop(doomed));
    assert_eq!(report.lost, 1, "{report:?} {:#?}", capture.events());
    drop(open);
    let errors: Vec<_> = capture.at(tracing::Level::ERROR);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].field("resource"), Some("half-open session"));
    // The entry kept on the stack does not wait for a task that is gone.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(stack.aclose()).unwrap();
    assert!(log.get().is_empty());
}

/// An enter cut short where no runtime runs (its future dropped on a
/// plain thread): what it had acquired is dropped, a WARN says so, and
/// nothing panics.
#[test]
fn a_cancelled_enter_dropped_outside_any_runtime_is_dropped_with_a_warn() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let log = Log::default();
    let (enter, _open) = two_part(&log);
    let stack = AsyncExitStack::new();
    {
        let mut entering = Box::pin(stack.enter_async_context(enter));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(entering.as_mut().poll(&mut cx).is_pending());
        let capture = Capture::default();
        let _guard = capture.install();
        drop(entering);
        let warns: Vec<_> = capture.at(tracing::Level::WARN);
        assert_eq!(warns.len(), 1, "{warns:#?}");
        assert!(warns[0].message.contains("no runtime"));
    }
    assert!(stack.is_empty(), "nothing kept: nothing runs in the background");
    assert!(log.get().is_empty());
}

/// An enter whose part to finish panics in its caller's future: the panic
/// is the caller's, as any enter's, and the future that panicked is not
/// finished in the background (nothing left on the stack, no event).
#[tokio::test(flavor = "current_thread")]
async fn an_enter_that_panics_in_its_callers_future_is_not_finished_in_the_background() {
    struct Panicking;

    impl AsyncEnter for Panicking {
        type Resource = Probe;
        type Error = io::Error;

        const FINISHES: bool = true;

        async fn enter(self) -> io::Result<Probe> {
            unreachable!("entered through enter_finishing")
        }

        async fn enter_finishing(self) -> io::Result<Entering<Probe, io::Error>> {
            Ok(Entering::Finish(Finish::new(async {
                tokio::task::yield_now().await;
                panic!("enter panicked");
            })))
        }
    }

    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let capture = Capture::default();
    let _guard = capture.install();
    let mut stack = AsyncExitStack::new();
    let entering = std::panic::AssertUnwindSafe(stack.enter_async_context(Panicking));
    let panicked = futures_util::FutureExt::catch_unwind(entering).await;
    assert!(panicked.is_err(), "the caller sees the panic");
    assert!(stack.is_empty(), "nothing kept: nothing runs in the background");
    stack.aclose().await.unwrap();
    assert!(capture.events().is_empty(), "{:#?}", capture.events());
}
