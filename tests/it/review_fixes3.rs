//! Third reader's tests (review-fixes3) over real sockets and the built binary: a fatal watch
//! error (b74d82c) and `check`'s rule line (7769829). Each fails on a880b37.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use teleport_email::app::{self, Hooks};
use teleport_email::exit::Exit;
use teleport_email::teleport::MonitoringRule;
use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions, Perms};
use teleport_email::testkit::pki::KeyKind;
use teleport_email::testkit::smtp::SmtpReceiver;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn write_config(path: &Path, auth: &FakeAuth, identity: &Path, smtp_port: u16, delivery: &str) {
    let text = format!(
        "[teleport]\naddr = \"{}\"\nidentity = \"{}\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nstarttls_policy = \"disabled\"\n[delivery]\nsender = \"noreply@example.com\"\n{delivery}[role_to_recipients]\n\"*\" = \"all@example.com\"\n",
        auth.addr(),
        identity.display()
    );
    std::fs::write(path, text).unwrap();
}

/// The watch is lost and, at the reconnect, refused (the role no longer may read access
/// requests, but still writes plugin data): a fatal `WatchError`.
fn make_the_watch_fail_for_good(auth: &FakeAuth) {
    auth.set_role(
        "access-plugin",
        Perms {
            write_plugin_data: true,
            ..Perms::default()
        },
    );
    auth.drop_watchers();
}

