//! Delivery under faults: every recipient ends with exactly one mail per stage — nothing lost,
//! nothing doubled — when the mail server or Teleport misbehave.

use std::collections::BTreeMap;
use std::time::Duration;

use teleport_email::testkit::auth::FakeAuthOptions;
use teleport_email::testkit::mailgun::Failure;
use teleport_email::testkit::smtp::Stage as SmtpStage;

use crate::support::harness::{Backend, Harness, Mail};

const ALL: &str = "all@example.com";
const R1: &str = "reviewer1@example.com";

fn kind(m: &Mail) -> &'static str {
    if m.text.contains("You have a new Role Request") {
        "new"
    } else if m.text.contains("reviewed the request") {
        "review"
    } else if m.text.contains("has been resolved") {
        "resolved"
    } else {
        "other"
    }
}

/// Asserts every (request, recipient, stage) appears exactly once, and `n` requests are covered.
fn assert_exactly_once(mails: &[Mail], requests: usize, recipients: &[&str], kinds: &[&str]) {
    let mut seen: BTreeMap<(String, String, &str), usize> = BTreeMap::new();
    for m in mails {
        *seen
            .entry((m.request_id(), m.to.clone(), kind(m)))
            .or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicates: {dups:?}");
    let ids: std::collections::BTreeSet<_> = seen.keys().map(|k| k.0.clone()).collect();
    assert_eq!(ids.len(), requests, "requests covered: {ids:?}");
    for id in &ids {
        for to in recipients {
            for k in kinds {
                assert!(
                    seen.contains_key(&(id.clone(), to.to_string(), k)),
                    "{to} never got the {k} mail of {id}"
                );
            }
        }
    }
    assert_eq!(mails.len(), requests * recipients.len() * kinds.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_for_15s_while_requests_are_created() {
    let mut h = Harness::start(Backend::Smtp, FakeAuthOptions::default()).await;
    h.smtp().go_down().await;
    let ids: Vec<_> = (0..5)
        .map(|i| {
            h.auth
                .create_request(&format!("u{i}@example.com"), &["editor"], "incident", &[R1])
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(h.all_mails().is_empty());
    h.smtp().come_back().unwrap();
    let mails = h.next_mails(10).await;
    for id in &ids {
        h.wait_threads(id, 2).await;
        h.auth.resolve(id, true, "ok");
    }
    let resolved = h.next_mails(10).await;
    h.assert_quiet().await;
    assert_exactly_once(
        &[mails, resolved].concat(),
        5,
        &[ALL, R1],
        &["new", "resolved"],
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_answers_451_to_the_first_attempts() {
    let mut h = Harness::start(Backend::Smtp, FakeAuthOptions::default()).await;
    h.smtp()
        .inject(SmtpStage::MailFrom, "451 4.3.0 Try again later", 3);
    let id = h
        .auth
        .create_request("u@example.com", &["editor"], "incident", &[R1]);
    let mails = h.next_mails(2).await;
    h.wait_threads(&id, 2).await;
    h.auth.review(&id, R1, true, "fine");
    let more = h.next_mails(4).await;
    h.assert_quiet().await;
    assert_exactly_once(
        &[mails, more].concat(),
        1,
        &[ALL, R1],
        &["new", "review", "resolved"],
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailgun_429_then_500_then_accepts() {
    let mut h = Harness::start(Backend::Mailgun, FakeAuthOptions::default()).await;
    h.mailgun().fail_next(
        Failure::TooManyRequests {
            retry_after_secs: Some(2),
        },
        1,
    );
    h.mailgun().fail_next(Failure::ServerError, 1);
    let id = h
        .auth
        .create_request("u@example.com", &["editor"], "incident", &[R1]);
    let mails = h.next_mails(2).await;
    h.wait_threads(&id, 2).await;
    h.auth.delete_request(&id);
    let more = h.next_mails(2).await;
    h.assert_quiet().await;
    assert_exactly_once(&[mails, more].concat(), 1, &[ALL, R1], &["new", "resolved"]);
    let statuses = h.mailgun().requests().len();
    assert!(
        statuses >= 6,
        "the failures were not exercised: {statuses} calls"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_down_for_10s_and_a_request_created_meanwhile_is_notified() {
    let mut h = Harness::start(Backend::Smtp, FakeAuthOptions::default()).await;
    h.auth.stop().await;
    // Created while the watch is down: no event ever reaches the daemon for it.
    let id = h
        .auth
        .create_request("u@example.com", &["editor"], "while down", &[R1]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    h.auth.restart().await;
    let mails = h.next_mails(2).await;
    assert!(mails.iter().all(|m| m.request_id() == id));
    h.assert_quiet().await;
    assert_exactly_once(&mails, 1, &[ALL, R1], &["new"]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_dropped_in_the_middle_of_a_burst_of_50() {
    let mut h = Harness::start(Backend::Smtp, FakeAuthOptions::default()).await;
    for i in 0..50 {
        if i == 25 {
            h.auth.drop_watchers();
        }
        h.auth
            .create_request(&format!("u{i}@example.com"), &["editor"], "burst", &[R1]);
    }
    let mails = h.next_mails(100).await;
    h.assert_quiet().await;
    assert_exactly_once(&mails, 50, &[ALL, R1], &["new"]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_retries_releases_the_claim_and_the_next_start_delivers() {
    let mut h = Harness::start(Backend::Smtp, FakeAuthOptions::default()).await;
    h.smtp().go_down().await;
    let id = h
        .auth
        .create_request("u@example.com", &["editor"], "incident", &[R1]);
    // Wait until the first attempt failed and the daemon is retrying.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !h
        .auth
        .plugin_data(&id, "email")
        .is_some_and(|d| d.contains_key("te_claim"))
    {
        assert!(tokio::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = tokio::time::Instant::now();
    h.shutdown_daemon_only().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited for the retries"
    );
    let data = h.auth.plugin_data(&id, "email").unwrap();
    assert!(
        !data.contains_key("te_claim"),
        "claim left behind: {data:?}"
    );
    assert!(
        data.get("email_threads").is_none_or(|t| t.is_empty()),
        "{data:?}"
    );
    h.smtp().come_back().unwrap();
    h.restart_daemon().await;
    let mails = h.next_mails(2).await;
    h.assert_quiet().await;
    assert_exactly_once(&mails, 1, &[ALL, R1], &["new"]);
    h.shutdown().await;
}
