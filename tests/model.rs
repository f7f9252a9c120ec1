//! A reference model of the unwind, checked against the crate with
//! proptest: random programs of registrations, a body outcome, and one
//! cancellation point, on both runtime flavours (SPEC S8 to S16, S18, S19,
//! S20, S21). Exits may raise a new error chained to the pending one (its
//! `source()`), and part of a program may run in a scope nested in the
//! body; the final chain is checked link by link, by identity.
//!
//! 1,000 cases per flavour by default; for a long run:
//! `PROPTEST_CASES=100000 cargo test --release --test model`.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use proptest::prelude::*;
use tokio_exit_stack::{
    AsyncExitStack, BoxError, Error, Flow, Pending, error::PanicError, error::TimeoutError, scope_suppressible,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Ok,
    Fail,
    Suppress,
    Panic,
    Hang,
    /// Raise a new error whose `source()` is the pending error.
    Chain,
}

#[derive(Debug, Clone, Copy)]
struct Spec {
    exit: bool, // an exit (told the pending error, may suppress) or a callback
    sync: bool,
    behaviour: Behaviour,
}

#[derive(Debug, Clone, Copy)]
enum Cancel {
    /// Run to the end.
    None,
    /// Drop the scope's future after some polls: at least one (so that the
    /// body has registered its entries), and fewer than an uncancelled run
    /// of the same program takes, measured first, so that it lands in the
    /// unwind.
    AfterPolls(proptest::sample::Index),
    /// Register on a plain stack and drop it without `aclose`.
    DropStack,
}

#[derive(Debug, Clone)]
struct Program {
    entries: Vec<Spec>,
    /// Entries from this index on are registered in a scope nested in the
    /// body (none when it is the length).
    split: usize,
    body_fails: bool,
    cancel: Cancel,
}

fn spec() -> impl Strategy<Value = Spec> {
    (any::<bool>(), any::<bool>(), 0..6u8).prop_map(|(exit, sync, b)| {
        let behaviour = match b {
            0 => Behaviour::Ok,
            1 => Behaviour::Fail,
            2 if exit => Behaviour::Suppress,
            2 => Behaviour::Ok,
            3 => Behaviour::Panic,
            5 if exit => Behaviour::Chain,
            5 => Behaviour::Fail,
            _ if sync => Behaviour::Fail, // a sync entry cannot hang
            _ => Behaviour::Hang,
        };
        Spec { exit, sync, behaviour }
    })
}

fn program() -> impl Strategy<Value = Program> {
    let cancel = prop_oneof![
        4 => Just(Cancel::None),
        3 => any::<proptest::sample::Index>().prop_map(Cancel::AfterPolls),
        1 => Just(Cancel::DropStack),
    ];
    (
        proptest::collection::vec(spec(), 0..12),
        any::<bool>(),
        cancel,
        any::<proptest::sample::Index>(),
    )
        .prop_map(|(entries, body_fails, cancel, split)| {
            // Half the programs nest a scope in the body.
            let split = if split.index(2) == 0 {
                entries.len()
            } else {
                split.index(entries.len() + 1)
            };
            Program {
                entries,
                split,
                body_fails,
                cancel,
            }
        })
}

#[derive(Debug, thiserror::Error)]
#[error("f{0}")]
struct Failed(usize);

/// Raised by a `Chain` exit: its source is the pending error it replaced.
#[derive(Debug, thiserror::Error)]
#[error("c{index}")]
struct Chained {
    index: usize,
    #[source]
    cause: Option<tokio_exit_stack::error::Cause>,
}

#[derive(Debug, thiserror::Error)]
#[error("body")]
struct BodyFailed;

/// What the model predicts.
#[derive(Debug, PartialEq)]
struct Expected {
    /// For each exit, newest first: (index, pending error it was told).
    told: Vec<(usize, String)>,
    /// Final errors, newest first; `None` when a panic is resumed.
    result: Option<Vec<String>>,
    /// Whether any entry failed (raised, panicked or timed out), even if a
    /// later exit suppressed it: a background unwind then ends with a WARN.
    failed: bool,
    /// The final chain, newest first, panics included.
    chain: Vec<String>,
}

