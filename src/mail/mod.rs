//! Mail delivery: the [`Mailer`] trait both backends (SMTP, Mailgun) implement, the message handed
//! to it, Message-IDs, rendering, and how a failed send is classified.
//!
//! A mailer sends one message to one recipient and says whether a failure is worth retrying
//! ([`MailError::is_transient`]); it never retries itself — that lives in the engine.

mod error;
pub mod mailgun;
pub mod message_id;
pub mod render;
// Until its owner narrows its items (`pub` → `pub(crate)`), as the rest of the crate is.
pub mod smtp;
pub mod text;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use error::{MailError, SmtpStep};
pub use message_id::{MessageId, MessageIdError};
pub use render::RenderedMail;

use crate::config::MailerConfig;

/// `Auto-Submitted` value on every mail (RFC 3834): automatic, so responders must not reply.
pub const AUTO_SUBMITTED: &str = "auto-generated";

/// `X-Auto-Response-Suppress` value on every mail: Exchange skips out-of-office and auto-replies.
pub const AUTO_RESPONSE_SUPPRESS: &str = "OOF, AutoReply";

/// One message to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMail {
    /// A bare address.
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// Made by the caller before sending, so it can be recorded whatever happens.
    pub message_id: MessageId,
    /// The thread's first message, for `In-Reply-To` and `References`; `None` starts a thread.
    pub in_reply_to: Option<MessageId>,
}

impl OutgoingMail {
    /// A rendered mail addressed to `to`.
    pub fn new(
        to: impl Into<String>,
        rendered: RenderedMail,
        message_id: MessageId,
        in_reply_to: Option<MessageId>,
    ) -> Self {
        Self {
            to: to.into(),
            subject: rendered.subject,
            text: rendered.text,
            html: rendered.html,
            message_id,
            in_reply_to,
        }
    }
}

/// Something that delivers mail: SMTP, Mailgun, or a test double.
#[async_trait::async_trait]
pub trait Mailer: Send + Sync {
    /// Sends one message and returns the Message-ID to record for the thread.
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError>;

    /// Sends `mail` unless `withdraw` is cancelled before the mailer has started on it: then
    /// `None`, and the mail never goes out. Once started it is waited for, withdrawn or not: it
    /// may go out whatever the caller does, so its outcome must reach the caller to be recorded.
    /// The default starts at once (an HTTP request cannot be taken back once sent).
    async fn send_unless_withdrawn(
        &self,
        mail: &OutgoingMail,
        withdraw: &CancellationToken,
    ) -> Option<Result<MessageId, MailError>> {
        let _ = withdraw;
        Some(self.send(mail).await)
    }

    /// Checks that the server is reachable and accepts our credentials, without delivering mail.
    async fn health_check(&self) -> Result<(), MailError>;

    /// `"smtp"` or `"mailgun"`, for logs.
    fn backend(&self) -> &'static str;

    /// Closes idle connections politely (SMTP `QUIT`), at shutdown or once a reload replaced the
    /// mailer and its last send is done; the mailer is not used afterwards.
    async fn close(&self) {}
}

/// Builds the mailer the configuration names, sending as `sender`; Mailgun's health check mails
/// `health_recipients` (the `"*"` recipients) in test mode.
pub fn from_config(
    config: &MailerConfig,
    sender: &str,
    health_recipients: &[String],
) -> Result<Arc<dyn Mailer>, MailError> {
    Ok(match config {
        MailerConfig::Smtp(smtp) => Arc::new(smtp::SmtpMailer::new(
            smtp,
            sender,
            smtp::SmtpOptions::default(),
        )?),
        MailerConfig::Mailgun(mailgun) => Arc::new(mailgun::MailgunMailer::new(
            mailgun,
            sender,
            health_recipients.to_vec(),
            mailgun::MailgunOptions::default(),
        )?),
    })
}
