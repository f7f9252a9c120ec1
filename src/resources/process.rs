//! `tokio::process::Child`: wait for it on success; kill and reap it when
//! something failed or the scope was abandoned, so no zombie is left.

use std::borrow::Cow;

use tokio::process::Child;

use crate::error::{BoxError, ResourceError};
use crate::traits::{AsyncExit, Flow, Pending};

fn label(child: &Child) -> String {
    match child.id() {
        Some(pid) => format!("Child(pid {pid})"),
        None => "Child(exited)".to_owned(),
    }
}

#[async_trait::async_trait]
impl AsyncExit for Child {
    async fn exit(mut self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
        let name = label(&self);
        if pending.is_err() {
            // `start_kill` fails only if the child was already reaped.
            if let Err(e) = self.start_kill() {
                if self.id().is_some() {
                    return Err(ResourceError::new(name, "kill", e).into());
                }
            }
        }
        let status = self
            .wait()
            .await
            .map_err(|e| ResourceError::new(name.clone(), "wait", e))?;
        tracing::debug!(resource = %name, %status, killed = pending.is_err(), "child reaped");
        Ok(Flow::Propagate)
    }

    fn label(&self) -> Cow<'static, str> {
        Cow::Owned(label(self))
    }

    fn abandon(mut self: Box<Self>) {
        // No runtime to wait on: kill it, and reap it if it already exited.
        let _ = self.start_kill();
        let _ = self.try_wait();
    }
}