/// `abandoned`: the unwind (of a program without a nested scope) was
/// handed to the background after this many entries had started (the last
/// of them still in flight: a cancelled unwind, shielded, so what each exit
/// is told does not change), or, for 0, before any did (a dropped stack, or
/// a scope cancelled in its body: abandoned).
fn model(p: &Program, abandoned: Option<usize>) -> Expected {
    // A dropped stack has no body.
    let body_fails = p.body_fails && abandoned != Some(0);
    let mut chain: Vec<String> = if body_fails { vec!["body".into()] } else { vec![] };
    let mut told = Vec::new();
    let mut panicked = false;
    let mut failed = false;
    if abandoned == Some(0) {
        chain.push("abandoned".into());
    }
    for (i, e) in p.entries.iter().enumerate().rev() {
        if panicked && i + 1 == p.split {
            // The nested scope resumed a panic through the body: the outer
            // stack is dropped, and its entries run in the background, told
            // that it was abandoned.
            chain = vec!["abandoned".into()];
        }
        if e.exit {
            told.push((i, chain.last().cloned().unwrap_or_else(|| "-".into())));
        }
        // Cancelled while an entry was in flight (`abandoned` > 0): from
        // its outcome on the unwind runs in the background, shielded: each
        // exit is told what it would have been told had the unwind been
        // awaited, so nothing changes here.
        failed |= !matches!(e.behaviour, Behaviour::Ok | Behaviour::Suppress);
        match e.behaviour {
            Behaviour::Ok => {}
            Behaviour::Fail => chain.push(format!("f{i}")),
            Behaviour::Suppress => chain.clear(),
            Behaviour::Panic => {
                chain.push(format!("p{i}"));
                panicked = true;
            }
            Behaviour::Hang => chain.push(format!("t{i}")),
            Behaviour::Chain => {
                // The new error replaces the pending one it holds as its
                // cause: no error twice.
                chain.pop();
                chain.push(format!("c{i}"));
            }
        }
    }
    chain.reverse();
    Expected {
        told,
        result: (!panicked).then_some(chain.clone()),
        failed,
        chain,
    }
}

/// How the model's name for an error displays.
fn message(name: &str, paused: bool) -> String {
    match name.split_at(1) {
        ("p", i) => format!("cleanup of e{i} panicked: model panic"),
        ("t", i) => format!(
            "cleanup of e{i} timed out after {:?} and was cut off: its outcome is unknown",
            hang_timeout(paused)
        ),
        _ => name.to_owned(),
    }
}

/// What a background unwind reports at its end, for the model's final
/// chain (newest first): the `errors` field of its WARN event.
fn reported(chain: &[String], paused: bool) -> String {
    let links: Vec<String> = chain
        .iter()
        .filter(|n| *n != "abandoned")
        .map(|n| message(n, paused))
        .collect();
    match links.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        several => format!(
            "{} errors while unwinding, newest first: {}",
            several.len(),
            several.join("; then ")
        ),
    }
}

/// The name the model uses for a pending or final error.
fn name(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(f) = e.downcast_ref::<Failed>() {
        format!("f{}", f.0)
    } else if let Some(c) = e.downcast_ref::<Chained>() {
        format!("c{}", c.index)
    } else if e.is::<BodyFailed>() {
        "body".into()
    } else if let Some(p) = e.downcast_ref::<PanicError>() {
        format!("p{}", &p.resource[1..])
    } else if let Some(t) = e.downcast_ref::<TimeoutError>() {
        format!("t{}", &t.resource[1..])
    } else if e.is::<tokio_exit_stack::error::Abandoned>() {
        "abandoned".into()
    } else {
        format!("unknown: {e}")
    }
}

#[derive(Clone, Default)]
struct Trace {
    /// Every invocation: (index, what it was told; "" for callbacks).
    runs: Arc<Mutex<Vec<(usize, String)>>>,
    /// The address of every error raised by an entry or the body, by name.
    raised: Arc<Mutex<Vec<(String, usize)>>>,
    /// How many entries had started when the scope's future was dropped.
    started_at_cancel: Arc<Mutex<Option<usize>>>,
    /// How many times the scope's future was polled.
    polls: Arc<Mutex<usize>>,
}

