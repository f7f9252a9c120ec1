//! tokio-rustls's `TlsStream`s: `close_notify`, then the transport's own
//! close.
//!
//! A TLS peer can only tell a finished stream from a truncated one (an
//! attacker cutting the connection) by the `close_notify` alert. Dropping
//! a `TlsStream` closes the socket without it, and the peer's next read
//! fails with rustls's "peer closed connection without sending TLS
//! close_notify". The exit sends the alert and flushes it, within the
//! entry's [`Linger::flush_timeout`](crate::linger::Linger::flush_timeout),
//! then hands the transport to its own exit (for a `TcpStream` or a
//! `UnixStream`: shut the write side, then the bounded drain), with the
//! same [`Pending`], so the transport's bounds are the entry's.
//!
//! With no runtime left, the alert is written straight to the socket if
//! the transport is a `TcpStream` or a `UnixStream` (a non-blocking
//! `send`: it reaches the peer if the socket's buffer has room), then the
//! transport's own best effort runs.

use std::any::Any;
use std::borrow::Cow;
use std::io;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls::ConnectionCommon;

use crate::error::{BoxError, ResourceError};
use crate::linger::io_within;
use crate::traits::{AsyncExit, Flow, Pending};

/// The synchronous best effort: queue `close_notify` and write it to the
/// socket without waiting, when the transport is a socket this crate knows.
fn close_notify_now<D>(io: &dyn Any, conn: &mut ConnectionCommon<D>) {
    conn.send_close_notify();
    let Some(socket) = socket_of(io) else {
        return;
    };
    let mut socket = NoSignal(&socket);
    while conn.wants_write() {
        match conn.write_tls(&mut socket) {
            Ok(n) if n > 0 => {}
            _ => break, // full (WouldBlock), closed, or failed: best effort
        }
    }
}

/// Writes to a socket without waiting, and without SIGPIPE: a peer that
/// reset the connection is an `EPIPE` error, never a signal that ends the
/// process (a program need not ignore SIGPIPE as Rust's `main` does).
/// Where `MSG_NOSIGNAL` does not exist, the socket's own option stands in
/// (mio sets `SO_NOSIGPIPE` on Apple systems; Windows has no SIGPIPE).
struct NoSignal<'a>(&'a socket2::Socket);

impl io::Write for NoSignal<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        #[cfg(any(
            target_os = "linux",
            target_os = "android",
            target_os = "freebsd",
            target_os = "netbsd",
            target_os = "openbsd",
            target_os = "dragonfly",
        ))]
        return self.0.send_with_flags(buf, libc::MSG_NOSIGNAL);
        #[cfg(not(any(
            target_os = "linux",
            target_os = "android",
            target_os = "freebsd",
            target_os = "netbsd",
            target_os = "openbsd",
            target_os = "dragonfly",
        )))]
        return self.0.send(buf);
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The socket under a transport, if it is one this crate knows.
fn socket_of(io: &dyn Any) -> Option<socket2::SockRef<'_>> {
    if let Some(tcp) = io.downcast_ref::<tokio::net::TcpStream>() {
        return Some(socket2::SockRef::from(tcp));
    }
    #[cfg(unix)]
    if let Some(unix) = io.downcast_ref::<tokio::net::UnixStream>() {
        return Some(socket2::SockRef::from(unix));
    }
    None
}

/// Both sides' streams, written once.
macro_rules! tls_exit {
    ($ty:ident, $side:literal) => {
        /// Sends `close_notify` and flushes it (within the entry's
        /// `Linger::flush_timeout`; past it, a `TimedOut` error naming the
        /// stream), then closes the transport through its own exit with
        /// the same `Pending`: on every path, success, failure or
        /// abandonment, the peer reads a clean TLS closure. With no
        /// runtime left, the alert is written to a TCP or Unix socket
        /// without waiting, then the transport's own best effort runs.
        #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
        #[async_trait::async_trait]
        impl<S> AsyncExit for tokio_rustls::$ty::TlsStream<S>
        where
            S: AsyncExit + AsyncRead + AsyncWrite + Unpin,
        {
            async fn exit(mut self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
                let name = self.label();
                self.get_mut().1.send_close_notify();
                let sent = io_within(pending.linger().flush_timeout, "close_notify not sent", self.flush()).await;
                let (io, _) = self.into_inner();
                if let Err(e) = sent {
                    // The transport is dropped: closed without waiting
                    // further for a peer that does not read.
                    drop(io);
                    return Err(ResourceError::new(name, "send close_notify", e).into());
                }
                tracing::trace!(resource = %name, "close_notify sent");
                Box::new(io).exit(pending).await
            }

            fn label(&self) -> Cow<'static, str> {
                Cow::Owned(format!(concat!("TlsStream(", $side, ", {})"), self.get_ref().0.label()))
            }

            fn abandon(self: Box<Self>) {
                let (io, mut conn) = self.into_inner();
                close_notify_now(&io, &mut conn);
                Box::new(io).abandon();
            }
        }
    };
}

tls_exit!(client, "client");
tls_exit!(server, "server");

/// The stream of either side: its side's exit (`close_notify`, then the
/// transport's own close).
#[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
#[async_trait::async_trait]
impl<S> AsyncExit for tokio_rustls::TlsStream<S>
where
    S: AsyncExit + AsyncRead + AsyncWrite + Unpin,
{
    async fn exit(self: Box<Self>, pending: Pending) -> Result<Flow, BoxError> {
        match *self {
            tokio_rustls::TlsStream::Client(stream) => Box::new(stream).exit(pending).await,
            tokio_rustls::TlsStream::Server(stream) => Box::new(stream).exit(pending).await,
        }
    }

    fn label(&self) -> Cow<'static, str> {
        match self {
            tokio_rustls::TlsStream::Client(stream) => stream.label(),
            tokio_rustls::TlsStream::Server(stream) => stream.label(),
        }
    }

    fn abandon(self: Box<Self>) {
        match *self {
            tokio_rustls::TlsStream::Client(stream) => Box::new(stream).abandon(),
            tokio_rustls::TlsStream::Server(stream) => Box::new(stream).abandon(),
        }
    }
}
