//! Third reader (review-third) of 0328c7d "Review fixes (second round)": each test shows one way
//! the change reminds too often, or fails where it should not. They are meant to FAIL on 0328c7d;
//! see each test's comment. (The engine's findings are unit tests: src/engine/tests/,
//! `review3_*`.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use teleport_email::lists::ListReminders;
use teleport_email::mail::{MailError, Mailer, MessageId, OutgoingMail, SmtpStep};
use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions};
use tokio_util::sync::CancellationToken;

use crate::support::lists::{list, reminders, spawn_check};
use crate::support::scripted_smtp::{Takes, health_check, server};

/// A mailer that delivers, except to `refusing`, which it answers `452 4.2.2 mailbox full` (a
/// passing refusal of that recipient alone) every time; counts the attempts per address.
#[derive(Default)]
struct Probe {
    refusing: Option<&'static str>,
    attempts: Mutex<Vec<String>>,
    delivered: AtomicUsize,
}

#[async_trait::async_trait]
impl Mailer for Probe {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        self.attempts.lock().unwrap().push(mail.to.clone());
        if self.refusing == Some(mail.to.as_str()) {
            return Err(MailError::Rejected {
                server: "mail.example.com:25".into(),
                code: 452,
                reason: "4.2.2 mailbox full".into(),
                step: SmtpStep::Recipient,
            });
        }
        self.delivered.fetch_add(1, Ordering::SeqCst);
        Ok(mail.message_id.clone())
    }

    async fn health_check(&self) -> Result<(), MailError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "probe"
    }
}

impl Probe {
    fn attempts_to(&self, to: &str) -> usize {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| *a == to)
            .count()
    }
}

/// The owner of list "ops" whose mailbox is full.
const FULL: &str = "full@example.com";

/// The reminders of list "ops", owned by [`FULL`] alone, retrying for `retry_for` through a
/// [`Probe`] refusing `FULL` for now.
async fn mailbox_full(retry_for: Duration) -> (Arc<FakeAuth>, Arc<Probe>, ListReminders) {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    auth.put_access_list(list("ops", &[FULL], 3));
    let probe = Arc::new(Probe {
        refusing: Some(FULL),
        ..Probe::default()
    });
    let reminders = reminders(&auth, probe.clone(), retry_for).await;
    (auth, probe, reminders)
}

/// Finding 3 (MEDIUM; src/lists/mod.rs:305-309 with :219-222). A reminder refused for a passing
/// reason now makes the check `Incomplete`, and `run` checks again in 60 s, where the mail gets
/// a fresh `retry_for` of retries; nothing counts the checks or the time already spent, so a
/// mailbox that stays full (452), greylisting that never clears, or a relay that 4xx's one
/// domain is tried every minute (with `retry_timeout = 0`) or without pause (with the default
/// 10 min: 10 min of retries, 1 min of rest) for as long as the daemon runs, and each of those
/// checks re-reads every list, its owners and its plugin data. README says `retry_timeout` is
/// "how long a mail that failed for a passing reason is retried before an ERROR"; the request
/// engine honours that (one ERROR, then the mail is given up). Here `retry_timeout = 0`: one
/// attempt, then nothing until the regular check 3 hours later; the mail is tried again within
/// a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review3_a_mail_refused_for_now_is_not_retried_past_retry_timeout() {
    let (_auth, probe, reminders) = mailbox_full(Duration::ZERO).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(reminders.run(stop.clone()));
    // RETRY_FAILED_CHECK (60 s, less up to a seventh) and a little.
    tokio::time::sleep(Duration::from_secs(64)).await;
    stop.cancel();
    let _ = task.await;
    assert_eq!(
        probe.attempts_to(FULL),
        1,
        "with retry_timeout = 0 a mail refused for now was tried again within the minute (and will be every minute)"
    );
}

