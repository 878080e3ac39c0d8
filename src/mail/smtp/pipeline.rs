//! One worker's round on one connection: the first mail, then — on a PIPELINING server —
//! whatever else is queued, each message written together with the next mail's commands.
//!
//! # What exactly-once rests on
//!
//! The mailer never sends a message twice by itself; these rules say when it may put a mail
//! back in the queue and when it must hand the failure to the caller instead.
//!
//! - **Reply order.** A server answers pipelined commands in the order they were written
//!   (RFC 2920 §3.1). A group is `MAIL`, one `RCPT` per recipient and `DATA`: `n + 2` replies,
//!   `MAIL`'s first. A message is written as its DATA form up to the final dot, followed by
//!   the next mail's group in the same write: the first reply is the message's, then the group's.
//!   Replies are never matched by content, only by position, so each one read is the one due.
//! - **Not sent: safe to retry on another connection.** Nothing of a message has reached the
//!   server until its final dot is written. So a mail whose group broke on the connection
//!   (reset, closed, garbage instead of a reply) before its message was written was not sent:
//!   a pooled connection found dead on the first group, and the next mail whose group rode
//!   behind a message whose reply never came. Such a mail goes back to the front of the queue.
//! - **Refused: not sent, reported.** A reply of 4xx or 5xx to `MAIL`, `RCPT`, `DATA` or the
//!   final dot means the server did not take the message. The outcome is reported (transient or
//!   permanent, see [`MailError`]); the connection is dropped when the refusal came before the
//!   message (its transaction state is unknown).
//! - **Maybe sent: reported, never retried here.** When the connection breaks or times out after
//!   the final dot was written and before its reply, the server may have queued the message.
//!   The mailer reports the failure (transient) and does not resend; whether to try again is the
//!   caller's decision, and the one place a duplicate can arise.
//! - **A message is written at most once per `send`.** The only loops that resend are the two
//!   "not sent" cases above, and both run before the message's first byte.
//!
//! [`MailError`]: super::super::MailError

use std::time::Duration;

use lettre::Address;
use lettre::address::Envelope;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::{Response, Severity};

use super::super::SmtpStep;
use super::Inner;
use super::dial::{Connection, Failure};
use super::queue::Queued;
use super::wire::{Verbatim, group};

/// A pooled connection idle for less than this is used without a NOOP first (PIPELINING
/// servers only, where a dead connection shows before the message is sent).
const TRUST_IDLE: Duration = Duration::from_secs(1);

/// How the first group of a round went.
// Made and matched once per round, never stored: boxing the connection would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Start {
    /// Written on this connection; its replies' outcome.
    Ready(Connection, Result<(), Failure>),
    /// Not sent: the mail goes back to the front of the queue (the fresh connection that
    /// replaced a dead one cannot pipeline).
    Requeue,
    /// No connection to replace a dead one.
    Failed(Failure),
}

impl Inner {
    /// A pooled connection, or a new one; `true` when it is reused without a NOOP first.
    ///
    /// A connection idle for a moment on a PIPELINING server is trusted as it is: should it
    /// have died meanwhile, the failure shows before the message is sent and the mail goes out
    /// on a fresh one. Others must answer NOOP first, as lettre's own pool does.
    async fn connection(&self) -> Result<(Connection, bool), Failure> {
        while let Some((mut conn, idle)) = self.pool.take() {
            if conn.pipelining && idle < TRUST_IDLE {
                return Ok((conn, true));
            }
            if conn.smtp.test_connected().await {
                return Ok((conn, false));
            }
            conn.smtp.abort().await;
        }
        Ok((self.dialer.dial().await?, false))
    }

    /// Sends `first`, then — on a PIPELINING connection — whatever else is queued that can
    /// follow it, each message written together with the next mail's commands.
    pub(super) async fn deliver(&self, first: Queued) {
        let (conn, trusted) = match self.connection().await {
            Ok(c) => c,
            Err(f) => return first.finish(Err(self.classify(f))),
        };
        if first.abandoned() {
            // Its caller gave up or withdrew it while the connection was being opened: not sent.
            return self.keep(conn);
        }
        if !(conn.pipelining && first.wire.pipelinable) {
            return self.deliver_one(conn, first).await;
        }
        match self.start(conn, trusted, &first).await {
            Start::Ready(conn, started) => self.chain(conn, first, started).await,
            Start::Requeue => self.retry_first(first),
            Start::Failed(f) => first.finish(Err(self.classify(f))),
        }
    }

