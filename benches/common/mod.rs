//! What `stack.rs` and `instructions.rs` measure alike: a resource with a
//! trivial release, a trivial cleanup, and the erased baseline's entry type.
#![allow(dead_code)]

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;

use tokio_exit_stack::{AsyncExit, BoxError, Flow, Pending, async_trait};

pub type BoxFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

/// The least a type-erased cleanup list can hold: a boxed closure returning
/// a boxed future.
pub type Erased = Box<dyn FnOnce() -> BoxFuture + Send>;

/// A resource whose release does a little work, like closing a handle.
pub struct Resource(pub u64);

impl Resource {
    /// The hand-written release, for the baselines.
    pub async fn close(self) -> Result<(), BoxError> {
        black_box(self.0);
        Ok(())
    }
}

#[async_trait]
impl AsyncExit for Resource {
    async fn exit(self: Box<Self>, _: Pending) -> Result<Flow, BoxError> {
        black_box(self.0);
        Ok(Flow::Propagate)
    }
}

/// A cleanup that does as little as `Resource::close`.
pub async fn cleanup(i: usize) -> Result<(), BoxError> {
    black_box(i);
    Ok(())
}

/// Unwinds an erased list, newest first, as the baselines do.
pub async fn unwind_erased(mut list: Vec<Erased>) {
    while let Some(f) = list.pop() {
        let _ = f().await;
    }
}