impl Trace {
    /// Records where `error` lives, and hands it on.
    fn raise<E: std::error::Error + Send + Sync + 'static>(&self, name: String, error: E) -> BoxError {
        let error = Box::new(error);
        self.raised.lock().unwrap().push((name, &*error as *const E as usize));
        error
    }
}

fn hang_timeout(paused: bool) -> Duration {
    if paused {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(2)
    }
}

fn register(stack: &AsyncExitStack, p: &Program, range: std::ops::Range<usize>, trace: &Trace, paused: bool) {
    for (i, e) in p
        .entries
        .iter()
        .copied()
        .enumerate()
        .skip(range.start)
        .take(range.len())
    {
        let builder = stack.entry().label(format!("e{i}"));
        let builder = if e.behaviour == Behaviour::Hang {
            builder.timeout(hang_timeout(paused))
        } else {
            builder
        };
        let runs = trace.runs.clone();
        let t = trace.clone();
        let outcome = move |pending: Option<&Pending>| -> Result<Flow, BoxError> {
            match e.behaviour {
                Behaviour::Ok => Ok(Flow::Propagate),
                Behaviour::Fail => Err(t.raise(format!("f{i}"), Failed(i))),
                Behaviour::Suppress => Ok(Flow::Suppress),
                Behaviour::Panic => std::panic::panic_any("model panic"),
                Behaviour::Hang => unreachable!(),
                Behaviour::Chain => {
                    let cause = pending.and_then(Pending::cause);
                    Err(t.raise(format!("c{i}"), Chained { index: i, cause }))
                }
            }
        };
        match (e.exit, e.sync) {
            (true, true) => builder.push_exit(move |pending: &Pending| {
                runs.lock()
                    .unwrap()
                    .push((i, pending.error().map(|e| name(e)).unwrap_or_else(|| "-".into())));
                outcome(Some(pending))
            }),
            (true, false) => builder.push_async_exit(move |pending: Pending| async move {
                runs.lock()
                    .unwrap()
                    .push((i, pending.error().map(|e| name(e)).unwrap_or_else(|| "-".into())));
                tokio::task::yield_now().await;
                if e.behaviour == Behaviour::Hang {
                    std::future::pending::<()>().await;
                }
                outcome(Some(&pending))
            }),
            (false, true) => builder.callback(move || {
                runs.lock().unwrap().push((i, String::new()));
                outcome(None).map(|_| ())
            }),
            (false, false) => builder.push_async_callback(move || async move {
                runs.lock().unwrap().push((i, String::new()));
                tokio::task::yield_now().await;
                if e.behaviour == Behaviour::Hang {
                    std::future::pending::<()>().await;
                }
                outcome(None).map(|_| ())
            }),
        }
    }
}

/// Polls `inner` at most `polls` times, then drops it, noting how many
/// entries had started by then; counts the polls of a run that finishes.
struct CancelAfter<F> {
    inner: Option<Pin<Box<F>>>,
    polls: usize,
    trace: Trace,
}

impl<F: Future> Future for CancelAfter<F> {
    type Output = Option<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polls == 0 {
            let started = self.trace.runs.lock().unwrap().len();
            *self.trace.started_at_cancel.lock().unwrap() = Some(started);
            self.inner = None;
            return Poll::Ready(None);
        }
        self.polls -= 1;
        *self.trace.polls.lock().unwrap() += 1;
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.as_mut().poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending => Poll::Pending,
        }
    }
}

type Outcome = std::thread::Result<Result<Option<()>, Error>>;

