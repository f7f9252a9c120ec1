//! A reference model of the unwind, checked against the crate with
//! proptest: random programs of registrations, a body outcome, and one
//! cancellation point, on both runtime flavours (SPEC S8 to S16, S18, S19,
//! S20, S21).
//!
//! 1,000 cases per flavour by default; for a long run:
//! `PROPTEST_CASES=100000 cargo test --release --test model`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use proptest::prelude::*;
use tokio_exit_stack::{AsyncExitStack, BoxError, Error, Flow, PanicError, Pending, TimeoutError, scope};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Ok,
    Fail,
    Suppress,
    Panic,
    Hang,
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
    /// Drop the scope's future after this many polls (at least one, so
    /// that the body has registered its entries).
    AfterPolls(u8),
    /// Register on a plain stack and drop it without `aclose`.
    DropStack,
}

#[derive(Debug, Clone)]
struct Program {
    entries: Vec<Spec>,
    body_fails: bool,
    cancel: Cancel,
}

fn spec() -> impl Strategy<Value = Spec> {
    (any::<bool>(), any::<bool>(), 0..5u8).prop_map(|(exit, sync, b)| {
        let behaviour = match b {
            0 => Behaviour::Ok,
            1 => Behaviour::Fail,
            2 if exit => Behaviour::Suppress,
            2 => Behaviour::Ok,
            3 => Behaviour::Panic,
            _ if sync => Behaviour::Fail, // a sync entry cannot hang
            _ => Behaviour::Hang,
        };
        Spec { exit, sync, behaviour }
    })
}

fn program() -> impl Strategy<Value = Program> {
    let cancel = prop_oneof![
        4 => Just(Cancel::None),
        3 => (1..24u8).prop_map(Cancel::AfterPolls),
        1 => Just(Cancel::DropStack),
    ];
    (proptest::collection::vec(spec(), 0..12), any::<bool>(), cancel).prop_map(|(entries, body_fails, cancel)| {
        Program {
            entries,
            body_fails,
            cancel,
        }
    })
}

#[derive(Debug, thiserror::Error)]
#[error("f{0}")]
struct Failed(usize);

#[derive(Debug, thiserror::Error)]
#[error("body")]
struct BodyFailed;

/// What the model predicts for a run to the end.
#[derive(Debug, PartialEq)]
struct Expected {
    /// For each exit, newest first: (index, pending error it was told).
    told: Vec<(usize, String)>,
    /// Final errors, newest first; `None` when a panic is resumed.
    result: Option<Vec<String>>,
}

fn model(p: &Program) -> Expected {
    let mut chain: Vec<String> = if p.body_fails { vec!["body".into()] } else { vec![] };
    let mut told = Vec::new();
    let mut panicked = false;
    for (i, e) in p.entries.iter().enumerate().rev() {
        if e.exit {
            told.push((i, chain.last().cloned().unwrap_or_else(|| "-".into())));
        }
        match e.behaviour {
            Behaviour::Ok => {}
            Behaviour::Fail => chain.push(format!("f{i}")),
            Behaviour::Suppress => chain.clear(),
            Behaviour::Panic => {
                chain.push(format!("p{i}"));
                panicked = true;
            }
            Behaviour::Hang => chain.push(format!("t{i}")),
        }
    }
    chain.reverse();
    Expected {
        told,
        result: (!panicked).then_some(chain),
    }
}

/// The name the model uses for a pending or final error.
fn name(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(f) = e.downcast_ref::<Failed>() {
        format!("f{}", f.0)
    } else if e.is::<BodyFailed>() {
        "body".into()
    } else if let Some(p) = e.downcast_ref::<PanicError>() {
        format!("p{}", &p.resource[1..])
    } else if let Some(t) = e.downcast_ref::<TimeoutError>() {
        format!("t{}", &t.resource[1..])
    } else if e.is::<tokio_exit_stack::Abandoned>() {
        "abandoned".into()
    } else {
        format!("unknown: {e}")
    }
}

#[derive(Clone, Default)]
struct Trace {
    /// Every invocation: (index, what it was told; "" for callbacks).
    runs: Arc<Mutex<Vec<(usize, String)>>>,
}

fn hang_timeout(paused: bool) -> Duration {
    if paused {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(2)
    }
}

