//! Shared helpers for the integration tests: sample mails, configs, and reading received mail.

pub mod aiosmtpd;
pub mod harness;
pub mod lists;
pub mod peers;
pub mod scripted_smtp;
pub mod slow_smtp;
pub mod tools;

use std::time::{Duration, UNIX_EPOCH};

use teleport_email::config::{Credentials, SmtpConfig, StartTlsPolicy};
use teleport_email::mail::render::{self, RequestSummary, Resolution, ReviewState, ReviewSummary};
use teleport_email::mail::smtp::{SmtpMailer, SmtpOptions};
use teleport_email::mail::{MessageId, OutgoingMail};
use teleport_email::secret::Secret;
use teleport_email::teleport::{
    CredentialStore, DialOptions, TeleportClient, WatchEvent, WatchStream,
};
use teleport_email::testkit::auth::FakeAuth;
use teleport_email::testkit::pki::KeyKind;
use teleport_email::testkit::smtp::SmtpReceiver;
use teleport_email::testkit::tls::TestPki;

pub const SENDER: &str = "noreply@example.com";
pub const RECIPIENT: &str = "all@example.com";
pub const USER: &str = "mailer";
pub const PASSWORD: &str = "s3cret-Pa55";
pub const INJECTION: &str = "ok\r\nBcc: evil@example.com";

/// Installs ring as the process's rustls provider (idempotent).
pub fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client of `auth` as the plugin user (an ECDSA identity file in the returned directory),
/// dialing it directly.
pub async fn plugin_client(auth: &FakeAuth) -> (TeleportClient, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = auth.write_plugin_identity(&dir.path().join("id"), KeyKind::Ecdsa);
    let store = CredentialStore::load(&Credentials::IdentityFile {
        path,
        refresh: None,
    })
    .expect("credentials load");
    let options = DialOptions::new(&auth.addr().to_string());
    let client = TeleportClient::connect(options, store, Duration::from_secs(5))
        .await
        .expect("connects to the fake Auth Service");
    (client, dir)
}

/// The next event of `watch`, within 5 s.
pub async fn next_event(watch: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream is open")
        .expect("no error")
}

pub fn pki() -> TestPki {
    TestPki::generate().expect("test PKI")
}

pub fn request() -> RequestSummary {
    RequestSummary {
        id: "3f1c6e52-0000-4000-8000-000000000001".to_owned(),
        cluster: "teleport.example.com".to_owned(),
        user: "requester-oss@example.com".to_owned(),
        roles: vec!["editor".to_owned()],
        reason: "because of".to_owned(),
        link: None,
    }
}

/// A new-thread mail for `request()`.
pub fn new_thread_mail() -> OutgoingMail {
    let rendered = render::new_request(&request(), &Resolution::Pending);
    OutgoingMail::new(RECIPIENT, rendered, MessageId::generate(), None)
}

/// A review reply in the thread started by `first`.
pub fn follow_up_mail(first: &MessageId) -> OutgoingMail {
    let review = ReviewSummary {
        author: "reviewer1@example.com".to_owned(),
        state: ReviewState::Approved,
        reason: "okay".to_owned(),
        created: UNIX_EPOCH + Duration::from_secs(1_709_647_629),
    };
    let rendered = render::review(&request(), &review);
    OutgoingMail::new(
        RECIPIENT,
        rendered,
        MessageId::generate(),
        Some(first.clone()),
    )
}

/// A new-thread mail whose reason, user and id try to add a `Bcc:` header.
pub fn injection_mail() -> OutgoingMail {
    let req = RequestSummary {
        id: format!("req-1{INJECTION}"),
        user: format!("mallory{INJECTION}"),
        reason: INJECTION.to_owned(),
        roles: vec![format!("editor{INJECTION}")],
        ..request()
    };
    let rendered = render::new_request(&req, &Resolution::Pending);
    OutgoingMail::new(RECIPIENT, rendered, MessageId::generate(), None)
}

