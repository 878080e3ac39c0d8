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
use tokio::sync::Semaphore;

use super::{AUTO_RESPONSE_SUPPRESS, AUTO_SUBMITTED, MailError, Mailer, MessageId, OutgoingMail};
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
pub struct SmtpMailer {
    dialer: Dialer,
    pool: Pool,
    /// Caps sends in flight at the pool size, so a burst reuses a few connections instead of
    /// opening one per mail.
    in_flight: Semaphore,
    /// `host:port`, for messages.
    server: String,
    from: Mailbox,
    bodies: BodyCache,
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
        Ok(Self {
            dialer: Dialer {
                host: config.host.clone(),
                port: config.port,
                timeout: options.timeout,
                hello: options.hello_name.map(ClientId::Domain).unwrap_or_default(),
                security,
                credentials,
            },
            pool: Pool::new(pool_size, options.pool_idle_timeout),
            in_flight: Semaphore::new(pool_size),
            server: format!("{}:{}", config.host, config.port),
            from,
            bodies: BodyCache::default(),
        })
    }

    /// `host:port` of the server.
    pub fn server(&self) -> &str {
        &self.server
    }

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
        Ok(Wire {
            envelope,
            head: headers.to_string(),
            body: self.bodies.get(&mail.text, &mail.html),
        })
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

    /// One mail on `conn`; the connection is back in the pool, or closed, afterwards.
    async fn transmit(&self, mut conn: Connection, wire: &Wire) -> Result<(), Attempt> {
        let envelope = &wire.envelope;
        let ascii_addresses = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .all(|a: &Address| AsRef::<str>::as_ref(a).is_ascii());
        let data = wire.data().filter(|_| conn.pipelining && ascii_addresses);
        let Some(data) = data else {
            // lettre's own exchange: one command at a time, SMTPUTF8/8BITMIME as needed. It has
            // already sent QUIT and closed a connection it marked broken.
            let sent = conn.smtp.send(envelope, &wire.formatted()).await;
            self.pool.put(conn);
            return sent.map(drop).map_err(Attempt::Failed);
        };
        let outcome = pipelined(&mut conn.smtp, envelope, &data).await;
        if outcome.is_ok() {
            self.pool.put(conn);
        } else {
            // Some replies may still be on their way: this connection's state is unknown.
            conn.smtp.abort().await;
        }
        outcome
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

#[async_trait::async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        let wire = self.wire(mail)?;
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| MailError::Setup {
                backend: "smtp",
                reason: "the mailer was closed".into(),
            })?;
        let (conn, trusted) = self.connection().await.map_err(|f| self.classify(f))?;
        let outcome = match self.transmit(conn, &wire).await {
            Err(Attempt::NotSent(e)) if trusted && is_network_failure(&e) => {
                let conn = self.dialer.dial().await.map_err(|f| self.classify(f))?;
                self.transmit(conn, &wire).await
            }
            other => other,
        };
        match outcome {
            Ok(()) => Ok(mail.message_id.clone()),
            Err(Attempt::NotSent(e) | Attempt::Failed(e)) => Err(self.classify(Failure::Smtp(e))),
        }
    }

    /// A fresh connection (not a pooled one): connect, EHLO, TLS and AUTH as configured, QUIT.
    async fn health_check(&self) -> Result<(), MailError> {
        let mut conn = self.dialer.dial().await.map_err(|f| self.classify(f))?;
        conn.smtp
            .quit()
            .await
            .map_err(|e| self.classify(Failure::Smtp(e)))?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "smtp"
    }

    async fn close(&self) {
        self.in_flight.close();
        for mut conn in self.pool.drain() {
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
}

impl Wire {
    /// The message as lettre takes it.
    fn formatted(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + self.body.formatted.len());
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(&self.body.formatted);
        out
    }

    /// The message in its DATA form, final dot included (see [`dot_stuffed`]); `None` when
    /// it is not all ASCII (lettre's exchange then negotiates 8BITMIME or SMTPUTF8).
    fn data(&self) -> Option<String> {
        let body = self.body.stuffed.as_deref()?;
        if !self.head.is_ascii() {
            return None;
        }
        let mut out = String::with_capacity(self.head.len() + body.len() + 5);
        stuff_into(&mut out, &self.head);
        out.push_str(body);
        out.push_str(DATA_END);
        Some(out)
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
    recent: std::sync::Mutex<std::collections::VecDeque<(String, String, Arc<EncodedBody>)>>,
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

/// How one attempt at a mail went wrong.
enum Attempt {
    /// Before the message itself was sent: the server cannot have accepted it.
    NotSent(SmtpError),
    /// While or after the message was sent, or anywhere in lettre's exchange.
    Failed(SmtpError),
}

/// Sends MAIL, RCPT and DATA in one write and reads their replies (RFC 2920), then the message.
/// Two round trips per mail instead of four (five with a NOOP before reuse).
async fn pipelined(
    conn: &mut AsyncSmtpConnection,
    envelope: &Envelope,
    data: &str,
) -> Result<(), Attempt> {
    use std::fmt::Write as _;
    let mut group = Mail::new(envelope.from().cloned(), Vec::new()).to_string();
    for to in envelope.to() {
        let _ = write!(group, "{}", Rcpt::new(to.clone(), Vec::new()));
    }
    let _ = write!(group, "{Data}");
    // `command` writes the whole group and reads the first reply (MAIL's); the rest follow.
    let mut first_error = conn.command(Verbatim(&group)).await.err();
    for _ in 0..=envelope.to().len() {
        if first_error.as_ref().is_some_and(is_network_failure) {
            break;
        }
        if let Err(e) = conn.read_response().await {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(Attempt::NotSent(e));
    }
    // The message and its final dot in one write (lettre's `message` makes two).
    conn.command(Verbatim(data))
        .await
        .map(drop)
        .map_err(Attempt::Failed)
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
