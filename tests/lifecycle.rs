//! What Python has no answer for: a stack dropped without `aclose` (S20),
//! cancellation (S21), no runtime (S22), panics (S18), timeouts (S19), and
//! both runtime flavours (S25).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Capture, Log};
use tokio::sync::{Notify, oneshot};
use tokio_exit_stack::{AsyncExitStack, BoxError, Flow, Pending, error::Abandoned, scope};

/// A `current_thread` and a `multi_thread` runtime, built by hand.
fn both_runtimes() -> [tokio::runtime::Runtime; 2] {
    [
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    ]
}

/// Registers an async exit that records its name and how it was told the
/// scope ended.
fn record(stack: &AsyncExitStack, name: &'static str, log: &Log) {
    let log = log.clone();
    stack.push_async_exit(move |pending: Pending| async move {
        tokio::task::yield_now().await;
        let how = match pending.downcast_ref::<Abandoned>() {
            Some(a) => format!("abandoned: {:?}", a.cause),
            None if pending.is_err() => "error".to_owned(),
            None => "ok".to_owned(),
        };
        let detached = if pending.is_detached() && pending.downcast_ref::<Abandoned>().is_none() {
            " (detached)"
        } else {
            ""
        };
        log.push(format!("{name} {how}{detached}"));
        Ok::<_, BoxError>(Flow::Propagate)
    });
}

/// An entry that tells the test when it ran.
fn signal(stack: &AsyncExitStack) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    stack.push_async_callback(move || async move {
        let _ = tx.send(());
    });
    rx
}

both_flavours! {
    async fn s20_a_dropped_stack_runs_its_entries_newest_first_in_the_background() {
        let log = Log::default();
        let stack = AsyncExitStack::new();
        let done = signal(&stack);
        for name in ["a", "b", "c"] {
            record(&stack, name, &log);
        }
        common::drop_forgotten(stack); // never blocks: nothing has run yet on current_thread
        done.await.unwrap();
        assert_eq!(
            log.take(),
            ["c abandoned: Dropped", "b abandoned: Dropped", "a abandoned: Dropped"],
            "exits run newest first and see that the scope was abandoned"
        );
    }
}

both_flavours! {
    async fn s20_a_dropped_stack_spawns_exactly_one_task_whatever_its_size() {
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        for size in [1, 10, 100, 1000] {
            // Every entry waits on the gate, so the cleanup task stays alive
            // until the count below has been taken.
            let gate = Arc::new(tokio::sync::Semaphore::new(0));
            let ran = Arc::new(AtomicUsize::new(0));
            let stack = AsyncExitStack::new();
            for _ in 0..size {
                let (gate, ran) = (gate.clone(), ran.clone());
                stack.push_async_callback(move || async move {
                    gate.acquire().await.unwrap().forget();
                    ran.fetch_add(1, Ordering::SeqCst);
                });
            }
            common::drop_forgotten(stack);
            assert_eq!(metrics.num_alive_tasks(), before + 1, "one task for {size} entries");
            gate.add_permits(size);
            common::eventually("every entry ran", || ran.load(Ordering::SeqCst) == size).await;
            common::eventually("the cleanup task ended", || metrics.num_alive_tasks() == before).await;
        }
    }
}

/// The WARN event names where the stack was created.
#[tokio::test(flavor = "current_thread")]
async fn s20_a_dropped_stack_emits_a_warn_naming_its_creation_site() {
    let capture = Capture::default();
    let _guard = capture.install();
    let stack = AsyncExitStack::new();
    let site = stack.site().to_string();
    assert!(site.starts_with("tests/lifecycle.rs:"), "{site}");
    let done = signal(&stack);
    common::drop_forgotten(stack);
    done.await.unwrap();
    let warn = capture
        .events()
        .into_iter()
        .find(|e| e.level == tracing::Level::WARN && e.message.contains("dropped without aclose"))
        .expect("a WARN event for the dropped stack");
    assert_eq!(warn.field("site"), Some(site.as_str()));
    assert_eq!(warn.field("entries"), Some("1"));
}

both_flavours! {
    async fn s20_a_stack_dropped_while_panicking_tells_its_exits_so() {
        let log = Log::default();
        let (tx, rx) = oneshot::channel::<()>();
        let l = log.clone();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let stack = AsyncExitStack::new();
            stack.push_async_callback(move || async move { let _ = tx.send(()); });
            record(&stack, "guarded", &l);
            panic!("owner panicked");
        }));
        assert!(panicked.is_err());
        rx.await.unwrap();
        assert_eq!(log.take(), ["guarded abandoned: Panicking"]);
    }
}

