//! The Mailgun backend: one `POST {api_base}/{domain}/messages` per mail, with reqwest.
//!
//! We set `h:Message-Id` ourselves and return that id (not the one in Mailgun's answer), so
//! threads look the same whichever backend sent them. Every call has a 10 s deadline; 429 and 5xx
//! are transient (a `Retry-After` in seconds or as an HTTP date is passed on), other 4xx
//! permanent. Of an error answer's body at most [`ERROR_BODY_LIMIT`] bytes are read.

use std::time::{Duration, SystemTime};

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

/// The most of an error answer's body that is read; the rest is never received.
pub const ERROR_BODY_LIMIT: usize = 4096;

/// The longest `Retry-After` passed on: a larger (or hostile, or unrepresentable) value is
/// saturated here, so later arithmetic on it cannot overflow. The engine caps the real wait.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

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
        check_config(config)?;
        let client = http_client(config, &options)?;
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
            .and_then(|v| parse_retry_after(v.as_bytes(), SystemTime::now()));
        let body = read_limited(response, ERROR_BODY_LIMIT).await;
        Err(MailError::Http {
            url: self.endpoint.clone(),
            status,
            message: error_message(&String::from_utf8_lossy(&body)),
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

/// A [`MailError::Setup`] of this backend.
fn setup(reason: String) -> MailError {
    MailError::Setup {
        backend: "mailgun",
        reason,
    }
}

/// A usable domain and a non-empty key, checked again here for callers that build the config.
fn check_config(config: &MailgunConfig) -> Result<(), MailError> {
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
    Ok(())
}

/// The HTTP client, with the deadline of `options` on connect and on each whole call.
fn http_client(
    config: &MailgunConfig,
    options: &MailgunOptions,
) -> Result<reqwest::Client, MailError> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: either way a provider is in place.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let mut client = reqwest::Client::builder()
        .timeout(options.timeout)
        .connect_timeout(options.timeout);
    if config
        .api_base
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
    {
        // Plain HTTP is allowed only to this machine; through a proxy (HTTP_PROXY) the key
        // would cross the network in clear.
        client = client.no_proxy();
    }
    client
        .build()
        .map_err(|e| setup(format!("HTTP client: {}", describe(&e))))
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

/// The first `limit` bytes of a body (fewer if it ends or breaks first); the rest is dropped
/// unread with the connection.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    body
}

/// A `Retry-After` value: delay-seconds or an HTTP date (RFC 9110 §10.2.3), saturated at
/// [`MAX_RETRY_AFTER`]; a date in the past is zero; anything else is ignored.
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // All digits, so a failed parse can only mean "too large".
        let secs = text.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
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
    fn an_empty_key_is_a_setup_error() {
        let mut c = config("mg.example.com");
        c.private_key = Secret::new("");
        let err = MailgunMailer::new(&c, "a@b", vec![], MailgunOptions::default())
            .err()
            .unwrap();
        assert!(
            matches!(&err, MailError::Setup { backend: "mailgun", reason } if reason == "mailgun.private_key is empty"),
            "{err:?}"
        );
        assert!(!err.is_transient());
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

    #[test]
    fn retry_after_in_both_forms_and_hostile_values() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let in_an_hour = httpdate::fmt_http_date(now + Duration::from_secs(3600));
        let cases: &[(&[u8], Option<Duration>)] = &[
            (b"7", Some(Duration::from_secs(7))),
            (b"  120 ", Some(Duration::from_secs(120))),
            (b"0", Some(Duration::ZERO)),
            (b"86401", Some(MAX_RETRY_AFTER)),
            (b"18446744073709551615", Some(MAX_RETRY_AFTER)),
            (b"18446744073709551616", Some(MAX_RETRY_AFTER)),
            (&[b'9'; 10_000], Some(MAX_RETRY_AFTER)),
            (in_an_hour.as_bytes(), Some(Duration::from_secs(3600))),
            (b"Fri, 31 Dec 9999 23:59:59 GMT", Some(MAX_RETRY_AFTER)),
            (b"Thu, 01 Jan 1970 00:00:00 GMT", Some(Duration::ZERO)),
            (b"Sunday, 06-Nov-94 08:49:37 GMT", Some(Duration::ZERO)),
            (b"Sun Nov  6 08:49:37 1994", Some(Duration::ZERO)),
            (b"-1", None),
            (b"+5", None),
            (b"1.5", None),
            (b"1e9", None),
            (b"", None),
            (b"   ", None),
            (b"Wed, 99 Foo 2025 99:99:99 GMT", None),
            (b"Fri, 31 Dec 99999 23:59:59 GMT", None),
            (b"soon", None),
            (b"\xff\xfe7", None),
            ("٣".as_bytes(), None),
        ];
        for (value, expected) in cases {
            assert_eq!(
                parse_retry_after(value, now),
                *expected,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
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