/// Runs `p`; a `Cancel::AfterPolls` program is dropped after `polls` polls.
async fn run(p: &Program, trace: &Trace, paused: bool, polls: usize) -> Option<Outcome> {
    let body = {
        let (p, trace) = (p.clone(), trace.clone());
        async move {
            scope_suppressible(async |stack| {
                register(stack, &p, 0..p.split, &trace, paused);
                let body = || {
                    if p.body_fails {
                        Err(trace.raise("body".into(), BodyFailed))
                    } else {
                        Ok(())
                    }
                };
                if p.split == p.entries.len() {
                    return body();
                }
                // The rest in a nested scope, whose error the body returns.
                scope_suppressible(async |inner| {
                    register(inner, &p, p.split..p.entries.len(), &trace, paused);
                    body()
                })
                .await?;
                Ok(())
            })
            .await
        }
    };
    let caught = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(body));
    match p.cancel {
        Cancel::None => Some(caught.await),
        Cancel::AfterPolls(_) => {
            CancelAfter {
                inner: Some(Box::pin(caught)),
                polls,
                trace: trace.clone(),
            }
            .await
        }
        Cancel::DropStack => {
            let stack = AsyncExitStack::new();
            register(&stack, p, 0..p.entries.len(), trace, paused);
            common::drop_forgotten(stack);
            None
        }
    }
}

fn runtime(multi: bool) -> tokio::runtime::Runtime {
    if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(WORKER)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
    }
    .unwrap()
}

/// Runs `p` on a fresh runtime, waits for its background cleanup, and
/// returns what it gave (`None` when cancelled or dropped).
fn execute(p: &Program, multi: bool, trace: &Trace, polls: usize) -> Option<Outcome> {
    let paused = !multi;
    let rt = runtime(multi);
    let outcome = rt.block_on(async {
        let outcome = run(p, trace, paused, polls).await;
        // Wait (in virtual time on the paused clock) for background cleanup.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while trace.runs.lock().unwrap().len() < p.entries.len() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(hang_timeout(paused) * 2).await; // a rerun would show up here
        outcome
    });
    drop(rt);
    outcome
}

/// How many cancel cases ran, and how many of them were cancelled in the
/// unwind.
#[derive(Default)]
struct Share {
    cases: AtomicUsize,
    mid_unwind: AtomicUsize,
    /// Cases of the enter model cancelled inside an enter.
    in_enter: AtomicUsize,
}

