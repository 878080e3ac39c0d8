//! Operations: `teleport-email check` against the fakes and real mail servers, and the metrics
//! and health endpoints during a run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions, Perms};
use teleport_email::testkit::pki::{ClusterPki, KeyKind};
use teleport_email::testkit::smtp::SmtpReceiver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn write_config(
    dir: &Path,
    name: &str,
    auth: &str,
    identity: &Path,
    mailer: &str,
    extra: &str,
) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[teleport]\naddr = \"{auth}\"\nidentity = \"{}\"\n{mailer}[delivery]\nsender = \"noreply@example.com\"\n[role_to_recipients]\n\"*\" = \"all@example.com\"\n{extra}",
            identity.display()
        ),
    )
    .unwrap();
    path
}

fn smtp_section(port: u16, user: &str, password: &str) -> String {
    format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {port}\nstarttls_policy = \"disabled\"\nusername = \"{user}\"\npassword = \"{password}\"\n"
    )
}

/// Runs `check` (blocking, off the runtime) and returns (exit code, stdout).
async fn check(config: &Path, extra: &[&str]) -> (i32, String) {
    let config = config.to_owned();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_teleport-email"))
            .args(["check", "-c"])
            .arg(&config)
            .args(&extra)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn line<'a>(out: &'a str, what: &str) -> &'a str {
    out.lines()
        .find(|l| l[l.char_indices().nth(2).map_or(0, |(i, _)| i)..].starts_with(what))
        .unwrap_or_else(|| panic!("no {what} line in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_and_names_each_failure() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let smtp = SmtpReceiver::builder()
        .auth("mailer", "right-password")
        .auth_requires_tls(false)
        .start()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let identity = auth.write_plugin_identity(&dir.path().join("identity"), KeyKind::Ecdsa);
    let addr = auth.addr().to_string();
    let good_smtp = smtp_section(smtp.port(), "mailer", "right-password");

    // All good, with a test mail.
    let cfg = write_config(dir.path(), "good.toml", &addr, &identity, &good_smtp, "");
    let (code, out) = check(&cfg, &["--send-test", "me@example.com"]).await;
    assert_eq!(code, 0, "{out}");
    for what in [
        "config",
        "credentials",
        "teleport",
        "list",
        "plugin data",
        "monitoring rules",
        "users",
        "mailer",
        "test mail",
    ] {
        assert!(line(&out, what).starts_with('✓'), "{what}: {out}");
    }
    assert!(
        line(&out, "monitoring rules").contains("none apply"),
        "{out}"
    );
    let rule =
        teleport_email::teleport::MonitoringRule::for_email("dev", "true", &["dev@example.com"]);
    auth.put_monitoring_rule(&rule);
    let (_, out_rules) = check(&cfg, &[]).await;
    assert!(
        line(&out_rules, "monitoring rules").contains("1 apply (dev)"),
        "{out_rules}"
    );
    assert!(line(&out, "teleport").contains(auth.cluster()), "{out}");
    assert!(
        line(&out, "teleport").contains("direct to the Auth Service"),
        "{out}"
    );
    let got = smtp.wait_for(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got[0].rcpt_to, ["me@example.com"]);

    // A bad CA: credentials of another cluster.
    let other = ClusterPki::new("other.example.com");
    let foreign = other.write_identity(
        &dir.path().join("foreign"),
        "access-plugin",
        &["access-plugin"],
        KeyKind::Ecdsa,
    );
    let cfg = write_config(dir.path(), "badca.toml", &addr, &foreign, &good_smtp, "");
    let (code, out) = check(&cfg, &[]).await;
    assert_ne!(code, 0);
    assert!(line(&out, "teleport").starts_with('✗'), "{out}");
    assert!(
        out.contains("not trusted by the cluster's Host CA"),
        "{out}"
    );

    // Wrong SMTP password.
    let cfg = write_config(
        dir.path(),
        "badpw.toml",
        &addr,
        &identity,
        &smtp_section(smtp.port(), "mailer", "wrong"),
        "",
    );
    let (code, out) = check(&cfg, &[]).await;
    assert_ne!(code, 0);
    assert!(
        line(&out, "mailer").starts_with('✗')
            && line(&out, "mailer").contains("authentication failed"),
        "{out}"
    );
    assert!(!out.contains("wrong\""), "the password was printed: {out}");

    // Unreachable Teleport host.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = write_config(
        dir.path(),
        "unreach.toml",
        &format!("127.0.0.1:{port}"),
        &identity,
        &good_smtp,
        "",
    );
    let (code, out) = check(&cfg, &[]).await;
    assert_ne!(code, 0);
    assert!(
        line(&out, "teleport").starts_with('✗') && out.contains("TCP connection failed"),
        "{out}"
    );
    assert!(
        line(&out, "list").starts_with('✗') && line(&out, "list").contains("not checked"),
        "{out}"
    );

    // A role that may not list requests or update plugin data.
    auth.set_role("access-plugin", Perms::default());
    let cfg = write_config(dir.path(), "denied.toml", &addr, &identity, &good_smtp, "");
    let (code, out) = check(&cfg, &[]).await;
    assert_ne!(code, 0);
    assert!(
        line(&out, "list").starts_with('✗') && line(&out, "list").contains("access denied"),
        "{out}"
    );
    assert!(line(&out, "plugin data").starts_with('✗'), "{out}");
}

