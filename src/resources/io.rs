//! `BufWriter` and `BufStream`: flush and shut down on exit, so no buffered
//! byte is lost.

use std::any::type_name;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufStream, BufWriter};

use super::drain::drain;
use crate::error::{BoxError, ResourceError};
use crate::traits::{AsyncExit, Flow, Pending};

#[async_trait::async_trait]
impl<W> AsyncExit for BufWriter<W>
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    async fn exit(mut self: Box<Self>, _pending: Pending) -> Result<Flow, BoxError> {
        let name = type_name::<Self>();
        // `shutdown` flushes the buffer first, then shuts the writer down.
        self.shutdown()
            .await
            .map_err(|e| ResourceError::new(name, "flush and shutdown", e))?;
        Ok(Flow::Propagate)
    }
}

#[async_trait::async_trait]
impl<S> AsyncExit for BufStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn exit(mut self: Box<Self>, _pending: Pending) -> Result<Flow, BoxError> {
        let name = type_name::<Self>();
        self.shutdown()
            .await
            .map_err(|e| ResourceError::new(name, "flush and shutdown", e))?;
        drain(&mut *self)
            .await
            .map_err(|e| ResourceError::new(name, "drain", e))?;
        Ok(Flow::Propagate)
    }
}
