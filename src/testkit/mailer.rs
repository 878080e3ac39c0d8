//! [`RecordingMailer`]: a [`Mailer`] that keeps what it is given and fails when told to, for unit
//! tests that need no mail server (the engine's decisions). Tests over sockets use the SMTP
//! receiver or the Mailgun stand-in instead.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use crate::mail::{MailError, Mailer, MessageId, OutgoingMail};

/// Records every mail it is asked to send; can be told to fail the next sends.
#[derive(Default)]
pub struct RecordingMailer {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    sent: Vec<OutgoingMail>,
    failures: VecDeque<MailError>,
    health: Option<MailError>,
    attempts: usize,
}

impl RecordingMailer {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The mails sent successfully, in order.
    pub fn sent(&self) -> Vec<OutgoingMail> {
        self.state().sent.clone()
    }

    /// Every call to `send`, failed ones included.
    pub fn attempts(&self) -> usize {
        self.state().attempts
    }

    /// The next sends fail with these errors, one each, in order.
    pub fn fail_next(&self, errors: impl IntoIterator<Item = MailError>) {
        self.state().failures.extend(errors);
    }

    /// Makes every health check fail with `error` (or pass again with `None`).
    pub fn set_health(&self, error: Option<MailError>) {
        self.state().health = error;
    }
}

#[async_trait::async_trait]
impl Mailer for RecordingMailer {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        let mut state = self.state();
        state.attempts += 1;
        if let Some(error) = state.failures.pop_front() {
            return Err(error);
        }
        state.sent.push(mail.clone());
        Ok(mail.message_id.clone())
    }

    async fn health_check(&self) -> Result<(), MailError> {
        match &self.state().health {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    fn backend(&self) -> &'static str {
        "recording"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail() -> OutgoingMail {
        OutgoingMail {
            to: "a@example.com".into(),
            subject: "s".into(),
            text: "t".into(),
            html: "h".into(),
            message_id: MessageId::generate_for("test"),
            in_reply_to: None,
        }
    }

    #[tokio::test]
    async fn records_and_fails_on_demand() {
        let mailer = RecordingMailer::new();
        mailer.fail_next([MailError::Connect {
            server: "s:25".into(),
            reason: "refused".into(),
        }]);
        let m = mail();
        assert!(mailer.send(&m).await.unwrap_err().is_transient());
        assert_eq!(mailer.send(&m).await.unwrap(), m.message_id);
        assert_eq!(mailer.sent(), vec![m]);
        assert_eq!(mailer.attempts(), 2);
        mailer.health_check().await.unwrap();
    }
}
