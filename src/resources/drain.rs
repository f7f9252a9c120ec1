//! The bounded drain that turns a close into a clean EOF for the peer.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

#[cfg(feature = "io-util")]
use crate::linger::io_within;
use crate::linger::{Linger, within};

/// Reads and discards until EOF, `linger.drain_limit` bytes, or
/// `linger.drain_timeout`. Returns how many bytes were discarded. Only an
/// I/O error is an error.
pub(crate) async fn drain<R: AsyncRead + Unpin + ?Sized>(reader: &mut R, linger: &Linger) -> io::Result<usize> {
    let mut buf = [0u8; 8192];
    let mut total = 0usize;
    let limit = linger.drain_limit;
    let reading = async {
        while total < limit {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n;
        }
        Ok(())
    };
    match within(linger.drain_timeout, reading).await {
        Some(Ok(())) | None => Ok(total),
        Some(Err(e)) => Err(e),
    }
}

#[cfg(feature = "io-util")]
/// Flushes and shuts down `writer` within `linger.flush_timeout`; past it,
/// a `TimedOut` error.
pub(crate) async fn flush_and_shutdown<W>(writer: &mut W, linger: &Linger) -> io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    use tokio::io::AsyncWriteExt as _;
    // `shutdown` flushes the buffer first, then shuts the writer down.
    io_within(linger.flush_timeout, "not flushed", writer.shutdown()).await
}
