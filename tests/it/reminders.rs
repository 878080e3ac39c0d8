//! `delivery.reminder_interval` end to end: a request filed before the daemon (re)started and
//! left unreviewed gets its reminder once, in its thread, and a further restart sends nothing
//! again (the round is in the plugin data).

use std::time::Duration;

use teleport_email::testkit::auth::FakeAuthOptions;

use crate::support::harness::{Backend, Harness};

#[tokio::test]
async fn an_unreviewed_request_is_reminded_once_across_restarts() {
    let on = "reminder_interval = \"1h\"\nreminder_limit = 2\n";
    let mut h = Harness::start_with(Backend::Smtp, FakeAuthOptions::default(), on).await;
    let id = h
        .auth
        .create_request("alice@example.com", &["editor"], "", &[]);
    let first = h.next_mails(1).await;
    h.shutdown_daemon_only().await;
    h.auth.backdate(&id, Duration::from_secs(3600 + 60));

    h.restart_daemon().await;
    let reminder = h.next_mails(1).await;
    assert_eq!(
        reminder[0].subject, first[0].subject,
        "the thread's subject"
    );
    assert!(
        reminder[0].text.starts_with("Reminder 1 of 2"),
        "{}",
        reminder[0].text
    );
    assert_eq!(
        reminder[0].in_reply_to.as_deref(),
        Some(first[0].message_id.as_str())
    );
    h.restart_daemon().await;
    h.assert_quiet().await;
    let data = h.auth.plugin_data(&id, "email").unwrap();
    assert_eq!(data["te_reminders"], "v1:1");
    h.shutdown().await;
}
