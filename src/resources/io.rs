//! `BufWriter` and `BufStream`: flush and shut down on exit, so no buffered
//! byte is lost, within the entry's [`Linger`](crate::linger::Linger) bounds.

use std::any::type_name;

use tokio::io::{AsyncRead, AsyncWrite, BufStream, BufWriter};

use super::drain::{drain, flush_and_shutdown};
use crate::error::{BoxError, ResourceError};
use crate::traits::{AsyncExit, Flow, Pending};

#[cfg_attr(docsrs, doc(cfg(feature = "io-util")))]
#[async_trait::async_trait]
impl<W> AsyncExit for BufWriter<W>
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    async fn exit(mut self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
        let name = type_name::<Self>();
        flush_and_shutdown(&mut *self, &pending.linger())
            .await
            .map_err(|e| ResourceError::new(name, "flush and shutdown", e))?;
        Ok(Flow::Propagate)
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "io-util")))]
#[async_trait::async_trait]
impl<S> AsyncExit for BufStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn exit(mut self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
        let name = type_name::<Self>();
        let linger = pending.linger();
        flush_and_shutdown(&mut *self, &linger)
            .await
            .map_err(|e| ResourceError::new(name, "flush and shutdown", e))?;
        drain(&mut *self, &linger)
            .await
            .map_err(|e| ResourceError::new(name, "drain", e))?;
        Ok(Flow::Propagate)
    }
}
