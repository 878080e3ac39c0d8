//! Second reader (review 2) of 435c4ed, 741e54c, 902ee1f and c10898f: each test shows one way the
//! change sends a mail twice, never, too late, or fails where it should not. They are meant to
//! FAIL on b8e0aba; see each test's comment.

use std::sync::Arc;
use std::time::Duration;

use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions};
use tokio_util::sync::CancellationToken;

use crate::support::lists::{Probe, list, reminders, sending, spawn_check};
use crate::support::scripted_smtp::{Takes, health_check, server};

/// Review 2, finding L1 (MEDIUM-LOW; src/lists/mod.rs:126-133 `owes`, :317 and :350 `horizon`).
/// The horizon past which a claim is "not believed" is computed from the CHECKING replica's
/// own lease (`its retry_for + 5 min + 1 min`), not from anything the claim's writer used. Two
/// replicas whose `retry_timeout` differ by more than a minute (a rolling config change, or one
/// replica configured by hand) disagree: the one with the shorter setting takes the other's live
/// claim for a clock gone wrong, claims the reminder itself and mails it while the first is still
/// sending it. Here replica one (retry 10 min, lease 15 min) is mid-send (3 s) when replica two
/// (retry 0, horizon 6 min) checks: the owner gets the reminder twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review2_replicas_with_different_retry_timeouts_mail_an_owner_once() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let a = "a@example.com";
    auth.put_access_list(list("ops", &[a], 3));
    let slow = Arc::new(Probe {
        default: Duration::from_secs(3),
        ..Probe::default()
    });
    let fast = Arc::new(Probe::default());
    let one = reminders(&auth, slow.clone(), Duration::from_secs(600)).await;
    let two = reminders(&auth, fast.clone(), Duration::ZERO).await;
    let stop = CancellationToken::new();
    let first = spawn_check(one, &stop);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !sending(&auth, "ops").contains_key(a) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica one never claimed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = two.check_once(&stop).await;
    let _ = first.await.unwrap();
    let all: Vec<String> = (slow.delivered_to().into_iter())
        .chain(fast.delivered_to())
        .collect();
    assert_eq!(
        all.len(),
        1,
        "one reminder, mailed {} times (replica one: {:?}, replica two: {:?})",
        all.len(),
        slow.delivered_to(),
        fast.delivered_to()
    );
}

/// Review 2, finding 4, as decided after review 3 (finding 3 there): a reminder whose mail failed
/// for a passing reason was retried for `retry_timeout`, then an ERROR; it is owed again at the
/// next regular check (its claim undone), not every minute (that would retry it forever, past the
/// operator's `retry_timeout`). So the check itself is done (`Ok`), and the owner still owed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review2_a_check_whose_mail_failed_leaves_the_reminder_owed_for_the_next_check() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    auth.put_access_list(list("ops", &["a@example.com"], 3));
    let probe = Arc::new(Probe {
        failing: true,
        ..Probe::default()
    });
    let one = reminders(&auth, probe.clone(), Duration::ZERO).await;
    let result = one.check_once(&CancellationToken::new()).await;
    assert!(probe.attempts() >= 1, "the mail was tried");
    assert!(probe.delivered_to().is_empty());
    assert_eq!(result, Ok(0));
    assert!(sending(&auth, "ops").is_empty(), "the claim was undone");
    let data = auth.list_plugin_data("ops", "email").unwrap_or_default();
    assert!(
        !data
            .get("user_notifications")
            .is_some_and(|n| n.contains("a@example.com")),
        "the owner is still owed: {data:?}"
    );
}

