//! A reference model of the unwind, checked against the crate with
//! proptest: random programs of registrations, a body outcome, and one
//! cancellation point, on both runtime flavours (SPEC S8 to S16, S18, S19,
//! S20, S21). Exits may raise a new error chained to the pending one (its
//! `source()`), and part of a program may run in a scope nested in the
//! body; the final chain is checked link by link, by identity.
//!
//! 1,000 cases per flavour by default; for a long run:
//! `PROPTEST_CASES=100000 cargo test --release --test model`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use proptest::prelude::*;
use tokio_exit_stack::{AsyncExitStack, BoxError, Error, Flow, PanicError, Pending, TimeoutError, scope_suppressible};

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
    /// Drop the scope's future after this many polls (at least one, so
    /// that the body has registered its entries).
    AfterPolls(u8),
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
        3 => (1..24u8).prop_map(Cancel::AfterPolls),
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
    cause: Option<tokio_exit_stack::Cause>,
}

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
        if panicked && i + 1 == p.split {
            // The nested scope resumed a panic through the body: the outer
            // stack is dropped, and its entries run in the background, told
            // that it was abandoned.
            chain = vec!["abandoned".into()];
        }
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
        result: (!panicked).then_some(chain),
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
    /// The address of every error raised by an entry or the body, by name.
    raised: Arc<Mutex<Vec<(String, usize)>>>,
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
        Cancel::AfterPolls(k) => {
            CancelAfter {
                inner: Some(Box::pin(caught)),
                polls: k,
            }
            .await
        }
        Cancel::DropStack => {
            let stack = AsyncExitStack::new();
            register(&stack, p, 0..p.entries.len(), trace, paused);
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
    if outcome.is_none() && p.split < p.entries.len() {
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
