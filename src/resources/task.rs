//! `JoinHandle` and `JoinSet`: await on success; abort, then await (reap),
//! when something failed or the scope was abandoned (a
//! dropped handle detaches its task instead of stopping it).

use std::any::type_name;

use tokio::task::{JoinError, JoinHandle, JoinSet};

use std::sync::Arc;

use crate::error::{BoxError, Error};
use crate::traits::{AsyncExit, Flow, Pending};

/// A task the stack awaited failed: it panicked, or something else
/// cancelled it.
#[derive(Debug, thiserror::Error)]
#[error("task {resource} failed")]
pub struct TaskError {
    /// The task's handle type.
    pub resource: &'static str,
    /// What the runtime reported.
    #[source]
    pub source: JoinError,
}

#[async_trait::async_trait]
impl<T: Send + 'static> AsyncExit for JoinHandle<T> {
    async fn exit(self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
        let name = type_name::<Self>();
        if pending.is_err() {
            self.abort();
            // Reap: wait until the task is gone; cancellation is expected.
            match (*self).await {
                Err(e) if !e.is_cancelled() => Err(Box::new(TaskError {
                    resource: name,
                    source: e,
                })),
                _ => Ok(Flow::Propagate),
            }
        } else {
            match (*self).await {
                Ok(_) => Ok(Flow::Propagate),
                Err(e) => Err(Box::new(TaskError {
                    resource: name,
                    source: e,
                })),
            }
        }
    }

    fn abandon(self: Box<Self>) {
        self.abort();
    }
}

#[async_trait::async_trait]
impl<T: Send + 'static> AsyncExit for JoinSet<T> {
    async fn exit(mut self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
        let name = type_name::<Self>();
        if pending.is_err() {
            self.shutdown().await;
            return Ok(Flow::Propagate);
        }
        // Every failed task is kept, in the order they finished; several
        // become one link each in the unwind's error.
        let mut failures = Vec::new();
        while let Some(result) = self.join_next().await {
            if let Err(source) = result {
                failures.push(Arc::new(Box::new(TaskError { resource: name, source }) as BoxError));
            }
        }
        match Error::from_oldest_first(failures) {
            None => Ok(Flow::Propagate),
            Some(errors) => match errors.into_single() {
                Ok(one) => Err(one),
                Err(several) => Err(Box::new(several)),
            },
        }
    }

    fn abandon(mut self: Box<Self>) {
        self.abort_all();
    }
}