/// An SMTP config for a local server.
pub fn smtp_config(port: u16, policy: StartTlsPolicy, auth: Option<(&str, &str)>) -> SmtpConfig {
    SmtpConfig {
        host: "localhost".to_owned(),
        port,
        username: auth.map(|(u, _)| u.to_owned()),
        password: auth.map(|(_, p)| Secret::new(p)),
        starttls: policy,
        implicit_tls: false,
        allow_plaintext_auth: false,
    }
}

/// Options trusting `pki`'s CA, with short timeouts.
pub fn options(pki: Option<&TestPki>) -> SmtpOptions {
    SmtpOptions {
        timeout: Duration::from_secs(5),
        extra_root_certs_pem: pki
            .map(|p| p.ca_pem.clone().into_bytes())
            .into_iter()
            .collect(),
        ..SmtpOptions::default()
    }
}

pub fn smtp_mailer(config: &SmtpConfig, pki: Option<&TestPki>) -> SmtpMailer {
    SmtpMailer::new(config, SENDER, options(pki)).expect("SMTP mailer")
}

/// A mailer for the local server on `port`, without TLS or AUTH.
pub fn plain_mailer(port: u16) -> SmtpMailer {
    smtp_mailer(&smtp_config(port, StartTlsPolicy::Disabled, None), None)
}

/// A receiver announcing PIPELINING or not, and a mailer for it without TLS or AUTH.
pub async fn plain_receiver(pipelining: bool) -> (SmtpReceiver, SmtpMailer) {
    let receiver = SmtpReceiver::builder()
        .pipelining(pipelining)
        .start()
        .await
        .unwrap();
    let mailer = plain_mailer(receiver.port());
    (receiver, mailer)
}

/// A mailer for the local server on `port`, signing in as [`USER`] over mandatory STARTTLS and
/// trusting `pki`'s CA.
pub fn signed_in(port: u16, pki: &TestPki) -> SmtpMailer {
    let config = smtp_config(port, StartTlsPolicy::Mandatory, Some((USER, PASSWORD)));
    smtp_mailer(&config, Some(pki))
}

/// A mailer for the local server on `port` speaking TLS from the first byte, signing in as
/// [`USER`] and trusting `pki`'s CA.
pub fn signed_in_over_implicit_tls(port: u16, pki: &TestPki) -> SmtpMailer {
    let mut config = smtp_config(port, StartTlsPolicy::Mandatory, Some((USER, PASSWORD)));
    config.implicit_tls = true;
    smtp_mailer(&config, Some(pki))
}

/// A mailer for the local server on `port` that would sign in as [`USER`] with TLS disabled.
pub fn signing_in_without_tls(port: u16) -> SmtpMailer {
    let config = smtp_config(port, StartTlsPolicy::Disabled, Some((USER, PASSWORD)));
    smtp_mailer(&config, None)
}

