//! Second reader's tests for `delivery.access_list_reminders` (commit 6522795): each test shows
//! one way a reminder goes out twice, never, or to the wrong mailbox. They are meant to FAIL on
//! that commit; see each test's comment for what the failure means.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use teleport_email::calendar::{parse_rfc3339, rfc3339};
use teleport_email::mail::OutgoingMail;
use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions};
use teleport_email::testkit::smtp::Stage;
use tokio_util::sync::CancellationToken;

use crate::support::harness::{Backend, Harness};
use crate::support::lists::{DAY, Probe, list, reminders, sending, spawn_check};

const ON: &str = "access_list_reminders = true\n";
/// `LEASE_MARGIN` in src/lists/mod.rs.
const LEASE_MARGIN: Duration = Duration::from_secs(300);

/// Finding 1 (fast form). The lease (`retry_for + 5 min`) is counted from the START of the check
/// (`now` in `check`), and the mails of a check go out one address after another, after all the
/// claims. So every send eats into the lease of every claim still queued behind it. With the
/// default `retry_timeout` (10 min, lease 15 min) and a mail server that is down, the 2nd owner's
/// claim lapses 5 min into its retries and the 3rd owner's has lapsed before its first attempt:
/// another replica then claims and mails them as well. Here the first send takes 5 s: the second
/// owner's send starts with 5 s less than its lease (it should start with the whole of it, or
/// renew/re-check it first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_each_send_starts_with_its_whole_lease() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let (a, b) = ("a@example.com", "b@example.com");
    auth.put_access_list(list("ops", &[a, b], 3));
    let retry_for = Duration::from_secs(2);
    let lease = retry_for + LEASE_MARGIN;
    let remaining: Arc<Mutex<BTreeMap<String, Duration>>> = Arc::default();
    let probe = {
        let (auth, remaining) = (auth.clone(), remaining.clone());
        Probe {
            delay: HashMap::from([(a.to_owned(), Duration::from_secs(5))]),
            hook: Some(Box::new(move |m: &OutgoingMail| {
                let held = parse_rfc3339(&sending(&auth, "ops")[&m.to]).unwrap();
                let left = held.duration_since(SystemTime::now()).unwrap_or_default();
                remaining.lock().unwrap().insert(m.to.clone(), left);
            })),
            ..Probe::default()
        }
    };
    let probe = Arc::new(probe);
    let one = reminders(&auth, probe.clone(), retry_for).await;
    one.check_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(probe.delivered_to(), [a, b]);
    let remaining = remaining.lock().unwrap().clone();
    // Stored times have whole seconds: allow 2 s for that and the calls.
    assert!(
        remaining[b] + Duration::from_secs(2) >= lease,
        "b's send began with {:?} of its {lease:?} lease left: a's send used the rest",
        remaining[b]
    );
}

/// Finding 1 (real duplicate; ~5.5 min, so ignored by default: run with `--ignored`). A mail
/// server that takes 9.9 s per mail (under the SMTP client's 10 s step timeout: tarpitting,
/// greylisting proxies, slow relays) and 32 owners: the check's sends take 317 s, beyond the
/// lease (here 300 s with `retry_timeout = 0`; 15 min by default, i.e. 91 owners). A second
/// replica checking after the lease ran out mails the owners still queued or in flight, and the
/// first replica, which never re-checks its claim before sending, mails them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes about 5.5 minutes (the lease has a fixed 5-minute margin)"]
async fn review_a_slow_mail_server_lets_a_second_replica_mail_the_same_owners_again() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let owners: Vec<String> = (0..32)
        .map(|i| format!("owner{i:02}@example.com"))
        .collect();
    let owners_ref: Vec<&str> = owners.iter().map(String::as_str).collect();
    auth.put_access_list(list("ops", &owners_ref, 3));
    let slow = Arc::new(Probe {
        default: Duration::from_millis(9_900),
        ..Probe::default()
    });
    let fast = Arc::new(Probe::default());
    let one = reminders(&auth, slow.clone(), Duration::ZERO).await;
    let two = reminders(&auth, fast.clone(), Duration::ZERO).await;
    let stop = CancellationToken::new();
    let first = spawn_check(one, &stop);
    tokio::time::sleep(LEASE_MARGIN + Duration::from_secs(6)).await;
    two.check_once(&stop).await.unwrap();
    first.await.unwrap().unwrap();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for to in slow.delivered_to().into_iter().chain(fast.delivered_to()) {
        *count.entry(to).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(count.len(), 32);
    assert!(twice.is_empty(), "mailed twice: {twice:?}");
}

