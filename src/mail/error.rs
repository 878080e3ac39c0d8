//! [`MailError`]: why a send or health check failed, naming the server, and whether to retry.

use std::time::Duration;

/// A failed send or health check. Messages name the server (`host:port` or URL), never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    /// The mailer cannot be built from its configuration.
    #[error("cannot set up the {backend} mailer: {reason}")]
    Setup {
        backend: &'static str,
        reason: String,
    },
    /// The message itself is unusable (e.g. the recipient is not an address).
    #[error("cannot send to {to:?}: {reason}")]
    BadMessage { to: String, reason: String },
    /// No connection, or it broke (refused, reset, closed): worth retrying.
    #[error("{server}: connection failed: {reason}")]
    Connect { server: String, reason: String },
    /// The server did not answer in time: worth retrying.
    #[error("{server}: timed out: {reason}")]
    Timeout { server: String, reason: String },
    /// The TLS handshake or certificate check failed.
    #[error("{server}: TLS failed: {reason}")]
    Tls { server: String, reason: String },
    /// `starttls_policy = "mandatory"` and the server does not offer STARTTLS.
    #[error(
        "{server}: the server does not offer STARTTLS, which smtp.starttls_policy \"mandatory\" requires"
    )]
    StartTlsUnavailable { server: String },
    /// The server refused our credentials, or offers no mechanism we speak.
    #[error("{server}: authentication failed: {reason}")]
    Auth { server: String, reason: String },
    /// The SMTP server answered with a negative reply: 4xx is transient, 5xx permanent.
    /// `step` says which command it refused, and so whether the refusal is about this one
    /// message (a recipient, the message's content) or about the mailer as a whole.
    #[error("{server}: the server answered {code} to {step}: {reason}")]
    Rejected {
        server: String,
        code: u16,
        reason: String,
        step: SmtpStep,
    },
    /// The SMTP conversation went wrong in some other way.
    #[error("{server}: SMTP error: {reason}")]
    Protocol {
        server: String,
        reason: String,
        transient: bool,
    },
    /// The HTTP API answered with an error status: 429 and 5xx are transient.
    #[error("{url}: HTTP {status}: {message}")]
    Http {
        url: String,
        status: u16,
        message: String,
        /// From a `Retry-After` header (seconds), when present.
        retry_after: Option<Duration>,
    },
}

/// The SMTP command a negative reply answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpStep {
    /// Greeting, EHLO, STARTTLS, AUTH, `MAIL FROM` or anything else about the session or the
    /// sender: a refusal here is the mailer's, not the recipient's.
    Session,
    /// `RCPT TO`: this recipient is refused.
    Recipient,
    /// `DATA` or the message's final dot: this message is refused.
    Message,
}

impl std::fmt::Display for SmtpStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Session => "the session",
            Self::Recipient => "RCPT TO",
            Self::Message => "the message",
        })
    }
}

impl MailError {
    /// Whether the same send may succeed later: timeouts, broken connections, SMTP 4xx,
    /// HTTP 429 and 5xx. Everything else needs a person (credentials, addresses, TLS, policy).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Timeout { .. } => true,
            Self::Rejected { code, .. } => (400..500).contains(code),
            Self::Protocol { transient, .. } => *transient,
            Self::Http { status, .. } => *status == 429 || *status >= 500,
            Self::Setup { .. }
            | Self::BadMessage { .. }
            | Self::Tls { .. }
            | Self::StartTlsUnavailable { .. }
            | Self::Auth { .. } => false,
        }
    }

    /// Whether a failure belongs to this one message or recipient (an address refused at
    /// `RCPT TO` or not an address at all, a message refused at its end, an HTTP 400/413/422)
    /// rather than to the mailer as a whole (credentials, TLS, STARTTLS, a refused sender, the
    /// server unreachable). Only a message's own permanent failure may be recorded as that
    /// recipient's for good; a mailer-wide one is the operator's to fix, and the mail waits.
    pub fn is_message_specific(&self) -> bool {
        match self {
            Self::BadMessage { .. } => true,
            Self::Rejected { step, .. } => *step != SmtpStep::Session,
            Self::Http { status, .. } => matches!(status, 400 | 413 | 422),
            Self::Setup { .. }
            | Self::Connect { .. }
            | Self::Timeout { .. }
            | Self::Tls { .. }
            | Self::StartTlsUnavailable { .. }
            | Self::Auth { .. }
            | Self::Protocol { .. } => false,
        }
    }

    /// How long the server asked us to wait before trying again, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16) -> MailError {
        MailError::Http {
            url: "https://api.example/v3/d/messages".into(),
            status,
            message: "x".into(),
            retry_after: None,
        }
    }

    fn smtp(code: u16) -> MailError {
        MailError::Rejected {
            server: "mail:587".into(),
            code,
            reason: "x".into(),
            step: SmtpStep::Recipient,
        }
    }

    #[test]
    fn classification() {
        assert!(http(429).is_transient());
        assert!(http(500).is_transient());
        assert!(http(503).is_transient());
        assert!(!http(400).is_transient());
        assert!(!http(401).is_transient());
        assert!(!http(404).is_transient());
        assert!(smtp(421).is_transient());
        assert!(smtp(451).is_transient());
        assert!(!smtp(550).is_transient());
        assert!(!smtp(554).is_transient());
        let server = "mail:587".to_owned();
        assert!(
            MailError::Connect {
                server: server.clone(),
                reason: "refused".into()
            }
            .is_transient()
        );
        assert!(
            !MailError::Auth {
                server,
                reason: "535".into()
            }
            .is_transient()
        );
    }

    #[test]
    fn only_a_messages_own_refusal_is_message_specific() {
        assert!(smtp(550).is_message_specific());
        let session = MailError::Rejected {
            server: "mail:587".into(),
            code: 553,
            reason: "sender refused".into(),
            step: SmtpStep::Session,
        };
        assert!(!session.is_message_specific());
        assert!(http(400).is_message_specific());
        for status in [401, 403, 404, 500] {
            assert!(!http(status).is_message_specific(), "{status}");
        }
        let server = "mail:587".to_owned();
        for e in [
            MailError::Auth {
                server: server.clone(),
                reason: "535".into(),
            },
            MailError::Tls {
                server: server.clone(),
                reason: "bad certificate".into(),
            },
            MailError::StartTlsUnavailable { server },
        ] {
            assert!(!e.is_message_specific(), "{e}");
        }
    }

    #[test]
    fn messages_name_the_server() {
        let e = smtp(451);
        assert_eq!(
            e.to_string(),
            "mail:587: the server answered 451 to RCPT TO: x"
        );
        assert_eq!(
            MailError::StartTlsUnavailable {
                server: "mail:25".into()
            }
            .to_string(),
            "mail:25: the server does not offer STARTTLS, which smtp.starttls_policy \"mandatory\" requires"
        );
    }
}
