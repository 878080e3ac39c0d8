//! The sandbox: the real daemon against a local fake Teleport and a local mail receiver.
//!
//! `cargo run --example sandbox` starts a fake Auth Service (real mTLS, real gRPC) and an SMTP
//! receiver, writes an identity file and a config, runs `teleport-email`'s own `app::run` on them,
//! shows it catch up on a request filed an hour before (and remind its reviewer), files three
//! Access Requests (one approved by two reviews, one denied, one that expires), sets an Access
//! List's review date close, and prints every mail as it arrives. `--verbose` shows the
//! daemon's log too.

use std::time::Duration;

use teleport_email::app;
use teleport_email::logging::Logging;
use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions, FakeList};
use teleport_email::testkit::pki::KeyKind;
use teleport_email::testkit::smtp::SmtpReceiver;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let verbose = std::env::args().any(|a| a == "--verbose" || a == "-v");
    let logging = Logging::init();
    if let Some(logging) = &logging {
        let level = if verbose { "info" } else { "warn" };
        let log = teleport_email::config::parse(
            &format!("[smtp]\nhost=\"x\"\n[role_to_recipients]\n\"*\"=\"a@b\"\n[log]\nseverity=\"{level}\"\n"),
            std::path::Path::new("log"),
        )?
        .config
        .log;
        logging.apply(&log, false)?;
    }

    let auth = FakeAuth::start(FakeAuthOptions {
        cluster: "sandbox.example.com".into(),
        ..Default::default()
    })
    .await;
    let smtp = SmtpReceiver::start().await?;
    let dir = tempfile::tempdir()?;
    let identity = auth.write_plugin_identity(&dir.path().join("identity"), KeyKind::Ecdsa);
    let config_text = format!(
        r#"[teleport]
addr = "{auth}"
identity = "{identity}"

[smtp]
host = "127.0.0.1"
port = {port}
starttls_policy = "disabled"

[delivery]
sender = "Teleport Access <noreply@example.com>"
# Off by default (as the original); on here to show the requester's own thread.
notify_requester = true
# Off by default; on here to show an Access List owner's review reminder.
access_list_reminders = true
# Off by default; on here to remind the reviewers of a request nobody reviewed for an hour.
reminder_interval = "1h"

[role_to_recipients]
"*" = "security@example.com"
"editor" = ["dev-leads@example.com"]
"#,
        auth = auth.addr(),
        identity = identity.display(),
        port = smtp.port(),
    );
    let config_path = dir.path().join("teleport-email.toml");
    std::fs::write(&config_path, &config_text)?;
    println!("teleport-email sandbox");
    println!(
        "  fake Teleport Auth Service: {} (cluster {})",
        auth.addr(),
        auth.cluster()
    );
    println!("  SMTP receiver:              {}", smtp.addr());
    println!("  config:                     {}\n", config_path.display());
    println!("{}", indent(&config_text));

    // Filed an hour ago, while the daemon was not running: it catches up at start.
    let waiting = auth.create_request("dave@example.com", &["editor"], "on-call handover", &[]);
    auth.backdate(&waiting, Duration::from_secs(3600 + 60));

    let config = teleport_email::config::load(&config_path)?.config;
    let stop = CancellationToken::new();
    // Access Lists are checked every 3 hours; here every second, so the story need not wait.
    let hooks = app::Hooks {
        access_list_checks: Some(Duration::from_secs(1)),
        ..app::Hooks::default()
    };
    let daemon = tokio::spawn(app::run_with(config, stop.clone(), hooks));
    let deadline = tokio::time::Instant::now() + WAIT;
    while auth.watcher_count() == 0 {
        anyhow::ensure!(
            !daemon.is_finished(),
            "the daemon stopped before it was ready"
        );
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the daemon never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("The daemon is watching.\n");
    story(
        "0. dave asked for `editor` an hour ago, while the daemon was stopped; nobody reviewed it",
    );
    // Caught up at start: dev-leads' thread, dave's confirmation, then the reminder in the thread.
    let mut shown = show(&smtp, 0, 3).await?;
    let _ = waiting;
    println!("Filing three Access Requests.\n");

    story("1. alice asks for `editor`; two reviewers approve (two approvals needed)");
    let a = auth.create_request_with_thresholds(
        "alice@example.com",
        &["editor"],
        "fix the payments incident",
        &["reviewer1@example.com", "reviewer2@example.com"],
        2,
        2,
    );
    // Three reviewers' threads and alice's confirmation.
    shown = show(&smtp, shown, 4).await?;
    auth.review(&a, "reviewer1@example.com", true, "looks right");
    shown = show(&smtp, shown, 3).await?;
    auth.review(&a, "reviewer2@example.com", true, "go ahead");
    // The review and the resolution to each reviewer; the outcome to alice.
    shown = show(&smtp, shown, 7).await?;

    story("2. bob asks for `db-admin`; a reviewer denies it");
    let b = auth.create_request(
        "bob@example.com",
        &["db-admin"],
        "curiosity",
        &["reviewer1@example.com"],
    );
    shown = show(&smtp, shown, 3).await?;
    auth.review(&b, "reviewer1@example.com", false, "no ticket");
    shown = show(&smtp, shown, 5).await?;

    story("3. carol asks for `auditor`; nobody reviews it and it expires");
    let c = auth.create_request("carol@example.com", &["auditor"], "quarterly audit", &[]);
    shown = show(&smtp, shown, 2).await?;
    auth.delete_request(&c);
    shown = show(&smtp, shown, 2).await?;

    story(
        "4. the Access List \"Payments on-call\" is due for review in 5 days; its owner hears of it",
    );
    auth.put_access_list(FakeList {
        name: "payments-oncall".into(),
        title: "Payments on-call".into(),
        owners: vec!["dev-leads@example.com".into()],
        next_review: Some(std::time::SystemTime::now() + Duration::from_secs(5 * 24 * 3600)),
        ..FakeList::default()
    });
    show(&smtp, shown, 1).await?;

    stop.cancel();
    let exit = daemon.await?;
    println!(
        "\nThe daemon stopped ({exit:?}). {} mails were delivered.",
        smtp.messages().len()
    );
    Ok(())
}

fn story(title: &str) {
    println!("\n=== {title}\n");
}

/// Waits for `more` mails after the first `shown`, prints them, returns the new count.
async fn show(smtp: &SmtpReceiver, shown: usize, more: usize) -> anyhow::Result<usize> {
    let all = smtp.wait_for(shown + more, WAIT).await?;
    for m in &all[shown..shown + more] {
        let msg = mail_parser::MessageParser::default()
            .parse(&m.data)
            .ok_or_else(|| anyhow::anyhow!("unparseable mail"))?;
        let thread = match msg.in_reply_to().as_text() {
            Some(parent) => format!("reply to <{parent}>"),
            None => format!("new thread <{}>", msg.message_id().unwrap_or_default()),
        };
        println!(
            "--- to {} | {} | {thread}",
            m.rcpt_to.join(", "),
            msg.subject().unwrap_or_default()
        );
        println!("{}\n", indent(&msg.body_text(0).unwrap_or_default()));
    }
    Ok(shown + more)
}

fn indent(s: &str) -> String {
    s.trim_end()
        .lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
