//! Unit tests of the SMTP mailer: message assembly, DATA form, setup errors.

use super::wire::dot_stuffed;
use super::*;
use crate::config::StartTlsPolicy;
use crate::secret::Secret;

fn config() -> SmtpConfig {
    SmtpConfig {
        host: "mail.example.com".into(),
        port: 587,
        username: Some("user".into()),
        password: Some(Secret::new("hunter2")),
        starttls: StartTlsPolicy::Mandatory,
        implicit_tls: false,
        allow_plaintext_auth: false,
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
    let mailer = SmtpMailer::new(&config(), "noreply@example.com", SmtpOptions::default()).unwrap();
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
