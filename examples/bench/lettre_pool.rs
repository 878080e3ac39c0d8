//! The lettre column: the mails the limit replays (see `limit`), sent by lettre's SMTP client,
//! which does not pipeline: each mail is four round trips (MAIL, RCPT, DATA, the message), five
//! with the NOOP its pool sends before reusing a connection.
//!
//! Two senders: lettre's pooled `AsyncSmtpTransport` as shipped, and the same pool behaviour
//! (reuse, NOOP before reuse) over lettre's `AsyncSmtpConnection` on a `TCP_NODELAY` socket. The
//! transport does not set `TCP_NODELAY`, so the last write of every mail waits for the server's
//! delayed ACK (~40 ms on Linux): as shipped it measures Nagle, not the machine.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::Semaphore;

use crate::limit::Request;
use crate::load::{Burst, Created, RECIPIENTS};
use crate::sink::{SMTP_PASSWORD, SMTP_USER, Sink, Tally};

/// Which lettre sender.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// `AsyncSmtpTransport` with its pool, as shipped.
    Transport,
    /// `AsyncSmtpConnection` on a `TCP_NODELAY` socket, pooled the same way.
    Nodelay,
}

pub enum Sender {
    Transport(AsyncSmtpTransport<Tokio1Executor>),
    Nodelay {
        port: u16,
        idle: Mutex<Vec<AsyncSmtpConnection>>,
    },
}

impl Sender {
    /// A sender to the sink's SMTP receiver keeping up to `connections` idle.
    pub fn new(kind: Kind, sink: &Sink, connections: u32) -> anyhow::Result<Self> {
        let port = sink
            .receiver()
            .ok_or_else(|| anyhow::anyhow!("the limit needs an SMTP sink"))?
            .port();
        Ok(match kind {
            Kind::Transport => Self::Transport(
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
                    .port(port)
                    .credentials(credentials())
                    .pool_config(PoolConfig::new().max_size(connections))
                    .build(),
            ),
            Kind::Nodelay => Self::Nodelay {
                port,
                idle: Mutex::new(Vec::new()),
            },
        })
    }

    pub async fn send(&self, envelope: &Envelope, data: &[u8]) -> anyhow::Result<()> {
        match self {
            Self::Transport(t) => {
                t.send_raw(envelope, data).await?;
            }
            Self::Nodelay { port, idle } => {
                let pooled = idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let mut conn = match pooled {
                    Some(mut c) => {
                        if c.test_connected().await {
                            c
                        } else {
                            dial(*port).await?
                        }
                    }
                    None => dial(*port).await?,
                };
                conn.send(envelope, data).await?;
                idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            }
        }
        Ok(())
    }
}

fn credentials() -> Credentials {
    Credentials::new(SMTP_USER.into(), SMTP_PASSWORD.into())
}

async fn dial(port: u16) -> anyhow::Result<AsyncSmtpConnection> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let mut conn =
        AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &ClientId::default()).await?;
    conn.auth(&[Mechanism::Plain], &credentials()).await?;
    Ok(conn)
}

/// Sends every request's mails with at most `connections` sends in flight.
pub async fn burst(
    kind: Kind,
    sink: &Sink,
    requests: &[Request],
    connections: u32,
) -> anyhow::Result<Burst> {
    let transport = Arc::new(Sender::new(kind, sink, connections)?);
    let permits = Arc::new(Semaphore::new(connections as usize));
    let start = Instant::now();
    let mut created = Created::new();
    let mut tasks = Vec::new();
    for r in requests {
        created.insert(r.id.clone(), start);
        for (envelope, data) in &r.mails {
            let permit = permits.clone().acquire_owned().await?;
            let (t, e, d) = (transport.clone(), envelope.clone(), data.clone());
            tasks.push(tokio::spawn(async move {
                let r = t.send(&e, &d).await;
                drop(permit);
                r
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    Ok(Burst::from(
        Tally::of(&sink.accepted(), &created, &RECIPIENTS),
        start,
    ))
}

/// Sends each request's mails at once, one request every 1/`rate` s.
pub async fn steady(
    kind: Kind,
    sink: &Sink,
    requests: &[Request],
    rate: f64,
    connections: u32,
) -> anyhow::Result<Tally> {
    let transport = Arc::new(Sender::new(kind, sink, connections)?);
    let start = tokio::time::Instant::now();
    let mut created = Created::new();
    let mut tasks = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        created.insert(r.id.clone(), Instant::now());
        for (envelope, data) in &r.mails {
            let (t, e, d) = (transport.clone(), envelope.clone(), data.clone());
            tasks.push(tokio::spawn(async move { t.send(&e, &d).await }));
        }
    }
    for t in tasks {
        t.await??;
    }
    Ok(Tally::of(&sink.accepted(), &created, &RECIPIENTS))
}
