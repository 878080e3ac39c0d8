//! The limit: the very mails our daemon delivered, pushed again into a fresh receiver of the same
//! kind by a sender that does everything our daemon does to be fast, and nothing else — no
//! Teleport, no plugin data, no rendering.
//!
//! As many sessions as our daemon's pool (opened before the clock starts, kept open,
//! `TCP_NODELAY`, AUTH PLAIN when the receiver asks for it) take mails from one queue and
//! pipeline them (RFC 2920): a mail's MAIL FROM, RCPT TOs and DATA go in one write and their
//! replies are read together; then the message with its final dot goes in one write, followed
//! by the next queued mail's MAIL, RCPT and DATA when there is one, as our daemon chains them. A
//! burst costs one write and one read per mail. Every reply code is checked: one wrong reply
//! fails the column, and the receiver's count of lost and duplicate mails is taken as for the
//! other columns.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine as _;
use lettre::address::Envelope;
use teleport_email::testkit::smtp::ReceivedMail;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;

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

/// Sends every request's mails at once, then waits for the sessions to finish.
pub async fn burst(sink: &Sink, requests: &[Request], connections: u32) -> anyhow::Result<Burst> {
    let prepared: Vec<Vec<Arc<Prepared>>> = requests.iter().map(prepare_request).collect();
    let queue = Arc::new(Queue::default());
    let sessions = open_sessions(sink, connections, &queue).await?;
    let start = Instant::now();
    let mut created = Created::new();
    for (r, mails) in requests.iter().zip(prepared) {
        created.insert(r.id.clone(), start);
        mails.into_iter().for_each(|m| queue.push(m));
    }
    queue.close();
    finish(sessions).await?;
    Ok(Burst::from(
        Tally::of(&sink.accepted(), &created, &RECIPIENTS),
        start,
    ))
}

/// Queues each request's mails at once, one request every 1/`rate` s.
pub async fn steady(
    sink: &Sink,
    requests: &[Request],
    rate: f64,
    connections: u32,
) -> anyhow::Result<Tally> {
    let prepared: Vec<Vec<Arc<Prepared>>> = requests.iter().map(prepare_request).collect();
    let queue = Arc::new(Queue::default());
    let sessions = open_sessions(sink, connections, &queue).await?;
    let start = tokio::time::Instant::now();
    let mut created = Created::new();
    for (i, (r, mails)) in requests.iter().zip(prepared).enumerate() {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        created.insert(r.id.clone(), Instant::now());
        mails.into_iter().for_each(|m| queue.push(m));
    }
    queue.close();
    finish(sessions).await?;
    Ok(Tally::of(&sink.accepted(), &created, &RECIPIENTS))
}

type Sessions = Vec<tokio::task::JoinHandle<anyhow::Result<()>>>;

/// Opens `n` sessions to the sink's receiver and sets each serving `queue`.
async fn open_sessions(sink: &Sink, n: u32, queue: &Arc<Queue>) -> anyhow::Result<Sessions> {
    let receiver = sink.receiver().context("the limit needs an SMTP sink")?;
    let opened =
        futures_util::future::join_all((0..n).map(|_| Session::open(receiver.port()))).await;
    let mut tasks = Vec::new();
    for session in opened {
        let (session, queue) = (session?, Arc::clone(queue));
        tasks.push(tokio::spawn(async move { session.serve(&queue).await }));
    }
    Ok(tasks)
}

async fn finish(sessions: Sessions) -> anyhow::Result<()> {
    for s in sessions {
        s.await??;
    }
    Ok(())
}

/// One mail ready for the wire, built before the clock starts.
struct Prepared {
    /// `MAIL FROM`, a `RCPT TO` per recipient, `DATA`.
    commands: Vec<u8>,
    recipients: usize,
    /// The message, dot-stuffed, with its final dot.
    message: Vec<u8>,
}

fn prepare_request(r: &Request) -> Vec<Arc<Prepared>> {
    r.mails
        .iter()
        .map(|(envelope, data)| Arc::new(prepare(envelope, data)))
        .collect()
}

fn prepare(envelope: &Envelope, data: &[u8]) -> Prepared {
    let from = envelope.from().map(ToString::to_string).unwrap_or_default();
    let mut commands = format!("MAIL FROM:<{from}>\r\n");
    for to in envelope.to() {
        commands.push_str(&format!("RCPT TO:<{to}>\r\n"));
    }
    commands.push_str("DATA\r\n");
    let mut message = Vec::with_capacity(data.len() + 64);
    for line in data.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b".") {
            message.push(b'.');
        }
        message.extend_from_slice(line);
    }
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(b".\r\n");
    Prepared {
        commands: commands.into_bytes(),
        recipients: envelope.to().len(),
        message,
    }
}

