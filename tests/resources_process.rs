//! Child processes and tasks: waited for on success; killed, aborted and
//! reaped on failure or abandonment (S31, pitfall P10).
#![cfg(all(feature = "process", feature = "rt"))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::oneshot;
use tokio_exit_stack::{AsyncExitStack, Task, error::TaskError, scope};

/// The process table's view of `pid`: `None` once it is gone (reaped),
/// otherwise its state letter (`Z` for a zombie).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

both_flavours! {
    async fn s31_a_child_in_a_failed_scope_is_killed_and_reaped_no_zombie() {
        let mut pid = 0;
        let result = scope(async |stack| {
            let child = stack.enter_async_context(Command::new("sleep").arg("1000").spawn()?).await.unwrap();
            pid = child.id().unwrap();
            assert!(matches!(process_state(pid), Some(state) if state != 'Z'), "alive");
            Err::<(), tokio_exit_stack::BoxError>(std::io::Error::other("the request failed").into())
        })
        .await;
        assert_eq!(result.unwrap_err().to_string(), "the request failed");
        assert_eq!(process_state(pid), None, "killed and reaped: no process, no zombie");
    }
}

both_flavours! {
    async fn s31_a_child_in_a_successful_scope_is_waited_for_not_killed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("finished");
        let m = marker.clone();
        let mut pid = 0;
        scope(async |stack| {
            let child = stack
                .enter_async_context(
                    Command::new("sh").arg("-c").arg(format!("sleep 0.2; touch {}", m.display())).spawn()?,
                )
                .await
                .unwrap();
            pid = child.id().unwrap();
            Ok(())
        })
        .await
        .unwrap();
        assert!(marker.exists(), "the child ran to its end");
        assert_eq!(process_state(pid), None, "and was reaped");
    }
}

/// A dropped stack's pending error is "abandoned": the child is killed too.
#[tokio::test]
async fn s31_a_child_in_an_abandoned_stack_is_killed_and_reaped() {
    let stack = common::cancellable();
    let (tx, done) = oneshot::channel();
    stack.push_async_callback(move || async move {
        let _ = tx.send(());
    });
    let child = stack
        .enter_async_context(Command::new("sleep").arg("1000").spawn().unwrap())
        .await
        .unwrap();
    let pid = child.id().unwrap();
    drop(stack);
    done.await.unwrap();
    assert_eq!(process_state(pid), None);
}

/// Sets its flag when the task that owns it is dropped (finished or aborted).
struct Dropped(Arc<AtomicBool>);
impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

both_flavours! {
    async fn s31_a_task_is_awaited_on_success_and_aborted_and_reaped_on_failure() {
        // success: awaited to its end
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        scope(async |stack| {
            stack
                .enter_async_context(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    f.store(true, Ordering::SeqCst);
                }))
                .await
                .unwrap();
            Ok(())
        })
        .await
        .unwrap();
        assert!(finished.load(Ordering::SeqCst), "awaited, not detached");

        // failure: aborted, and gone once the unwind returns
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = Dropped(dropped.clone());
        let _ = scope(async |stack| {
            stack
                .enter_async_context(tokio::spawn(async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                }))
                .await
                .unwrap();
            Err::<(), tokio_exit_stack::BoxError>(std::io::Error::other("failed").into())
        })
        .await;
        assert!(dropped.load(Ordering::SeqCst), "aborted and reaped before aclose returned");
    }
}

both_flavours! {
    async fn s31_a_joinset_is_awaited_or_shut_down_and_a_panicked_task_is_an_error() {
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = Dropped(dropped.clone());
        let _ = scope(async |stack| {
            let set = stack.enter_async_context(tokio::task::JoinSet::new()).await.unwrap();
            set.spawn(async move {
                let _guard = guard;
                std::future::pending::<()>().await;
            });
            Err::<(), tokio_exit_stack::BoxError>(std::io::Error::other("failed").into())
        })
        .await;
        assert!(dropped.load(Ordering::SeqCst), "every task aborted and reaped");

        let err = scope(async |stack| {
            let set = stack.enter_async_context(tokio::task::JoinSet::new()).await.unwrap();
            set.spawn(async { panic!("task bug") });
            set.spawn(async {});
            Ok(())
        })
        .await
        .unwrap_err();
        let failure = err.downcast_ref::<TaskError>().expect("a TaskError");
        assert!(std::error::Error::source(failure).unwrap().to_string().contains("panicked"));

        // Two failed tasks: both kept, each its own link.
        let err = scope(async |stack| {
            let set = stack.enter_async_context(tokio::task::JoinSet::new()).await.unwrap();
            set.spawn(async { panic!("first task bug") });
            set.spawn(async { panic!("second task bug") });
            Ok(())
        })
        .await
        .unwrap_err();
        assert_eq!(err.len(), 2, "{err}");
        assert!(err.iter().all(|e| e.is::<TaskError>()));
    }
}

