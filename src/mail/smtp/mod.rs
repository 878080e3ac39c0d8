//! The SMTP backend: lettre's SMTP client over our own small connection pool, rustls, and its
//! errors classified.
//!
//! Connections are pooled and reused across mails (the original dials once per mail). TLS follows
//! `smtp.starttls_policy` (`mandatory` → STARTTLS required, `opportunistic` → used when offered,
//! `disabled` → never) unless `implicit_tls` is set, when TLS starts with the first byte. Server
//! certificates are checked against the OS trust store, which honours `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`. AUTH (PLAIN, then LOGIN) is used only when a username is configured. Every
//! network operation has a deadline (see [`dial`]).

mod dial;
mod mime;
mod pool;

use std::collections::VecDeque;
use std::error::Error as _;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use lettre::Address;
use lettre::address::Envelope;
use lettre::message::header::{self, HeaderName, HeaderValue, Headers};
use lettre::message::{Mailbox, Mailboxes};
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::ClientId;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::sync::oneshot;

use super::{
    AUTO_RESPONSE_SUPPRESS, AUTO_SUBMITTED, MailError, Mailer, MessageId, OutgoingMail, SmtpStep,
};
use crate::config::{SmtpConfig, StartTlsPolicy};
use dial::{Connection, Dialer, Failure, Security};
use pool::Pool;

/// A pooled connection idle for less than this is used without a NOOP first (PIPELINING
/// servers only, where a dead connection shows before the message is sent).
const TRUST_IDLE: Duration = Duration::from_secs(1);

/// Knobs the configuration file does not set; the defaults suit production.
#[derive(Debug, Clone)]
pub struct SmtpOptions {
    /// Per network operation: connect, TLS handshake, each command's reply.
    pub timeout: Duration,
    /// Extra trusted CA certificates (PEM), on top of the OS trust store; for tests.
    pub extra_root_certs_pem: Vec<Vec<u8>>,
    /// Connections at most, open at once and kept idle (sends beyond it wait their turn).
    pub pool_max_size: u32,
    /// Idle connections older than this are not reused; keep it under the server's idle timeout.
    pub pool_idle_timeout: Duration,
    /// The EHLO name; the host name when `None`.
    pub hello_name: Option<String>,
}

impl Default for SmtpOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            extra_root_certs_pem: Vec::new(),
            pool_max_size: 8,
            pool_idle_timeout: Duration::from_secs(30),
            hello_name: None,
        }
    }
}

/// Sends mail through one SMTP server over a small pool of connections.
///
/// Mails wait in one queue; up to `pool_max_size` workers each take a connection and send
/// what is queued. On a PIPELINING server a worker writes each message together with the next
/// mail's MAIL, RCPT and DATA, so a burst costs one round trip per mail.
pub struct SmtpMailer {
    inner: Arc<Inner>,
}

struct Inner {
    dialer: Dialer,
    pool: Pool,
    /// `host:port`, for messages.
    server: String,
    from: Mailbox,
    bodies: BodyCache,
    queue: std::sync::Mutex<Queue>,
    /// Workers at most: a burst reuses a few connections instead of opening one per mail.
    max_workers: usize,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Queued>,
    workers: usize,
    closed: bool,
}

/// A mail waiting for a worker, and where its outcome goes.
struct Queued {
    wire: Wire,
    done: oneshot::Sender<Result<(), MailError>>,
}

impl Queued {
    fn finish(self, outcome: Result<(), MailError>) {
        // The sender may have stopped waiting (shutdown); the outcome is then nobody's.
        let _ = self.done.send(outcome);
    }
}

