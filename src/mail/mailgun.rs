//! The Mailgun backend: one `POST {api_base}/{domain}/messages` per mail, with reqwest.
//!
//! We set `h:Message-Id` ourselves and return that id (not the one in Mailgun's answer), so
//! threads look the same whichever backend sent them. Every call has a 10 s deadline; 429 and 5xx
//! are transient (429's `Retry-After` seconds are passed on), other 4xx permanent.

use std::time::Duration;

use reqwest::multipart::Form;

use super::text::header_safe;
use super::{AUTO_RESPONSE_SUPPRESS, AUTO_SUBMITTED, MailError, Mailer, MessageId, OutgoingMail};
use crate::config::MailgunConfig;
use crate::secret::Secret;

/// Subject of the health check's test-mode message.
pub const HEALTH_CHECK_SUBJECT: &str = "Health Check";

/// Text of the health check's test-mode message.
pub const HEALTH_CHECK_TEXT: &str = "Testing Mailgun API connection...";

/// Characters Mailgun's client library refuses in a domain (they would change the URL).
const DOMAIN_FORBIDDEN: &[char] = &[
    ':', '&', '\'', '@', '(', ')', ',', '!', '?', '#', ';', '%', '+', '=', '<', '>', '/', '\\',
];

/// The longest error body quoted in a [`MailError`].
const MAX_ERROR_BODY: usize = 512;

/// Knobs the configuration file does not set.
#[derive(Debug, Clone)]
pub struct MailgunOptions {
    /// Deadline of each API call, connect to last byte.
    pub timeout: Duration,
}

impl Default for MailgunOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
        }
    }
}

/// Sends mail through Mailgun's HTTP API.
pub struct MailgunMailer {
    client: reqwest::Client,
    /// `{api_base}/{domain}/messages`.
    endpoint: String,
    key: Secret,
    from: String,
    health_recipients: Vec<String>,
}

impl MailgunMailer {
    /// A mailer for `config`, sending as `from`; the health check mails `health_recipients` in
    /// test mode. Installs rustls' ring provider as the process default if none is installed.
    pub fn new(
        config: &MailgunConfig,
        from: &str,
        health_recipients: Vec<String>,
        options: MailgunOptions,
    ) -> Result<Self, MailError> {
        let setup = |reason: String| MailError::Setup {
            backend: "mailgun",
            reason,
        };
        if config.domain.is_empty()
            || config.domain.contains(|c: char| {
                DOMAIN_FORBIDDEN.contains(&c) || c.is_whitespace() || c.is_control()
            })
        {
            return Err(setup(format!(
                "mailgun.domain {:?} is not a domain",
                config.domain
            )));
        }
        if config.private_key.expose().is_empty() {
            return Err(setup("mailgun.private_key is empty".into()));
        }
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Losing a race with another installer is fine: either way a provider is in place.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            .build()
            .map_err(|e| setup(format!("HTTP client: {}", describe(&e))))?;
        Ok(Self {
            client,
            endpoint: format!(
                "{}/{}/messages",
                config.api_base.trim_end_matches('/'),
                config.domain
            ),
            key: config.private_key.clone(),
            from: from.to_owned(),
            health_recipients,
        })
    }

