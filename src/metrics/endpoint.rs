//! The HTTP endpoint that serves [`Metrics`]: `/metrics`, `/healthz` and `/readyz`, one request
//! per connection, and cheap whatever its clients do: a cap on connections served at once, one
//! deadline for the whole exchange (a client trickling bytes is cut off), and a backoff when
//! accepting fails (out of file descriptors) instead of a busy loop.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::Metrics;
use crate::backoff::Backoff;

/// The longest request head read; a longer one is answered as far as it got.
const MAX_HEAD: usize = 4096;

/// Limits that keep the endpoint cheap.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Connections served at once; one more makes room by closing the oldest (a client holding
    /// connections open without asking cannot keep a probe out).
    pub max_connections: usize,
    /// From accepting a connection to the last byte of the answer.
    pub request_deadline: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 16,
            request_deadline: Duration::from_secs(5),
        }
    }
}

/// Where connections come from: a [`TcpListener`], or a stand-in that fails in tests.
pub trait Listener: Send + 'static {
    /// One connection.
    type Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Conn>> + Send;
}

impl Listener for TcpListener {
    type Conn = TcpStream;

    async fn accept(&mut self) -> io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(conn, _)| conn)
    }
}

/// Binds the endpoint's address.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves on `listener` with the default [`ServeLimits`] until `stop`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    serve_with(listener, metrics, ServeLimits::default(), stop).await;
}

/// Serves on `listener` within `limits` until `stop`.
pub async fn serve_with<L: Listener>(
    mut listener: L,
    metrics: Arc<Metrics>,
    limits: ServeLimits,
    stop: CancellationToken,
) {
    let mut serving: VecDeque<AbortHandle> = VecDeque::new();
    let mut backoff = Backoff::accept_errors();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let conn = match accepted {
            Ok(conn) => {
                backoff.reset();
                conn
            }
            Err(error) => {
                let wait = backoff.next_delay();
                tracing::warn!(%error, retry_in = ?wait, "Metrics endpoint cannot accept a connection; backing off");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        serving.retain(|task| !task.is_finished());
        if serving.len() >= limits.max_connections.max(1)
            && let Some(oldest) = serving.pop_front()
        {
            tracing::debug!(
                max_connections = limits.max_connections,
                "Metrics endpoint busy; its oldest connection closed"
            );
            oldest.abort();
        }
        let metrics = Arc::clone(&metrics);
        let deadline = limits.request_deadline;
        let task = tokio::spawn(async move {
            let _ = tokio::time::timeout(deadline, exchange(conn, &metrics)).await;
        });
        serving.push_back(task.abort_handle());
    }
}

/// Reads one request head and writes the answer.
async fn exchange<C: AsyncRead + AsyncWrite + Unpin>(mut conn: C, metrics: &Metrics) {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
        match conn.read(&mut buf[len..]).await {
            Ok(n) if n > 0 => len += n,
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, body, ctype) = match path {
        "/metrics" => ("200 OK", metrics.render(), "text/plain; version=0.0.4"),
        "/healthz" => ("200 OK", "ok\n".to_owned(), "text/plain"),
        "/readyz" if metrics.is_ready() => ("200 OK", "ready\n".to_owned(), "text/plain"),
        "/readyz" => (
            "503 Service Unavailable",
            "not ready\n".to_owned(),
            "text/plain",
        ),
        _ => ("404 Not Found", "not found\n".to_owned(), "text/plain"),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(resp.as_bytes()).await;
    let _ = conn.shutdown().await;
}

#[cfg(test)]
mod tests;
