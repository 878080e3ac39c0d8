//! Second reader's tests (review-cross) over real sockets: what `check` says of the rules after
//! dc9f96b. Fails on dc9f96b.

use std::path::Path;
use std::process::{Command, Stdio};

use teleport_email::teleport::MonitoringRule;
use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions};
use teleport_email::testkit::pki::KeyKind;
use teleport_email::testkit::smtp::SmtpReceiver;

/// Runs `check` (blocking, off the runtime) and returns its stdout.
async fn check(config: &Path) -> String {
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_teleport-email"))
            .args(["check", "-c"])
            .arg(&config)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

/// Since dc9f96b a condition naming the requested resources (`resource_labels_union`, written
/// for 18.1+ and documented there) does not parse, so the rule never routes anything: the
/// request goes to `role_to_recipients`. `check` is where an operator switching from a later
/// 18.x original learns which rules route their mail, and it still counts such a rule as one
/// that applies ("1 apply (prod-by-label)", check.rs `check_monitoring`), without a word that
/// its condition does not parse here; only the daemon's log says so, per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_cross_check_says_which_rules_never_match_because_their_condition_does_not_parse() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let smtp = SmtpReceiver::builder()
        .auth("mailer", "right-password")
        .auth_requires_tls(false)
        .start()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let identity = auth.write_plugin_identity(&dir.path().join("identity"), KeyKind::Ecdsa);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[teleport]\naddr = \"{}\"\nidentity = \"{}\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\nstarttls_policy = \"disabled\"\nusername = \"mailer\"\npassword = \"right-password\"\n[delivery]\nsender = \"noreply@example.com\"\n[role_to_recipients]\n\"*\" = \"all@example.com\"\n",
            auth.addr(),
            identity.display(),
            smtp.port()
        ),
    )
    .unwrap();
    auth.put_monitoring_rule(&MonitoringRule::for_email(
        "prod-by-label",
        r#"access_request.spec.resource_labels_union["env"].contains("prod")"#,
        &["prod-oncall@example.com"],
    ));
    let out = check(&config).await;
    let line = out
        .lines()
        .find(|l| l.contains("monitoring rules"))
        .unwrap_or_else(|| panic!("no monitoring rules line in:\n{out}"));
    assert!(
        line.contains("prod-by-label") && line.contains("parse"),
        "check does not say that the rule's condition does not parse (it never routes): {line}"
    );
}