    /// The messages endpoint, `{api_base}/{domain}/messages`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The form fields of a mail, in the order they are sent.
    fn fields(&self, mail: &OutgoingMail) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("from", self.from.clone()),
            ("to", header_safe(&mail.to)),
            ("subject", header_safe(&mail.subject)),
            ("text", mail.text.clone()),
            ("html", mail.html.clone()),
            ("h:Message-Id", mail.message_id.header_form()),
        ];
        if let Some(first) = &mail.in_reply_to {
            fields.push(("h:In-Reply-To", first.header_form()));
            fields.push(("h:References", first.header_form()));
        }
        fields.extend([
            ("h:Auto-Submitted", AUTO_SUBMITTED.to_owned()),
            (
                "h:X-Auto-Response-Suppress",
                AUTO_RESPONSE_SUPPRESS.to_owned(),
            ),
            ("o:require-tls", "true".to_owned()),
        ]);
        fields
    }

    async fn post(&self, fields: Vec<(&'static str, String)>) -> Result<(), MailError> {
        let form = fields
            .into_iter()
            .fold(Form::new(), |form, (name, value)| form.text(name, value));
        let response = self
            .client
            .post(&self.endpoint)
            .basic_auth("api", Some(self.key.expose()))
            .multipart(form)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status().as_u16();
        if matches!(status, 200 | 202 | 204) {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.text().await.unwrap_or_default();
        Err(MailError::Http {
            url: self.endpoint.clone(),
            status,
            message: error_message(&body),
            retry_after,
        })
    }

    fn transport_error(&self, e: &reqwest::Error) -> MailError {
        let server = self.endpoint.clone();
        let reason = describe(e);
        if e.is_timeout() {
            MailError::Timeout { server, reason }
        } else {
            MailError::Connect { server, reason }
        }
    }
}

#[async_trait::async_trait]
impl Mailer for MailgunMailer {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        self.post(self.fields(mail)).await?;
        Ok(mail.message_id.clone())
    }

    async fn health_check(&self) -> Result<(), MailError> {
        if self.health_recipients.is_empty() {
            return Err(MailError::Setup {
                backend: "mailgun",
                reason: "no recipients for the health check".into(),
            });
        }
        let mut fields = vec![("from", self.from.clone())];
        fields.extend(self.health_recipients.iter().map(|r| ("to", r.clone())));
        fields.extend([
            ("subject", HEALTH_CHECK_SUBJECT.to_owned()),
            ("text", HEALTH_CHECK_TEXT.to_owned()),
            ("o:testmode", "yes".to_owned()),
        ]);
        self.post(fields).await
    }

    fn backend(&self) -> &'static str {
        "mailgun"
    }
}

/// The error and its causes, without the URL (the caller names it once).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(&format!(" for url ({url})"), "");
    }
    let mut source = e.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}

/// Mailgun's JSON `message`, or the body itself, bounded.
fn error_message(body: &str) -> String {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned());
    let message = header_safe(&message);
    super::text::truncate(&message, MAX_ERROR_BODY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(domain: &str) -> MailgunConfig {
        MailgunConfig {
            domain: domain.into(),
            private_key: Secret::new("key-123"),
            api_base: "http://127.0.0.1:9/v3/".into(),
        }
    }

    #[test]
    fn endpoint_and_domain_checks() {
        let m = MailgunMailer::new(
            &config("mg.example.com"),
            "a@b",
            vec![],
            MailgunOptions::default(),
        )
        .unwrap();
        assert_eq!(
            m.endpoint(),
            "http://127.0.0.1:9/v3/mg.example.com/messages"
        );
        for bad in ["", "a/b", "a b", "x@y", "a?b"] {
            let err = MailgunMailer::new(&config(bad), "a@b", vec![], MailgunOptions::default())
                .err()
                .unwrap();
            assert!(err.to_string().contains("mailgun.domain"), "{err}");
        }
    }

    #[test]
    fn error_message_prefers_json_message() {
        assert_eq!(
            error_message(r#"{"message":"Invalid private key"}"#),
            "Invalid private key"
        );
        assert_eq!(error_message("Forbidden\n"), "Forbidden");
        assert_eq!(
            error_message(&"x".repeat(2000)).len(),
            MAX_ERROR_BODY + " … [truncated]".len()
        );
    }

    #[tokio::test]
    async fn refused_connection_is_transient_and_names_the_endpoint() {
        let m = MailgunMailer::new(
            &config("mg.example.com"),
            "a@b",
            vec!["x@y".into()],
            MailgunOptions::default(),
        )
        .unwrap();
        let err = m.health_check().await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(
            err.to_string()
                .contains("http://127.0.0.1:9/v3/mg.example.com/messages"),
            "{err}"
        );
        assert!(!err.to_string().contains("key-123"));
    }
}
