//! The SMTP backend: lettre's pooled async transport over rustls, and its errors classified.
//!
//! Connections are pooled and reused across mails (the original dials once per mail). TLS follows
//! `smtp.starttls_policy` (`mandatory` → STARTTLS required, `opportunistic` → used when offered,
//! `disabled` → never) unless `implicit_tls` is set, when TLS starts with the first byte. Server
//! certificates are checked against the OS trust store, which honours `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`. AUTH (PLAIN, then LOGIN) is used only when a username is configured.

use std::error::Error as _;
use std::time::Duration;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::{Error as SmtpError, PoolConfig};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{AUTO_RESPONSE_SUPPRESS, AUTO_SUBMITTED, MailError, Mailer, MessageId, OutgoingMail};
use crate::config::{SmtpConfig, StartTlsPolicy};

/// Knobs the configuration file does not set; the defaults suit production.
#[derive(Debug, Clone)]
pub struct SmtpOptions {
    /// Per network operation (connect, each command).
    pub timeout: Duration,
    /// Extra trusted CA certificates (PEM), on top of the OS trust store; for tests.
    pub extra_root_certs_pem: Vec<Vec<u8>>,
    /// Pooled connections kept at most.
    pub pool_max_size: u32,
    /// Idle pooled connections are closed after this; keep it under the server's idle timeout.
    pub pool_idle_timeout: Duration,
    /// The EHLO name; the host name when `None`.
    pub hello_name: Option<String>,
}

impl Default for SmtpOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            extra_root_certs_pem: Vec::new(),
            pool_max_size: 4,
            pool_idle_timeout: Duration::from_secs(30),
            hello_name: None,
        }
    }
}

/// Sends mail through one SMTP server over a pool of connections.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// `host:port`, for messages.
    server: String,
    from: Mailbox,
    probe: Probe,
}

/// What the health check needs to dial a fresh connection of its own.
struct Probe {
    host: String,
    port: u16,
    timeout: Duration,
    hello: ClientId,
    tls: Option<TlsParameters>,
    implicit_tls: bool,
    policy: StartTlsPolicy,
    credentials: Option<Credentials>,
}

const MECHANISMS: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

impl SmtpMailer {
    /// A mailer for `config`, sending as `from`; must be called inside a Tokio runtime (the pool
    /// runs a cleanup task).
    pub fn new(config: &SmtpConfig, from: &str, options: SmtpOptions) -> Result<Self, MailError> {
        let setup = |reason: String| MailError::Setup {
            backend: "smtp",
            reason,
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(setup("must be created inside a Tokio runtime".into()));
        }
        let from: Mailbox = from
            .parse()
            .map_err(|e| setup(format!("delivery.sender {from:?} is not a mailbox: {e}")))?;
        let tls_params = tls_parameters(&config.host, &options.extra_root_certs_pem)
            .map_err(|e| setup(format!("TLS setup for {}: {e}", config.host)))?;
        let tls = if config.implicit_tls {
            Tls::Wrapper(tls_params.clone())
        } else {
            match config.starttls {
                StartTlsPolicy::Mandatory => Tls::Required(tls_params.clone()),
                StartTlsPolicy::Opportunistic => Tls::Opportunistic(tls_params.clone()),
                StartTlsPolicy::Disabled => Tls::None,
            }
        };
        let hello = options
            .hello_name
            .clone()
            .map(ClientId::Domain)
            .unwrap_or_default();
        let credentials = config.username.as_ref().map(|user| {
            let password = config.password.as_ref().map(|p| p.expose()).unwrap_or("");
            Credentials::new(user.clone(), password.to_owned())
        });
        let pool = PoolConfig::new()
            .max_size(options.pool_max_size.max(1))
            .idle_timeout(options.pool_idle_timeout);
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .timeout(Some(options.timeout))
            .hello_name(hello.clone())
            .tls(tls)
            .pool_config(pool);
        if let Some(credentials) = &credentials {
            builder = builder
                .credentials(credentials.clone())
                .authentication(MECHANISMS.to_vec());
        }
        Ok(Self {
            transport: builder.build(),
            server: format!("{}:{}", config.host, config.port),
            from,
            probe: Probe {
                host: config.host.clone(),
                port: config.port,
                timeout: options.timeout,
                hello,
                tls: Some(tls_params),
                implicit_tls: config.implicit_tls,
                policy: config.starttls,
                credentials,
            },
        })
    }

