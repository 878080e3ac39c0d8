//! The Mailgun backend against the local stand-in: exact form fields, basic auth, threading,
//! health check in test mode, header injection and error classification.

use std::time::Duration;

use teleport_email::config::MailgunConfig;
use teleport_email::mail::mailgun::{MailgunMailer, MailgunOptions};
use teleport_email::mail::{MailError, Mailer};
use teleport_email::secret::Secret;
use teleport_email::testkit::mailgun::{Failure, MailgunStandIn};

use crate::support::*;

const KEY: &str = "key-test-123";
/// `base64("api:key-test-123")`.
const BASIC: &str = "Basic YXBpOmtleS10ZXN0LTEyMw==";
const DOMAIN: &str = "test.example.com";
const WAIT: Duration = Duration::from_secs(10);

fn mailer(stand_in: &MailgunStandIn, key: &str) -> MailgunMailer {
    let config = MailgunConfig {
        domain: DOMAIN.to_owned(),
        private_key: Secret::new(key),
        api_base: stand_in.api_base(),
    };
    MailgunMailer::new(
        &config,
        SENDER,
        vec![RECIPIENT.to_owned(), "admin@example.com".to_owned()],
        MailgunOptions::default(),
    )
    .unwrap()
}

fn owned(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn new_thread_and_follow_up_send_the_exact_form() {
    let stand_in = MailgunStandIn::start_requiring_key(KEY).await.unwrap();
    let mailer = mailer(&stand_in, KEY);
    assert_eq!(mailer.backend(), "mailgun");

    let first = new_thread_mail();
    let id = mailer.send(&first).await.unwrap();
    assert_eq!(id, first.message_id, "our own Message-ID, not Mailgun's");
    let reply = follow_up_mail(&id);
    assert_eq!(mailer.send(&reply).await.unwrap(), reply.message_id);

    let got = stand_in.wait_for_deliveries(2, WAIT).await.unwrap();
    for request in &got {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, format!("/v3/{DOMAIN}/messages"));
        assert_eq!(request.authorization.as_deref(), Some(BASIC));
        assert!(
            request
                .content_type
                .as_deref()
                .unwrap()
                .starts_with("multipart/form-data; boundary=")
        );
    }
    let first_header = first.message_id.header_form();
    assert_eq!(
        got[0].fields,
        owned(&[
            ("from", SENDER),
            ("to", RECIPIENT),
            ("subject", &first.subject),
            ("text", &first.text),
            ("html", &first.html),
            ("h:Message-Id", &first_header),
            ("h:Auto-Submitted", "auto-generated"),
            ("h:X-Auto-Response-Suppress", "OOF, AutoReply"),
            ("o:require-tls", "true"),
        ])
    );
    assert!(first.text.ends_with("Status: ⏳ PENDING"));
    let reply_header = reply.message_id.header_form();
    assert_eq!(
        got[1].fields,
        owned(&[
            ("from", SENDER),
            ("to", RECIPIENT),
            ("subject", &reply.subject),
            ("text", &reply.text),
            ("html", &reply.html),
            ("h:Message-Id", &reply_header),
            ("h:In-Reply-To", &first_header),
            ("h:References", &first_header),
            ("h:Auto-Submitted", "auto-generated"),
            ("h:X-Auto-Response-Suppress", "OOF, AutoReply"),
            ("o:require-tls", "true"),
        ])
    );
}

#[tokio::test]
async fn health_check_is_a_test_mode_send_that_delivers_nothing() {
    let stand_in = MailgunStandIn::start_requiring_key(KEY).await.unwrap();
    mailer(&stand_in, KEY).health_check().await.unwrap();
    let requests = stand_in.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].fields,
        owned(&[
            ("from", SENDER),
            ("to", RECIPIENT),
            ("to", "admin@example.com"),
            ("subject", "Health Check"),
            ("text", "Testing Mailgun API connection..."),
            ("o:testmode", "yes"),
        ])
    );
    assert_eq!(requests[0].authorization.as_deref(), Some(BASIC));
    assert!(stand_in.deliveries().is_empty());

    let err = mailer(&stand_in, "wrong-key-456")
        .health_check()
        .await
        .unwrap_err();
    assert!(
        matches!(err, MailError::Http { status: 401, .. }),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(!format!("{err} {err:?}").contains("wrong-key-456"));
}