/// `check` and `start` share their start-up steps, so they word a failure alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_start_word_a_failure_alike() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let smtp = SmtpReceiver::builder()
        .auth("mailer", "right-password")
        .auth_requires_tls(false)
        .start()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let identity = auth.write_plugin_identity(&dir.path().join("identity"), KeyKind::Ecdsa);
    let mailer = smtp_section(smtp.port(), "mailer", "wrong");
    let cfg = write_config(
        dir.path(),
        "badpw.toml",
        &auth.addr().to_string(),
        &identity,
        &mailer,
        "",
    );
    let (_, out) = check(&cfg, &[]).await;
    let checked = line(&out, "mailer");
    let failure = &checked[checked
        .find("mail server health check failed: ")
        .unwrap_or_else(|| panic!("{out}"))..];
    let started = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_teleport-email"))
            .args(["start", "-c"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(started.status.code(), Some(5));
    let log = String::from_utf8_lossy(&started.stderr);
    assert!(log.contains(failure), "{failure:?} not in:\n{log}");
}

async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        code,
        buf.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_during_a_run() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let smtp = SmtpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let identity = auth.write_plugin_identity(&dir.path().join("identity"), KeyKind::Ecdsa);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let cfg = write_config(
        dir.path(),
        "m.toml",
        &auth.addr().to_string(),
        &identity,
        &format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {}\nstarttls_policy = \"disabled\"\n",
            smtp.port()
        ),
        &format!("[metrics]\nlisten = \"{listen}\"\n"),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_teleport-email"))
        .args(["start", "-c"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(&listen).await.is_ok()
            && http_get(&listen, "/readyz").await.0 == 200
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http_get(&listen, "/healthz").await.0, 200);
    let (_, before) = http_get(&listen, "/metrics").await;
    assert!(
        metric(&before, "teleport_email_identity_expiry_timestamp_seconds") > 1.7e9,
        "{before}"
    );
    assert_eq!(metric(&before, "teleport_email_ready"), 1.0, "{before}");
    let id = auth.create_request(
        "u@example.com",
        &["editor"],
        "r",
        &["reviewer1@example.com"],
    );
    smtp.wait_for(2, Duration::from_secs(10)).await.unwrap();
    let _ = id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let (_, body) = http_get(&listen, "/metrics").await;
        if body.contains("teleport_email_mails_sent_total{backend=\"smtp\",stage=\"new\"} 2") {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counters did not move:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        after.contains("teleport_email_events_total{kind=\"put\"} 1"),
        "{after}"
    );
    assert!(
        after.contains("teleport_email_events_total{kind=\"init\"} 1"),
        "{after}"
    );
    assert!(
        metric(&after, "teleport_email_seconds_since_last_event") < 10.0,
        "{after}"
    );
    // The watch drops: /readyz says so until it is back, and reconnects are counted.
    auth.stop().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while http_get(&listen, "/readyz").await.0 != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed 200 with the watch down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    auth.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while http_get(&listen, "/readyz").await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, last) = http_get(&listen, "/metrics").await;
    assert!(
        metric(&last, "teleport_email_watch_reconnects_total") >= 1.0,
        "{last}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_whether_access_list_reminders_can_work() {
    let smtp = SmtpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = |auth: &FakeAuth, name: &str| {
        let identity = auth.write_plugin_identity(&dir.path().join(name), KeyKind::Ecdsa);
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[teleport]\naddr = \"{}\"\nidentity = \"{}\"\n{}[delivery]\nsender = \"noreply@example.com\"\naccess_list_reminders = true\n[role_to_recipients]\n\"*\" = \"all@example.com\"\n",
                auth.addr(),
                identity.display(),
                smtp_section(smtp.port(), "", "").replace("username = \"\"\npassword = \"\"\n", "")
            ),
        )
        .unwrap();
        path
    };
    let enterprise = FakeAuth::start(FakeAuthOptions::default()).await;
    enterprise.put_access_list(teleport_email::testkit::auth::FakeList {
        name: "ops".into(),
        ..Default::default()
    });
    let (code, out) = check(&config(&enterprise, "ent"), &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "access lists").starts_with('✓')
            && line(&out, "access lists").contains("may list Access Lists (1)"),
        "{out}"
    );
    let mut narrow = teleport_email::testkit::auth::default_roles()["access-plugin"];
    narrow.read_access_lists = false;
    enterprise.set_role("access-plugin", narrow);
    let (code, out) = check(&config(&enterprise, "narrow"), &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "access lists").contains("the role needs `list` and `read` on `access_list`"),
        "{out}"
    );
    let community = FakeAuth::start(FakeAuthOptions {
        community_edition: true,
        ..FakeAuthOptions::default()
    })
    .await;
    let (code, out) = check(&config(&community, "ce"), &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "access lists").contains("a Teleport Enterprise feature"),
        "{out}"
    );
}
