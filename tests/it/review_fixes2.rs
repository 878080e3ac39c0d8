//! Second reader's tests (review-fixes2) over real sockets: the reminders' task awaited at exit
//! (afa68c6) and `check`'s line on rules whose condition does not parse (1ecf3a5). Each fails
//! on 80539ba.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use teleport_email::app::{self, Hooks};
use teleport_email::exit::Exit;
use teleport_email::teleport::MonitoringRule;
use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions, Perms};
use teleport_email::testkit::pki::KeyKind;
use teleport_email::testkit::smtp::SmtpReceiver;
use tokio_util::sync::CancellationToken;

fn write_config(path: &Path, auth: &FakeAuth, identity: &Path, smtp_port: u16, delivery: &str) {
    let text = format!(
        "[teleport]\naddr = \"{}\"\nidentity = \"{}\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nstarttls_policy = \"disabled\"\n[delivery]\nsender = \"noreply@example.com\"\n{delivery}[role_to_recipients]\n\"*\" = \"all@example.com\"\n",
        auth.addr(),
        identity.display()
    );
    std::fs::write(path, text).unwrap();
}

/// Starts the daemon over a role that may not read access requests (so the watch is refused:
/// `WatchError::Fatal`), with `delivery` in the config, and returns how it ended within 20 s.
async fn run_refused(delivery: &str) -> Option<Exit> {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let smtp = SmtpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let identity = auth.write_plugin_identity(&dir.path().join("identity"), KeyKind::Ecdsa);
    let path = dir.path().join("teleport-email.toml");
    write_config(&path, &auth, &identity, smtp.port(), delivery);
    let config = teleport_email::config::load(&path).unwrap().config;
    auth.set_role(
        "access-plugin",
        Perms {
            write_plugin_data: true,
            ..Perms::default()
        },
    );
    // Nobody sends a signal: the daemon is to stop on its own, as a fatal error says.
    let root = CancellationToken::new();
    let daemon = tokio::spawn(app::run_with(config, root.clone(), Hooks::default()));
    let ended = tokio::time::timeout(Duration::from_secs(20), daemon).await;
    root.cancel();
    ended.ok().map(|r| r.unwrap())
}

/// app/mod.rs `run_inner` (afa68c6): the reminders' task stops on `root.child_token()`, but
/// `run_inner` now awaits it after the watch whatever way the watch ended. When the watch ends
/// with a fatal error (a role that may not read access requests, or a lost watch with
/// TELEPORT_PLUGIN_FAIL_FAST), `root` was never cancelled, so the task never stops and the
/// daemon hangs for good instead of exiting 1 with "Terminating with fatal error" (the grace
/// period starts only at a signal). The Access List reminders have a token of their own
/// (`lists_stop`), cancelled there; these do not. With `delivery.reminder_interval` unset the
/// same daemon exits at once (Exit::Runtime).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_fixes2_a_fatal_watch_error_ends_the_daemon_with_reminders_on() {
    assert_eq!(
        run_refused("").await,
        Some(Exit::Runtime),
        "without reminders"
    );
    assert_eq!(
        run_refused("reminder_interval = \"4h\"\n").await,
        Some(Exit::Runtime),
        "with delivery.reminder_interval the daemon hangs after a fatal watch error"
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

/// Runs `check` against a cluster with one rule for `email`, and returns the ✗/✓ line about the
/// rules with every line after it that does not start with a mark, and a short excerpt of the
/// whole output for failure messages.
async fn check_with_rule(name: &str, condition: &str) -> (Vec<String>, String) {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let smtp = SmtpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let identity = auth.write_plugin_identity(&dir.path().join("identity"), KeyKind::Ecdsa);
    let path = dir.path().join("teleport-email.toml");
    write_config(&path, &auth, &identity, smtp.port(), "");
    auth.put_monitoring_rule(&MonitoringRule::for_email(
        name,
        condition,
        &["x@example.com"],
    ));
    let out = check(&path).await;
    let shown: String = out.chars().take(2000).collect();
    let lines: Vec<String> = out
        .lines()
        .skip_while(|l| !l.contains("monitoring rules"))
        .take_while(|l| !l.starts_with("✓ users") || l.contains("all good"))
        .map(str::to_owned)
        .collect();
    assert!(!lines.is_empty(), "no monitoring rules line in:\n{shown}");
    (lines, shown)
}

/// check.rs `check_monitoring` (1ecf3a5): the rule's error is passed through `escape_debug`,
/// but its name is printed as Teleport returned it (in the new ✗ line twice). Neither
/// Teleport's `ValidateAccessMonitoringRule` nor ours restricts a rule's name, so whoever may
/// create an `access_monitoring_rule` can make `check` print carriage returns, terminal escapes
/// and line breaks: here a name that, on a terminal, rewrites the ✗ line as a ✓ one and adds a
/// forged "✓ users … all good" line. Elsewhere hostile names (Access Lists, users, rule
/// recipients) go out through `escape_debug`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_fixes2_check_prints_a_hostile_rule_name_escaped() {
    let (lines, shown) = check_with_rule(
        "evil\r\u{1b}[2K✓ monitoring rules 1 apply (fine)\n✓ users        all good",
        "access_request.spec.roles.contains(",
    )
    .await;
    assert_eq!(
        lines.len(),
        1,
        "a rule's name added lines of its own to check's output:\n{}",
        shown.escape_debug()
    );
    assert!(
        !lines[0].chars().any(char::is_control),
        "control characters from a rule's name in check's output: {:?}",
        lines[0]
    );
}

/// check.rs `check_monitoring` (1ecf3a5): the parse error goes into the line uncut, and the
/// condition language's errors quote the input ("unknown identifier \"…\""): a rule whose
/// condition is one 60 KiB identifier (under the 64 KiB the parser accepts) puts 60 KiB into
/// `check`'s line, and every such rule as much again. Body fields of mails are cut at 4 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_fixes2_check_cuts_a_rule_s_huge_parse_error() {
    let (lines, _) = check_with_rule("huge", &"a".repeat(60 * 1024)).await;
    let len: usize = lines.iter().map(String::len).sum();
    assert!(
        len <= 8 * 1024,
        "one rule's condition put {len} bytes into check's output"
    );
}