/// A received mail, parsed.
#[derive(Debug)]
pub struct Parsed {
    pub subject: String,
    pub message_id: Option<String>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    /// The text/plain part, with CRLF turned back into LF.
    pub text: String,
    pub html: String,
    pub content_type: String,
    /// Top-level headers, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl Parsed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn parse_mail(raw: &[u8]) -> Parsed {
    let message = mail_parser::MessageParser::default()
        .parse(raw)
        .expect("a parsable mail");
    let list = |v: &mail_parser::HeaderValue| -> Vec<String> {
        v.as_text_list()
            .map(|l| l.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default()
    };
    let content_type = message
        .header_raw("Content-Type")
        .unwrap_or_default()
        .trim()
        .to_owned();
    Parsed {
        subject: message.subject().unwrap_or_default().to_owned(),
        message_id: message.message_id().map(str::to_owned),
        in_reply_to: list(message.in_reply_to()),
        references: list(message.references()),
        text: message
            .body_text(0)
            .map(|t| t.replace("\r\n", "\n"))
            .unwrap_or_default(),
        html: message
            .body_html(0)
            .map(|h| h.into_owned())
            .unwrap_or_default(),
        content_type,
        headers: message
            .headers_raw()
            .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
            .collect(),
    }
}

/// Checks a received new-thread mail against what was sent.
pub fn assert_new_thread(raw: &[u8], sent: &OutgoingMail) {
    let parsed = parse_mail(raw);
    assert_eq!(parsed.subject, sent.subject);
    assert_eq!(parsed.text, sent.text, "text part");
    assert_eq!(parsed.html.replace("\r\n", "\n"), sent.html, "html part");
    assert!(
        parsed.content_type.starts_with("multipart/alternative"),
        "{}",
        parsed.content_type
    );
    assert_eq!(parsed.message_id.as_deref(), Some(sent.message_id.as_str()));
    assert_eq!(
        parsed.header("Message-ID"),
        Some(sent.message_id.header_form().as_str())
    );
    assert_eq!(parsed.header("Auto-Submitted"), Some("auto-generated"));
    assert_eq!(
        parsed.header("X-Auto-Response-Suppress"),
        Some("OOF, AutoReply")
    );
    assert_eq!(parsed.header("From"), Some(SENDER));
    assert_eq!(parsed.header("To"), Some(sent.to.as_str()));
    assert!(parsed.header("Date").is_some());
    assert!(parsed.header("In-Reply-To").is_none());
    assert!(parsed.header("References").is_none());
    assert_text_before_html(raw);
}

/// Checks a received follow-up: same subject, threading headers pointing at `first`.
pub fn assert_follow_up(raw: &[u8], sent: &OutgoingMail, first: &MessageId) {
    let parsed = parse_mail(raw);
    assert_eq!(parsed.subject, sent.subject);
    assert_eq!(parsed.text, sent.text, "text part");
    assert_eq!(parsed.message_id.as_deref(), Some(sent.message_id.as_str()));
    let header_form = first.header_form();
    assert_eq!(parsed.header("In-Reply-To"), Some(header_form.as_str()));
    assert_eq!(parsed.header("References"), Some(header_form.as_str()));
    assert_eq!(parsed.in_reply_to, vec![first.as_str().to_owned()]);
    assert_eq!(parsed.references, vec![first.as_str().to_owned()]);
    assert_eq!(parsed.header("Auto-Submitted"), Some("auto-generated"));
    assert_eq!(
        parsed.header("X-Auto-Response-Suppress"),
        Some("OOF, AutoReply")
    );
}

/// text/plain comes first, text/html last.
fn assert_text_before_html(raw: &[u8]) {
    let text = String::from_utf8_lossy(raw);
    let plain = text
        .find("Content-Type: text/plain")
        .expect("a text/plain part");
    let html = text
        .find("Content-Type: text/html")
        .expect("a text/html part");
    assert!(plain < html);
}

/// Checks that a raw mail has no header the injection tried to add, in the top-level header
/// block or in any MIME part's headers (a `Bcc:` line inside a body part is just text).
pub fn assert_no_injected_header(raw: &[u8]) {
    let text = String::from_utf8_lossy(raw);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    for line in head.split("\r\n") {
        assert!(
            !line.to_ascii_lowercase().starts_with("bcc:"),
            "a Bcc: header in:\n{head}"
        );
    }
    let message = mail_parser::MessageParser::default()
        .parse(raw)
        .expect("a parsable mail");
    for part in &message.parts {
        for header in part.headers() {
            let name = header.name().to_ascii_lowercase();
            assert!(name != "bcc" && name != "cc", "{name} header in a part");
        }
    }
    let parsed = parse_mail(raw);
    assert!(!parsed.subject.contains(['\r', '\n']));
    let to: Vec<_> = parsed
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("to"))
        .collect();
    assert_eq!(to.len(), 1, "{to:?}");
    assert!(
        message.to().map(|a| a.iter().count()) == Some(1),
        "exactly one To address"
    );
}
