//! Semaphore permits and owned lock guards: released inline, with no task
//! spawned, on every path (S30, pitfall P9).
#![cfg(feature = "sync")]

mod common;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::{Mutex, RwLock, Semaphore};
use tokio_exit_stack::{AsyncExitStack, scope};

const PERMITS: usize = 5;

async fn take_three(stack: &AsyncExitStack, semaphore: &Arc<Semaphore>) {
    for _ in 0..3 {
        stack.enter_async_context(semaphore.clone()).await.unwrap();
    }
    assert_eq!(semaphore.available_permits(), PERMITS - 3);
}

both_flavours! {
    async fn s30_permits_return_after_aclose_drop_panic_and_cancellation() {
        let semaphore = Arc::new(Semaphore::new(PERMITS));
        let metrics = tokio::runtime::Handle::current().metrics();

        // aclose
        let mut stack = AsyncExitStack::new();
        take_three(&stack, &semaphore).await;
        stack.aclose().await.unwrap();
        assert_eq!(semaphore.available_permits(), PERMITS, "after aclose");

        // drop: released inline, no task spawned
        let stack = common::cancellable();
        take_three(&stack, &semaphore).await;
        let tasks = metrics.num_alive_tasks();
        drop(stack);
        assert_eq!(semaphore.available_permits(), PERMITS, "right after the drop");
        assert_eq!(metrics.num_alive_tasks(), tasks, "no task was spawned");

        // a panic in the body
        let s = semaphore.clone();
        let panicked = AssertUnwindSafe(scope(async move |stack| {
            take_three(stack, &s).await;
            panic!("body panicked");
            #[allow(unreachable_code)]
            Ok(())
        }))
        .catch_unwind()
        .await;
        assert!(panicked.is_err());
        assert_eq!(semaphore.available_permits(), PERMITS, "after a panic in the body");

        // the owning future cancelled
        let s = semaphore.clone();
        let owner = async move {
            let stack = common::cancellable();
            take_three(&stack, &s).await;
            std::future::pending::<()>().await;
            drop(stack);
        };
        assert!(tokio::time::timeout(Duration::from_millis(10), owner).await.is_err());
        assert_eq!(semaphore.available_permits(), PERMITS, "after cancellation");
    }
}

both_flavours! {
    async fn s30_a_closed_semaphore_is_the_enter_error_and_registers_nothing() {
        let semaphore = Arc::new(Semaphore::new(1));
        semaphore.close();
        let stack = common::cancellable();
        assert!(stack.enter_async_context(semaphore).await.is_err());
        assert!(stack.is_empty());
    }
}

both_flavours! {
    async fn s30_owned_mutex_and_rwlock_guards_unlock_on_exit_and_on_drop() {
        let mutex = Arc::new(Mutex::new(0u32));
        let rwlock = Arc::new(RwLock::new(String::new()));
        let mut stack = AsyncExitStack::new();
        let guard = stack.enter_async_context(mutex.clone()).await.unwrap();
        **guard += 1;
        let write = stack.enter_async_context(rwlock.clone().write_owned().await).await.unwrap();
        write.push_str("written");
        assert!(mutex.try_lock().is_err() && rwlock.try_read().is_err());
        stack.aclose().await.unwrap();
        assert_eq!(*mutex.try_lock().unwrap(), 1);
        assert_eq!(*rwlock.try_read().unwrap(), "written");

        let stack = common::cancellable();
        stack.enter_async_context(mutex.clone()).await.unwrap();
        stack.enter_async_context(rwlock.clone().read_owned().await).await.unwrap();
        drop(stack);
        assert!(mutex.try_lock().is_ok() && rwlock.try_write().is_ok(), "unlocked inline at the drop");
    }
}