/// The mails waiting for a session, shared by all of them.
#[derive(Default)]
struct Queue {
    mails: Mutex<VecDeque<Arc<Prepared>>>,
    closed: AtomicBool,
    ready: Notify,
}

impl Queue {
    fn push(&self, mail: Arc<Prepared>) {
        self.mails
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(mail);
        self.ready.notify_one();
    }

    /// No more mails will come: sessions finish once the queue is empty.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_waiters();
    }

    fn try_pop(&self) -> Option<Arc<Prepared>> {
        self.mails
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// The next mail, waiting for one; `None` once the queue is closed and empty.
    async fn pop(&self) -> Option<Arc<Prepared>> {
        loop {
            let ready = self.ready.notified();
            tokio::pin!(ready);
            // Registered before looking, so a push or close in between still wakes us.
            ready.as_mut().enable();
            if let Some(mail) = self.try_pop() {
                return Some(mail);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            ready.await;
        }
    }
}

/// One SMTP session, past EHLO and AUTH.
struct Session {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: String,
}

impl Session {
    async fn open(port: u16) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        let (read, writer) = tcp.into_split();
        let mut session = Self {
            reader: BufReader::new(read),
            writer,
            line: String::new(),
        };
        session.expect(220, "the greeting").await?;
        session.writer.write_all(b"EHLO limit.test\r\n").await?;
        let ehlo = session.expect(250, "EHLO").await?;
        let keyword = |k: &str| {
            ehlo.iter()
                .map(|l| l.to_ascii_uppercase())
                .find(|l| l.split_whitespace().next() == Some(k))
        };
        anyhow::ensure!(
            keyword("PIPELINING").is_some(),
            "the receiver does not offer PIPELINING"
        );
        // The bench's receiver asks everyone for AUTH (the original needs it).
        if let Some(auth) = keyword("AUTH") {
            anyhow::ensure!(
                auth.split_whitespace().any(|m| m == "PLAIN"),
                "the receiver offers AUTH without PLAIN: {auth}"
            );
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("\0{SMTP_USER}\0{SMTP_PASSWORD}"));
            let auth = format!("AUTH PLAIN {token}\r\n");
            session.writer.write_all(auth.as_bytes()).await?;
            session.expect(235, "AUTH PLAIN").await?;
        }
        Ok(session)
    }

    /// Sends every mail the queue gives until it is closed and empty, then QUIT. Each turn is
    /// one write — the message of the mail in progress, then the commands of the next — and
    /// the reading of its replies.
    async fn serve(mut self, queue: &Queue) -> anyhow::Result<()> {
        let mut out = Vec::new();
        // The mail whose DATA was answered 354: its message goes out next.
        let mut current: Option<Arc<Prepared>> = None;
        loop {
            out.clear();
            let next = match &current {
                Some(mail) => {
                    out.extend_from_slice(&mail.message);
                    queue.try_pop()
                }
                None => queue.pop().await,
            };
            if let Some(mail) = &next {
                out.extend_from_slice(&mail.commands);
            }
            if out.is_empty() {
                break;
            }
            self.writer.write_all(&out).await?;
            if current.take().is_some() {
                self.expect(250, "the end of the message").await?;
            }
            if let Some(mail) = &next {
                self.expect(250, "MAIL FROM").await?;
                for _ in 0..mail.recipients {
                    self.expect(250, "RCPT TO").await?;
                }
                self.expect(354, "DATA").await?;
            }
            current = next;
        }
        self.writer.write_all(b"QUIT\r\n").await?;
        self.expect(221, "QUIT").await?;
        Ok(())
    }

    /// Reads one reply, which must have code `code` (a `250` also stands for any 2xx, e.g. a
    /// `251` to RCPT); returns its lines' texts.
    async fn expect(&mut self, code: u16, what: &str) -> anyhow::Result<Vec<String>> {
        let mut texts = Vec::new();
        loop {
            self.line.clear();
            let n = self.reader.read_line(&mut self.line).await?;
            anyhow::ensure!(n > 0, "the receiver closed the session, waiting for {what}");
            let line = self.line.trim_end();
            let got: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .with_context(|| format!("not an SMTP reply to {what}: {line:?}"))?;
            let ok = got == code || (code == 250 && got / 100 == 2);
            anyhow::ensure!(ok, "{what} answered {line:?}, expected {code}");
            texts.push(line.get(4..).unwrap_or_default().to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(texts);
            }
        }
    }
}
