//! The byte streams under an SMTP connection: [`Deadline`] bounds every read and write, and
//! [`Handover`] gives lettre a session we opened ourselves.
//!
//! lettre's async client bounds only the TCP connect, so a server that accepts and then stays
//! silent would hang a send for ever. Every connection runs over [`Deadline`], which fails a
//! read or write that makes no progress within the timeout; lettre then sees an I/O error and
//! marks the connection broken, so it is never reused.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::transport::smtp::client::AsyncTokioStream;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::time::Sleep;

/// A byte stream a session runs over: plain TCP or TLS, under a [`Deadline`].
pub(super) trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin + fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + fmt::Debug> Io for T {}

/// A session's stream with what has been read from it but not yet consumed.
pub(super) type Reader = BufReader<Box<dyn Io>>;

pub(super) fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

/// A stream whose reads and writes fail with `TimedOut` after `limit` without progress.
pub(super) struct Deadline<S> {
    inner: S,
    limit: Duration,
    read: Option<Pin<Box<Sleep>>>,
    write: Option<Pin<Box<Sleep>>>,
}

impl<S> Deadline<S> {
    pub(super) fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            read: None,
            write: None,
        }
    }
}

/// Polls `op`; while it is pending, runs `timer` and fails with `TimedOut` when it fires.
fn with_deadline<T>(
    timer: &mut Option<Pin<Box<Sleep>>>,
    limit: Duration,
    cx: &mut Context<'_>,
    op: Poll<io::Result<T>>,
) -> Poll<io::Result<T>> {
    match op {
        Poll::Ready(result) => {
            *timer = None;
            Poll::Ready(result)
        }
        Poll::Pending => {
            let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    *timer = None;
                    Poll::Ready(Err(timed_out(&format!("no progress in {limit:?}: I/O"))))
                }
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let op = Pin::new(&mut this.inner).poll_read(cx, buf);
        with_deadline(&mut this.read, this.limit, cx, op)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let op = Pin::new(&mut this.inner).poll_write(cx, buf);
        with_deadline(&mut this.write, this.limit, cx, op)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let op = Pin::new(&mut this.inner).poll_flush(cx);
        with_deadline(&mut this.write, this.limit, cx, op)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let op = Pin::new(&mut this.inner).poll_shutdown(cx);
        with_deadline(&mut this.write, this.limit, cx, op)
    }
}

impl<S> fmt::Debug for Deadline<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deadline")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// The stream lettre's connection runs over, for a session we opened ourselves.
///
/// lettre's client starts every connection itself: it reads a greeting and sends EHLO. Our
/// opening (see [`super::opening`]) has already done both, and STARTTLS, so this stream
/// answers lettre from what the server said: it replays the server's greeting, takes lettre's
/// EHLO without sending it, and replays the server's last EHLO (or HELO) reply. Everything
/// after that goes to the server and back as it is.
#[derive(Debug)]
pub(super) struct Handover {
    inner: Reader,
    peer: SocketAddr,
    /// Bytes lettre reads before the server's: the greeting, then the EHLO reply.
    replay: Vec<u8>,
    /// The EHLO reply, until lettre has written its EHLO.
    hello: Option<Vec<u8>>,
    /// lettre's EHLO line so far.
    taken: Vec<u8>,
}

impl Handover {
    /// A stream over `inner` that replays `greeting`, then `hello` once lettre sent EHLO.
    pub(super) fn new(inner: Reader, peer: SocketAddr, greeting: Vec<u8>, hello: Vec<u8>) -> Self {
        Self {
            inner,
            peer,
            replay: greeting,
            hello: Some(hello),
            taken: Vec::new(),
        }
    }

    /// Takes lettre's first command (its EHLO) without sending it; once the line is complete,
    /// the EHLO reply is due.
    fn take_ehlo(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.taken.extend_from_slice(buf);
        if let Some(end) = self.taken.windows(2).position(|w| w == b"\r\n") {
            if end + 2 != self.taken.len() || !self.taken.starts_with(b"EHLO ") {
                return Err(io::Error::other("lettre's first command was not one EHLO"));
            }
            self.replay = self.hello.take().unwrap_or_default();
        }
        Ok(buf.len())
    }
}

impl AsyncRead for Handover {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.drain(..n);
            return Poll::Ready(Ok(()));
        }
        if this.hello.is_some() {
            let early = io::Error::other("lettre read a reply before sending EHLO");
            return Poll::Ready(Err(early));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Handover {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.hello.is_some() {
            return Poll::Ready(this.take_ehlo(buf));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for Handover {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_silent_peer_times_out_and_progress_resets_the_clock() {
        let (client, mut server) = tokio::io::duplex(64);
        let limit = Duration::from_millis(300);
        let mut stream = Deadline::new(client, limit);
        let mut buf = [0u8; 4];

        // Two reads each answered within the limit, though together they take longer.
        let writer = tokio::spawn(async move {
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                server.write_all(b"ok").await.unwrap();
            }
            server
        });
        let started = tokio::time::Instant::now();
        assert_eq!(stream.read(&mut buf).await.unwrap(), 2);
        assert_eq!(stream.read(&mut buf).await.unwrap(), 2);
        assert!(started.elapsed() > limit);
        let _server = writer.await.unwrap();

        // Nothing within the limit: TimedOut.
        let err = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