impl SmtpMailer {
    /// A mailer for `config`, sending as `from`. Nothing is dialled until the first send.
    pub fn new(config: &SmtpConfig, from: &str, options: SmtpOptions) -> Result<Self, MailError> {
        let setup = |reason: String| MailError::Setup {
            backend: "smtp",
            reason,
        };
        let from: Mailbox = from
            .parse()
            .map_err(|e| setup(format!("delivery.sender {from:?} is not a mailbox: {e}")))?;
        let security = security(config, &options.extra_root_certs_pem)
            .map_err(|e| setup(format!("TLS setup for {}: {e}", config.host)))?;
        let credentials = config.username.as_ref().map(|user| {
            let password = config.password.as_ref().map(|p| p.expose()).unwrap_or("");
            Credentials::new(user.clone(), password.to_owned())
        });
        let pool_size = options.pool_max_size.max(1) as usize;
        let inner = Inner {
            dialer: Dialer {
                host: config.host.clone(),
                port: config.port,
                timeout: options.timeout,
                hello: options.hello_name.map(ClientId::Domain).unwrap_or_default(),
                security,
                credentials,
            },
            pool: Pool::new(pool_size, options.pool_idle_timeout),
            server: format!("{}:{}", config.host, config.port),
            from,
            bodies: BodyCache::default(),
            queue: std::sync::Mutex::default(),
            max_workers: pool_size,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// `host:port` of the server.
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    #[cfg(test)]
    fn wire(&self, mail: &OutgoingMail) -> Result<Wire, MailError> {
        self.inner.wire(mail)
    }
}

impl Inner {
    /// `mail` as SMTP carries it: the envelope, the header section and the shared body.
    fn wire(&self, mail: &OutgoingMail) -> Result<Wire, MailError> {
        let bad = |reason: String| MailError::BadMessage {
            to: mail.to.clone(),
            reason,
        };
        let to: Address = mail
            .to
            .parse()
            .map_err(|e| bad(format!("not an address: {e}")))?;
        let envelope = Envelope::new(Some(self.from.email.clone()), vec![to.clone()])
            .map_err(|e| bad(e.to_string()))?;
        // lettre's typed headers, in the order its message builder writes them; each value is
        // encoded (RFC 2047) and folded by lettre, and the subject has lost any CR or LF.
        let mut headers = Headers::with_capacity(12);
        headers.set(header::From::from(Mailboxes::from(self.from.clone())));
        headers.set(header::To::from(Mailboxes::from(Mailbox::new(None, to))));
        headers.set(header::Subject::from(super::text::header_safe(
            &mail.subject,
        )));
        headers.set(header::MessageId::from(mail.message_id.header_form()));
        headers.insert_raw(raw_header("Auto-Submitted", AUTO_SUBMITTED));
        headers.insert_raw(raw_header(
            "X-Auto-Response-Suppress",
            AUTO_RESPONSE_SUPPRESS,
        ));
        if let Some(first) = &mail.in_reply_to {
            headers.set(header::InReplyTo::from(first.header_form()));
            headers.set(header::References::from(first.header_form()));
        }
        headers.set(header::MIME_VERSION_1_0);
        headers.set(header::Date::now());
        Ok(Wire::new(
            envelope,
            headers.to_string(),
            self.bodies.get(&mail.text, &mail.html),
        ))
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `mail`, starting a worker when fewer than the most are at work.
    fn enqueue(self: &Arc<Self>, mail: Queued) {
        let mut queue = self.queue();
        if queue.closed {
            drop(queue);
            return mail.finish(Err(closed()));
        }
        queue.waiting.push_back(mail);
        if queue.workers < self.max_workers {
            queue.workers += 1;
            tokio::spawn(Arc::clone(self).work());
        }
    }

    /// The next mail; with none, the worker retires (in the same step, so a mail queued
    /// meanwhile always finds a worker).
    fn next_or_retire(&self) -> Option<Queued> {
        let mut queue = self.queue();
        let next = queue.waiting.pop_front();
        if next.is_none() {
            queue.workers -= 1;
        }
        next
    }

    /// The next mail when it can be pipelined behind a message.
    fn next_pipelinable(&self) -> Option<Queued> {
        let mut queue = self.queue();
        if queue.waiting.front()?.wire.pipelinable {
            queue.waiting.pop_front()
        } else {
            None
        }
    }

    /// Puts back a mail that was not sent, to go first on another connection.
    fn retry_first(&self, mail: Queued) {
        self.queue().waiting.push_front(mail);
    }

    async fn work(self: Arc<Self>) {
        while let Some(mail) = self.next_or_retire() {
            self.deliver(mail).await;
        }
    }

    /// Keeps `conn` for the next mail, unless the mailer was closed.
    fn keep(&self, conn: Connection) {
        if !self.queue().closed {
            self.pool.put(conn);
        }
    }

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
    async fn deliver(&self, first: Queued) {
        let (mut conn, trusted) = match self.connection().await {
            Ok(c) => c,
            Err(f) => return first.finish(Err(self.classify(f))),
        };
        if !(conn.pipelining && first.wire.pipelinable) {
            // lettre's own exchange: one command at a time, SMTPUTF8/8BITMIME as needed. It has
            // already sent QUIT and closed a connection it marked broken.
            let sent = conn
                .smtp
                .send(&first.wire.envelope, &first.wire.formatted())
                .await;
            self.keep(conn);
            return first.finish(sent.map(drop).map_err(|e| self.classify(Failure::Smtp(e))));
        }
        let mut started = commands(&mut conn.smtp, &first.wire.envelope).await;
        if trusted && started.as_ref().is_err_and(is_network_failure) {
            // The pooled connection had died: nothing was sent on it.
            conn.smtp.abort().await;
            conn = match self.dialer.dial().await {
                Ok(c) if c.pipelining => c,
                Ok(c) => {
                    self.keep(c);
                    return self.retry_first(first);
                }
                Err(f) => return first.finish(Err(self.classify(f))),
            };
            started = commands(&mut conn.smtp, &first.wire.envelope).await;
        }
        let mut current = first;
        loop {
            if let Err(e) = started {
                // Refused before the message: the connection's state is unknown, so it goes.
                conn.smtp.abort().await;
                return current.finish(Err(self.classify(Failure::Smtp(e))));
            }
            let next = self.next_pipelinable();
            let mut write = String::with_capacity(
                current.wire.head.len() + current.wire.body.formatted.len() + 160,
            );
            current.wire.push_data(&mut write);
            if let Some(next) = &next {
                write.push_str(&group(&next.wire.envelope));
            }
            // The message's reply comes first; the next mail's follow.
            let sent = conn.smtp.command(Verbatim(&write)).await;
            let broken = sent.as_ref().is_err_and(is_network_failure);
            current.finish(sent.map(drop).map_err(|e| self.classify(Failure::Smtp(e))));
            match next {
                None if broken => return conn.smtp.abort().await,
                None => return self.keep(conn),
                Some(next) if broken => {
                    // Its commands may never have arrived; its message was not sent.
                    conn.smtp.abort().await;
                    return self.retry_first(next);
                }
                Some(next) => {
                    let replies = next.wire.envelope.to().len() + 2;
                    started = read_replies(&mut conn.smtp, replies, Ok(())).await;
                    current = next;
                }
            }
        }
    }

    fn classify(&self, failure: Failure) -> MailError {
        let server = self.server.clone();
        match failure {
            Failure::Smtp(e) => classify(server, &e),
            Failure::Io(e) => classify_io(server, &e),
            Failure::NoStartTls => MailError::StartTlsUnavailable { server },
        }
    }
}

fn closed() -> MailError {
    MailError::Setup {
        backend: "smtp",
        reason: "the mailer was closed".into(),
    }
}

#[async_trait::async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        let wire = self.inner.wire(mail)?;
        let (done, outcome) = oneshot::channel();
        self.inner.enqueue(Queued { wire, done });
        outcome.await.unwrap_or_else(|_| Err(closed()))?;
        Ok(mail.message_id.clone())
    }

    /// A fresh connection (not a pooled one): connect, EHLO, TLS and AUTH as configured, QUIT.
    async fn health_check(&self) -> Result<(), MailError> {
        let inner = &self.inner;
        let mut conn = inner.dialer.dial().await.map_err(|f| inner.classify(f))?;
        conn.smtp
            .quit()
            .await
            .map_err(|e| inner.classify(Failure::Smtp(e)))?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "smtp"
    }

    async fn close(&self) {
        let waiting = {
            let mut queue = self.inner.queue();
            queue.closed = true;
            std::mem::take(&mut queue.waiting)
        };
        for mail in waiting {
            mail.finish(Err(closed()));
        }
        for mut conn in self.inner.pool.drain() {
            let _ = conn.smtp.quit().await;
        }
    }
}

/// One mail as SMTP carries it.
struct Wire {
    envelope: Envelope,
    /// The message's header section, each line ending in CRLF.
    head: String,
    /// The MIME body, with its own headers: shared by a request's recipients.
    body: Arc<EncodedBody>,
    /// All ASCII (addresses, headers, body), so it can go in the pipelined exchange; otherwise
    /// lettre's exchange negotiates 8BITMIME or SMTPUTF8.
    pipelinable: bool,
}

impl Wire {
    fn new(envelope: Envelope, head: String, body: Arc<EncodedBody>) -> Self {
        let ascii_addresses = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .all(|a: &Address| AsRef::<str>::as_ref(a).is_ascii());
        let pipelinable = ascii_addresses && head.is_ascii() && body.stuffed.is_some();
        Self {
            envelope,
            head,
            body,
            pipelinable,
        }
    }

