//! Server certificates are checked against the OS trust store, and `SSL_CERT_FILE` replaces it.
//!
//! Environment variables are process-wide, so the test that sets one runs in a child process:
//! it re-runs this test binary with `SSL_CERT_FILE` pointing at a test CA and only the ignored
//! child test selected. Nothing in this process ever sets the variable.

use std::process::Command;
use std::time::Duration;

use teleport_email::config::StartTlsPolicy;
use teleport_email::mail::smtp::SmtpMailer;
use teleport_email::mail::{MailError, Mailer};
use teleport_email::testkit::smtp::SmtpReceiver;

use crate::support::*;

/// Set for the child process: the port of the parent's receiver.
const CHILD_PORT: &str = "TELEPORT_EMAIL_TEST_CHILD_SMTP_PORT";

#[tokio::test]
async fn a_ca_in_ssl_cert_file_is_trusted_for_starttls_and_implicit_tls() {
    crypto();
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let files = pki.write_to(dir.path()).unwrap();

    for implicit in [false, true] {
        let builder = SmtpReceiver::builder();
        let builder = if implicit {
            builder.implicit_tls(pki.server_config().unwrap())
        } else {
            builder.starttls(pki.server_config().unwrap())
        };
        let receiver = builder.start().await.unwrap();

        // Without it (the OS store only), the test CA is unknown: a TLS error.
        let mut config = smtp_config(receiver.port(), StartTlsPolicy::Mandatory, None);
        config.implicit_tls = implicit;
        let err = smtp_mailer(&config, None)
            .send(&new_thread_mail())
            .await
            .unwrap_err();
        assert!(matches!(err, MailError::Tls { .. }), "{err:?}");

        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe);
        child
            .args([
                "--exact",
                "native_roots::child_sends_trusting_only_the_os_store",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SSL_CERT_FILE", &files.ca)
            .env_remove("SSL_CERT_DIR")
            .env(CHILD_PORT, receiver.port().to_string())
            .env("TELEPORT_EMAIL_TEST_CHILD_IMPLICIT", implicit.to_string());
        let out = tokio::task::spawn_blocking(move || child.output())
            .await
            .unwrap()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = receiver.wait_for(1, Duration::from_secs(5)).await.unwrap();
        assert!(got[0].tls);
    }
}

/// Run only by the test above, in a child process whose `SSL_CERT_FILE` names the test CA.
#[tokio::test]
#[ignore = "run by a_ca_in_ssl_cert_file_is_trusted_for_starttls_and_implicit_tls in a child process"]
async fn child_sends_trusting_only_the_os_store() {
    let Ok(port) = std::env::var(CHILD_PORT) else {
        // Run on its own (e.g. --include-ignored): only the parent test can check anything.
        eprintln!("skipped: only meaningful as the child of the SSL_CERT_FILE test");
        return;
    };
    let port: u16 = port.parse().unwrap();
    assert!(std::env::var_os("SSL_CERT_FILE").is_some());
    crypto();
    let mut config = smtp_config(port, StartTlsPolicy::Mandatory, None);
    config.implicit_tls =
        std::env::var("TELEPORT_EMAIL_TEST_CHILD_IMPLICIT").as_deref() == Ok("true");
    // No extra roots: only what the OS store (here: SSL_CERT_FILE) holds.
    let mailer = SmtpMailer::new(&config, SENDER, options(None)).unwrap();
    mailer.send(&new_thread_mail()).await.unwrap();
}
