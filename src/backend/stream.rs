//! A backend connection over TCP, over TLS, or over a unix socket (twemproxy's `/path/redis.sock:1`
//! server lines): one type for all, so that the connection code is written once.
//!
//! A TLS stream keeps records it could not send at once until it is flushed: writers flush after
//! each batch (a no-op for the others).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

use crate::tls::{ClientStream, Connector};

type Tls = ClientStream<TcpStream>;

pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    // Boxed: rustls's state is large, and most pools speak plain TCP.
    Tls(Box<Tls>),
}

pub(crate) enum ReadHalf {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Box<Tls>>),
}

pub(crate) enum WriteHalf {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Box<Tls>>),
}

impl Stream {
    /// Connects to `host:port` (over TLS with `tls`), or to the unix socket at `addr` when it is a
    /// path.
    pub async fn connect(addr: &str, tls: Option<&Connector>) -> io::Result<Stream> {
        if addr.starts_with('/') {
            return Ok(Stream::Unix(UnixStream::connect(addr).await?));
        }
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        match tls {
            Some(tls) => {
                let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
                Ok(Stream::Tls(Box::new(tls.connect(host, stream).await?)))
            }
            None => Ok(Stream::Tcp(stream)),
        }
    }

    /// Halves that read and write independently, without a lock between them.
    pub(super) fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
            // One TLS state for both directions: the halves take turns at it.
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }
}

/// Delegates to the variant's own implementation (every variant is `Unpin`).
macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self.get_mut() {
            Self::Tcp($s) => $call,
            Self::Unix($s) => $call,
            Self::Tls($s) => $call,
        }
    };
}

/// Reading and writing, for the whole stream and for its halves alike.
macro_rules! impl_io {
    (read: $($t:ty),*) => {$(
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                delegate!(self, s => Pin::new(s).poll_read(cx, buf))
            }
        }
    )*};
    (write: $($t:ty),*) => {$(
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                delegate!(self, s => Pin::new(s).poll_write(cx, buf))
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                delegate!(self, s => Pin::new(s).poll_flush(cx))
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                delegate!(self, s => Pin::new(s).poll_shutdown(cx))
            }
        }
    )*};
}

impl_io!(read: Stream, ReadHalf);
impl_io!(write: Stream, WriteHalf);