    /// Appends the message in its DATA form (RFC 5321 §4.5.2): dot-stuffed, final dot included.
    /// Only for a pipelinable mail (the body's stuffed form exists).
    fn push_data(&self, out: &mut String) {
        stuff_into(out, &self.head);
        out.push_str(self.body.stuffed.as_deref().unwrap_or_default());
        out.push_str(DATA_END);
    }

    /// The message as lettre takes it.
    fn formatted(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + self.body.formatted.len());
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(&self.body.formatted);
        out
    }
}

/// A MIME body encoded once.
struct EncodedBody {
    formatted: Vec<u8>,
    /// Dot-stuffed, without the final dot; `None` when not all ASCII.
    stuffed: Option<String>,
}

/// The last few encoded bodies: a request's recipients get the same text and HTML, which
/// need encoding (quoted-printable) only once.
#[derive(Default)]
struct BodyCache {
    recent: std::sync::Mutex<VecDeque<(String, String, Arc<EncodedBody>)>>,
}

impl BodyCache {
    const SIZE: usize = 16;

    fn get(&self, text: &str, html: &str) -> Arc<EncodedBody> {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, body)) = recent.iter().find(|(t, h, _)| t == text && h == html) {
            return Arc::clone(body);
        }
        let formatted = mime::alternative(text, html).formatted();
        let stuffed = std::str::from_utf8(&formatted)
            .ok()
            .filter(|t| t.is_ascii())
            .map(|t| {
                let mut out = String::with_capacity(t.len() + t.len() / 64);
                stuff_into(&mut out, t);
                out
            });
        let body = Arc::new(EncodedBody { formatted, stuffed });
        if recent.len() == Self::SIZE {
            recent.pop_back();
        }
        recent.push_front((text.to_owned(), html.to_owned(), Arc::clone(&body)));
        body
    }
}

