//! Hostile text in requests, and secrets kept out of every log line.

use std::process::{Command, Stdio};
use std::time::Duration;

use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions};
use teleport_email::testkit::mailgun::MailgunStandIn;
use teleport_email::testkit::pki::KeyKind;
use teleport_email::testkit::smtp::SmtpReceiver;

use crate::support::harness::{Backend, Harness};

const R1: &str = "reviewer1@example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_request_text_is_sent_safely() {
    let mut h = Harness::start(Backend::Smtp, FakeAuthOptions::default()).await;
    let huge = "A".repeat(1024 * 1024);
    let reason =
        format!("because\r\nBcc: evil@example.com\r\n\r\nfake body\0\u{202E}reversed {huge}");
    let id = h.auth.create_request(
        "mallory\r\nBcc: evil2@example.com",
        &["editor\r\nX-Injected: yes"],
        &reason,
        &[
            "evil@example.com\r\nBcc: x@example.com",
            "not-an-address",
            "Bob <bob@example.com>",
            R1,
        ],
    );
    let mails = h.next_mails(2).await;
    h.assert_quiet().await;
    let mut to: Vec<_> = mails.iter().map(|m| m.to.clone()).collect();
    to.sort();
    assert_eq!(
        to,
        ["all@example.com", R1],
        "invalid reviewers must be skipped"
    );
    let raw = h.smtp().messages();
    assert_eq!(raw.len(), 2);
    for m in &raw {
        assert_eq!(m.rcpt_to.len(), 1, "{:?}", m.rcpt_to);
        assert!(!m.rcpt_to[0].contains("evil"));
        for line in m.header_lines() {
            let lower = line.to_ascii_lowercase();
            assert!(!lower.starts_with("bcc:"), "injected header: {line}");
            assert!(!lower.starts_with("x-injected:"), "injected header: {line}");
        }
        assert!(
            m.data.len() < 64 * 1024,
            "oversized mail: {} bytes",
            m.data.len()
        );
    }
    for m in &mails {
        assert!(m.text.contains("[truncated]"), "no truncation note");
        assert!(m.subject.contains(&id));
        assert!(!m.text.contains('\0'));
    }
    h.shutdown().await;
}

/// The daemon at debug level, through start-up, sends and a failed send, never prints a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    const SMTP_PASSWORD: &str = "s3cret-smtp-Pa55";
    const MAILGUN_KEY: &str = "key-0123456789abcdef-secret";
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let identity = auth.write_plugin_identity(&dir.path().join("identity"), KeyKind::Rsa);
    let identity_text = std::fs::read_to_string(&identity).unwrap();
    let key_line = identity_text.lines().nth(1).unwrap().to_owned();
    let tls = teleport_email::testkit::tls::TestPki::generate().unwrap();
    let smtp = SmtpReceiver::builder()
        .starttls(tls.server_config().unwrap())
        .auth("mailer", SMTP_PASSWORD)
        .start()
        .await
        .unwrap();
    let mailgun = MailgunStandIn::start_requiring_key(MAILGUN_KEY)
        .await
        .unwrap();
    let pw_file = dir.path().join("smtp_password");
    std::fs::write(&pw_file, format!("{SMTP_PASSWORD}\n")).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, tls.ca_der().map(|d| pem_of(&d)).unwrap()).unwrap();

    let configs = [
        format!(
            "[smtp]\nhost = \"localhost\"\nport = {}\nusername = \"mailer\"\npassword_file = \"{}\"\n",
            smtp.port(),
            pw_file.display()
        ),
        format!(
            "[mailgun]\ndomain = \"example.com\"\nprivate_key = \"{MAILGUN_KEY}\"\napi_base = \"{}\"\n",
            mailgun.api_base()
        ),
        // Wrong credentials: the failure paths must not echo the secret either.
        format!(
            "[smtp]\nhost = \"localhost\"\nport = {}\nusername = \"mailer\"\npassword = \"{SMTP_PASSWORD}x\"\n",
            smtp.port()
        ),
    ];
    for (i, mailer) in configs.iter().enumerate() {
        let config = dir.path().join(format!("c{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "[teleport]\naddr = \"{}\"\nidentity = \"{}\"\n{mailer}[delivery]\nsender = \"noreply@example.com\"\n[role_to_recipients]\n\"*\" = \"all@example.com\"\n[log]\nseverity = \"trace\"\n",
                auth.addr(),
                identity.display()
            ),
        )
        .unwrap();
        let log = dir.path().join(format!("c{i}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_teleport-email"))
            .args(["start", "--debug", "-c"])
            .arg(&config)
            .env("SSL_CERT_FILE", &ca)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let id = auth.create_request("u@example.com", &["editor"], "why", &[]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let done = text.contains("Successfully sent") && text.contains(&id)
                || text.contains("Terminating with fatal error");
            if done || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.lines().count() > 5,
            "config {i}: too little logged:\n{text}"
        );
        if i < 2 {
            assert!(
                text.contains("Successfully sent"),
                "config {i}: nothing sent:\n{text}"
            );
        } else {
            assert!(
                text.contains("health check failed"),
                "config {i}: no failure logged:\n{text}"
            );
        }
        for secret in [SMTP_PASSWORD, MAILGUN_KEY, key_line.as_str()] {
            assert!(
                !text.contains(secret),
                "config {i}: a secret appears in the log:\n{text}"
            );
        }
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("api:{MAILGUN_KEY}"));
        assert!(
            !text.contains(&b64),
            "config {i}: the Mailgun auth header appears in the log"
        );
    }
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let body: Vec<String> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        body.join("\n")
    )
}