fn check(p: &Program, multi: bool, share: &Share) -> Result<(), TestCaseError> {
    let paused = !multi;
    // A cancel point drawn from the program's own poll count: measured on an
    // uncancelled run first.
    let polls = match p.cancel {
        Cancel::AfterPolls(at) => {
            let measure = Trace::default();
            let _ = execute(
                &Program {
                    cancel: Cancel::None,
                    ..p.clone()
                },
                multi,
                &measure,
                usize::MAX,
            );
            let total = *measure.polls.lock().unwrap();
            let total = total.max(*measure.polls.lock().unwrap());
            if total > 1 { 1 + at.index(total - 1) } else { 1 }
        }
        _ => usize::MAX,
    };
    let trace = Trace::default();
    let events = Events::start();
    let outcome = execute(p, multi, &trace, polls);
    let events = events.finish(multi);
    let runs = trace.runs.lock().unwrap().clone();
    let order: Vec<usize> = runs.iter().map(|(i, _)| *i).collect();
    let newest_first: Vec<usize> = (0..p.entries.len()).rev().collect();
    let nested = p.split < p.entries.len();
    if outcome.is_none() && nested {
        // A cancelled nested scope and its outer scope are two stacks with
        // a background unwind each: each runs newest first, and every
        // entry runs once.
        let inner: Vec<usize> = order.iter().copied().filter(|&i| i >= p.split).collect();
        let outer: Vec<usize> = order.iter().copied().filter(|&i| i < p.split).collect();
        prop_assert_eq!(inner, (p.split..p.entries.len()).rev().collect::<Vec<_>>());
        prop_assert_eq!(outer, (0..p.split).rev().collect::<Vec<_>>());
    } else {
        prop_assert_eq!(&order, &newest_first, "every entry exactly once, newest first");
    }
    let told: Vec<(usize, String)> = runs.into_iter().filter(|(i, _)| p.entries[*i].exit).collect();

    if let Cancel::AfterPolls(_) = p.cancel {
        share.cases.fetch_add(1, Ordering::Relaxed);
        if outcome.is_none() {
            share.mid_unwind.fetch_add(1, Ordering::Relaxed);
        }
    }

    let Some(outcome) = outcome else {
        if nested {
            return Ok(()); // two stacks: the order above is the property
        }
        // Cancelled or dropped: the rest ran in the background. What each
        // exit was told, and what the background unwind reported, match
        // the model.
        let started = match p.cancel {
            Cancel::DropStack => 0,
            _ => trace.started_at_cancel.lock().unwrap().expect("cancelled"),
        };
        if p.entries.is_empty() {
            return Ok(()); // nothing to unwind
        }
        let expected = model(p, Some(started));
        prop_assert_eq!(
            &told,
            &expected.told,
            "what each exit was told (cancelled after {} started)",
            started
        );
        if events.iter().any(|e| e.message.contains("could not run")) {
            // The harness dropped the runtime before the background unwind
            // ended: what each exit was told is checked, not the end event.
            return Ok(());
        }
        let end: Vec<&Captured> = events
            .iter()
            .filter(|e| e.message.starts_with("background cleanup finished"))
            .collect();
        prop_assert_eq!(end.len(), 1, "one end event: {:?}", events);
        if expected.failed {
            prop_assert_eq!(end[0].level, tracing::Level::WARN);
            prop_assert_eq!(end[0].errors.as_str(), reported(&expected.chain, paused));
        } else {
            prop_assert_eq!(end[0].level, tracing::Level::DEBUG);
        }
        return Ok(());
    };

    let expected = model(p, None);
    // Ran to the end: what each exit was told and the result match.
    prop_assert_eq!(&told, &expected.told);
    match (outcome, expected.result) {
        (Err(_panic), None) => {}
        (Ok(Ok(_)), Some(chain)) if chain.is_empty() => {}
        (Ok(Err(e)), Some(chain)) => {
            let got: Vec<String> = e.iter().map(|e| name(e)).collect();
            prop_assert_eq!(got, chain);
            // Each link is the very object that was raised.
            let raised = trace.raised.lock().unwrap();
            for link in e.iter() {
                let at = link as *const dyn std::error::Error as *const () as usize;
                if let Some((_, want)) = raised.iter().find(|(n, _)| *n == name(link)) {
                    prop_assert_eq!(at, *want, "link {} is the object raised", name(link));
                }
            }
        }
        (got, want) => prop_assert!(false, "got {:?}, model says {:?}", got.map(|r| r.map(|_| ())), want),
    }
    Ok(())
}

/// The name of the multi-thread runtime's worker threads, to tell its
/// events from those of the test running beside it.
const WORKER: &str = "model-worker";

/// An event as the model checks it.
#[derive(Debug, Clone)]
struct Captured {
    thread: String,
    level: tracing::Level,
    message: String,
    errors: String,
}

/// Every event of the process, recorded by one global subscriber; each
/// test takes those of its own threads.
static EVENTS: Mutex<Vec<Captured>> = Mutex::new(Vec::new());

struct Recorder;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields<'a>(&'a mut Captured);
        impl tracing::field::Visit for Fields<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "message" => self.0.message = format!("{value:?}"),
                    "errors" => self.0.errors = format!("{value:?}"),
                    _ => {}
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                self.record_debug(field, &format_args!("{value}"));
            }
        }
        let mut c = Captured {
            thread: std::thread::current().name().unwrap_or("").to_owned(),
            level: *event.metadata().level(),
            message: String::new(),
            errors: String::new(),
        };
        event.record(&mut Fields(&mut c));
        EVENTS.lock().unwrap().push(c);
    }
}

/// The events one case emitted, on its test's thread and (multi-thread)
/// its runtime's workers.
struct Events {
    from: usize,
    thread: String,
}

