//! The SMTP backend: lettre's SMTP client over our own small connection pool, rustls, and its
//! errors classified.
//!
//! Connections are pooled and reused across mails (the original dials once per mail). TLS follows
//! `smtp.starttls_policy` (`mandatory` → STARTTLS required, `opportunistic` → used when offered,
//! `disabled` → never) unless `implicit_tls` is set, when TLS starts with the first byte. Server
//! certificates are checked against the OS trust store, which honours `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`. AUTH (PLAIN, then LOGIN, then CRAM-MD5) is used only when a username is configured, and
//! only over TLS, to a server on this machine, or with `smtp.allow_plaintext_auth`. Every
//! network operation has a deadline (see [`stream`]).
//!
//! The parts: [`queue`] (mails waiting and the workers), [`pipeline`] (one worker's round on
//! a connection, and the rules exactly-once rests on), [`wire`] (a mail as SMTP carries it),
//! [`dial`] (opening a connection), [`opening`] (the session's start, before lettre takes
//! over), [`stream`] (deadlines, and the handover to lettre), [`pool`] (idle connections),
//! [`tls`] (trust and policy), [`classify`] (failures as [`MailError`]s), [`mime`] (the body's
//! encoding).

mod classify;
mod dial;
mod mime;
mod opening;
mod pipeline;
mod pool;
mod queue;
mod sasl;
mod stream;
#[cfg(test)]
mod tests;
mod tls;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;

use lettre::transport::smtp::extension::ClientId;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{MailError, Mailer, MessageId, OutgoingMail};
use crate::config::SmtpConfig;
use crate::secret::Secret;
use dial::{Dialer, Failure, Login, PlaintextAuth};
use pool::Pool;
use queue::{Fate, Queue, Queued};
use wire::{BodyCache, Wire};

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
    /// Treat a server on a loopback address as remote when deciding whether AUTH may run
    /// without TLS; for tests, whose servers all listen on loopback.
    pub loopback_is_remote: bool,
}

impl Default for SmtpOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            extra_root_certs_pem: Vec::new(),
            pool_max_size: 8,
            pool_idle_timeout: Duration::from_secs(30),
            hello_name: None,
            loopback_is_remote: false,
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
        let security = tls::security(config, &options.extra_root_certs_pem)
            .map_err(|e| setup(format!("TLS setup for {}: {e}", config.host)))?;
        let credentials = config.username.as_ref().map(|user| Login {
            user: user.clone(),
            password: config.password.clone().unwrap_or_else(|| Secret::new("")),
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
                plaintext_auth: PlaintextAuth {
                    allowed: config.allow_plaintext_auth,
                    loopback_is_remote: options.loopback_is_remote,
                },
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

    #[cfg(test)]
    fn wire(&self, mail: &OutgoingMail) -> Result<Wire, MailError> {
        self.inner.wire(mail)
    }
}

impl Inner {
    /// `mail` as SMTP carries it: the envelope, the header section and the shared body.
    fn wire(&self, mail: &OutgoingMail) -> Result<Wire, MailError> {
        Wire::build(&self.from, &self.bodies, mail)
    }

    fn classify(&self, failure: Failure) -> MailError {
        classify::failure(&self.server, failure)
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
        let never = CancellationToken::new();
        (self.send_unless_withdrawn(mail, &never).await).unwrap_or_else(|| Err(closed()))
    }

    /// A mail withdrawn before its message is written is not sent (see [`queue::Fate`]); one
    /// whose message is being written is waited for.
    async fn send_unless_withdrawn(
        &self,
        mail: &OutgoingMail,
        withdraw: &CancellationToken,
    ) -> Option<Result<MessageId, MailError>> {
        let wire = match self.inner.wire(mail) {
            Ok(wire) => wire,
            Err(e) => return Some(Err(e)),
        };
        let (done, mut outcome) = oneshot::channel();
        let fate = Arc::<Fate>::default();
        self.inner.enqueue(Queued {
            wire,
            done,
            fate: fate.clone(),
        });
        let finished = tokio::select! {
            biased;
            finished = &mut outcome => finished,
            _ = withdraw.cancelled() => {
                if fate.withdraw() {
                    return None;
                }
                outcome.await
            }
        };
        let sent = finished.unwrap_or_else(|_| Err(closed()));
        Some(sent.map(|()| mail.message_id.clone()))
    }

    /// A fresh connection (not a pooled one): connect, EHLO, TLS and AUTH as configured, QUIT.
    async fn health_check(&self) -> Result<(), MailError> {
        let inner = &self.inner;
        let mut conn = inner.dialer.dial().await.map_err(|f| inner.classify(f))?;
        conn.smtp
            .quit()
            .await
            .map_err(|e| inner.classify(Failure::Smtp(e, super::SmtpStep::Session)))?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "smtp"
    }

    async fn close(&self) {
        for mail in self.inner.close_queue() {
            mail.finish(Err(closed()));
        }
        for mut conn in self.inner.pool.drain() {
            let _ = conn.smtp.quit().await;
        }
    }
}