/// MAIL, RCPT for each recipient and DATA: one pipelined group (RFC 2920).
fn group(envelope: &Envelope) -> String {
    use std::fmt::Write as _;
    let mut group = Mail::new(envelope.from().cloned(), Vec::new()).to_string();
    for to in envelope.to() {
        let _ = write!(group, "{}", Rcpt::new(to.clone(), Vec::new()));
    }
    let _ = write!(group, "{Data}");
    group
}

/// Writes `envelope`'s group and reads its replies: the first refusal, or a broken connection.
async fn commands(conn: &mut AsyncSmtpConnection, envelope: &Envelope) -> Result<(), SmtpError> {
    // `command` writes the whole group and reads the first reply (MAIL's); the rest follow.
    let first = conn.command(Verbatim(&group(envelope))).await.map(drop);
    read_replies(conn, envelope.to().len() + 1, first).await
}

/// Reads `count` more replies after `first`, keeping the first error; stops when the
/// connection broke.
async fn read_replies(
    conn: &mut AsyncSmtpConnection,
    count: usize,
    first: Result<(), SmtpError>,
) -> Result<(), SmtpError> {
    let mut outcome = first;
    for _ in 0..count {
        if outcome.as_ref().is_err_and(is_network_failure) {
            break;
        }
        let reply = conn.read_response().await;
        if let (Ok(()), Err(e)) = (&outcome, reply) {
            outcome = Err(e);
        }
    }
    outcome
}

