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

#[cfg_attr(docsrs, doc(cfg(feature = "process")))]
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
        // No runtime to wait on: kill it, and reap it at once if it already
        // exited. Otherwise a short-lived thread reaps it (a killed process
        // exits within milliseconds), so no zombie is left and nothing
        // blocks here.
        let _ = self.start_kill();
        if !matches!(self.try_wait(), Ok(None)) {
            return;
        }
        let name = label(&self);
        let reaper = std::thread::Builder::new()
            .name("tokio-exit-stack-reaper".to_owned())
            .spawn(move || reap(*self));
        if let Err(e) = reaper {
            tracing::error!(resource = %name, error = %e, "could not start a thread to reap a killed child: it stays a zombie until this process exits");
        }
    }
}

/// Waits, off any runtime, for a killed child to exit and reaps it: polls
/// `try_wait` with a growing pause, for at most about 30 s (a process
/// stuck in an uninterruptible sleep outlives a kill).
fn reap(mut child: Child) {
    let mut pause = std::time::Duration::from_millis(1);
    let mut waited = std::time::Duration::ZERO;
    while waited < std::time::Duration::from_secs(30) {
        match child.try_wait() {
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => return,
        }
        std::thread::sleep(pause); // on the reaper's own thread
        waited += pause;
        pause = (pause * 2).min(std::time::Duration::from_millis(100));
    }
    tracing::error!(resource = %label(&child), "a killed child did not exit within 30 s: it is left unreaped");
}
