//! Python's semantics: registering (S1 to S7) and unwinding (S8 to S17),
//! each on both runtime flavours (S25).

mod common;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::Log;
#[cfg(all(feature = "net", feature = "fs"))]
use tokio::io::{AsyncReadExt, AsyncWriteExt};
#[cfg(all(feature = "net", feature = "fs"))]
use tokio::net::{TcpListener, TcpStream};
#[cfg(all(feature = "net", feature = "fs"))]
use tokio_exit_stack::acquire;
use tokio_exit_stack::{
    AsyncEnter, AsyncExit, AsyncExitStack, BoxError, Error, Flow, Pending, async_trait, error::Suppressed, scope,
    scope_suppressible,
};

/// A resource that records its exit and what it was told.
struct Probe {
    name: &'static str,
    log: Log,
}

#[async_trait]
impl AsyncExit for Probe {
    async fn exit(self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
        tokio::task::yield_now().await;
        let told = pending.error().map(|e| e.to_string()).unwrap_or_else(|| "none".into());
        self.log.push(format!("exit {} ({told})", self.name));
        Ok(Flow::Propagate)
    }
}

/// An `AsyncEnter` that counts its enters and can fail.
struct Opener {
    enters: Arc<AtomicUsize>,
    fail: bool,
    log: Log,
}

