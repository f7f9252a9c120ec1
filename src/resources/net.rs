//! `TcpStream` and `UnixStream`: shut down the write side, then drain
//! unread input (bounded), so the peer sees a clean EOF, never a reset.

use std::borrow::Cow;
use std::net::Shutdown;

use socket2::SockRef;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::drain::drain;
use crate::error::{BoxError, ResourceError};
use crate::linger::DRAIN_LIMIT;
use crate::traits::{AsyncExit, Flow, Pending};

/// Shared by both stream types: shutdown, then drain.
macro_rules! stream_exit {
    ($ty:ty, $label:expr) => {
        #[cfg_attr(docsrs, doc(cfg(feature = "net")))]
        #[async_trait::async_trait]
        impl AsyncExit for $ty {
            async fn exit(mut self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
                let label: fn(&$ty) -> String = $label;
                let name = label(&self);
                let linger = pending.linger();
                self.shutdown()
                    .await
                    .map_err(|e| ResourceError::new(name.clone(), "shutdown", e))?;
                let discarded = drain(&mut *self, &linger)
                    .await
                    .map_err(|e| ResourceError::new(name.clone(), "drain", e))?;
                tracing::trace!(resource = %name, discarded, "stream closed");
                Ok(Flow::Propagate)
            }

            fn label(&self) -> Cow<'static, str> {
                let label: fn(&$ty) -> String = $label;
                Cow::Owned(label(self))
            }

            fn abandon(self: Box<Self>) {
                // No runtime: the write-side shutdown is a plain syscall, and
                // whatever input is already buffered can be read without
                // waiting (the socket is non-blocking).
                let socket = SockRef::from(&*self);
                let _ = socket.shutdown(Shutdown::Write);
                let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
                let mut total = 0;
                while total < DRAIN_LIMIT {
                    match socket.recv(&mut buf) {
                        Ok(n) if n > 0 => total += n,
                        _ => break,
                    }
                }
            }
        }
    };
}

fn tcp_label(stream: &TcpStream) -> String {
    match (stream.local_addr(), stream.peer_addr()) {
        (Ok(local), Ok(peer)) => format!("TcpStream({local} -> {peer})"),
        (Ok(local), Err(_)) => format!("TcpStream({local} -> unknown peer)"),
        _ => "TcpStream".to_owned(),
    }
}

stream_exit!(TcpStream, tcp_label);

#[cfg(unix)]
fn unix_label(stream: &tokio::net::UnixStream) -> String {
    match stream
        .peer_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
    {
        Some(path) => format!("UnixStream({path})"),
        None => "UnixStream".to_owned(),
    }
}

#[cfg(unix)]
stream_exit!(tokio::net::UnixStream, unix_label);
