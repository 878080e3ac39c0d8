//! Sorting SMTP failures into [`MailError`]s: transient or permanent, the mailer's or the
//! message's own, always naming the server and never a secret.

use std::error::Error as _;
use std::io;

use lettre::transport::smtp::Error as SmtpError;

use super::super::{MailError, SmtpStep};
use super::dial::Failure;

/// `failure` as a [`MailError`] naming `server`.
pub(super) fn failure(server: &str, failure: Failure) -> MailError {
    let server = server.to_owned();
    match failure {
        Failure::Smtp(e, step) => smtp(server, &e, step),
        Failure::Io(e) => classify_io(server, &e),
        Failure::NoStartTls => MailError::StartTlsUnavailable { server },
        Failure::Refused { code, text } => MailError::Rejected {
            server,
            code,
            reason: text,
            step: SmtpStep::Session,
        },
        Failure::Malformed(reason) => MailError::Protocol {
            server,
            reason,
            transient: true,
        },
        Failure::Injected(bytes) => MailError::Tls {
            server,
            reason: format!(
                "the server sent {bytes} more bytes with its reply to STARTTLS, before the \
                 handshake; unencrypted bytes there could be forged replies (STARTTLS command \
                 injection), so the connection was dropped"
            ),
        },
        Failure::PlaintextAuth(why) => MailError::PlaintextAuth {
            server,
            reason: why.into(),
        },
        Failure::Unexpected { step, code, text } => MailError::Protocol {
            server,
            reason: format!("unexpected reply {code} to {step}: {text}"),
            transient: true,
        },
        Failure::Unsupported { to, reason } => MailError::BadMessage {
            to,
            reason: reason.into(),
        },
    }
}

/// Sorts a lettre error into transient and permanent kinds, naming `server`; a negative
/// reply is tagged with `step`, the command it answered.
fn smtp(server: String, e: &SmtpError, step: SmtpStep) -> MailError {
    let reason = e.to_string();
    if let Some(code) = e.status() {
        let code = u16::from(code);
        let text = e.source().map(|s| s.to_string()).unwrap_or_default();
        // 530: authentication required (RFC 4954), at whichever command: the mailer's.
        return if matches!(code, 530 | 534 | 535) {
            MailError::Auth {
                server,
                reason: format!("{code} {text}"),
            }
        } else {
            MailError::Rejected {
                server,
                code,
                reason: text,
                step,
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
        return if reason.contains("authentication mechanism") {
            MailError::Auth {
                server,
                reason: "the server offers no AUTH mechanism we use (PLAIN, LOGIN, CRAM-MD5)"
                    .into(),
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
