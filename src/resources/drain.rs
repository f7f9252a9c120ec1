//! The bounded drain that turns a close into a clean EOF for the peer.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// At most this many unread bytes are read and discarded when a stream is
/// closed. Past it the stream is closed anyway (the peer may then see a
/// reset).
pub const DRAIN_LIMIT: usize = 1 << 20;

/// At most this long is spent draining unread input when a stream is
/// closed, waiting for the peer's EOF (a "lingering close"). A peer that
/// neither writes nor closes costs this much; one that closes costs a
/// round trip. The bound is a tokio timer: it needs the runtime's time
/// driver (`enable_time`, part of `enable_all` and `#[tokio::main]`).
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(250);

/// Reads and discards until EOF, `DRAIN_LIMIT` bytes, or `DRAIN_TIMEOUT`.
/// Returns how many bytes were discarded. Only an I/O error is an error.
pub(crate) async fn drain<R: AsyncRead + Unpin + ?Sized>(reader: &mut R) -> io::Result<usize> {
    let mut buf = [0u8; 8192];
    let mut total = 0usize;
    let reading = async {
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            total += n;
            if total >= DRAIN_LIMIT {
                return Ok(());
            }
        }
    };
    match tokio::time::timeout(DRAIN_TIMEOUT, reading).await {
        Ok(Ok(())) | Err(_) => Ok(total),
        Ok(Err(e)) => Err(e),
    }
}