/// Finding 2. Two Teleport users whose mail goes to one mailbox (a user named by the address, and
/// another whose `email` trait is that address — a personal and an admin account, say) both own
/// a list: the owner gets one mail that names the same list twice. (Reminders are batched by
/// address, but the items are not de-duplicated by list.)
#[tokio::test]
async fn review_two_users_sharing_an_address_see_each_list_once() {
    let mut h = Harness::start_with(Backend::Smtp, FakeAuthOptions::default(), ON).await;
    h.auth
        .set_user_traits("alice-admin", &[("email", &["alice@example.com"])]);
    h.auth
        .put_access_list(list("ops", &["alice@example.com", "alice-admin"], 3));
    let mail = h.next_mails(1).await.remove(0);
    assert_eq!(mail.to, "alice@example.com");
    tokio::time::sleep(Duration::from_millis(900)).await;
    h.assert_quiet().await;
    let items = mail.text.lines().filter(|l| l.starts_with("- OPS")).count();
    assert_eq!(
        (items, mail.subject.contains("2 Access Lists")),
        (1, false),
        "{}\n{}",
        mail.subject,
        mail.text
    );
    h.shutdown().await;
}

/// Finding 2b (low; arguable, as a local part may be case-sensitive). The batch key is the address
/// as written: `Carol@Example.com` (a user name) and `carol@example.com` (another user's trait)
/// are one mailbox everywhere in practice, yet get two mails about the same list.
#[tokio::test]
async fn review_one_mailbox_spelled_in_two_cases_gets_one_mail() {
    let mut h = Harness::start_with(Backend::Smtp, FakeAuthOptions::default(), ON).await;
    h.auth
        .set_user_traits("carol", &[("email", &["carol@example.com"])]);
    h.auth
        .put_access_list(list("ops", &["Carol@Example.com", "carol"], 3));
    let first = h.next_mails(1).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    let all = h.all_mails();
    assert_eq!(
        all.len(),
        1,
        "one mailbox, {} mails: {:?} (first {:?})",
        all.len(),
        all.iter().map(|m| &m.to).collect::<Vec<_>>(),
        first[0].to
    );
    h.shutdown().await;
}

/// Finding 3, in-process form: kept as a regression test (PASSES). In-process the detached
/// reminders task outlives the daemon, but the mailer is closed at shutdown and the task's next
/// wait sees `stop`, so no mail goes out after the daemon returned. The real binary is worse: see
/// `process::review_sigterm_mid_reminder_undoes_its_claims`, which fails.
#[tokio::test]
async fn review_no_reminder_goes_out_after_the_daemon_stopped() {
    let mut h = Harness::start_with(Backend::Smtp, FakeAuthOptions::default(), ON).await;
    h.smtp()
        .inject(Stage::RcptTo, "451 4.3.0 try again later", 1);
    let owners = ["a@example.com", "b@example.com", "c@example.com"];
    h.auth.put_access_list(list("ops", &owners, 3));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.smtp().stats().transactions < 1 {
        assert!(tokio::time::Instant::now() < deadline, "no attempt");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // a@ was refused for now: its retry waits 1-3 s. Stop the daemon during that wait.
    h.shutdown_daemon_only().await;
    let at_stop = h.smtp().stats();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let later = h.smtp().stats();
    assert_eq!(
        (later.transactions, later.messages),
        (at_stop.transactions, at_stop.messages),
        "SMTP traffic after the daemon returned from its shutdown: {:?}",
        h.all_mails().iter().map(|m| &m.to).collect::<Vec<_>>()
    );
}

/// Finding 4. A reminder delivered, then Teleport refusing plugin-data writes for a minute (a
/// rolling Auth upgrade, contention): `settle` gives up after 60 s although the claim has
/// `retry_for + 5 min` (15 min by default) left, and logs that the reminder will be sent again.
/// The claim of a DELIVERED reminder stays, and once it runs out the next check mails the owner
/// again (src/lists/mod.rs `claim`: a lapsed claim is resent). Here Teleport is healthy again
/// 14 minutes before the claim runs out, yet the claim is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_delivered_reminder_is_settled_when_teleport_recovers_within_its_lease() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let a = "a@example.com";
    auth.put_access_list(list("ops", &[a], 3));
    let probe = {
        let auth = auth.clone();
        Probe {
            hook: Some(Box::new(move |_m: &OutgoingMail| {
                auth.fail_next_plugin_data_writes(1_000_000);
            })),
            ..Probe::default()
        }
    };
    let probe = Arc::new(probe);
    let one = reminders(&auth, probe.clone(), Duration::from_secs(600)).await;
    let started = tokio::time::Instant::now();
    one.check_once(&CancellationToken::new()).await.unwrap();
    auth.fail_next_plugin_data_writes(0);
    assert_eq!(probe.delivered_to(), [a]);
    assert!(started.elapsed() < Duration::from_secs(120));
    // Teleport accepts writes again; the claim still has ~14 minutes to run (the settle goes on
    // in the background, a try every 2 s at most).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let held = sending(&auth, "ops");
    assert!(
        held.is_empty(),
        "a delivered reminder's claim is left in place, to be mailed again once it lapses: {held:?}"
    );
}