#[tokio::test]
async fn errors_are_classified() {
    let stand_in = MailgunStandIn::start().await.unwrap();
    let mailer = mailer(&stand_in, KEY);
    let endpoint = format!("{}/{DOMAIN}/messages", stand_in.api_base());

    stand_in.fail_next(
        Failure::TooManyRequests {
            retry_after_secs: Some(7),
        },
        1,
    );
    let err = mailer.send(&new_thread_mail()).await.unwrap_err();
    assert!(
        matches!(err, MailError::Http { status: 429, .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert!(err.to_string().starts_with(&endpoint), "{err}");

    stand_in.fail_next(
        Failure::TooManyRequests {
            retry_after_secs: None,
        },
        1,
    );
    let err = mailer.send(&new_thread_mail()).await.unwrap_err();
    assert!(err.is_transient());
    assert_eq!(err.retry_after(), None);

    stand_in.fail_next(Failure::ServerError, 1);
    let err = mailer.send(&new_thread_mail()).await.unwrap_err();
    assert!(
        matches!(err, MailError::Http { status: 500, .. }),
        "{err:?}"
    );
    assert!(err.is_transient());

    stand_in.fail_next(Failure::Unauthorized, 1);
    let err = mailer.send(&new_thread_mail()).await.unwrap_err();
    assert!(
        matches!(err, MailError::Http { status: 401, .. }),
        "{err:?}"
    );
    assert!(!err.is_transient());

    stand_in.fail_next(Failure::BadRequest, 1);
    let err = mailer.send(&new_thread_mail()).await.unwrap_err();
    assert!(
        matches!(err, MailError::Http { status: 400, .. }),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(!format!("{err} {err:?}").contains(KEY));

    // Failures were not deliveries; the next send is.
    assert!(stand_in.deliveries().is_empty());
    mailer.send(&new_thread_mail()).await.unwrap();
    assert_eq!(stand_in.deliveries().len(), 1);
}

#[tokio::test]
async fn header_injection_adds_no_field_and_no_recipient() {
    let stand_in = MailgunStandIn::start().await.unwrap();
    let mut mail = injection_mail();
    mail.subject = format!("raw subject{INJECTION}");
    mailer(&stand_in, KEY).send(&mail).await.unwrap();
    let got = stand_in.wait_for_deliveries(1, WAIT).await.unwrap();
    let names = got[0].field_names();
    assert!(
        !names
            .iter()
            .any(|n| n.eq_ignore_ascii_case("bcc") || n.eq_ignore_ascii_case("cc"))
    );
    assert!(!names.iter().any(|n| n.to_ascii_lowercase().contains("bcc")));
    assert_eq!(got[0].fields_named("to"), vec![RECIPIENT]);
    let subject = got[0].field("subject").unwrap();
    assert!(!subject.contains(['\r', '\n']), "{subject:?}");
    assert_eq!(subject, "raw subjectok  Bcc: evil@example.com");
}

#[tokio::test]
async fn silent_server_times_out_transiently() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let config = MailgunConfig {
        domain: DOMAIN.to_owned(),
        private_key: Secret::new(KEY),
        api_base: format!("http://{addr}/v3"),
    };
    let options = MailgunOptions {
        timeout: Duration::from_millis(300),
    };
    let mailer = MailgunMailer::new(&config, SENDER, vec![], options).unwrap();
    let err = mailer.send(&new_thread_mail()).await.unwrap_err();
    assert!(matches!(err, MailError::Timeout { .. }), "{err:?}");
    assert!(err.is_transient());
    hold.abort();
}

/// A hostile error answer (issue 17.4): a body that never ends is read only up to the limit (the
/// error comes back with its beginning, not a timeout), and absurd `Retry-After` values in either
/// form are saturated or ignored, never a panic.
#[tokio::test]
async fn hostile_error_answers_are_bounded() {
    use teleport_email::mail::mailgun::MAX_RETRY_AFTER;
    let stand_in = MailgunStandIn::start().await.unwrap();
    let config = MailgunConfig {
        domain: DOMAIN.to_owned(),
        private_key: Secret::new(KEY),
        api_base: stand_in.api_base(),
    };
    // A deadline far longer than reading 4 KiB takes, so reading the whole body shows as a timeout.
    let options = MailgunOptions {
        timeout: Duration::from_secs(60),
    };
    let mailer = MailgunMailer::new(&config, SENDER, vec![], options).unwrap();
    for (retry_after, expected) in [
        (Some("99999999999999999999999999"), Some(MAX_RETRY_AFTER)),
        (Some("Fri, 31 Dec 9999 23:59:59 GMT"), Some(MAX_RETRY_AFTER)),
        (Some("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO)),
        (Some("-5"), None),
        (Some("\u{e9}\u{e9}"), None),
        (None, None),
    ] {
        stand_in.fail_next(
            Failure::Hostile {
                status: 503,
                retry_after: retry_after.map(str::to_owned),
            },
            1,
        );
        let err = mailer.send(&new_thread_mail()).await.unwrap_err();
        let MailError::Http {
            status, message, ..
        } = &err
        else {
            panic!("{retry_after:?}: expected an HTTP error, got {err:?}");
        };
        assert_eq!(*status, 503);
        assert!(message.starts_with("xxxx"), "{retry_after:?}: {message:?}");
        assert!(
            message.len() < 1024,
            "{retry_after:?}: {} bytes",
            message.len()
        );
        assert_eq!(err.retry_after(), expected, "{retry_after:?}");
        assert!(err.is_transient());
    }
    mailer.send(&new_thread_mail()).await.unwrap();
    assert_eq!(stand_in.deliveries().len(), 1);
}