/// A drop on a plain thread outside the runtime runs the cleanup on the
/// runtime the stack was created on: here a real TCP stream, whose exit
/// needs that runtime's reactor.
#[cfg(feature = "net")]
#[test]
fn s20_a_drop_on_a_foreign_thread_runs_on_the_creating_runtime() {
    for rt in both_runtimes() {
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let stack = AsyncExitStack::new();
            let done = signal(&stack);
            stack
                .enter_async_context(tokio_exit_stack::acquire(tokio::net::TcpStream::connect(addr)))
                .await
                .unwrap();
            let (mut server_side, _) = listener.accept().await.unwrap();
            std::thread::spawn(move || common::drop_forgotten(stack))
                .join()
                .unwrap();
            // The peer sees a clean EOF: the stream's exit ran on our reactor.
            let mut buf = Vec::new();
            let n = tokio::io::AsyncReadExt::read_to_end(&mut server_side, &mut buf)
                .await
                .unwrap();
            assert_eq!(n, 0);
            drop(server_side);
            done.await.unwrap();
        });
    }
}

/// A stack whose `aclose` was cancelled stays bound to the runtime it was
/// created on: reused, then dropped on a plain thread, its new entry still
/// runs there (not lost for want of a runtime at the drop).
#[test]
fn s20_after_a_cancelled_aclose_a_drop_on_a_foreign_thread_still_runs_on_the_creating_runtime() {
    for rt in both_runtimes() {
        rt.block_on(async {
            let mut stack = AsyncExitStack::new();
            let (gate, gated) = oneshot::channel::<()>();
            stack.push_async_callback(move || async move {
                let _ = gated.await;
            });
            // `aclose` is polled once (its entry waits), then cancelled.
            tokio::select! {
                biased;
                _ = stack.aclose() => panic!("the entry waits for its gate"),
                () = std::future::ready(()) => {}
            }
            let done = signal(&stack);
            std::thread::spawn(move || common::drop_forgotten(stack))
                .join()
                .unwrap();
            let _ = gate.send(());
            done.await.expect("the new entry ran on the stack's runtime");
        });
    }
}

both_flavours! {
    async fn s21_a_cancelled_owner_future_still_runs_every_entry_once() {
        let log = Log::default();
        let l = log.clone();
        let owner = async move {
            // Owned by a future a timeout may drop: a cancellation by design.
            let stack = common::cancellable();
            record(&stack, "first", &l);
            record(&stack, "second", &l);
            std::future::pending::<()>().await; // cancelled here
            drop(stack);
        };
        let done_log = log.clone();
        let result = tokio::time::timeout(Duration::from_millis(10), owner).await;
        assert!(result.is_err(), "the owner was cancelled");
        common::eventually("both entries ran", || done_log.get().len() >= 2).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(log.take(), ["second abandoned: Cancelled", "first abandoned: Cancelled"]);
    }
}

