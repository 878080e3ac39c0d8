//! Fourth reader's tests (review-fixes4) over real sockets and the built binary: `check`'s rule
//! line (c3f4ccf). Fails on c3f4ccf.

use std::path::Path;
use std::process::{Command, Stdio};

use teleport_email::teleport::MonitoringRule;
use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions};
use teleport_email::testkit::pki::KeyKind;
use teleport_email::testkit::smtp::SmtpReceiver;

/// check.rs `check_monitoring` (c3f4ccf): each rule's name and parse error is cut to 200
/// characters, but every rule is listed, by name, in one line, and every broken one again with
/// its error: up to 4 KB a rule (200 characters escaped to up to 10 bytes each, twice), with no
/// cap on how many. Whoever may write rules writes as many as they like; here 64 broken rules
/// with 200-character names put some 38 KB into one line of `check` (the earlier review's test
/// allowed 8 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_fixes4_check_s_rule_line_is_bounded_whatever_the_number_of_rules() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let smtp = SmtpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let identity = auth.write_plugin_identity(&dir.path().join("identity"), KeyKind::Ecdsa);
    let path = dir.path().join("teleport-email.toml");
    write_config(&path, &auth, &identity, smtp.port());
    for i in 0..64 {
        auth.put_monitoring_rule(&MonitoringRule::for_email(
            &format!("{i:03}{}", "n".repeat(197)),
            &format!("access_request.spec.roles.contains({})", "x".repeat(300)),
            &["x@example.com"],
        ));
    }
    let config = path.clone();
    let out = tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_teleport-email"))
            .args(["check", "-c"])
            .arg(&config)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap();
    let line = out
        .lines()
        .find(|l| l.contains("monitoring rules"))
        .unwrap_or_else(|| {
            let shown: String = out.chars().take(2000).collect();
            panic!("no monitoring rules line in:\n{shown}")
        });
    assert!(
        line.len() <= 8 * 1024,
        "64 rules put {} bytes into check's line",
        line.len()
    );
}

fn write_config(path: &Path, auth: &FakeAuth, identity: &Path, smtp_port: u16) {
    let text = format!(
        "[teleport]\naddr = \"{}\"\nidentity = \"{}\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nstarttls_policy = \"disabled\"\n[delivery]\nsender = \"noreply@example.com\"\n[role_to_recipients]\n\"*\" = \"all@example.com\"\n",
        auth.addr(),
        identity.display()
    );
    std::fs::write(path, text).unwrap();
}