/// What ends a message in DATA, as lettre writes it (after the message's own last CRLF).
const DATA_END: &str = "\r\n.\r\n";

/// The DATA form of `message` (RFC 5321 §4.5.2), as lettre writes it: a dot at the start of a
/// line doubled, then CRLF, dot, CRLF.
#[cfg(test)]
fn dot_stuffed(message: &str) -> String {
    let mut out = String::new();
    stuff_into(&mut out, message);
    out.push_str(DATA_END);
    out
}

/// Appends `text`, which starts at the start of a line, with a dot at the start of each line
/// doubled (a line starts after CRLF, as lettre counts them).
fn stuff_into(out: &mut String, text: &str) {
    let mut line_start = true;
    for line in text.split_inclusive('\n') {
        if line_start && line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        line_start = line.ends_with("\r\n");
    }
}

/// Text sent to the server as it is (a pipelined group of commands, each ending in CRLF).
struct Verbatim<'a>(&'a str);

impl std::fmt::Display for Verbatim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Whether an SMTP error is something other than the server's reply: the connection failed,
/// closed (lettre calls that an incomplete response) or sent nonsense.
fn is_network_failure(e: &SmtpError) -> bool {
    e.status().is_none()
}

fn raw_header(name: &'static str, value: &str) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str(name), value.to_owned())
}

fn security(config: &SmtpConfig, extra_pem: &[Vec<u8>]) -> Result<Security, String> {
    if config.implicit_tls {
        return implicit_tls_config(extra_pem).map(Security::Implicit);
    }
    let params = || tls_parameters(&config.host, extra_pem).map_err(|e| e.to_string());
    Ok(match config.starttls {
        StartTlsPolicy::Mandatory => Security::Required(params()?),
        StartTlsPolicy::Opportunistic => Security::Opportunistic(params()?),
        StartTlsPolicy::Disabled => Security::None,
    })
}

/// STARTTLS parameters: the OS trust store (lettre reads it) plus `extra_pem`.
fn tls_parameters(host: &str, extra_pem: &[Vec<u8>]) -> Result<TlsParameters, SmtpError> {
    let mut builder = TlsParameters::builder(host.to_owned());
    for pem in extra_pem {
        builder = builder.add_root_certificate(Certificate::from_pem(pem)?);
    }
    builder.build_rustls()
}

/// The rustls config for implicit TLS: the OS trust store plus `extra_pem`, as for STARTTLS.
fn implicit_tls_config(extra_pem: &[Vec<u8>]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    for pem in extra_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("extra root certificate: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("extra root certificate: {e}"))?;
        }
    }
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Sorts a lettre error into transient and permanent kinds, naming `server`.
fn classify(server: String, e: &SmtpError) -> MailError {
    let reason = e.to_string();
    if let Some(code) = e.status() {
        let code = u16::from(code);
        let text = e.source().map(|s| s.to_string()).unwrap_or_default();
        return if matches!(code, 534 | 535) {
            MailError::Auth {
                server,
                reason: format!("{code} {text}"),
            }
        } else {
            MailError::Rejected {
                server,
                code,
                reason: text,
                // Which command was refused is not told apart here yet: as before, the message's.
                step: SmtpStep::Message,
            }
        };
    }
    if e.is_timeout() {
        return MailError::Timeout { server, reason };
    }
    if e.is_tls() || caused_by_tls(e) {
        return MailError::Tls { server, reason };
    }
    if e.is_client() {
        return if reason.contains("STARTTLS is not supported") {
            MailError::StartTlsUnavailable { server }
        } else if reason.contains("authentication mechanism") {
            MailError::Auth {
                server,
                reason: "the server offers no AUTH mechanism we use (PLAIN, LOGIN)".into(),
            }
        } else {
            MailError::Protocol {
                server,
                reason,
                transient: false,
            }
        };
    }
    if e.is_response() {
        return MailError::Protocol {
            server,
            reason,
            transient: true,
        };
    }
    MailError::Connect { server, reason }
}