    /// One command at a time, SMTPUTF8/8BITMIME as needed; a connection that saw a refusal
    /// or broke is closed (QUIT), as lettre's own exchange does.
    async fn deliver_one(&self, mut conn: Connection, mail: Queued) {
        let sent = send_one(&mut conn.smtp, &mail).await;
        match sent {
            // Withdrawn or abandoned after the server's 354: the server now reads the message,
            // so a QUIT would be taken as its text. The connection is dropped; a message cut
            // off before its final dot is discarded (RFC 5321 §4.1.1.4). Nobody waits.
            Ok(false) => drop(conn),
            Ok(true) => {
                self.keep(conn);
                mail.finish(Ok(()));
            }
            Err(f) => {
                // Refused or broken: the session's state is not one to go on from.
                conn.smtp.abort().await;
                self.keep(conn);
                mail.finish(Err(self.classify(f)));
            }
        }
    }

    /// Writes `first`'s group and reads its replies; a trusted pooled connection found dead
    /// is replaced by a fresh one first.
    async fn start(&self, mut conn: Connection, trusted: bool, first: &Queued) -> Start {
        let started = commands(&mut conn, &first.wire.envelope).await;
        if !(trusted && started.as_ref().is_err_and(Failure::is_network)) {
            return Start::Ready(conn, started);
        }
        // The pooled connection had died: nothing was sent on it.
        conn.smtp.abort().await;
        match self.dialer.dial().await {
            Ok(mut conn) if conn.pipelining => {
                let started = commands(&mut conn, &first.wire.envelope).await;
                Start::Ready(conn, started)
            }
            Ok(conn) => {
                self.keep(conn);
                Start::Requeue
            }
            Err(f) => Start::Failed(f),
        }
    }

    /// Writes each message with the next mail's group behind it, until the queue has no
    /// pipelinable mail left or the connection breaks.
    async fn chain(&self, mut conn: Connection, first: Queued, mut started: Result<(), Failure>) {
        let mut current = first;
        loop {
            if let Err(f) = started {
                // Refused before the message: the connection's state is unknown, so it goes.
                conn.smtp.abort().await;
                return current.finish(Err(self.classify(f)));
            }
            if !current.commit() {
                // Its caller gave up or withdrew it; the server waits for the message after its
                // 354: dropping the connection leaves it unsent (the next mail's group is not
                // written yet). No QUIT: the server would read it as the message's text.
                return drop(conn);
            }
            let next = self.next_pipelinable();
            let mut write =
                String::with_capacity(current.wire.head.len() + current.wire.body.len() + 160);
            current.wire.push_data(&mut write);
            if let Some(next) = &next {
                write.push_str(&group(&next.wire.envelope));
            }
            // The message's reply comes first; the next mail's follow.
            let sent = conn.smtp.command(Verbatim(&write)).await;
            let sent = completed(sent, SmtpStep::Message);
            let broken = sent.as_ref().is_err_and(Failure::is_network);
            current.finish(sent.map_err(|f| self.classify(f)));
            match next {
                None if broken => return conn.smtp.abort().await,
                None => return self.keep(conn),
                Some(next) if broken => {
                    // Its commands may never have arrived; its message was not sent.
                    conn.smtp.abort().await;
                    return self.retry_first(next);
                }
                Some(next) => {
                    conn.clock.next_answer();
                    let mail = conn.smtp.read_response().await;
                    let recipients = next.wire.envelope.to().len();
                    started = read_replies(&mut conn, recipients, mail).await;
                    current = next;
                }
            }
        }
    }
}

/// Writes `envelope`'s group and reads its replies: the first refusal, or a broken connection.
async fn commands(conn: &mut Connection, envelope: &Envelope) -> Result<(), Failure> {
    // `command` writes the whole group and reads the first reply (MAIL's); the rest follow.
    let mail = conn.smtp.command(Verbatim(&group(envelope))).await;
    read_replies(conn, envelope.to().len(), mail).await
}