impl AsyncEnter for Opener {
    type Resource = Probe;
    type Error = io::Error;
    async fn enter(self) -> Result<Probe, io::Error> {
        self.enters.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        if self.fail {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "opener refused"));
        }
        Ok(Probe {
            name: "opened",
            log: self.log,
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Named(&'static str);

/// A value whose cleanup is its `Drop`.
struct DropLog(&'static str, Log);
impl Drop for DropLog {
    fn drop(&mut self) {
        self.1.push(format!("drop {}", self.0));
    }
}

both_flavours! {
    async fn s1_enter_runs_once_and_registers_only_after_it_succeeded() {
        let log = Log::default();
        let enters = Arc::new(AtomicUsize::new(0));
        let mut stack = AsyncExitStack::new();
        let probe = stack
            .enter_async_context(Opener { enters: enters.clone(), fail: false, log: log.clone() })
            .await
            .unwrap();
        assert_eq!(probe.name, "opened", "the caller gets the entered resource");
        assert_eq!(enters.load(Ordering::SeqCst), 1);
        assert_eq!(stack.len(), 1);
        assert!(log.get().is_empty());
        stack.aclose().await.unwrap();
        assert_eq!(enters.load(Ordering::SeqCst), 1, "aclose does not enter again");
        assert_eq!(log.take(), ["exit opened (none)"]);
    }
}

both_flavours! {
    #[cfg(all(feature = "net", feature = "fs"))]
    async fn s2_failed_enter_registers_nothing_and_returns_its_error_unchanged() {
        let log = Log::default();
        let enters = Arc::new(AtomicUsize::new(0));
        let mut stack = AsyncExitStack::new();
        stack.enter_async_context(Probe { name: "earlier", log: log.clone() }).await.unwrap();

        let err = stack
            .enter_async_context(Opener { enters: enters.clone(), fail: true, log: log.clone() })
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(err.to_string(), "opener refused");

        // A real refused connection: bind, learn the port, close the listener.
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let err = stack.enter_async_context(acquire(TcpStream::connect(addr))).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);

        // A real missing file.
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = stack.enter_async_context(acquire(tokio::fs::File::open(missing))).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);

        assert_eq!(stack.len(), 1, "only the earlier entry is registered");
        stack.aclose().await.unwrap();
        assert_eq!(log.take(), ["exit earlier (none)"], "earlier entries still run");
    }
}

both_flavours! {
    async fn s3_enter_context_takes_its_place_in_lifo_order() {
        let log = Log::default();
        let mut stack = AsyncExitStack::new();
        stack.enter_context(DropLog("sync 1", log.clone()));
        stack.enter_async_context(Probe { name: "async 2", log: log.clone() }).await.unwrap();
        let value = stack.enter_context(DropLog("sync 3", log.clone()));
        assert_eq!(value.0, "sync 3", "enter_context lends the value back");
        stack.aclose().await.unwrap();
        assert_eq!(log.take(), ["drop sync 3", "exit async 2 (none)", "drop sync 1"]);
    }
}

both_flavours! {
    async fn s4_registering_runs_nothing() {
        let log = Log::default();
        let mut stack = AsyncExitStack::new();
        let l = log.clone();
        stack.push_async_exit(move |_| async move { l.push("async exit"); Ok::<_, BoxError>(Flow::Propagate) });
        let l = log.clone();
        stack.push_exit(move |_| { l.push("exit"); Ok::<_, BoxError>(Flow::Propagate) });
        let l = log.clone();
        stack.push_async_callback(move || async move { l.push("async callback") });
        let l = log.clone();
        stack.callback(move || l.push("callback"));
        tokio::task::yield_now().await;
        assert!(log.get().is_empty(), "nothing runs at registration");
        assert_eq!(stack.len(), 4);
        stack.aclose().await.unwrap();
        assert_eq!(log.take(), ["callback", "async callback", "exit", "async exit"]);
    }
}

/// S5, at compile time: the stack can be shared by reference across
/// `.await`s in a task (`Sync`), moved into one (`Send`), and its own
/// futures can be spawned.
#[test]
fn s5_the_stack_and_its_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let mut stack = AsyncExitStack::new();
    send_sync(&stack);
    send(&stack.enter_async_context(Probe {
        name: "x",
        log: Log::default(),
    }));
    send(&stack.aclose());
    send(&scope(async |_stack| Ok::<_, BoxError>(())));
    send(&tokio_exit_stack::drain(std::time::Duration::ZERO));
}

// S5: two connections and a file, entered into one stack, used at the same
// time inside a future given to `tokio::spawn`.
both_flavours! {
    #[cfg(all(feature = "net", feature = "fs"))]
    async fn s5_resources_are_used_at_once_inside_a_spawned_future() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The peer: echo on the first connection, collect on the second.
        let server = tokio::spawn(async move {
            let (mut a, _) = listener.accept().await.unwrap();
            let (mut b, _) = listener.accept().await.unwrap();
            a.write_all(b"from-a").await.unwrap();
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let path2 = path.clone();

        let task = tokio::spawn(async move {
            let mut stack = AsyncExitStack::new();
            let a = stack.enter_async_context(acquire(TcpStream::connect(addr))).await?;
            let b = stack.enter_async_context(acquire(TcpStream::connect(addr))).await?;
            let file = stack.enter_async_context(acquire(tokio::fs::File::create(&path2))).await?;
            // All three borrowed at once, across awaits.
            let mut buf = [0u8; 6];
            let (read, wrote_b, wrote_file) = tokio::join!(
                a.read_exact(&mut buf),
                b.write_all(b"to-b"),
                file.write_all(b"to-file"),
            );
            read?;
            wrote_b?;
            wrote_file?;
            assert_eq!(&buf, b"from-a");
            stack.aclose().await?;
            Ok::<_, BoxError>(())
        });
        task.await.unwrap().unwrap();
        assert_eq!(server.await.unwrap(), b"to-b", "b was shut down cleanly: the peer read to EOF");
        assert_eq!(std::fs::read(&path).unwrap(), b"to-file");
    }
}

both_flavours! {
    async fn s6_pop_all_moves_every_entry_to_a_new_stack() {
        let log = Log::default();
        let mut stack = AsyncExitStack::new();
        for name in ["a", "b", "c"] {
            stack.enter_async_context(Probe { name, log: log.clone() }).await.unwrap();
        }
        let mut moved = stack.pop_all();
        assert!(stack.is_empty());
        assert_eq!(moved.len(), 3);
        // The old stack is usable.
        stack.enter_async_context(Probe { name: "old", log: log.clone() }).await.unwrap();
        stack.aclose().await.unwrap();
        assert_eq!(log.take(), ["exit old (none)"]);
        moved.aclose().await.unwrap();
        assert_eq!(log.take(), ["exit c (none)", "exit b (none)", "exit a (none)"]);
    }
}

both_flavours! {
    async fn s7_a_closed_stack_can_be_reused() {
        let log = Log::default();
        let mut stack = AsyncExitStack::new();
        for round in ["first", "second"] {
            stack.enter_async_context(Probe { name: round, log: log.clone() }).await.unwrap();
            stack.aclose().await.unwrap();
            assert!(stack.is_empty());
        }
        assert_eq!(log.take(), ["exit first (none)", "exit second (none)"]);
    }
}

both_flavours! {
    async fn s8_entries_run_newest_first_one_at_a_time() {
        let log = Log::default();
        let active = Arc::new(AtomicUsize::new(0));
        let mut stack = AsyncExitStack::new();
        for i in 0..20 {
            if i % 3 == 0 {
                let l = log.clone();
                stack.callback(move || l.push(format!("{i}")));
            } else {
                let (l, active) = (log.clone(), active.clone());
                stack.push_async_callback(move || async move {
                    assert_eq!(active.fetch_add(1, Ordering::SeqCst), 0, "another entry was running");
                    for _ in 0..3 {
                        tokio::task::yield_now().await;
                    }
                    l.push(format!("{i}"));
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        }
        stack.aclose().await.unwrap();
        let expected: Vec<String> = (0..20).rev().map(|i| i.to_string()).collect();
        assert_eq!(log.take(), expected);
    }
}

both_flavours! {
    async fn s9_aclose_of_an_empty_or_closed_stack_is_ok() {
        let mut stack = AsyncExitStack::new();
        stack.aclose().await.unwrap();
        let log = Log::default();
        let l = log.clone();
        stack.push_async_exit(move |pending: Pending| async move {
            l.push(format!("pending is_ok={}", pending.is_ok()));
            Ok::<_, BoxError>(Flow::Propagate)
        });
        stack.aclose().await.unwrap();
        stack.aclose().await.unwrap();
        assert_eq!(log.take(), ["pending is_ok=true"], "ran once, with no pending error");
    }
}

both_flavours! {
    async fn s10_scope_unwinds_with_the_body_outcome() {
        let log = Log::default();
        let l = log.clone();
        let value = scope(async |stack| {
            stack.enter_async_context(Probe { name: "ok-body", log: l.clone() }).await.unwrap();
            Ok(42)
        })
        .await
        .unwrap();
        assert_eq!(value, 42);
        assert_eq!(log.take(), ["exit ok-body (none)"]);

        let l = log.clone();
        let err = scope(async |stack| {
            stack.enter_async_context(Probe { name: "err-body", log: l.clone() }).await.unwrap();
            Err::<u32, BoxError>(Named("body failed").into())
        })
        .await
        .unwrap_err();
        assert_eq!(log.take(), ["exit err-body (body failed)"], "the exit saw the body's error");
        assert_eq!(err.len(), 1);
        assert_eq!(err.downcast_ref::<Named>().unwrap().0, "body failed");
    }
}

both_flavours! {
    async fn s11_each_exit_is_told_the_current_pending_error() {
        let log = Log::default();
        let l = log.clone();
        let _ = scope(async |stack| {
            // outermost: sees none, because the one inside suppressed
            stack.enter_async_context(Probe { name: "outer", log: l.clone() }).await.unwrap();
            stack.push_exit(|_| Ok::<_, BoxError>(Flow::Suppress));
            stack.enter_async_context(Probe { name: "after-entry-error", log: l.clone() }).await.unwrap();
            stack.push_async_exit(|_| async { Err::<Flow, _>(Named("entry failed")) });
            stack.enter_async_context(Probe { name: "innermost", log: l.clone() }).await.unwrap();
            Err::<(), BoxError>(Named("body failed").into())
        })
        .await;
        assert_eq!(
            log.take(),
            ["exit innermost (body failed)", "exit after-entry-error (entry failed)", "exit outer (none)"]
        );
    }
}

both_flavours! {
    async fn s12_a_suppressing_exit_hides_the_error_from_outer_exits_and_the_result() {
        let log = Log::default();
        let l = log.clone();
        let result = scope_suppressible(async |stack| {
            stack.enter_async_context(Probe { name: "outer", log: l.clone() }).await.unwrap();
            stack.push_async_exit(|pending: Pending| async move {
                assert!(pending.downcast_ref::<Named>().is_some());
                Ok::<_, BoxError>(Flow::Suppress)
            });
            Err::<u8, BoxError>(Named("body failed").into())
        })
        .await;
        assert!(matches!(result, Ok(None)), "every error suppressed: Ok, and no value: {result:?}");
        assert_eq!(log.take(), ["exit outer (none)"]);

        // Plain `scope` has no value to return: one `Suppressed` error that
        // names the suppressing entry, and not the suppressed error.
        let l = log.clone();
        let err = scope(async |stack| {
            stack.enter_async_context(Probe { name: "outer", log: l.clone() }).await.unwrap();
            stack.entry().label("swallow").push_exit(|_| Ok::<_, BoxError>(Flow::Suppress));
            Err::<u8, BoxError>(Named("request refused").into())
        })
        .await
        .unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err.downcast_ref::<Suppressed>().unwrap().by, "swallow");
        assert!(!err.is::<Named>() && !format!("{err:#}").contains("request refused"));
        assert_eq!(log.take(), ["exit outer (none)"]);
        // A body that succeeded keeps its value when a later error is suppressed.
        let value = scope(async |stack| {
            stack.push_exit(|_| Ok::<_, BoxError>(Flow::Suppress));
            stack.callback(|| Err::<(), _>(Named("cleanup failed")));
            Ok(7)
        })
        .await
        .unwrap();
        assert_eq!(value, 7);

        // A callback cannot suppress: its success leaves the error pending.
        let result = scope(async |stack| {
            stack.callback(|| ());
            Err::<u8, BoxError>(Named("body failed").into())
        })
        .await;
        assert_eq!(result.unwrap_err().to_string(), "body failed");
    }
}

both_flavours! {
    async fn s13_a_failing_entry_becomes_pending_and_every_other_entry_still_runs() {
        let log = Log::default();
        let mut stack = AsyncExitStack::new();
        stack.enter_async_context(Probe { name: "first", log: log.clone() }).await.unwrap();
        stack.callback(|| Err::<(), _>(Named("callback failed")));
        stack.enter_async_context(Probe { name: "second", log: log.clone() }).await.unwrap();
        stack.push_async_exit(|_| async { Err::<Flow, _>(Named("exit failed")) });
        let err = stack.aclose().await.unwrap_err();
        assert_eq!(log.take(), ["exit second (exit failed)", "exit first (callback failed)"]);
        assert_eq!(err.len(), 2);
    }
}

both_flavours! {
    async fn s14_errors_chain_newest_first_each_downcastable() {
        let err = scope(async |stack| {
            stack.callback(|| Err::<(), _>(io::Error::other("oldest entry")));
            stack.push_async_exit(|_| async { Err::<Flow, _>(std::fmt::Error) });
            stack.callback(|| Err::<(), _>(Named("newest entry")));
            Err::<(), BoxError>(Named("body").into())
        })
        .await
        .unwrap_err();
        // Callbacks run newest-registered first, so the io error is raised last.
        let messages: Vec<String> = err.iter().map(|e| e.to_string()).collect();
        assert_eq!(messages, ["oldest entry", "an error occurred when formatting an argument", "newest entry", "body"]);
        let mut it = err.iter();
        assert!(it.next().unwrap().is::<io::Error>());
        assert!(it.next().unwrap().is::<std::fmt::Error>());
        assert_eq!(it.next().unwrap().downcast_ref::<Named>().unwrap().0, "newest entry");
        assert_eq!(it.next().unwrap().downcast_ref::<Named>().unwrap().0, "body");
        assert_eq!(err.oldest().to_string(), "body");
        assert!(err.to_string().starts_with("4 errors while unwinding, newest first: oldest entry; then "));
        assert!(std::error::Error::source(&err).is_none(), "several links: reached with iter(), not source()");

        // The body succeeded and two callbacks failed: both are kept
        // (CPython's gh-102201 drops one).
        let mut stack = AsyncExitStack::new();
        stack.callback(|| Err::<(), _>(Named("second")));
        stack.callback(|| Err::<(), _>(Named("first")));
        let err = stack.aclose().await.unwrap_err();
        let messages: Vec<String> = err.iter().map(|e| e.to_string()).collect();
        assert_eq!(messages, ["second", "first"]);

        // A single error comes back as itself.
        let mut stack = AsyncExitStack::new();
        stack.callback(|| Err::<(), _>(io::Error::new(io::ErrorKind::BrokenPipe, "alone")));
        let err: Error = stack.aclose().await.unwrap_err();
        assert_eq!(err.to_string(), "alone");
        assert_eq!(format!("{err:?}"), format!("{:?}", io::Error::new(io::ErrorKind::BrokenPipe, "alone")));
        let inner = err.into_single().unwrap();
        assert_eq!(inner.downcast::<io::Error>().unwrap().kind(), io::ErrorKind::BrokenPipe);
    }
}

both_flavours! {
    async fn s14_an_exit_returning_several_errors_adds_each_as_its_own_link() {
        let mut stack = AsyncExitStack::new();
        stack.callback(|| Err::<(), _>(Named("outer")));
        stack.push_async_exit(|_| async {
            // A nested stack whose close fails twice.
            let mut inner = AsyncExitStack::new();
            inner.callback(|| Err::<(), _>(Named("inner second")));
            inner.callback(|| Err::<(), _>(io::Error::other("inner first")));
            inner.aclose().await.map(|()| Flow::Propagate)
        });
        let err = stack.aclose().await.unwrap_err();
        let messages: Vec<String> = err.iter().map(|e| e.to_string()).collect();
        assert_eq!(messages, ["outer", "inner second", "inner first"], "flattened, newest first");
        assert!(err.iter().nth(2).unwrap().is::<io::Error>(), "each keeps its own type");
    }
}

both_flavours! {
    async fn s15_a_suppressed_error_appears_nowhere() {
        let err = scope(async |stack| {
            stack.callback(|| Err::<(), _>(Named("after suppression")));
            stack.push_exit(|_| Ok::<_, BoxError>(Flow::Suppress));
            stack.callback(|| Err::<(), _>(Named("suppressed entry error")));
            Err::<(), BoxError>(Named("suppressed body error").into())
        })
        .await
        .unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err.to_string(), "after suppression");
        assert!(!format!("{err} {err:?}").contains("suppressed"));
    }
}

both_flavours! {
    async fn s16_handing_back_the_pending_error_adds_no_duplicate() {
        let err = scope(async |stack| {
            stack.push_async_exit(|pending: Pending| async move {
                assert!(pending.is_err());
                Ok::<_, BoxError>(Flow::Propagate) // re-raise what it was given
            });
            stack.push_exit(|pending: &Pending| {
                assert!(pending.is_err());
                Ok::<_, BoxError>(Flow::Propagate)
            });
            Err::<(), BoxError>(Named("body").into())
        })
        .await
        .unwrap_err();
        assert_eq!(err.len(), 1, "no duplicate link: {err}");
        assert_eq!(err.to_string(), "body");
    }
}

both_flavours! {
    async fn s17_a_hundred_thousand_entries_unwind_without_overflow() {
        const N: usize = 100_000;
        let ran = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(AtomicUsize::new(usize::MAX));
        let mut stack = AsyncExitStack::new();
        for i in 0..N {
            let (ran, last) = (ran.clone(), last.clone());
            let check = move || {
                // newest first: each entry runs right after the one above it
                let prev = last.swap(i, Ordering::SeqCst);
                assert!(prev == usize::MAX || prev == i + 1, "entry {i} ran after {prev}");
                ran.fetch_add(1, Ordering::SeqCst);
            };
            if i % 2 == 0 {
                stack.callback(check);
            } else {
                stack.push_async_callback(move || async move { check() });
            }
        }
        stack.aclose().await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), N);
        assert_eq!(last.load(Ordering::SeqCst), 0);
    }
}

/// S17 again with a failing entry every tenth: the error chain of 10,000
/// links is built and dropped without recursion.
#[tokio::test]
async fn s17_a_long_error_chain_is_built_and_dropped_without_overflow() {
    let mut stack = AsyncExitStack::new();
    for i in 0..100_000u32 {
        if i % 10 == 0 {
            stack.callback(move || Err::<(), _>(io::Error::other(format!("entry {i}"))));
        } else {
            stack.callback(|| ());
        }
    }
    let err = stack.aclose().await.unwrap_err();
    assert_eq!(err.len(), 10_000);
    assert_eq!(err.newest().to_string(), "entry 0");
}

both_flavours! {
    /// An exit older than the one that suppressed the body's error is told
    /// the scope succeeded (`is_ok`) and that an error was raised in it
    /// (`saw_error`), in a nested stack too, with close bounds set or not;
    /// an exit of a scope that saw no error is told neither.
    async fn exits_older_than_a_suppressor_are_told_an_error_was_seen() {
        let log = Log::default();
        for (fails, bounds) in [(true, false), (true, true), (false, false), (false, true)] {
            let (outer_log, inner_log) = (log.clone(), log.clone());
            let value = scope_suppressible(async |stack| {
                if bounds {
                    stack.entry().linger(tokio_exit_stack::linger::Linger::DEFAULT).push_exit(move |p: &Pending| {
                        outer_log.push(format!("outer ok={} saw={}", p.is_ok(), p.saw_error()));
                        Ok::<_, io::Error>(Flow::Propagate)
                    });
                } else {
                    stack.push_exit(move |p: &Pending| {
                        outer_log.push(format!("outer ok={} saw={}", p.is_ok(), p.saw_error()));
                        Ok::<_, io::Error>(Flow::Propagate)
                    });
                }
                let inner = AsyncExitStack::new();
                inner.push_exit(move |p: &Pending| {
                    inner_log.push(format!("inner ok={} saw={}", p.is_ok(), p.saw_error()));
                    Ok::<_, io::Error>(Flow::Propagate)
                });
                stack.push_resource(inner);
                stack.push_exit(|_| Ok::<_, io::Error>(Flow::Suppress));
                if fails {
                    Err(io::Error::other("out of stock"))?;
                }
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(value.is_none(), fails);
        }
        assert_eq!(
            log.take(),
            [
                "inner ok=true saw=true",
                "outer ok=true saw=true",
                "inner ok=true saw=true",
                "outer ok=true saw=true",
                "inner ok=true saw=false",
                "outer ok=true saw=false",
                "inner ok=true saw=false",
                "outer ok=true saw=false",
            ]
        );
    }
}
