//! `tokio::fs::File`: flush on exit, so the last write reaches the file and
//! its error is reported, not lost. [`Durable`] also
//! syncs to disk.

use std::ops::{Deref, DerefMut};

use tokio::fs::File;
use tokio::io::AsyncWriteExt;

use crate::error::{BoxError, ResourceError};
use crate::traits::{AsyncExit, Flow, Pending};

#[cfg_attr(docsrs, doc(cfg(feature = "fs")))]
#[async_trait::async_trait]
impl AsyncExit for File {
    async fn exit(mut self: Box<Self>, _pending: Pending) -> Result<Flow, BoxError> {
        self.flush()
            .await
            .map_err(|e| ResourceError::new("tokio::fs::File", "flush", e))?;
        Ok(Flow::Propagate)
    }
}

/// A file whose exit also syncs it to disk (`fsync`): the opt-in durable
/// mode. Derefs to the file.
///
/// Costs one `sync_all` at exit, which can take milliseconds on a real
/// disk; use it for files that must survive a power cut, not for logs.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use tokio::io::AsyncWriteExt;
/// use tokio_exit_stack::{acquire, fs::Durable, AsyncExitStack};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("ledger");
/// let mut stack = AsyncExitStack::new();
/// let file = stack
///     .enter_async_context(acquire(async { tokio::fs::File::create(&path).await.map(Durable) }))
///     .await?;
/// file.write_all(b"balance=10").await?;
/// stack.aclose().await?; // flushed and on disk
/// assert_eq!(std::fs::read(&path)?, b"balance=10");
/// # Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "fs")))]
#[derive(Debug)]
pub struct Durable(pub File);

#[cfg_attr(docsrs, doc(cfg(feature = "fs")))]
impl Deref for Durable {
    type Target = File;
    fn deref(&self) -> &File {
        &self.0
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "fs")))]
impl DerefMut for Durable {
    fn deref_mut(&mut self) -> &mut File {
        &mut self.0
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "fs")))]
#[async_trait::async_trait]
impl AsyncExit for Durable {
    async fn exit(mut self: Box<Self>, _pending: Pending) -> Result<Flow, BoxError> {
        let name = "tokio::fs::File (durable)";
        self.0.flush().await.map_err(|e| ResourceError::new(name, "flush", e))?;
        self.0
            .sync_all()
            .await
            .map_err(|e| ResourceError::new(name, "sync_all", e))?;
        Ok(Flow::Propagate)
    }
}
