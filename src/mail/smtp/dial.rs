//! Opening one ready-to-send SMTP connection: TCP, implicit TLS or STARTTLS per policy, EHLO
//! (noting PIPELINING), AUTH — with a deadline on every network operation.
//!
//! lettre's async client bounds only the TCP connect, so a server that accepts and then stays
//! silent would hang a send for ever. Every connection here runs over [`Deadline`], which fails a
//! read or write that makes no progress within the timeout; lettre then sees an I/O error and
//! marks the connection broken, so it is never reused.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::commands::Ehlo;
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// The AUTH mechanisms we use, in order of preference.
const MECHANISMS: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

/// How the connection gets encrypted.
pub(super) enum Security {
    /// TLS from the first byte (SMTPS).
    Implicit(Arc<rustls::ClientConfig>),
    /// STARTTLS, failing when the server does not offer it.
    Required(TlsParameters),
    /// STARTTLS when offered.
    Opportunistic(TlsParameters),
    /// Never.
    None,
}

/// Everything needed to open a connection.
pub(super) struct Dialer {
    pub host: String,
    pub port: u16,
    pub timeout: Duration,
    pub hello: ClientId,
    pub security: Security,
    pub credentials: Option<Credentials>,
}

/// Why a connection could not be opened or used.
pub(super) enum Failure {
    Smtp(SmtpError),
    Io(io::Error),
    NoStartTls,
}

impl From<SmtpError> for Failure {
    fn from(e: SmtpError) -> Self {
        Self::Smtp(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl Dialer {
    /// A fresh connection, greeted, encrypted and authenticated as configured.
    pub async fn dial(&self) -> Result<Connection, Failure> {
        let connect = TcpStream::connect((self.host.as_str(), self.port));
        let tcp = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| timed_out("connect"))??;
        tcp.set_nodelay(true)?;
        let plain = Deadline::new(tcp, self.timeout);
        let stream: Box<dyn AsyncTokioStream> = match &self.security {
            Security::Implicit(config) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name, plain)
                    .await?;
                Box::new(ImplicitTls(tls))
            }
            _ => Box::new(plain),
        };
        let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &self.hello).await?;
        let starttls = match &self.security {
            Security::Required(params) if conn.can_starttls() => Some(params),
            Security::Required(_) => {
                conn.abort().await;
                return Err(Failure::NoStartTls);
            }
            Security::Opportunistic(params) if conn.can_starttls() => Some(params),
            _ => None,
        };
        if let Some(params) = starttls {
            conn.starttls(params.clone(), &self.hello).await?;
        }
        // lettre keeps only the EHLO keywords it uses itself; ask again to learn PIPELINING.
        let pipelining = offers_pipelining(&conn.command(Ehlo::new(self.hello.clone())).await?);
        if let Some(credentials) = &self.credentials
            && let Err(e) = conn.auth(&MECHANISMS, credentials).await
        {
            conn.abort().await;
            return Err(e.into());
        }
        Ok(Connection {
            smtp: conn,
            pipelining,
        })
    }
}

/// An open, ready connection and what its server offers beyond lettre's view.
pub(super) struct Connection {
    pub smtp: AsyncSmtpConnection,
    /// The server takes MAIL, RCPT and DATA in one go (RFC 2920).
    pub pipelining: bool,
}

fn offers_pipelining(ehlo: &Response) -> bool {
    ehlo.message().any(|line| {
        line.split_ascii_whitespace()
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case("PIPELINING"))
    })
}

fn timed_out(what: &str) -> io::Error {
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
    pub fn new(inner: S, limit: Duration) -> Self {
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

impl AsyncTokioStream for Deadline<TcpStream> {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
}

/// An implicit-TLS stream, over a [`Deadline`] so the handshake is bounded too.
struct ImplicitTls(tokio_rustls::client::TlsStream<Deadline<TcpStream>>);

impl fmt::Debug for ImplicitTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ImplicitTls")
    }
}

impl AsyncTokioStream for ImplicitTls {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().0.inner.peer_addr()
    }
}

impl AsyncRead for ImplicitTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ImplicitTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
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
