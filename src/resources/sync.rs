//! Semaphore permits and owned lock guards: released inline on exit, with
//! no task spawned, even when the stack is dropped.

use std::sync::Arc;

use tokio::sync::{
    AcquireError, Mutex, OwnedMutexGuard, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, OwnedSemaphorePermit, Semaphore,
};

use crate::error::BoxError;
use crate::traits::{AsyncEnter, AsyncExit, Flow, Pending};

/// Entering a semaphore acquires one owned permit; a closed semaphore is
/// the enter's error.
#[cfg_attr(docsrs, doc(cfg(feature = "sync")))]
impl AsyncEnter for Arc<Semaphore> {
    type Resource = OwnedSemaphorePermit;
    type Error = AcquireError;

    fn enter(self) -> impl Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send {
        self.acquire_owned()
    }
}

/// Entering a mutex locks it; the guard unlocks at exit.
#[cfg_attr(docsrs, doc(cfg(feature = "sync")))]
impl<T: Send + Sync + 'static> AsyncEnter for Arc<Mutex<T>> {
    type Resource = OwnedMutexGuard<T>;
    type Error = std::convert::Infallible;

    async fn enter(self) -> Result<OwnedMutexGuard<T>, Self::Error> {
        Ok(self.lock_owned().await)
    }
}

macro_rules! release_inline {
    ($($ty:ty),* $(,)?) => {$(
        #[cfg_attr(docsrs, doc(cfg(feature = "sync")))]
        #[async_trait::async_trait]
        impl<T: ?Sized + Send + Sync + 'static> AsyncExit for $ty {
            async fn exit(self: Box<Self>, _pending: Pending) -> Result<Flow, BoxError> {
                drop(self);
                Ok(Flow::Propagate)
            }
            fn needs_runtime(&self) -> bool {
                false
            }
        }
    )*};
}

release_inline!(OwnedMutexGuard<T>, OwnedRwLockReadGuard<T>, OwnedRwLockWriteGuard<T>);

#[cfg_attr(docsrs, doc(cfg(feature = "sync")))]
#[async_trait::async_trait]
impl AsyncExit for OwnedSemaphorePermit {
    async fn exit(self: Box<Self>, _pending: Pending) -> Result<Flow, BoxError> {
        drop(self);
        Ok(Flow::Propagate)
    }
    fn needs_runtime(&self) -> bool {
        false
    }
}
