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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::transport::smtp::client::AsyncTokioStream;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A byte stream a session runs over: plain TCP or TLS, under a [`Deadline`].
pub(super) trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin + fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + fmt::Debug> Io for T {}

/// A session's stream with what has been read from it but not yet consumed.
pub(super) type Reader = BufReader<Box<dyn Io>>;

pub(super) fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

/// A stream whose writes fail with `TimedOut` after `limit` without progress, and whose reads
/// fail when the answer to what was last written (a reply, however many lines) has taken
/// longer than `limit`: a peer trickling a line now and then cannot hold a send.
pub(super) struct Deadline<S> {
    inner: S,
    limit: Duration,
    read: Option<Pin<Box<Sleep>>>,
    write: Option<Pin<Box<Sleep>>>,
    /// When the reading of the current answer began (reset by each write).
    answer_since: Option<Instant>,
    /// Bumped by the session when one reply is complete and the next is awaited (several
    /// pipelined replies follow one write): each then gets a whole `limit`.
    next_answer: Arc<AtomicU64>,
    seen_answer: u64,
}

/// The session's hold on a [`Deadline`]'s answer clock.
#[derive(Debug, Clone, Default)]
pub(super) struct AnswerClock(Arc<AtomicU64>);

impl AnswerClock {
    /// The reply just read is complete: the next one gets a whole limit of its own.
    pub(super) fn next_answer(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl<S> Deadline<S> {
    #[cfg(test)]
    pub(super) fn new(inner: S, limit: Duration) -> Self {
        Self::with_clock(inner, limit, &AnswerClock::default())
    }

    /// A deadline whose answer clock `clock` can restart.
    pub(super) fn with_clock(inner: S, limit: Duration, clock: &AnswerClock) -> Self {
        Self {
            inner,
            limit,
            read: None,
            write: None,
            answer_since: None,
            next_answer: Arc::clone(&clock.0),
            seen_answer: 0,
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
        let answer = this.next_answer.load(Ordering::Relaxed);
        if answer != this.seen_answer {
            this.seen_answer = answer;
            this.answer_since = None;
        }
        let since = *this.answer_since.get_or_insert_with(Instant::now);
        let left = this.limit.saturating_sub(since.elapsed());
        if left.is_zero() {
            this.read = None;
            let what = format!("an answer taking more than {:?}: I/O", this.limit);
            return Poll::Ready(Err(timed_out(&what)));
        }
        let op = Pin::new(&mut this.inner).poll_read(cx, buf);
        with_deadline(&mut this.read, left, cx, op)
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
        if matches!(op, Poll::Ready(Ok(n)) if n > 0) {
            // Something new was said: its answer gets a whole `limit` of its own.
            this.answer_since = None;
        }
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
    /// Bytes of the server's current line so far (lettre buffers a line whole before it checks
    /// its length).
    line: usize,
}

/// The longest reply line taken from the server (RFC 5321 allows 512 octets).
const MAX_REPLY_LINE: usize = 64 * 1024;

impl Handover {
    /// A stream over `inner` that replays `greeting`, then `hello` once lettre sent EHLO.
    pub(super) fn new(inner: Reader, peer: SocketAddr, greeting: Vec<u8>, hello: Vec<u8>) -> Self {
        Self {
            inner,
            peer,
            replay: greeting,
            hello: Some(hello),
            taken: Vec::new(),
            line: 0,
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
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            let new = &buf.filled()[before..];
            this.line = match new.iter().rposition(|b| *b == b'\n') {
                Some(end) => new.len() - end - 1,
                None => this.line + new.len(),
            };
            if this.line > MAX_REPLY_LINE {
                let long = format!("a reply line longer than {MAX_REPLY_LINE} bytes");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, long)));
            }
        }
        read
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

    #[tokio::test(start_paused = true)]
    async fn an_answer_gets_the_limit_from_the_last_write_however_it_trickles() {
        let (client, mut server) = tokio::io::duplex(64);
        let limit = Duration::from_millis(300);
        let mut stream = Deadline::new(client, limit);
        let mut buf = [0u8; 4];
        let writer = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                server.write_all(b"ok").await.unwrap();
            }
            server
        });
        // Each answer follows a command of ours and comes within the limit.
        for _ in 0..2 {
            stream.write_all(b"NOOP\r\n").await.unwrap();
            assert_eq!(stream.read(&mut buf).await.unwrap(), 2);
        }
        // One answer trickling in two parts, together longer than the limit: TimedOut.
        stream.write_all(b"NOOP\r\n").await.unwrap();
        assert_eq!(stream.read(&mut buf).await.unwrap(), 2);
        let err = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(writer);
    }

    /// In `chain`, the message and the next mail's MAIL/RCPT/DATA go in one write; the message's
    /// reply comes after the server has taken the message (slow: content scanning), the group's
    /// replies after that. All share one `limit`: a final-dot reply at 0.8 of the limit leaves
    /// the next mail's three replies 0.2, and a server answering each within the limit fails it.
    #[tokio::test(start_paused = true)]
    async fn pipelined_replies_each_within_the_limit_are_not_timed_out() {
        let (client, mut server) = tokio::io::duplex(64);
        let limit = Duration::from_millis(1000);
        let clock = AnswerClock::default();
        let mut stream = Deadline::with_clock(client, limit, &clock);
        let mut buf = [0u8; 16];
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            server.write_all(b"250 queued\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            server.write_all(b"250 ok\r\n").await.unwrap();
            server
        });
        stream
            .write_all(b"...\r\n.\r\nMAIL FROM:<a@b>\r\n")
            .await
            .unwrap();
        assert!(stream.read(&mut buf).await.unwrap() > 0);
        // The next mail's MAIL reply, 300 ms after the message's: no write in between, but the
        // session says a new reply is awaited (pipeline.rs does before each pipelined reply).
        clock.next_answer();
        let r = stream.read(&mut buf).await;
        assert!(
            r.is_ok(),
            "the next mail's reply, 300 ms after the previous one: {r:?}"
        );
        drop(writer);
    }
}
