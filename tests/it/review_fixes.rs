//! Second reader (review 2) of 435c4ed, 741e54c, 902ee1f and c10898f: each test shows one way the
//! change sends a mail twice, never, too late, or fails where it should not. They are meant to
//! FAIL on b8e0aba; see each test's comment.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use teleport_email::config::StartTlsPolicy;
use teleport_email::lists::ListReminders;
use teleport_email::mail::{MailError, Mailer, MessageId, OutgoingMail};
use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions, FakeList};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::support::{PASSWORD, USER, crypto, smtp_config, smtp_mailer};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn list(name: &str, owners: &[&str], due_in_days: u32) -> FakeList {
    FakeList {
        name: name.into(),
        title: name.to_uppercase(),
        owners: owners.iter().map(|o| o.to_string()).collect(),
        next_review: Some(SystemTime::now() + DAY * due_in_days + Duration::from_secs(3600)),
        ..FakeList::default()
    }
}

fn sending(auth: &FakeAuth, list: &str) -> BTreeMap<String, String> {
    let data = auth.list_plugin_data(list, "email").unwrap_or_default();
    let json = data.get("te_sending").cloned().unwrap_or_default();
    serde_json::from_str(&json).unwrap_or_default()
}

/// A mailer whose sends take `delay` (per address, else `default`) and fail with a passing error
/// while `failing`; delivered mails are recorded.
#[derive(Default)]
struct Probe {
    default: Duration,
    delay: HashMap<String, Duration>,
    failing: bool,
    attempts: AtomicUsize,
    delivered: Mutex<Vec<OutgoingMail>>,
}

#[async_trait::async_trait]
impl Mailer for Probe {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let d = self.delay.get(&mail.to).copied().unwrap_or(self.default);
        tokio::time::sleep(d).await;
        if self.failing {
            return Err(MailError::Connect {
                server: "mail.example.com:25".into(),
                reason: "connection refused".into(),
            });
        }
        self.delivered.lock().unwrap().push(mail.clone());
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
    fn delivered_to(&self) -> Vec<String> {
        let d = self.delivered.lock().unwrap();
        d.iter().map(|m| m.to.clone()).collect()
    }
}

/// A replica of the reminders with its own client, mailing through `mailer`.
async fn replica(auth: &FakeAuth, mailer: Arc<Probe>, retry_for: Duration) -> ListReminders {
    crate::support::lists::reminders(auth, mailer, retry_for).await
}

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
    let one = replica(&auth, slow.clone(), Duration::from_secs(600)).await;
    let two = replica(&auth, fast.clone(), Duration::ZERO).await;
    let stop = CancellationToken::new();
    let first = tokio::spawn({
        let stop = stop.clone();
        async move { one.check_once(&stop).await }
    });
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
    let one = replica(&auth, probe.clone(), Duration::ZERO).await;
    let result = one.check_once(&CancellationToken::new()).await;
    assert!(
        probe.attempts.load(Ordering::SeqCst) >= 1,
        "the mail was tried"
    );
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
    let one = replica(&auth, probe.clone(), Duration::from_secs(5)).await;
    let stop = CancellationToken::new();
    let reads_before = auth.plugin_data_reads();
    let check = tokio::spawn({
        let stop = stop.clone();
        async move { one.check_once(&stop).await }
    });
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

/// An SMTP server speaking just enough for a health check, whose EHLO reply is `ehlo`: it answers
/// `AUTH CRAM-MD5` with a challenge and accepts any answer. Returns its port, and the commands it
/// was sent.
async fn scripted_server(ehlo: &'static str) -> (u16, Arc<Mutex<Vec<String>>>) {
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
                w.write_all(b"220 mx.example.com ESMTP\r\n").await.unwrap();
                let mut in_cram = false;
                let mut line = String::new();
                while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                    let cmd = line.trim_end().to_owned();
                    line.clear();
                    log.lock().unwrap().push(cmd.clone());
                    let upper = cmd.to_ascii_uppercase();
                    let reply = if in_cram {
                        in_cram = false;
                        "235 2.7.0 Authentication successful\r\n".to_owned()
                    } else if upper.starts_with("EHLO") {
                        ehlo.to_owned()
                    } else if upper == "AUTH CRAM-MD5" {
                        in_cram = true;
                        // base64 of "<1896.697170952@postoffice.example.net>"
                        "334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UuZXhhbXBsZS5uZXQ+\r\n".to_owned()
                    } else if upper.starts_with("AUTH") {
                        "504 5.5.4 Unrecognized authentication type\r\n".to_owned()
                    } else if upper == "QUIT" {
                        let _ = w.write_all(b"221 2.0.0 Bye\r\n").await;
                        return;
                    } else {
                        "250 2.0.0 OK\r\n".to_owned()
                    };
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
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
    crypto();
    let (port, seen) =
        scripted_server("250-mx.example.com\r\n250-AUTH CRAM-MD5\r\n250 AUTH=LOGIN\r\n").await;
    let mut config = smtp_config(port, StartTlsPolicy::Disabled, Some((USER, PASSWORD)));
    config.allow_plaintext_auth = true;
    let mailer = smtp_mailer(&config, None);
    let checked = mailer.health_check().await;
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
    crypto();
    let (port, seen) = scripted_server("250-mx.example.com\r\n250 AUTH CRAM-MD5 PLAIN\r\n").await;
    let mut config = smtp_config(port, StartTlsPolicy::Disabled, Some((USER, PASSWORD)));
    config.allow_plaintext_auth = true;
    let mailer = smtp_mailer(&config, None);
    let _ = mailer.health_check().await;
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
    let one = replica(&auth, probe.clone(), Duration::from_secs(5)).await;
    let stop = CancellationToken::new();
    let reads_before = auth.plugin_data_reads();
    let check = tokio::spawn({
        let stop = stop.clone();
        async move { one.check_once(&stop).await }
    });
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