/// Finding 4 (MEDIUM; src/lists/mod.rs:643-647 `Addresses::of`). Every error reading an owner's
/// traits other than AccessDenied and NotFound is counted as passing (`failed`), so the check is
/// `Incomplete` and repeated every minute — also when the error is for good: BadParameter
/// (INVALID_ARGUMENT; here a user record Auth cannot decode, `FakeAuth::break_user`), or
/// FAILED_PRECONDITION. Such an owner makes every
/// check from then on a 60-second loop over all lists, forever, with a WARN a minute. Expected:
/// the other owner is reminded and the check is done (`Ok(1)`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review3_an_owner_who_can_never_be_looked_up_does_not_fail_every_check() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    auth.set_user_traits("bob", &[("email", &["bob@example.com"])]);
    auth.break_user("bob");
    auth.put_access_list(list("ops", &["a@example.com", "bob"], 3));
    let probe = Arc::new(Probe::default());
    let reminders = reminders(&auth, probe.clone(), Duration::from_secs(5)).await;
    let stop = CancellationToken::new();
    let first = reminders.check_once(&stop).await;
    assert_eq!(probe.attempts_to("a@example.com"), 1);
    let second = reminders.check_once(&stop).await;
    assert!(
        first.is_ok() && second.is_ok(),
        "an owner who can never be looked up makes every check incomplete (retried each minute): {first:?}, {second:?}"
    );
}

/// Finding 5 (LOW-MEDIUM; src/mail/smtp/dial.rs:202-214). The fix covers `AUTH=LOGIN` only when
/// the server also offers CRAM-MD5. A server that announces PLAIN/LOGIN only in the old
/// `AUTH=` form, or in lower case (EHLO keywords and SASL names are case-insensitive, RFC 5321
/// 2.4 / RFC 4422 3.1), is handed to lettre, which reads only `AUTH` + exactly `PLAIN`/`LOGIN`
/// and finds nothing: no mail is ever sent ("authentication failed: ... no compatible
/// mechanism"), although our own parse (`opening.rs` `auth_mechanisms`) knows PLAIN is offered
/// and the original (Go net/smtp, which matches `AUTH` and the mechanism names as given) signs
/// in.
#[tokio::test]
async fn review3_plain_offered_only_as_auth_equals_or_in_lower_case_is_used() {
    for ehlo in [
        "250-mx.example.com\r\n250 AUTH=PLAIN LOGIN\r\n",
        "250-mx.example.com\r\n250 auth plain login\r\n",
    ] {
        let (port, seen) = server(ehlo, Takes::Plain).await;
        let checked = health_check(port).await;
        assert!(
            checked.is_ok(),
            "EHLO {ehlo:?}: {checked:?}; commands: {:?}",
            seen.lock().unwrap()
        );
    }
}

/// Finding 6 (LOW, documentation; README.md:252 `delivery.retry_timeout`, :34, :32). Two
/// behaviours this commit introduced are not in the README: (a) Access List reminder claims
/// last a fixed 30 minutes, and a reminder's mail is retried for at most 25 of them, whatever
/// `retry_timeout` says (the README's `retry_timeout` row promises retries for that long); (b)
/// an undecided requester whose request expires after a restart is not told (a WARN), while
/// README row 32 says the requester's mails are "exactly once across replicas and restarts".
#[test]
fn review3_the_readme_states_the_reminder_lease_and_the_requester_lost_at_a_restart() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let lease = ["30 minutes", "30 min", "25 minutes", "25 min"];
    assert!(
        lease.iter().any(|l| readme.contains(l)),
        "the README does not say Access List reminders' claims last 30 minutes (mail retried 25 at most)"
    );
    assert!(
        readme.contains("not told") || readme.contains("after a restart"),
        "the README does not say an undecided requester is not told of an expiry after a restart"
    );
}

/// Finding 7 (LOW; src/lists/mod.rs:284-287 and :305-309). `Stopped` is returned only while
/// the lists are read. Stopped during a mail's retry wait, the check breaks out of its loop and
/// reports the undone mail as `Incomplete`, so a SIGTERM logs "Access Lists checked in part;
/// trying again shortly" at WARN (a retry that never comes) instead of ending quietly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review3_a_check_stopped_while_a_mail_waits_to_be_retried_says_stopped() {
    let (_auth, probe, reminders) = mailbox_full(Duration::from_secs(60)).await;
    let stop = CancellationToken::new();
    let check = spawn_check(reminders, &stop);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while probe.attempts_to(FULL) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no attempt");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The first attempt was refused for now; its retry waits at least a second.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    let result = check.await.unwrap();
    assert_eq!(
        result,
        Err("stopped".to_owned()),
        "a stopped check reports itself as a partial one (WARN, 'trying again shortly')"
    );
}