/// Review 2, finding L3 (MEDIUM-LOW; src/lists/mod.rs:254-287, the listing loop; src/app/mod.rs
/// awaits the task at shutdown). `stop` is looked at only between addresses, after every list has
/// been read: a SIGTERM during the listing phase waits for the owners and plugin data of every
/// list left (three calls a list, each up to the client's timeout). With the Auth Service not
/// answering, 60 lists at a 5 s timeout hold the shutdown for about 5 minutes (Kubernetes kills
/// the pod after 30 s); with 10,000 healthy lists it is tens of seconds of calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review2_a_check_stops_soon_when_stopped_while_reading_the_lists() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    for i in 0..60 {
        auth.put_access_list(list(&format!("list{i:02}"), &["a@example.com"], 3));
    }
    let probe = Arc::new(Probe::default());
    let one = reminders(&auth, probe.clone(), Duration::from_secs(5)).await;
    let stop = CancellationToken::new();
    let reads_before = auth.plugin_data_reads();
    let check = spawn_check(one, &stop);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while auth.plugin_data_reads() == reads_before {
        assert!(tokio::time::Instant::now() < deadline, "no list was read");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    auth.hang(true);
    stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(15), check).await;
    auth.hang(false);
    assert!(
        ended.is_ok(),
        "15 s after stop the check was still reading the lists one by one"
    );
}

/// Review 2, finding C1 (LOW; src/mail/smtp/opening.rs:75-84 `auth_mechanisms` vs.
/// src/mail/smtp/dial.rs:202-203). Whether PLAIN or LOGIN is "offered" is decided by our own
/// parse of the EHLO reply, which takes the `AUTH=` form and lower case, but the PLAIN/LOGIN
/// branch goes to lettre, which reads only `AUTH` + exactly `PLAIN`/`LOGIN`. A server announcing
/// `AUTH CRAM-MD5` and, in the old form, `AUTH=LOGIN` (Sendmail and Exchange have long sent both
/// spellings) is not tried with CRAM-MD5: lettre finds no mechanism and the mailer fails for good
/// with "the server offers no AUTH mechanism we use (PLAIN, LOGIN, CRAM-MD5)", though it offers
/// CRAM-MD5 and the original (Go) signs in.
#[tokio::test]
async fn review2_cram_md5_is_used_when_lettre_cannot_use_the_login_offered() {
    let (port, seen) = server(
        "250-mx.example.com\r\n250-AUTH CRAM-MD5\r\n250 AUTH=LOGIN\r\n",
        Takes::CramMd5,
    )
    .await;
    let checked = health_check(port).await;
    assert!(
        checked.is_ok(),
        "{checked:?}; commands: {:?}",
        seen.lock().unwrap()
    );
}

/// Review 2, regression (expected to PASS): a server offering CRAM-MD5 beside PLAIN gets PLAIN
/// (the stated preference), and the password never appears in any command but PLAIN's.
#[tokio::test]
async fn review2_cram_md5_and_plain_offered_uses_plain() {
    let (port, seen) = server(
        "250-mx.example.com\r\n250 AUTH CRAM-MD5 PLAIN\r\n",
        Takes::CramMd5,
    )
    .await;
    let _ = health_check(port).await;
    let cmds = seen.lock().unwrap().clone();
    assert!(
        cmds.iter().any(|c| c.starts_with("AUTH PLAIN")),
        "PLAIN was not used: {cmds:?}"
    );
    assert!(!cmds.iter().any(|c| c == "AUTH CRAM-MD5"), "{cmds:?}");
}

/// Review 2, finding L3 without a hung Auth Service: stopped right after its first list was read,
/// a check still reads the plugin data of all the others (healthy cluster; what a SIGTERM waits
/// for grows with the number of lists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review2_a_stopped_check_reads_no_more_lists() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    for i in 0..200 {
        auth.put_access_list(list(&format!("list{i:03}"), &["a@example.com"], 3));
    }
    let probe = Arc::new(Probe::default());
    let one = reminders(&auth, probe.clone(), Duration::from_secs(5)).await;
    let stop = CancellationToken::new();
    let reads_before = auth.plugin_data_reads();
    let check = spawn_check(one, &stop);
    while auth.plugin_data_reads() == reads_before {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    stop.cancel();
    let at_stop = auth.plugin_data_reads() - reads_before;
    let _ = check.await.unwrap();
    let read = auth.plugin_data_reads() - reads_before;
    assert!(
        read <= at_stop + 5,
        "stopped after {at_stop} list(s), the check went on to read {read} of 200"
    );
}