    /// `host:port` of the server.
    pub fn server(&self) -> &str {
        &self.server
    }

    fn message(&self, mail: &OutgoingMail) -> Result<Message, MailError> {
        let bad = |reason: String| MailError::BadMessage {
            to: mail.to.clone(),
            reason,
        };
        let to: Address = mail
            .to
            .parse()
            .map_err(|e| bad(format!("not an address: {e}")))?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(super::text::header_safe(&mail.subject))
            .message_id(Some(mail.message_id.header_form()))
            .raw_header(raw_header("Auto-Submitted", AUTO_SUBMITTED))
            .raw_header(raw_header(
                "X-Auto-Response-Suppress",
                AUTO_RESPONSE_SUPPRESS,
            ));
        if let Some(first) = &mail.in_reply_to {
            builder = builder
                .in_reply_to(first.header_form())
                .references(first.header_form());
        }
        builder
            .multipart(MultiPart::alternative_plain_html(
                mail.text.clone(),
                mail.html.clone(),
            ))
            .map_err(|e| bad(e.to_string()))
    }
}

#[async_trait::async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        let message = self.message(mail)?;
        self.transport
            .send(message)
            .await
            .map_err(|e| classify(&self.server, &e))?;
        Ok(mail.message_id.clone())
    }

    async fn health_check(&self) -> Result<(), MailError> {
        self.probe.run().await.map_err(|e| match e {
            ProbeError::Smtp(e) => classify(&self.server, &e),
            ProbeError::NoStartTls => MailError::StartTlsUnavailable {
                server: self.server.clone(),
            },
        })
    }

    fn backend(&self) -> &'static str {
        "smtp"
    }
}

enum ProbeError {
    Smtp(SmtpError),
    NoStartTls,
}

impl From<SmtpError> for ProbeError {
    fn from(e: SmtpError) -> Self {
        Self::Smtp(e)
    }
}

impl Probe {
    /// A fresh connection (not a pooled one): connect, EHLO, TLS and AUTH as configured, QUIT.
    async fn run(&self) -> Result<(), ProbeError> {
        let wrapper = if self.implicit_tls {
            self.tls.clone()
        } else {
            None
        };
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            Some(self.timeout),
            &self.hello,
            wrapper,
            None,
        )
        .await?;
        if !self.implicit_tls {
            let wanted = match self.policy {
                StartTlsPolicy::Mandatory if !conn.can_starttls() => {
                    conn.abort().await;
                    return Err(ProbeError::NoStartTls);
                }
                StartTlsPolicy::Mandatory => true,
                StartTlsPolicy::Opportunistic => conn.can_starttls(),
                StartTlsPolicy::Disabled => false,
            };
            if let (true, Some(tls)) = (wanted, &self.tls) {
                conn.starttls(tls.clone(), &self.hello).await?;
            }
        }
        if let Some(credentials) = &self.credentials
            && let Err(e) = conn.auth(&MECHANISMS, credentials).await
        {
            conn.abort().await;
            return Err(e.into());
        }
        conn.quit().await?;
        Ok(())
    }
}

fn raw_header(name: &'static str, value: &str) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str(name), value.to_owned())
}

fn tls_parameters(host: &str, extra_pem: &[Vec<u8>]) -> Result<TlsParameters, SmtpError> {
    let mut builder = TlsParameters::builder(host.to_owned());
    for pem in extra_pem {
        builder = builder.add_root_certificate(Certificate::from_pem(pem)?);
    }
    builder.build_rustls()
}

/// Sorts a lettre error into transient and permanent kinds, naming `server`.
fn classify(server: &str, e: &SmtpError) -> MailError {
    let server = server.to_owned();
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

/// Whether a rustls error sits somewhere in the chain (lettre reports handshakes as connection
/// errors; tokio-rustls wraps rustls errors in `io::Error`).
fn caused_by_tls(e: &SmtpError) -> bool {
    let mut source = e.source();
    while let Some(err) = source {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
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
        let raw =
            String::from_utf8(mailer.message(&mail(Some(first))).unwrap().formatted()).unwrap();
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
    fn needs_a_runtime_and_a_valid_sender() {
        let err = SmtpMailer::new(&config(), "noreply@example.com", SmtpOptions::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("Tokio runtime"), "{err}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let err = SmtpMailer::new(&config(), "not a mailbox", SmtpOptions::default())
                .err()
                .unwrap();
            assert!(err.to_string().contains("delivery.sender"), "{err}");
        });
    }
}