/// Reads the rest of a group's replies after `mail` (MAIL's): one per RCPT of `recipients`,
/// then DATA's. Keeps the first failure, tagged with the command it answered (replies come
/// in the order of the commands); stops when the connection broke.
async fn read_replies(
    conn: &mut Connection,
    recipients: usize,
    mail: Result<Response, SmtpError>,
) -> Result<(), Failure> {
    let mut outcome = completed(mail, SmtpStep::Session);
    for reply in 1..=recipients + 1 {
        if outcome.as_ref().is_err_and(Failure::is_network) {
            break;
        }
        // Each reply gets the whole timeout, however many follow one write.
        conn.clock.next_answer();
        let answer = conn.smtp.read_response().await;
        let checked = match reply <= recipients {
            true => completed(answer, SmtpStep::Recipient),
            false => go_ahead(answer),
        };
        if let (Ok(()), Err(f)) = (&outcome, checked) {
            outcome = Err(f);
        }
    }
    outcome
}

/// A reply that must complete its command (2xx): a 3xx there means the replies are out of step.
fn completed(reply: Result<Response, SmtpError>, step: SmtpStep) -> Result<(), Failure> {
    expect(reply, step, |r| {
        r.code().severity == Severity::PositiveCompletion
    })
}

/// DATA's reply, which must be 354 ("start mail input").
fn go_ahead(reply: Result<Response, SmtpError>) -> Result<(), Failure> {
    expect(reply, SmtpStep::Message, |r| u16::from(r.code()) == 354)
}

fn expect(
    reply: Result<Response, SmtpError>,
    step: SmtpStep,
    right: impl Fn(&Response) -> bool,
) -> Result<(), Failure> {
    match reply {
        Ok(r) if right(&r) => Ok(()),
        Ok(r) => Err(Failure::Unexpected {
            step,
            code: u16::from(r.code()),
            text: r
                .message()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(200)
                .collect(),
        }),
        Err(e) => Err(Failure::Smtp(e, step)),
    }
}

/// One mail, one command at a time, each refusal tagged with the command it answered: `MAIL`
/// (the session's), each `RCPT` (the recipient's), `DATA` and the message (the message's).
/// `Ok(false)`: its sender withdrew it or went away before its message was written (the
/// server has nothing of it).
async fn send_one(conn: &mut AsyncSmtpConnection, queued: &Queued) -> Result<bool, Failure> {
    let wire = &queued.wire;
    let envelope = &wire.envelope;
    let message = wire.formatted();
    let parameters = mail_parameters(conn, envelope, &message)?;
    let mail = Mail::new(envelope.from().cloned(), parameters);
    completed(conn.command(mail).await, SmtpStep::Session)?;
    for to in envelope.to() {
        let rcpt = Rcpt::new(to.clone(), Vec::new());
        completed(conn.command(rcpt).await, SmtpStep::Recipient)?;
    }
    go_ahead(conn.command(Data).await)?;
    if !queued.commit() {
        return Ok(false);
    }
    completed(conn.message(&message).await, SmtpStep::Message).map(|()| true)
}

/// SMTPUTF8 for non-ASCII addresses and 8BITMIME for a non-ASCII message, as lettre asks
/// for them; a server without the one needed cannot take this mail.
fn mail_parameters(
    conn: &AsyncSmtpConnection,
    envelope: &Envelope,
    message: &[u8],
) -> Result<Vec<MailParameter>, Failure> {
    let server = conn.server_info();
    let to = || {
        let to: Vec<String> = envelope.to().iter().map(ToString::to_string).collect();
        to.join(", ")
    };
    let mut parameters = Vec::new();
    let ascii = |a: &Address| AsRef::<str>::as_ref(a).is_ascii();
    if !envelope.from().into_iter().chain(envelope.to()).all(ascii) {
        if !server.supports_feature(Extension::SmtpUtfEight) {
            let reason = "the address is not ASCII and the server does not offer SMTPUTF8";
            return Err(Failure::Unsupported { to: to(), reason });
        }
        parameters.push(MailParameter::SmtpUtfEight);
    }
    if !message.is_ascii() {
        if !server.supports_feature(Extension::EightBitMime) {
            let reason = "the message is not ASCII and the server does not offer 8BITMIME";
            return Err(Failure::Unsupported { to: to(), reason });
        }
        parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    Ok(parameters)
}