/// Sorts an I/O error from dialling: timeouts, TLS failures, and everything else (transient).
fn classify_io(server: String, e: &io::Error) -> MailError {
    let reason = e.to_string();
    if e.kind() == io::ErrorKind::TimedOut {
        MailError::Timeout { server, reason }
    } else if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        MailError::Tls { server, reason }
    } else {
        MailError::Connect { server, reason }
    }
}

/// Whether a rustls error sits somewhere in the chain (lettre reports handshakes as connection
/// errors; tokio-rustls wraps rustls errors in `io::Error`).
fn caused_by_tls(e: &SmtpError) -> bool {
    let mut source = e.source();
    while let Some(err) = source {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn config() -> SmtpConfig {
        SmtpConfig {
            host: "mail.example.com".into(),
            port: 587,
            username: Some("user".into()),
            password: Some(Secret::new("hunter2")),
            starttls: StartTlsPolicy::Mandatory,
            implicit_tls: false,
        }
    }

    fn mail(in_reply_to: Option<MessageId>) -> OutgoingMail {
        OutgoingMail {
            to: "bob@example.com".into(),
            subject: "c Role Request r\r\nBcc: evil@example.com".into(),
            text: "text".into(),
            html: "<p>html</p>".into(),
            message_id: MessageId::parse("A.B@host").unwrap(),
            in_reply_to,
        }
    }

    #[tokio::test]
    async fn message_has_threading_and_auto_headers() {
        let mailer = SmtpMailer::new(
            &config(),
            "Teleport <noreply@example.com>",
            SmtpOptions::default(),
        )
        .unwrap();
        let first = MessageId::parse("FIRST.1@host").unwrap();
        let raw = String::from_utf8(mailer.wire(&mail(Some(first))).unwrap().formatted()).unwrap();
        let head = raw.split("\r\n\r\n").next().unwrap();
        assert!(head.contains("Message-ID: <A.B@host>\r\n"), "{head}");
        assert!(head.contains("In-Reply-To: <FIRST.1@host>\r\n"), "{head}");
        assert!(head.contains("References: <FIRST.1@host>\r\n"), "{head}");
        assert!(
            head.contains("Auto-Submitted: auto-generated\r\n"),
            "{head}"
        );
        assert!(
            head.contains("X-Auto-Response-Suppress: OOF, AutoReply\r\n"),
            "{head}"
        );
        assert!(
            head.contains("Content-Type: multipart/alternative"),
            "{head}"
        );
        assert!(!head.lines().any(|l| l.starts_with("Bcc:")), "{head}");
    }

    #[tokio::test]
    async fn bad_recipient_is_a_permanent_error() {
        let mailer =
            SmtpMailer::new(&config(), "noreply@example.com", SmtpOptions::default()).unwrap();
        let mut m = mail(None);
        m.to = "not an address".into();
        let err = mailer.send(&m).await.unwrap_err();
        assert!(matches!(err, MailError::BadMessage { .. }), "{err}");
        assert!(!err.is_transient());
    }

    #[test]
    fn dots_at_line_starts_are_doubled_as_lettre_does() {
        assert_eq!(dot_stuffed("a"), "a\r\n.\r\n");
        assert_eq!(dot_stuffed(".a\r\nb\r\n"), "..a\r\nb\r\n\r\n.\r\n");
        assert_eq!(
            dot_stuffed("x\r\n.\r\n..y\r\nz.\r\n"),
            "x\r\n..\r\n...y\r\nz.\r\n\r\n.\r\n"
        );
        // A bare LF does not start a line for lettre either.
        assert_eq!(dot_stuffed("x\n.y"), "x\n.y\r\n.\r\n");
        assert_eq!(dot_stuffed(""), "\r\n.\r\n");
    }

    #[test]
    fn needs_a_valid_sender() {
        let err = SmtpMailer::new(&config(), "not a mailbox", SmtpOptions::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("delivery.sender"), "{err}");
    }
}
