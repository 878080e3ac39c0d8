//! The daemon's life as `app::run_with` runs it: pooled mail connections closed politely at
//! shutdown and when a reload replaces the mailer, and a reconcile after each reload.

use std::path::Path;
use std::time::Duration;

use teleport_email::app::{self, Hooks, Reload};
use teleport_email::exit::Exit;
use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions};
use teleport_email::testkit::pki::KeyKind;
use teleport_email::testkit::smtp::SmtpReceiver;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::support::harness::{Backend, Harness};

const REQUESTER: &str = "requester-oss@example.com";
const R1: &str = "reviewer1@example.com";
const WAIT: Duration = Duration::from_secs(20);

/// Hooks that reload `path` on each message of the returned sender (and every `file_check`),
/// with the ready signal.
fn reloading(
    path: &Path,
    file_check: Option<Duration>,
) -> (mpsc::Sender<()>, watch::Receiver<bool>, Hooks) {
    let (reload, signals) = mpsc::channel(1);
    let (ready_tx, ready) = watch::channel(false);
    let hooks = Hooks {
        reload: Some(Reload {
            path: path.to_owned(),
            debug: false,
            logging: None,
            signals,
            file_check,
        }),
        ready: Some(ready_tx),
        access_list_checks: None,
    };
    (reload, ready, hooks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_smtp_connections_get_quit_at_shutdown() {
    let mut h = Harness::start(Backend::Smtp, FakeAuthOptions::default()).await;
    h.auth
        .create_request(REQUESTER, &["editor"], "because of", &[R1]);
    h.next_mails(2).await;
    // The health check's connection said QUIT; the pooled ones are still open.
    let before = h.smtp().stats().quits;
    h.shutdown_daemon_only().await;
    assert!(
        h.smtp().stats().quits > before,
        "no QUIT at shutdown: {:?}",
        h.smtp().stats()
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

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_quits_the_replaced_mailer_and_reconciles() {
    let auth = FakeAuth::start_default().await;
    let old = SmtpReceiver::start().await.unwrap();
    let new = SmtpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let identity = auth.write_plugin_identity(&dir.path().join("identity"), KeyKind::Ecdsa);
    let path = dir.path().join("teleport-email.toml");
    write_config(&path, &auth, &identity, old.port());
    let config = teleport_email::config::load(&path).unwrap().config;
    let (reload, mut ready, hooks) = reloading(&path, None);
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(app::run_with(config, stop.clone(), hooks));
    tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
        .await
        .expect("the daemon becomes ready")
        .unwrap();
    auth.create_request(REQUESTER, &["editor"], "before", &[]);
    old.wait_for(1, WAIT).await.unwrap();
    let (quits, lists) = (old.stats().quits, auth.list_calls());

    write_config(&path, &auth, &identity, new.port());
    reload.send(()).await.unwrap();
    until("the replaced mailer's connections got no QUIT", || {
        old.stats().quits > quits
    })
    .await;
    until("no reconcile after the reload", || {
        auth.list_calls() > lists
    })
    .await;
    let id = auth.create_request(REQUESTER, &["editor"], "after", &[]);
    let got = new.wait_for(1, WAIT).await.unwrap();
    assert!(got[0].data_text().contains(&id), "{}", got[0].data_text());
    assert_eq!(old.messages().len(), 1);

    stop.cancel();
    assert_eq!(daemon.await.unwrap(), Exit::Success);
}

// ---------------------------------------------------------------------------------------------
// Second reader's tests (review-watch): each fails on the change under review.
// ---------------------------------------------------------------------------------------------

/// app.rs `reload_loop`: the periodic re-read remembers a changed config whose reload was
/// rejected and never tries it again, whatever the reason. A mailer health check that fails for
/// a passing reason (the mail server restarting, a 421, a network blip while the kubelet swapped
/// a rotated Secret in) therefore keeps the new config, and a rotated password with it, out of
/// force until someone sends SIGHUP or the file changes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_rejected_by_a_passing_health_check_failure_is_applied_later() {
    let auth = FakeAuth::start_default().await;
    let smtp = SmtpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let identity = auth.write_plugin_identity(&dir.path().join("identity"), KeyKind::Ecdsa);
    let path = dir.path().join("teleport-email.toml");
    write_config(&path, &auth, &identity, smtp.port());
    let config = teleport_email::config::load(&path).unwrap().config;
    let (_signal, mut ready, hooks) = reloading(&path, Some(Duration::from_millis(100)));
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(app::run_with(config, stop.clone(), hooks));
    tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
        .await
        .expect("the daemon becomes ready")
        .unwrap();

    // The mail server turns away the next connection (the reload's health check) with a 421.
    let before = smtp.stats().connections;
    smtp.refuse_next_connections(1);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("all@example.com", "new@example.com");
    std::fs::write(&path, text).unwrap();
    until("the reload's health check was tried", || {
        smtp.stats().connections > before
    })
    .await;
    // Many re-reads later, with the server answering again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let id = auth.create_request(REQUESTER, &["editor"], "after", &[]);
    let got = smtp.wait_for(1, WAIT).await.unwrap();
    assert!(got[0].data_text().contains(&id), "{}", got[0].data_text());
    assert!(
        got[0].rcpt_to.iter().any(|r| r.contains("new@example.com")),
        "the changed config was never applied: mailed {:?}",
        got[0].rcpt_to
    );
    stop.cancel();
    assert_eq!(daemon.await.unwrap(), Exit::Success);
}