both_flavours! {
    async fn a_cancelled_aclose_finishes_in_the_background_told_what_it_would_have_been_told() {
        let log = Log::default();
        let (started, gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let runs = Arc::new(AtomicUsize::new(0));
        let mut stack = AsyncExitStack::new();
        let done = signal(&stack);
        record(&stack, "oldest", &log);
        {
            let (started, gate, runs, log) = (started.clone(), gate.clone(), runs.clone(), log.clone());
            stack.push_async_exit(move |pending: Pending| async move {
                runs.fetch_add(1, Ordering::SeqCst);
                log.push(format!("middle started ok={}", pending.is_ok()));
                started.notify_one();
                gate.notified().await; // aclose is cancelled while this waits
                log.push("middle finished");
                Ok::<_, BoxError>(Flow::Propagate)
            });
        }
        record(&stack, "newest", &log);

        // Drop the aclose future once the middle exit is running.
        let cancelled = tokio::select! {
            biased;
            _ = stack.aclose() => false,
            () = started.notified() => true,
        };
        assert!(cancelled, "aclose was cancelled mid-unwind");
        assert!(stack.is_empty(), "the entries left the stack when the unwind started");
        assert_eq!(log.get(), ["newest ok", "middle started ok=true"]);

        gate.notify_one();
        done.await.unwrap();
        assert_eq!(
            log.take(),
            ["newest ok", "middle started ok=true", "middle finished", "oldest ok (detached)"],
            "the in-flight exit resumed, not restarted; the rest ran once, told the outcome as it was, detached",
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}

both_flavours! {
    async fn a_scope_cancelled_in_its_body_is_abandoned_and_in_its_unwind_is_shielded() {
        // Cancelled in the body.
        let log = Log::default();
        let l = log.clone();
        let body_cancelled = tokio::time::timeout(
            Duration::from_millis(10),
            scope(async |stack| {
                record(stack, "body-entry", &l);
                std::future::pending::<Result<(), BoxError>>().await
            }),
        )
        .await;
        assert!(body_cancelled.is_err());
        common::eventually("the body's entry ran", || !log.get().is_empty()).await;
        assert_eq!(log.take(), ["body-entry abandoned: Cancelled"], "a scope cancelled in its body is told Cancelled");

        // Cancelled during the unwind, with an exit in flight, after a body
        // that returned `Ok`, then after one that failed: the exit that had
        // not started is told the body's outcome, detached.
        for (body_fails, told) in [(false, "older ok (detached)"), (true, "older error (detached)")] {
            let (started, gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
            let runs = Arc::new(AtomicUsize::new(0));
            let (tx, done) = oneshot::channel();
            let (s, g, r, l) = (started.clone(), gate.clone(), runs.clone(), log.clone());
            let unwinding = scope(async move |stack| {
                stack.push_async_callback(move || async move {
                    let _ = tx.send(());
                });
                record(stack, "older", &l);
                stack.push_async_callback(move || async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    s.notify_one();
                    g.notified().await;
                });
                if body_fails {
                    Err::<(), BoxError>("payment declined".into())
                } else {
                    Ok(())
                }
            });
            let cancelled = tokio::select! {
                biased;
                _ = unwinding => false,
                () = started.notified() => true,
            };
            assert!(cancelled, "the scope was cancelled mid-unwind");
            gate.notify_one();
            done.await.unwrap();
            assert_eq!(runs.load(Ordering::SeqCst), 1, "the in-flight exit ran once");
            assert_eq!(log.take(), [told]);
        }
    }
}

/// S25: both flavours, built by hand: a stack filled, closed, and another
/// dropped without `aclose`, on each, with the drop's cleanup finishing on
/// a `current_thread` runtime too (where `block_in_place` would panic).
#[test]
fn s25_stacks_close_and_drop_on_both_runtime_flavours() {
    for rt in both_runtimes() {
        let flavour = rt.handle().runtime_flavor();
        rt.block_on(async {
            let log = Log::default();
            let mut stack = AsyncExitStack::new();
            record(&stack, "closed", &log);
            stack.aclose().await.unwrap();
            let stack = AsyncExitStack::new();
            let done = signal(&stack);
            record(&stack, "dropped", &log);
            common::drop_forgotten(stack);
            done.await.unwrap();
            assert_eq!(log.take(), ["closed ok", "dropped abandoned: Dropped"], "{flavour:?}");
        });
    }
}

/// S25 and pitfalls P5 to P8: the library's source never blocks, never
/// builds a runtime, and never reaches for the ambient runtime in a way
/// that panics outside one. Checked on the source itself, so a change that
/// adds one fails here.
#[test]
fn s25_the_source_never_blocks_builds_a_runtime_or_calls_handle_current() {
    let forbidden = [
        "block_in_place",
        "block_on",
        "Runtime::new",
        "runtime::Builder",
        "Handle::current()",
        "tokio::spawn(",
        "std::thread::sleep",
    ];
    let mut checked = 0;
    // Only the library's code: unit tests may block on a future.
    for (path, code) in common::library_sources() {
        for word in forbidden {
            for (n, line) in code.lines().enumerate() {
                let line = line.trim_start();
                // The exceptions name themselves: the child reaper's own
                // short-lived thread, never a runtime's or a `Drop`'s; the
                // runtime sqlx's drop needs as a context, never run.
                let own_thread = line.ends_with("// on the reaper's own thread")
                    || line.ends_with("// a context for sqlx's drop, never run");
                if line.contains(word) && !line.starts_with("//") && !own_thread {
                    panic!("{}:{}: `{word}` in library code: {line}", path.display(), n + 1);
                }
            }
        }
        checked += 1;
    }
    assert!(checked >= 10, "found the source files ({checked})");
}