impl Events {
    fn start() -> Self {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            use tracing_subscriber::prelude::*;
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Recorder)).unwrap();
        });
        Self {
            from: EVENTS.lock().unwrap().len(),
            thread: std::thread::current().name().unwrap_or("").to_owned(),
        }
    }

    fn finish(self, multi: bool) -> Vec<Captured> {
        let events = EVENTS.lock().unwrap();
        events[self.from..]
            .iter()
            .filter(|e| e.thread == self.thread || (multi && e.thread == WORKER))
            .cloned()
            .collect()
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn quiet_model_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&"model panic") {
                default(info);
            }
        }));
    });
}

/// Runs the model on one runtime flavour, then prints (and checks) the
/// share of cancel cases that were cancelled in the unwind.
fn model_run(multi: bool) {
    quiet_model_panics();
    let share = Share::default();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    if let Err(e) = runner.run(&program(), |p| check(&p, multi, &share)) {
        panic!("{e}");
    }
    let (cases, mid) = (
        share.cases.load(Ordering::Relaxed),
        share.mid_unwind.load(Ordering::Relaxed),
    );
    let percent = if cases == 0 {
        0.0
    } else {
        100.0 * mid as f64 / cases as f64
    };
    eprintln!(
        "model ({}): {mid} of {cases} cancel cases cancelled mid-unwind ({percent:.0}%)",
        if multi { "multi_thread" } else { "current_thread" }
    );
    assert!(
        percent >= 50.0,
        "only {percent:.0}% of the cancel cases cancelled mid-unwind"
    );
}

#[test]
fn s8_to_s21_model_current_thread() {
    model_run(false);
}

#[test]
fn s8_to_s21_model_multi_thread() {
    model_run(true);
}

/// A second model: programs whose body enters resources (an enter in two
/// parts that asks to be finished: a part dropped on cancellation, then a
/// part finished) and registers exits, each exit failing or not, the body
/// failing or not; cancelled at a poll drawn half the time inside the body
/// (so inside an enter: the body awaits nothing else) and half the time
/// inside the unwind. Checked: exactly one exit per completed enter and per
/// registered exit, none for an enter dropped before its finished part;
/// and what each exit was told: a cancel in the body abandons the scope (a
/// finished enter's resource is told its enter was cancelled); a cancel in
/// the unwind changes nothing anyone is told.
mod enters {
    use super::*;
    use tokio_exit_stack::error::{AbandonCause, Abandoned};
    use tokio_exit_stack::{AsyncEnter, AsyncExit, Entering, Finish, async_trait, scope};

    #[derive(Debug, Clone, Copy)]
    pub(super) struct Item {
        enter: bool,
        fails: bool,
    }

    #[derive(Debug, Clone)]
    pub(super) struct Program {
        items: Vec<Item>,
        body_fails: bool,
        /// Where to cancel: in the body (inside an enter) or the unwind,
        /// and at which of its polls.
        in_body: bool,
        at: proptest::sample::Index,
    }

    pub(super) fn program() -> impl Strategy<Value = Program> {
        (
            proptest::collection::vec(
                (any::<bool>(), any::<bool>()).prop_map(|(enter, fails)| Item { enter, fails }),
                1..8,
            ),
            any::<bool>(),
            any::<bool>(),
            any::<proptest::sample::Index>(),
        )
            .prop_map(|(items, body_fails, in_body, at)| Program {
                items,
                body_fails,
                in_body,
                at,
            })
    }

    /// What happened to each item, and when.
    #[derive(Default)]
    struct State {
        /// (item, what its exit was told), in the order the exits ran.
        runs: Vec<(usize, String)>,
        /// Items whose enter produced its resource.
        produced: Vec<usize>,
        /// Items whose enter began its finished part.
        finishing: Vec<usize>,
        /// Items registered on the stack (an exit pushed, or an enter returned).
        registered: Vec<usize>,
        body_returned: bool,
        /// Polls of the scope's future, all of them and those in the body.
        polls: usize,
        body_polls: usize,
    }

    type Shared = Arc<Mutex<State>>;

    fn told(pending: &Pending) -> String {
        if let Some(a) = pending.downcast_ref::<Abandoned>() {
            return match a.cause {
                AbandonCause::EnterCancelled => "enter cancelled".into(),
                _ => "abandoned".into(),
            };
        }
        pending.error().map(|e| e.to_string()).unwrap_or_else(|| "-".into())
    }

