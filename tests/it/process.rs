//! The built binary as operators run it: killed with SIGKILL and restarted, two replicas with one
//! killed half-way through a burst, and SIGHUP config reloads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions};
use teleport_email::testkit::pki::KeyKind;
use teleport_email::testkit::smtp::SmtpReceiver;

use crate::support::peers::Peers;

const ALL: &str = "all@example.com";
const R1: &str = "reviewer1@example.com";
const WAIT: Duration = Duration::from_secs(60);

/// A daemon process with its log in a file.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    async fn start(config: &Path, log: PathBuf) -> Self {
        Self::start_with_env(config, log, &[]).await
    }

    async fn start_with_env(config: &Path, log: PathBuf, env: &[(&str, &str)]) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_teleport-email"))
            .args(["start", "--config"])
            .arg(config)
            .arg("--debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("the daemon starts");
        let d = Self { child, log };
        d.wait_log("Plugin is ready", 1).await;
        d
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_log(&self, needle: &str, times: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.log_text().matches(needle).count() < times {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{needle:?} never logged {times} time(s):\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// What `systemctl reload teleport-email` does: the unit's `ExecReload=`, `$MAINPID` filled in.
    fn reload_as_systemd_does(&self) {
        let unit =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/teleport-email.service");
        let unit = std::fs::read_to_string(unit).unwrap();
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecReload="))
            .expect("the unit has ExecReload=")
            .replace("$MAINPID", &self.child.id().to_string());
        let mut words = line.split_whitespace();
        let program = words.next().expect("a command");
        let ok = Command::new(program)
            .args(words)
            .status()
            .unwrap()
            .success();
        assert!(ok, "{line} failed");
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    async fn stop(mut self) -> i32 {
        self.signal("-TERM");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (request, recipient, kind) → distinct Message-IDs and copies received.
fn tally(smtp: &SmtpReceiver) -> BTreeMap<(String, String, &'static str), (Vec<String>, usize)> {
    let mut out: BTreeMap<_, (Vec<String>, usize)> = BTreeMap::new();
    for m in smtp.messages() {
        let msg = mail_parser::MessageParser::default()
            .parse(&m.data)
            .unwrap();
        let subject = msg.subject().unwrap_or_default().to_owned();
        let id = subject.rsplit("Role Request ").next().unwrap().to_owned();
        let text = msg.body_text(0).unwrap_or_default();
        let kind = if text.contains("You have a new Role Request") {
            "new"
        } else if text.contains("reviewed the request") {
            "review"
        } else {
            "resolved"
        };
        let e = out.entry((id, m.rcpt_to.join(","), kind)).or_default();
        let mid = msg.message_id().unwrap_or_default().to_owned();
        if !e.0.contains(&mid) {
            e.0.push(mid);
        }
        e.1 += 1;
    }
    out
}

/// Every recipient holds exactly one message per stage: one Message-ID for each (request,
/// recipient, stage). A resend after a crash reuses the Message-ID, so it is the same message.
fn assert_one_message_each(
    smtp: &SmtpReceiver,
    ids: &[String],
    recipients: &[&str],
    kinds: &[&str],
) {
    let t = tally(smtp);
    for id in ids {
        for to in recipients {
            for k in kinds {
                let key = (id.clone(), to.to_string(), *k);
                let (mids, _) = t
                    .get(&key)
                    .unwrap_or_else(|| panic!("{to} never got the {k} mail of {id}"));
                assert_eq!(
                    mids.len(),
                    1,
                    "{key:?} arrived as different messages: {mids:?}"
                );
            }
        }
    }
    assert_eq!(
        t.len(),
        ids.len() * recipients.len() * kinds.len(),
        "unexpected mails: {t:#?}"
    );
}

async fn wait_messages(smtp: &SmtpReceiver, distinct: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tally(smtp).len() < distinct {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {distinct} distinct mails",
            tally(smtp).len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_a_request_while_down_then_restart() {
    let p = Peers::with_config().await;
    let mut d = Daemon::start(&p.config(), p.dir.path().join("d1.log")).await;
    let a = p
        .auth
        .create_request("a@example.com", &["editor"], "first", &[R1]);
    wait_messages(&p.smtp, 2).await;
    d.kill9();
    let b = p
        .auth
        .create_request("b@example.com", &["editor"], "while down", &[R1]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tally(&p.smtp).len(), 2);
    let d = Daemon::start(&p.config(), p.dir.path().join("d2.log")).await;
    wait_messages(&p.smtp, 4).await;
    p.auth.resolve(&a, true, "ok");
    p.auth.resolve(&b, false, "no");
    wait_messages(&p.smtp, 8).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_one_message_each(&p.smtp, &[a, b], &[ALL, R1], &["new", "resolved"]);
    assert_eq!(d.stop().await, 0, "graceful stop exits 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_killed_half_way_through_a_burst() {
    let p = Peers::with_config().await;
    let mut d1 = Daemon::start(&p.config(), p.dir.path().join("d1.log")).await;
    let d2 = Daemon::start(&p.config(), p.dir.path().join("d2.log")).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        if i == 25 {
            d1.kill9();
        }
        ids.push(
            p.auth
                .create_request(&format!("u{i}@example.com"), &["editor"], "burst", &[R1]),
        );
    }
    // The survivor takes over what the dead one had claimed once its lease runs out (30 s).
    wait_messages(&p.smtp, 100).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_one_message_each(&p.smtp, &ids, &[ALL, R1], &["new"]);
    assert_eq!(d2.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_recipients_and_rejects_a_broken_config() {
    let p = Peers::with_config().await;
    let d = Daemon::start(&p.config(), p.dir.path().join("d.log")).await;
    let a = p
        .auth
        .create_request("a@example.com", &["editor"], "before", &[]);
    wait_messages(&p.smtp, 1).await;

    p.write_config(
        "config.toml",
        &format!("\"*\" = \"{ALL}\"\n\"editor\" = \"editors@example.com\"\n"),
        "",
    );
    d.reload_as_systemd_does();
    d.wait_log("Configuration reloaded", 1).await;
    let b = p
        .auth
        .create_request("b@example.com", &["editor"], "after", &[]);
    wait_messages(&p.smtp, 2).await;
    let t = tally(&p.smtp);
    assert!(t.contains_key(&(a.clone(), ALL.to_owned(), "new")));
    assert!(
        t.contains_key(&(b.clone(), "editors@example.com".to_owned(), "new")),
        "{t:#?}"
    );

    std::fs::write(p.config(), "[smtp]\nstarttls_policy = \"sometimes\"\n").unwrap();
    d.signal("-HUP");
    d.wait_log("Configuration reload rejected", 1).await;
    let c = p
        .auth
        .create_request("c@example.com", &["editor"], "still", &[]);
    wait_messages(&p.smtp, 3).await;
    assert!(tally(&p.smtp).contains_key(&(c, "editors@example.com".to_owned(), "new")));

    // A syntax error on a secret's line: the log names the position, never the line (17.9).
    std::fs::write(
        p.config(),
        "[smtp]\nhost = \"h\"\nusername = \"u\"\npassword = \"s3cret\\qPW\"\n",
    )
    .unwrap();
    d.signal("-HUP");
    d.wait_log("Configuration reload rejected", 2).await;
    let log = d.log_text();
    assert!(log.contains("line 4, column"), "{log}");
    assert!(!log.contains("s3cret") && !log.contains("qPW"), "{log}");
    assert_eq!(d.stop().await, 0);
}

/// The daemon (not just the client) reaches a ready watch through the fake Proxy, by TLS routing
/// and by the connection upgrade behind an L7 load balancer, and mails a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_through_a_proxy_and_an_l7_load_balancer() {
    use teleport_email::testkit::proxy::{FakeProxy, ProxyMode};
    for (mode, path) in [
        (ProxyMode::Routing, "through the Proxy (TLS routing)"),
        (
            ProxyMode::BehindL7,
            "through the Proxy (ALPN connection upgrade)",
        ),
    ] {
        let p = Peers::with_config().await;
        let proxy = FakeProxy::start(p.auth.addr(), p.auth.cluster(), mode).await;
        let config = p.dir.path().join("proxy.toml");
        let text = std::fs::read_to_string(p.config())
            .unwrap()
            .replace(&p.auth.addr().to_string(), &proxy.addr().to_string());
        std::fs::write(&config, text).unwrap();
        let ca = p.dir.path().join("web-ca.pem");
        std::fs::write(&ca, proxy.web_ca_pem()).unwrap();
        let log = p.dir.path().join("d.log");
        let child = Command::new(env!("CARGO_BIN_EXE_teleport-email"))
            .args(["start", "--config"])
            .arg(&config)
            .env("SSL_CERT_FILE", &ca)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon { child, log };
        d.wait_log("Plugin is ready", 1).await;
        assert!(
            d.log_text().contains(path),
            "{mode:?}: wrong path:\n{}",
            d.log_text()
        );
        let id = p
            .auth
            .create_request("a@example.com", &["editor"], "via proxy", &[R1]);
        wait_messages(&p.smtp, 2).await;
        assert_one_message_each(&p.smtp, &[id], &[ALL, R1], &["new"]);
        assert_eq!(d.stop().await, 0);
    }
}

/// Without any signal, a changed config and a rotated `password_file` (a Kubernetes Secret
/// mounted as a directory) are noticed by the periodic re-read: the new recipients are used, and
/// the new password is tried (here the server refuses it, so the reload is rejected, the old
/// password stays in force, and the same rejected files are tried again only after five periods).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_are_reloaded_without_a_signal() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let smtp = SmtpReceiver::builder()
        .auth("mailer", "pw-1")
        .start()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    auth.write_plugin_identity(&dir.path().join("identity"), KeyKind::Ecdsa);
    let secret = dir.path().join("password");
    std::fs::write(&secret, "pw-1\n").unwrap();
    let config = dir.path().join("config.toml");
    let write_config = |recipients: &str| {
        let text = format!(
            "[teleport]\naddr = \"{}\"\nidentity = \"{}\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\n\
             starttls_policy = \"disabled\"\nusername = \"mailer\"\npassword_file = \"{}\"\n\
             [delivery]\nsender = \"noreply@example.com\"\n[role_to_recipients]\n{recipients}",
            auth.addr(),
            dir.path().join("identity").display(),
            smtp.port(),
            secret.display(),
        );
        std::fs::write(&config, text).unwrap();
    };
    write_config(&format!("\"*\" = \"{ALL}\"\n"));
    let d = Daemon::start_with_env(
        &config,
        dir.path().join("d.log"),
        &[("TELEPORT_EMAIL_FILE_CHECK_INTERVAL", "100ms")],
    )
    .await;

    write_config(&format!(
        "\"*\" = \"{ALL}\"\n\"editor\" = \"editors@example.com\"\n"
    ));
    d.wait_log("Configuration reloaded", 1).await;
    let a = auth.create_request("a@example.com", &["editor"], "after", &[]);
    wait_messages(&smtp, 1).await;
    assert!(tally(&smtp).contains_key(&(a, "editors@example.com".to_owned(), "new")));

    let failures = smtp.stats().auth_failures;
    std::fs::write(&secret, "pw-2-rotated\n").unwrap();
    d.wait_log("Configuration reload rejected", 1).await;
    assert!(
        smtp.stats().auth_failures > failures,
        "the new password was tried"
    );
    // Re-reads within five periods do not try the same rejected files again (a password the
    // server refuses is not retried often enough to lock the account); later they are.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let log = d.log_text();
    assert_eq!(
        log.matches("Configuration reload rejected").count(),
        1,
        "{log}"
    );
    d.wait_log("Configuration reload rejected", 2).await;
    assert!(!log.contains("pw-2-rotated"), "{log}");
    let b = auth.create_request("b@example.com", &["editor"], "old password", &[]);
    wait_messages(&smtp, 2).await;
    assert!(tally(&smtp).contains_key(&(b, "editors@example.com".to_owned(), "new")));
    assert_eq!(d.stop().await, 0);
}

/// Settings a reload cannot apply to a running daemon are named in a WARN, so the operator
/// knows to restart: `delivery.retry_timeout` and `[metrics] listen`, beside `[teleport]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_names_the_settings_that_wait_for_a_restart() {
    let p = Peers::with_config().await;
    let write = |retry: &str, metrics: &str| {
        let text = format!(
            "[teleport]\naddr = \"{}\"\nidentity = \"{}\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\n\
             starttls_policy = \"disabled\"\n[delivery]\nsender = \"noreply@example.com\"\n\
             retry_timeout = \"{retry}\"\n[role_to_recipients]\n\"*\" = \"{ALL}\"\n{metrics}",
            p.auth.addr(),
            p.dir.path().join("identity").display(),
            p.smtp.port()
        );
        std::fs::write(p.config(), text).unwrap();
    };
    write("10m", "");
    let d = Daemon::start(&p.config(), p.dir.path().join("d.log")).await;
    write("10m", "");
    d.signal("-HUP");
    d.wait_log("Configuration reloaded", 1).await;
    assert!(!d.log_text().contains("next restart"), "{}", d.log_text());

    write("2m", "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    d.signal("-HUP");
    d.wait_log("Configuration reloaded", 2).await;
    let log = d.log_text();
    for key in ["delivery.retry_timeout", "[metrics] listen"] {
        assert!(
            log.lines()
                .any(|l| l.contains(" WARN ") && l.contains(key) && l.contains("next restart")),
            "no WARN naming {key}:\n{log}"
        );
    }
    assert_eq!(d.stop().await, 0);
}

// ---------------------------------------------------------------------------------------------
// Second reader (review-class): the WARN on settings that wait for a restart.

/// Writes a config with `retry` as delivery.retry_timeout and `sender` as delivery.sender.
fn write_reload_config(p: &Peers, retry: &str, sender: &str) {
    let text = format!(
        "[teleport]\naddr = \"{}\"\nidentity = \"{}\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\n\
         starttls_policy = \"disabled\"\n[delivery]\nsender = \"{sender}\"\n\
         retry_timeout = \"{retry}\"\n[role_to_recipients]\n\"*\" = \"{ALL}\"\n",
        p.auth.addr(),
        p.dir.path().join("identity").display(),
        p.smtp.port()
    );
    std::fs::write(p.config(), text).unwrap();
}

fn restart_warns(d: &Daemon, key: &str) -> usize {
    d.log_text()
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains(key) && l.contains("next restart"))
        .count()
}

/// reload.rs: `reloaded` compares the new config with `current.config`, and `reload_loop` then
/// makes the new config `current` although its restart-only settings are not in force. So a
/// reload back to the retry_timeout the daemon runs with is warned as a change that "takes
/// effect at the next restart" (a restart changes nothing), and a reload that keeps the
/// not-yet-applied value says nothing although it still waits for a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_class_the_restart_warn_compares_with_the_settings_in_force() {
    let p = Peers::with_config().await;
    write_reload_config(&p, "10m", "noreply@example.com");
    let d = Daemon::start(&p.config(), p.dir.path().join("d.log")).await;
    write_reload_config(&p, "2m", "noreply@example.com");
    d.signal("-HUP");
    d.wait_log("Configuration reloaded", 1).await;
    assert_eq!(restart_warns(&d, "delivery.retry_timeout"), 1);
    // Back to the value in force: nothing waits for a restart.
    write_reload_config(&p, "10m", "noreply@example.com");
    d.signal("-HUP");
    d.wait_log("Configuration reloaded", 2).await;
    let warned = restart_warns(&d, "delivery.retry_timeout");
    assert_eq!(d.stop().await, 0);
    assert_eq!(
        warned, 1,
        "a reload back to the retry_timeout in force (10m) was warned as waiting for a restart"
    );
}

/// reload.rs / app/mod.rs `build_engine`: a reload applies a new delivery.sender to the mailer
/// (the From changes at once) but the Message-ID host, taken from the sender at start
/// (`message_id_host`), stays the old domain until a restart; the WARN does not name it. Mails
/// then go out From one domain with Message-IDs of another, and a replica restarted meanwhile
/// derives different Message-IDs for the same (request, recipient, stage) than one reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_class_a_reloaded_sender_moves_the_message_id_host_or_is_warned() {
    let p = Peers::with_config().await;
    write_reload_config(&p, "10m", "noreply@example.com");
    let d = Daemon::start(&p.config(), p.dir.path().join("d.log")).await;
    write_reload_config(&p, "10m", "noreply@other.example");
    d.signal("-HUP");
    d.wait_log("Configuration reloaded", 1).await;
    p.auth
        .create_request("a@example.com", &["editor"], "after the reload", &[]);
    let got = p.smtp.wait_for(1, WAIT).await.unwrap();
    let msg = mail_parser::MessageParser::default()
        .parse(&got[0].data)
        .unwrap();
    let from = got[0].mail_from.clone();
    let message_id = msg.message_id().unwrap_or_default().to_owned();
    let warned = restart_warns(&d, "delivery.sender");
    assert_eq!(d.stop().await, 0);
    assert!(
        message_id.ends_with("@other.example") || warned > 0,
        "MAIL FROM {from}, Message-ID <{message_id}>, and no WARN naming delivery.sender"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_list_reminders_on_a_cluster_without_access_lists_say_so_once_and_carry_on() {
    let peers = Peers::start_with(FakeAuthOptions {
        community_edition: true,
        ..FakeAuthOptions::default()
    })
    .await;
    let path = peers.dir.path().join("lists.toml");
    let text = std::fs::read_to_string(peers.write_config(
        "base.toml",
        &format!("\"*\" = \"{ALL}\"\n"),
        "",
    ))
    .unwrap()
    .replace("[delivery]\n", "[delivery]\naccess_list_reminders = true\n");
    std::fs::write(&path, text).unwrap();
    let daemon = Daemon::start(&path, peers.dir.path().join("log")).await;
    daemon
        .wait_log("This cluster does not offer Access Lists", 1)
        .await;
    let id = peers
        .auth
        .create_request("alice@example.com", &["editor"], "", &[]);
    wait_messages(&peers.smtp, 1).await;
    let log = daemon.log_text();
    assert_eq!(
        log.matches("does not offer Access Lists").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
    assert!(log.contains(&id), "the request was handled: {log}");
    assert_eq!(daemon.stop().await, 0);
}

/// Review finding 3 (the real binary). The Access List reminders task is spawned detached and
/// never joined: SIGTERM while an owner's reminder waits to be retried ends the process when the
/// watcher is done, without the claims of that check being undone. The reminders that were never
/// delivered stay claimed (`te_sending`) until the lease runs out (`retry_timeout` + 5 min, 15 min
/// by default): a restart sends nothing until then, and a mail that was accepted just before the
/// runtime was dropped is sent again after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_sigterm_mid_reminder_undoes_its_claims() {
    let peers = Peers::with_config().await;
    peers.smtp.inject(
        teleport_email::testkit::smtp::Stage::RcptTo,
        "451 4.3.0 try again later",
        1000,
    );
    let in_days = std::time::SystemTime::now() + Duration::from_secs(3 * 24 * 3600);
    peers
        .auth
        .put_access_list(teleport_email::testkit::auth::FakeList {
            name: "ops".into(),
            title: "Ops".into(),
            owners: vec!["a@example.com".into(), "b@example.com".into()],
            next_review: Some(in_days),
            ..Default::default()
        });
    let path = peers.dir.path().join("lists.toml");
    let text = std::fs::read_to_string(peers.config())
        .unwrap()
        .replace("[delivery]\n", "[delivery]\naccess_list_reminders = true\n");
    std::fs::write(&path, text).unwrap();
    let daemon = Daemon::start(&path, peers.dir.path().join("log")).await;
    // The first check runs within 10 s; its first mail is refused for now and retried.
    daemon
        .wait_log("Access List review reminder not sent yet; retrying", 1)
        .await;
    let claimed = peers.auth.list_plugin_data("ops", "email").unwrap();
    assert!(claimed.contains_key("te_sending"), "{claimed:?}");
    assert_eq!(daemon.stop().await, 0);
    let data = peers
        .auth
        .list_plugin_data("ops", "email")
        .unwrap_or_default();
    assert!(
        !data.contains_key("te_sending"),
        "after a clean SIGTERM the undelivered reminders are still claimed: {data:?}"
    );
}

/// `log.output = "syslog"`: every line goes to the local syslog daemon's datagram socket as the
/// original sends it (`<4>` = kern.warning, the program as started and its pid).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_output_syslog_sends_each_line_to_the_local_syslog_socket() {
    let peers = Peers::with_config().await;
    let socket_path = peers.dir.path().join("dev-log");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let config = peers.dir.path().join("syslog.toml");
    let text = std::fs::read_to_string(peers.config()).unwrap() + "[log]\noutput = \"syslog\"\n";
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_teleport-email"))
        .args(["start", "--config"])
        .arg(&config)
        .env(teleport_email::logging::SYSLOG_SOCKET_ENV, &socket_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let ready = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 65536];
        let mut seen = Vec::new();
        loop {
            let n = socket.recv(&mut buf).expect("a syslog message within 30 s");
            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.push(line.clone());
            if line.contains("Plugin is ready") {
                return (line, seen);
            }
        }
    })
    .await
    .unwrap();
    let (line, _) = ready;
    assert!(line.starts_with("<4>"), "{line}");
    // Tagged with the program as started (os.Args[0]), as Go's log/syslog does.
    let program = env!("CARGO_BIN_EXE_teleport-email");
    assert!(line.contains(&format!(" {program}[{pid}]: ")), "{line}");
    assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A log file moved away by logrotate (no signal, no `copytruncate`) is created again at its
/// path, and the lines go there, as the original does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_moved_by_logrotate_is_reopened() {
    let peers = Peers::with_config().await;
    let log = peers.dir.path().join("plugin.log");
    let config = peers.dir.path().join("file.toml");
    let text = std::fs::read_to_string(peers.config()).unwrap()
        + &format!("[log]\noutput = \"{}\"\n", log.display());
    std::fs::write(&config, text).unwrap();
    // stderr (the first lines, before the config is read) goes to the same file.
    let daemon = Daemon::start(&config, log.clone()).await;
    let rotated = peers.dir.path().join("plugin.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let id = peers
        .auth
        .create_request("alice@example.com", &["editor"], "", &[]);
    wait_messages(&peers.smtp, 1).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(&id)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no line about {id} in the new {log:?}; the old one has:\n{}",
            std::fs::read_to_string(&rotated).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !std::fs::read_to_string(&rotated).unwrap().contains(&id),
        "a line about {id} went to the rotated file"
    );
    assert_eq!(daemon.stop().await, 0);
}