/// Finding 5. A claim that runs out implausibly far ahead (a replica with a skewed clock, or a
/// hostile write by anything holding `update` on plugin data) parks the owner's reminders for good:
/// `claim` skips any claim whose time is after now. The Access Request engine treats a claim
/// beyond `lease + CLOCK_TOLERANCE` as nobody's for exactly this reason (src/engine/delivery.rs
/// `holder`); the lists code does not.
#[tokio::test]
async fn review_a_claim_held_into_the_far_future_does_not_park_reminders_for_good() {
    let h = Harness::start_with(Backend::Smtp, FakeAuthOptions::default(), ON).await;
    let a = "alice@example.com";
    h.auth.put_access_list(list("ops", &[a], 3));
    let long_ago = rfc3339(SystemTime::now() - 30 * DAY);
    h.auth.put_list_plugin_data(
        "ops",
        "email",
        &[
            ("user_notifications", &format!("{{\"{a}\":\"{long_ago}\"}}")),
            (
                "te_sending",
                &format!("{{\"{a}\":\"9999-12-31T23:59:59Z\"}}"),
            ),
        ],
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.all_mails().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        h.all_mails().len(),
        1,
        "a claim 'held' until 9999 keeps {a} from ever being reminded"
    );
    h.shutdown().await;
}

/// Finding 6. A check in which every list failed for a passing reason (compare-and-swap contention
/// beyond 8 attempts, Teleport timing out on GetAccessListOwners or plugin data) reports success
/// (`Ok(0)`), so `run` waits the full 3 hours instead of `RETRY_FAILED_CHECK` (60 s): an overdue
/// list's daily reminder slips by hours. Only a failed listing is retried soon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_check_that_could_claim_nothing_is_not_reported_as_done() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    auth.put_access_list(list("ops", &["a@example.com"], 3));
    auth.fail_next_plugin_data_writes(8);
    let probe = Arc::new(Probe::default());
    let one = reminders(&auth, probe.clone(), Duration::from_secs(5)).await;
    let result = one.check_once(&CancellationToken::new()).await;
    assert!(probe.delivered_to().is_empty());
    assert!(
        result.is_err(),
        "nothing could be claimed, yet the check says {result:?}: the next try is 3 hours away"
    );
}

/// Finding 9. A listing that goes round in a circle (page 3 names page 2 again, so no token comes
/// back twice in a row) is only stopped by `MAX_PAGES` (10,000 pages): the check re-reads every
/// list's owners and plugin data on every lap (hours of calls), and the mails it claimed on the
/// first lap are sent only after the listing ends, by which time their claims have lapsed. The
/// Access Request listing detects the circle from the page keys it has seen
/// (src/teleport/client.rs); this one compares the token with the previous one only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_listing_that_goes_round_in_a_circle_is_stopped_soon() {
    let auth = FakeAuth::start(FakeAuthOptions {
        list_in_a_circle: true,
        ..FakeAuthOptions::default()
    })
    .await;
    for i in 0..250 {
        auth.put_access_list(list(&format!("list{i:03}"), &["a@example.com"], 3));
    }
    let probe = Arc::new(Probe::default());
    let one = reminders(&auth, probe.clone(), Duration::from_secs(5)).await;
    let stop = CancellationToken::new();
    let checked = tokio::time::timeout(Duration::from_secs(30), one.check_once(&stop)).await;
    assert!(
        checked.is_ok(),
        "the check was still going round after 30 s; mailed so far: {:?}",
        probe.delivered_to()
    );
}