    struct Resource {
        item: usize,
        fails: bool,
        state: Shared,
    }

    #[async_trait]
    impl AsyncExit for Resource {
        async fn exit(self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
            self.state.lock().unwrap().runs.push((self.item, told(&pending)));
            tokio::task::yield_now().await;
            if self.fails {
                return Err(Failed(self.item).into());
            }
            Ok(Flow::Propagate)
        }
    }

    struct Enter(Resource);

    impl AsyncEnter for Enter {
        type Resource = Resource;
        type Error = std::io::Error;

        const FINISHES: bool = true;

        async fn enter(self) -> std::io::Result<Resource> {
            Ok(self.0)
        }

        async fn enter_finishing(self) -> std::io::Result<Entering<Resource, std::io::Error>> {
            tokio::task::yield_now().await; // the part dropped on cancellation
            let resource = self.0;
            Ok(Entering::Finish(Finish::new(async move {
                resource.state.lock().unwrap().finishing.push(resource.item);
                tokio::task::yield_now().await; // the part finished
                tokio::task::yield_now().await;
                resource.state.lock().unwrap().produced.push(resource.item);
                Ok(resource)
            })))
        }
    }

    /// The scope's future, polled at most `polls` times; counts its polls.
    async fn run(p: &Program, state: &Shared, polls: usize) -> Option<Result<(), Error>> {
        let scope = {
            let (p, state) = (p.clone(), state.clone());
            scope(async move |stack| {
                for (i, item) in p.items.iter().copied().enumerate() {
                    let resource = Resource {
                        item: i,
                        fails: item.fails,
                        state: state.clone(),
                    };
                    if item.enter {
                        stack
                            .entry()
                            .label(format!("e{i}"))
                            .enter_async_context(Enter(resource))
                            .await?;
                    } else {
                        stack.entry().label(format!("e{i}")).push_resource(resource);
                    }
                    state.lock().unwrap().registered.push(i);
                }
                state.lock().unwrap().body_returned = true;
                if p.body_fails {
                    Err(BodyFailed)?;
                }
                Ok(())
            })
        };
        let mut scope = std::pin::pin!(scope);
        let mut left = polls;
        std::future::poll_fn(|cx| {
            if left == 0 {
                return Poll::Ready(None);
            }
            left -= 1;
            let in_body = !state.lock().unwrap().body_returned;
            {
                let mut s = state.lock().unwrap();
                s.polls += 1;
                if in_body {
                    s.body_polls += 1;
                }
            }
            scope.as_mut().poll(cx).map(Some)
        })
        .await
    }