fn register(stack: &AsyncExitStack, p: &Program, trace: &Trace, paused: bool) {
    for (i, e) in p.entries.iter().copied().enumerate() {
        let builder = stack.entry().label(format!("e{i}"));
        let builder = if e.behaviour == Behaviour::Hang {
            builder.timeout(hang_timeout(paused))
        } else {
            builder
        };
        let runs = trace.runs.clone();
        let outcome = move || -> Result<Flow, BoxError> {
            match e.behaviour {
                Behaviour::Ok => Ok(Flow::Propagate),
                Behaviour::Fail => Err(Box::new(Failed(i))),
                Behaviour::Suppress => Ok(Flow::Suppress),
                Behaviour::Panic => std::panic::panic_any("model panic"),
                Behaviour::Hang => unreachable!(),
            }
        };
        match (e.exit, e.sync) {
            (true, true) => builder.push_exit(move |pending: &Pending| {
                runs.lock()
                    .unwrap()
                    .push((i, pending.error().map(|e| name(e)).unwrap_or_else(|| "-".into())));
                outcome()
            }),
            (true, false) => builder.push_async_exit(move |pending: Pending| async move {
                runs.lock()
                    .unwrap()
                    .push((i, pending.error().map(|e| name(e)).unwrap_or_else(|| "-".into())));
                tokio::task::yield_now().await;
                if e.behaviour == Behaviour::Hang {
                    std::future::pending::<()>().await;
                }
                outcome()
            }),
            (false, true) => builder.callback(move || {
                runs.lock().unwrap().push((i, String::new()));
                outcome().map(|_| ())
            }),
            (false, false) => builder.push_async_callback(move || async move {
                runs.lock().unwrap().push((i, String::new()));
                tokio::task::yield_now().await;
                if e.behaviour == Behaviour::Hang {
                    std::future::pending::<()>().await;
                }
                outcome().map(|_| ())
            }),
        }
    }
}

/// Polls `inner` at most `polls` times, then drops it.
struct CancelAfter<F> {
    inner: Option<Pin<Box<F>>>,
    polls: u8,
}

impl<F: Future> Future for CancelAfter<F> {
    type Output = Option<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polls == 0 {
            self.inner = None;
            return Poll::Ready(None);
        }
        self.polls -= 1;
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

async fn run(p: &Program, trace: &Trace, paused: bool) -> Option<Outcome> {
    let body = {
        let (p, trace) = (p.clone(), trace.clone());
        async move {
            scope(async |stack| {
                register(stack, &p, &trace, paused);
                if p.body_fails { Err(BodyFailed) } else { Ok(()) }
            })
            .await
        }
    };
    let caught = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(body));
    match p.cancel {
        Cancel::None => Some(caught.await),
        Cancel::AfterPolls(k) => {
            CancelAfter {
                inner: Some(Box::pin(caught)),
                polls: k,
            }
            .await
        }
        Cancel::DropStack => {
            let stack = AsyncExitStack::new();
            register(&stack, p, trace, paused);
            drop(stack);
            None
        }
    }
}

fn check(p: &Program, multi: bool) -> Result<(), TestCaseError> {
    let paused = !multi;
    let rt = if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
    }
    .unwrap();
    let trace = Trace::default();
    let outcome = rt.block_on(async {
        let outcome = run(p, &trace, paused).await;
        // Wait (in virtual time on the paused clock) for background cleanup.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while trace.runs.lock().unwrap().len() < p.entries.len() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(hang_timeout(paused) * 2).await; // a rerun would show up here
        outcome
    });
    drop(rt);
    let runs = trace.runs.lock().unwrap().clone();
    let order: Vec<usize> = runs.iter().map(|(i, _)| *i).collect();
    let newest_first: Vec<usize> = (0..p.entries.len()).rev().collect();
    prop_assert_eq!(&order, &newest_first, "every entry exactly once, newest first");

    let expected = model(p);
    // Ran to the end: what each exit was told and the result match. (When
    // cancelled or dropped, the order check above is the property.)
    if let Some(outcome) = outcome {
        let told: Vec<(usize, String)> = runs.into_iter().filter(|(i, _)| p.entries[*i].exit).collect();
        prop_assert_eq!(&told, &expected.told);
        match (outcome, expected.result) {
            (Err(_panic), None) => {}
            (Ok(Ok(_)), Some(chain)) if chain.is_empty() => {}
            (Ok(Err(e)), Some(chain)) => {
                let got: Vec<String> = e.iter().map(|e| name(e)).collect();
                prop_assert_eq!(got, chain);
            }
            (got, want) => prop_assert!(false, "got {:?}, model says {:?}", got.map(|r| r.map(|_| ())), want),
        }
    }
    Ok(())
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

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn s8_to_s21_model_current_thread(p in program()) {
        quiet_model_panics();
        check(&p, false)?;
    }

    #[test]
    fn s8_to_s21_model_multi_thread(p in program()) {
        quiet_model_panics();
        check(&p, true)?;
    }
}