both_flavours! {
    /// The natural use of a lent task is to await it: the stack then has
    /// nothing left to reap, and never polls the finished handle again
    /// (tokio panics on that), on success as on failure.
    async fn s31_a_task_the_caller_awaited_never_makes_the_unwind_panic() {
        let mut stack = AsyncExitStack::new();
        let task = stack.enter_async_context(tokio::spawn(async { 7 })).await.unwrap();
        assert_eq!((&mut *task).await.unwrap(), 7);
        assert!(task.is_taken());
        stack.aclose().await.unwrap();

        let err = scope(async |stack| {
            let task = stack.push_resource(Task::new(tokio::spawn(async { 7 })));
            assert_eq!(task.await?, 7);
            Err::<(), tokio_exit_stack::BoxError>(std::io::Error::other("the request failed").into())
        })
        .await
        .unwrap_err();
        assert_eq!(err.len(), 1, "only the body's error: {err}");
        assert_eq!(err.to_string(), "the request failed");

        // A panicked task whose error the caller read is not reported again.
        let mut stack = AsyncExitStack::new();
        let task = stack.enter_async_context(tokio::spawn(async { panic!("task bug") })).await.unwrap();
        assert!((&mut *task).await.unwrap_err().is_panic());
        assert!(task.is_taken());
        stack.aclose().await.unwrap();
    }
}

both_flavours! {
    /// A task that panicked and that nobody awaited is reported, also when
    /// an error is pending and the exit only meant to abort it.
    async fn s31_a_panicked_task_nobody_awaited_is_reported() {
        let err = scope(async |stack| {
            let task = stack.enter_async_context(tokio::spawn(async { panic!("task bug") })).await?;
            while !task.is_finished() {
                tokio::task::yield_now().await;
            }
            Err::<(), tokio_exit_stack::BoxError>(std::io::Error::other("the request failed").into())
        })
        .await
        .unwrap_err();
        assert_eq!(err.len(), 2, "{err}");
        let failure = err.downcast_ref::<TaskError>().expect("the task's panic is a link");
        assert!(failure.source.is_panic());
    }
}

/// A task that never ends holds the unwind until the entry's timeout, and
/// is then aborted, not detached (paused clock).
#[tokio::test(start_paused = true)]
async fn s31_a_task_whose_exit_times_out_is_aborted() {
    let dropped = Arc::new(AtomicBool::new(false));
    let guard = Dropped(dropped.clone());
    let mut stack = AsyncExitStack::new();
    stack
        .entry()
        .timeout(Duration::from_secs(5))
        .enter_async_context(tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        }))
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let err = stack.aclose().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert!(
        err.downcast_ref::<tokio_exit_stack::error::TimeoutError>().is_some(),
        "{err}"
    );
    common::eventually("the task is aborted", || dropped.load(Ordering::SeqCst)).await;
}

/// A child abandoned where no runtime can run its exit (its runtime shut
/// down) is killed and reaped by a short-lived thread: never left a
/// zombie, and the drop does not block.
#[test]
fn s31_a_child_abandoned_with_no_runtime_is_reaped_not_left_a_zombie() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (stack, pid) = rt.block_on(async {
        let stack = common::cancellable();
        let child = stack.push_resource(Command::new("sleep").arg("1000").spawn().unwrap());
        let pid = child.id().unwrap();
        (stack, pid)
    });
    drop(rt);
    let start = std::time::Instant::now();
    drop(stack);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "the drop does not wait for the child"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while process_state(pid).is_some() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(process_state(pid), None, "killed and reaped: no process, no zombie");
}