/// app/mod.rs `run_inner` (b74d82c): "a fatal error now cancels the root as a signal would, so
/// retries hand their claims back and the grace period bounds what is in flight". But
/// `watcher::run` drains the events in flight (`dispatcher.drain()`, watcher.rs:160) before it
/// returns the error, and `root.cancel()` comes only after it returned: while the drain waits,
/// the engine's `stopping` token is not cancelled, so a handler retrying a mail server that is
/// down goes on for the whole `delivery.retry_timeout` (here 5 minutes; 10 by default), holding
/// its claim, and no grace period runs. On SIGTERM the same retry is handed back at once
/// (delivery.rs `shutdown_during_retries_releases_the_claim_and_the_next_start_delivers`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_fixes3_a_fatal_watch_error_hands_back_retries_as_a_signal_does() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let smtp = SmtpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let identity = auth.write_plugin_identity(&dir.path().join("identity"), KeyKind::Ecdsa);
    let path = dir.path().join("teleport-email.toml");
    write_config(
        &path,
        &auth,
        &identity,
        smtp.port(),
        "retry_timeout = \"5m\"\n",
    );
    let config = teleport_email::config::load(&path).unwrap().config;
    let (ready_tx, mut ready) = watch::channel(false);
    let root = CancellationToken::new();
    let hooks = Hooks {
        ready: Some(ready_tx),
        ..Hooks::default()
    };
    let daemon = tokio::spawn(app::run_with(config, root.clone(), hooks));
    tokio::time::timeout(Duration::from_secs(30), ready.wait_for(|r| *r))
        .await
        .expect("the daemon never became ready")
        .unwrap();

    // The mail server is down: the request's first mail is retried, under a claim.
    smtp.go_down().await;
    let id = auth.create_request("u@example.com", &["editor"], "incident", &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(auth.plugin_data(&id, "email")).is_some_and(|d| d.contains_key("te_claim")) {
        assert!(tokio::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    make_the_watch_fail_for_good(&auth);
    // The reconnect (about a second) plus the grace period, with room to spare.
    let ended = tokio::time::timeout(Duration::from_secs(25), daemon).await;
    root.cancel();
    let data = auth.plugin_data(&id, "email").unwrap_or_default();
    assert_eq!(
        ended.ok().map(|r| r.unwrap()),
        Some(Exit::Runtime),
        "25 s after a fatal watch error the daemon still waits for a mail retry (plugin data: \
         {data:?})"
    );
    assert!(
        !data.contains_key("te_claim"),
        "the retry's claim was not handed back: {data:?}"
    );
}

/// An SMTP server that answers at once but for a mail transaction: each reply to MAIL, RCPT,
/// DATA and the message takes 9.5 s (under our 10 s per-operation timeout), so one mail takes
/// about 38 s; a health check (greeting, EHLO, QUIT) passes at once. Returns its port and the
/// commands it was sent.
async fn slow_to_send() -> (u16, Arc<Mutex<Vec<String>>>) {
    const SLOW: Duration = Duration::from_millis(9_500);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let (r, mut w) = tcp.into_split();
                let mut r = BufReader::new(r);
                let _ = w.write_all(b"220 slow.example.com ESMTP\r\n").await;
                let mut in_data = false;
                let mut line = String::new();
                while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                    let cmd = line.trim_end().to_owned();
                    line.clear();
                    if in_data {
                        if cmd != "." {
                            continue;
                        }
                        in_data = false;
                    }
                    log.lock().unwrap().push(cmd.clone());
                    let upper = cmd.to_ascii_uppercase();
                    let reply: &[u8] = if upper == "QUIT" {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250 slow.example.com\r\n"
                    } else if upper == "DATA" {
                        tokio::time::sleep(SLOW).await;
                        in_data = true;
                        b"354 go on\r\n"
                    } else {
                        if upper.starts_with("MAIL") || upper.starts_with("RCPT") || cmd == "." {
                            tokio::time::sleep(SLOW).await;
                        }
                        b"250 ok\r\n"
                    };
                    if w.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

/// app/mod.rs `run_inner` (b74d82c) with `run_until_signalled`: a fatal watch error now
/// cancels `root`, which starts `shutdown::grace_expired`. When what `run_inner` awaits after
/// the watch outlasts the 15 s (here a reminder being sent to a slow mail server, which the
/// reminders' task waits for; an Access List reminder does the same), the `select!` drops
/// `run_with` before it logs "Terminating with fatal error" with the watch's error: the only
/// line left is "In-flight work did not finish within the grace period", and the exit code is
/// 6 ("stopped by force: a second signal, or in-flight work outlived the grace period")
/// instead of 1. The cause of the fatal error (here the role's missing permission) is logged
/// nowhere else. (A reload in progress does not do it: its health check is cut at 10 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_fixes3_a_fatal_watch_error_is_reported_even_past_the_grace_period() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let (port, seen) = slow_to_send().await;
    let dir = tempfile::tempdir().unwrap();
    let identity = auth.write_plugin_identity(&dir.path().join("identity"), KeyKind::Ecdsa);
    let path = dir.path().join("teleport-email.toml");
    write_config(
        &path,
        &auth,
        &identity,
        port,
        "reminder_interval = \"1h\"\n",
    );
    // A request whose first mail went out (as the original plugin records it), its first
    // reminder due some 10 s from now.
    let id = auth.create_request("u@example.com", &["editor"], "incident", &[]);
    auth.put_plugin_data(
        &id,
        "email",
        &[
            ("user", "u@example.com"),
            ("roles", "editor"),
            ("request_reason", "incident"),
            (
                "email_threads",
                "all@example.com/2024-05-01 10:00:00.2 +0000 UTC/<20240501.XYZ@test.example.com>",
            ),
        ],
    );
    auth.backdate(&id, Duration::from_secs(3600 - 10));
    let log = dir.path().join("daemon.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_teleport-email"))
        .args(["start", "--config"])
        .arg(&path)
        .env("TELEPORT_EMAIL_FILE_CHECK_INTERVAL", "0")
        .env_remove("TELEPORT_PLUGIN_FAIL_FAST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    // The reminder is being sent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while !(seen.lock().unwrap().iter()).any(|c| c.to_ascii_uppercase().starts_with("MAIL")) {
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no reminder was sent:\n{}", text());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    make_the_watch_fail_for_good(&auth);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no exit within 90 s of a fatal watch error:\n{}", text());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = text();
    assert!(
        text.contains("Terminating with fatal error") && text.contains("access denied"),
        "exit {code:?}; the fatal watch error's cause was never logged:\n{text}"
    );
    assert_eq!(
        code,
        Some(1),
        "exit code after a fatal watch error:\n{text}"
    );
}

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

/// check.rs `check_monitoring` (7769829): the parse error is cut to 200 characters, but the
/// rule's name is not: it is printed whole, escaped (up to 10 bytes per character), and twice
/// when the condition does not parse, in one line, for every rule. Teleport checks no length
/// on a resource name beyond what its backend's key allows. A rule named with 16 KiB puts
/// 32 KiB into `check`'s line; the test of 1ecf3a5's review allowed 8 KiB for a rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_fixes3_check_cuts_a_rule_s_huge_name() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let smtp = SmtpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let identity = auth.write_plugin_identity(&dir.path().join("identity"), KeyKind::Ecdsa);
    let path = dir.path().join("teleport-email.toml");
    write_config(&path, &auth, &identity, smtp.port(), "");
    auth.put_monitoring_rule(&MonitoringRule::for_email(
        &"n".repeat(16 * 1024),
        "access_request.spec.roles.contains(",
        &["x@example.com"],
    ));
    let out = check(&path).await;
    let line = out
        .lines()
        .find(|l| l.contains("monitoring rules"))
        .unwrap_or_else(|| {
            let shown: String = out.chars().take(2000).collect();
            panic!("no monitoring rules line in:\n{shown}")
        });
    assert!(
        line.len() <= 8 * 1024,
        "one rule's name put {} bytes into check's line",
        line.len()
    );
}
