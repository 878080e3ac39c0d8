//! The limit: the very mails our daemon delivered, pushed again straight into a fresh receiver of
//! the same kind by lettre's pooled `AsyncSmtpTransport` — no Teleport, no plugin data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use teleport_email::testkit::smtp::ReceivedMail;
use tokio::sync::Semaphore;

use crate::load::{Burst, Created, RECIPIENTS};
use crate::sink::{SMTP_PASSWORD, SMTP_USER, Sink, Tally, request_id, subject_of};

/// The mails of one request, as captured.
pub struct Request {
    pub id: String,
    pub mails: Vec<(Envelope, Vec<u8>)>,
}

/// Groups captured mails by request, in the order the requests' first mails arrived.
pub fn requests(mails: &[ReceivedMail]) -> Vec<Request> {
    let mut out: Vec<Request> = Vec::new();
    for m in mails {
        let id = request_id(&subject_of(m));
        let Some(envelope) = envelope(m) else {
            continue;
        };
        match out.iter_mut().find(|r| r.id == id) {
            Some(r) => r.mails.push((envelope, m.data.clone())),
            None => out.push(Request {
                id,
                mails: vec![(envelope, m.data.clone())],
            }),
        }
    }
    out
}

fn envelope(m: &ReceivedMail) -> Option<Envelope> {
    let from = m.mail_from.trim_matches(['<', '>']).parse().ok()?;
    let to = m
        .rcpt_to
        .iter()
        .map(|r| r.trim_matches(['<', '>']).parse())
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    Envelope::new(Some(from), to).ok()
}

/// A pooled transport to the sink's SMTP receiver, `connections` wide.
pub fn transport(
    sink: &Sink,
    connections: u32,
) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let receiver = sink
        .receiver()
        .ok_or_else(|| anyhow::anyhow!("the limit needs an SMTP sink"))?;
    Ok(
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(receiver.port())
            .credentials(Credentials::new(SMTP_USER.into(), SMTP_PASSWORD.into()))
            .pool_config(PoolConfig::new().max_size(connections))
            .build(),
    )
}

/// Sends every request's mails with at most `connections` sends in flight.
pub async fn burst(sink: &Sink, requests: &[Request], connections: u32) -> anyhow::Result<Burst> {
    let transport = Arc::new(transport(sink, connections)?);
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
                let r = t.send_raw(&e, &d).await;
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
    sink: &Sink,
    requests: &[Request],
    rate: f64,
    connections: u32,
) -> anyhow::Result<Tally> {
    let transport = Arc::new(transport(sink, connections)?);
    let start = tokio::time::Instant::now();
    let mut created = Created::new();
    let mut tasks = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        created.insert(r.id.clone(), Instant::now());
        for (envelope, data) in &r.mails {
            let (t, e, d) = (transport.clone(), envelope.clone(), data.clone());
            tasks.push(tokio::spawn(async move { t.send_raw(&e, &d).await }));
        }
    }
    for t in tasks {
        t.await??;
    }
    Ok(Tally::of(&sink.accepted(), &created, &RECIPIENTS))
}