    /// Runs `p` on a fresh runtime, cancelled after `polls` polls, and
    /// waits for its background work.
    fn execute(p: &Program, multi: bool, polls: usize) -> (Option<Result<(), Error>>, State) {
        let state = Shared::default();
        // Workers of their own name: the first model tells its events
        // apart by its workers' name.
        let rt = if multi {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("enter-model-worker")
                .enable_all()
                .build()
                .unwrap()
        } else {
            runtime(false)
        };
        let outcome = rt.block_on(async {
            let outcome = run(p, &state, polls).await;
            // Wait for the background work (`drain` is process-wide, and
            // other tests run at once): every finish begun has produced its
            // resource, and every resource owed an exit has had it.
            let settled = || {
                let s = state.lock().unwrap();
                let mut owed: Vec<usize> = s.registered.iter().chain(&s.produced).copied().collect();
                owed.sort_unstable();
                owed.dedup();
                s.finishing.iter().all(|i| s.produced.contains(i)) && s.runs.len() >= owed.len()
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !settled() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await; // a second run would show up here
            outcome
        });
        drop(rt);
        let state = std::mem::take(&mut *state.lock().unwrap());
        (outcome, state)
    }

    /// What the exits of `items` (registered, newest last) are told when
    /// the unwind starts with `chain` pending: newest first.
    fn expected(p: &Program, items: &[usize], mut chain: Vec<String>) -> Vec<(usize, String)> {
        let mut told = Vec::new();
        for &i in items.iter().rev() {
            told.push((i, chain.last().cloned().unwrap_or_else(|| "-".into())));
            if p.items[i].fails {
                chain.push(format!("f{i}"));
            }
        }
        told
    }

    pub(super) fn check(p: &Program, multi: bool, share: &Share) -> Result<(), TestCaseError> {
        // Measure an uncancelled run, then cancel at a poll of the part
        // drawn: the body's polls (each a `Pending` inside an enter), or
        // the unwind's.
        let (done, full) = execute(p, multi, usize::MAX);
        prop_assert!(done.is_some());
        let all: Vec<usize> = (0..p.items.len()).collect();
        let body = if p.body_fails { vec!["body".to_owned()] } else { vec![] };
        prop_assert_eq!(&full.runs, &expected(p, &all, body.clone()), "uncancelled");
        // The body returns during its last poll, which begins the unwind:
        // dropped after polls 1 to body_polls - 1, the scope is cut in the
        // body; after body_polls to polls - 1, in the unwind.
        let (first, count) = if p.in_body {
            (1, full.body_polls.saturating_sub(1))
        } else {
            (full.body_polls, full.polls - full.body_polls)
        };
        if count == 0 {
            return Ok(()); // no poll of that part ends pending
        }
        let polls = first + p.at.index(count);
        let (outcome, s) = execute(p, multi, polls);
        prop_assert!(outcome.is_none(), "cancelled after {} polls", polls);
        share.cases.fetch_add(1, Ordering::Relaxed);

        // Exactly one exit per completed enter and per registered exit;
        // none for an enter dropped before its finished part.
        let mut ran: Vec<usize> = s.runs.iter().map(|(i, _)| *i).collect();
        ran.sort_unstable();
        let mut owed: Vec<usize> = s.registered.iter().copied().chain(s.produced.iter().copied()).collect();
        owed.sort_unstable();
        owed.dedup();
        prop_assert_eq!(&ran, &owed, "one exit per registered or produced resource");

        if s.body_returned {
            // In the unwind: shielded, nothing told changes.
            share.mid_unwind.fetch_add(1, Ordering::Relaxed);
            prop_assert_eq!(&s.runs, &full.runs, "a cancelled unwind tells what it would have told");
        } else {
            share.in_enter.fetch_add(1, Ordering::Relaxed);
            // In the body, inside the enter of the first unregistered item:
            // its resource, if produced, is told its enter was cancelled,
            // and runs before every older entry; the older entries are told
            // the scope was abandoned.
            let cut = s.registered.len();
            prop_assert!(p.items[cut].enter, "the body awaits only enters");
            let mut rest = s.runs.clone();
            if s.produced.contains(&cut) {
                prop_assert_eq!(&rest[0], &(cut, "enter cancelled".to_owned()));
                rest.remove(0);
            }
            prop_assert_eq!(&rest, &expected(p, &s.registered, vec!["abandoned".to_owned()]));
        }
        Ok(())
    }
}

fn enters_run(multi: bool) {
    let share = Share::default();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases() / 4,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    if let Err(e) = runner.run(&enters::program(), |p| enters::check(&p, multi, &share)) {
        panic!("{e}");
    }
    let cases = share.cases.load(Ordering::Relaxed).max(1) as f64;
    let (in_enter, mid) = (
        share.in_enter.load(Ordering::Relaxed) as f64,
        share.mid_unwind.load(Ordering::Relaxed) as f64,
    );
    eprintln!(
        "enter model ({}): {cases} cancel cases, {in_enter} inside an enter, {mid} inside the unwind",
        if multi { "multi_thread" } else { "current_thread" }
    );
    assert!(in_enter / cases >= 0.25, "too few cancel points inside enters");
    assert!(mid / cases >= 0.25, "too few cancel points inside unwinds");
}

#[test]
fn cancels_inside_enters_and_unwinds_keep_one_exit_per_resource_current_thread() {
    enters_run(false);
}

#[test]
fn cancels_inside_enters_and_unwinds_keep_one_exit_per_resource_multi_thread() {
    enters_run(true);
}
