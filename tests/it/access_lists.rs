//! `delivery.access_list_reminders` end to end over the fake Auth Service and a real SMTP receiver:
//! owners (by name, by `email` trait, through a nested owner list) get one mail for all their lists
//! coming due, weekly then daily, recorded in the list's plugin data in the Slack plugin's format;
//! nothing twice across checks, restarts and replicas; a mail refused is claimed back and sent at
//! the next check; a claim left by a replica that stopped mid-send is sent again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use teleport_email::calendar::{parse_rfc3339, rfc3339};
use teleport_email::lists::ListReminders;
use teleport_email::mail::Mailer;
use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions, FakeList};
use teleport_email::testkit::smtp::{SmtpReceiver, Stage};
use tokio_util::sync::CancellationToken;

use crate::support::harness::{Backend, Harness, Mail, from_smtp};

const ON: &str = "access_list_reminders = true\n";
const DAY: Duration = Duration::from_secs(24 * 3600);

fn list(name: &str, title: &str, owners: &[&str], due_in_days: i64) -> FakeList {
    let now = SystemTime::now();
    let offset = DAY * u32::try_from(due_in_days.unsigned_abs()).unwrap();
    let next_review = match due_in_days >= 0 {
        true => now + offset + Duration::from_secs(3600),
        false => now - offset - Duration::from_secs(3600),
    };
    FakeList {
        name: name.into(),
        title: title.into(),
        owners: owners.iter().map(|o| o.to_string()).collect(),
        next_review: Some(next_review),
        ..FakeList::default()
    }
}

fn by_recipient(mails: Vec<Mail>) -> BTreeMap<String, Mail> {
    mails.into_iter().map(|m| (m.to.clone(), m)).collect()
}

fn notified(auth: &FakeAuth, list: &str) -> BTreeMap<String, String> {
    let data = auth.list_plugin_data(list, "email").unwrap_or_default();
    let json = data.get("user_notifications").cloned().unwrap_or_default();
    serde_json::from_str(&json).unwrap_or_default()
}

#[tokio::test]
async fn every_owner_hears_once_by_name_by_trait_and_through_a_nested_list() {
    let auth_opts = FakeAuthOptions::default();
    let mut h = Harness::start_with(Backend::Smtp, auth_opts, ON).await;
    h.auth
        .set_user_traits("bob", &[("email", &["bob@corp.example.com"])]);
    h.auth.set_user_traits("carol", &[("team", &["ops"])]);
    h.auth.put_access_list(FakeList {
        owner_lists: vec!["leads".into()],
        ..list("ops", "Ops team", &["alice@example.com", "bob", "carol"], 3)
    });
    h.auth.put_access_list(FakeList {
        members: vec!["dave@example.com".into()],
        ..list("leads", "Leads", &[], 200)
    });
    let mails = by_recipient(h.next_mails(3).await);
    assert_eq!(
        mails.keys().collect::<Vec<_>>(),
        [
            "alice@example.com",
            "bob@corp.example.com",
            "dave@example.com"
        ],
        "carol has no address; leads' review is months away"
    );
    let alice = &mails["alice@example.com"];
    assert!(
        alice
            .subject
            .starts_with("Reminder: Access List \"Ops team\" is due for review by "),
        "{}",
        alice.subject
    );
    assert!(
        alice
            .text
            .contains("Review it: https://teleport.example.com/web/accesslists/ops#review"),
        "{}",
        alice.text
    );
    // Checks every 300 ms: several more run, and send nothing.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    h.assert_quiet().await;
    let record = notified(&h.auth, "ops");
    assert_eq!(
        record.keys().collect::<Vec<_>>(),
        ["alice@example.com", "bob", "dave@example.com"],
        "by Teleport user name, as the Slack plugin keeps them"
    );
    for t in record.values() {
        let at = parse_rfc3339(t).unwrap();
        assert!(
            at <= SystemTime::now() && at > SystemTime::now() - DAY,
            "{t}"
        );
    }
    let data = h.auth.list_plugin_data("ops", "email").unwrap();
    assert!(!data.contains_key("te_sending"), "claims settled: {data:?}");
    h.restart_daemon().await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    h.assert_quiet().await;
    h.shutdown().await;
}

#[tokio::test]
async fn one_mail_per_owner_for_all_their_lists_weekly_then_daily_once_overdue() {
    let mut h = Harness::start_with(Backend::Smtp, FakeAuthOptions::default(), ON).await;
    let a = "alice@example.com";
    // Reminded (by the Slack-format record, as Go writes times) a day ago: this week's reminder
    // was sent, so nothing is owed for "soon" until next week.
    let yesterday = rfc3339(SystemTime::now() - DAY).replace('Z', ".123456789+00:00");
    h.auth.put_access_list(list("soon", "Soon", &[a], 10));
    h.auth.put_list_plugin_data(
        "soon",
        "email",
        &[(
            "user_notifications",
            &format!("{{\"{a}\":\"{yesterday}\"}}"),
        )],
    );
    // Overdue by three days, last reminded two days ago: today's reminder is owed.
    let two_days_ago = rfc3339(SystemTime::now() - 2 * DAY);
    h.auth.put_access_list(list("late", "Late", &[a], -3));
    h.auth.put_list_plugin_data(
        "late",
        "email",
        &[(
            "user_notifications",
            &format!("{{\"{a}\":\"{two_days_ago}\"}}"),
        )],
    );
    h.auth.put_access_list(list("new", "New", &[a], 5));
    h.auth.put_access_list(list("far", "Far", &[a], 30));
    h.auth.put_access_list(FakeList {
        kind: "static".into(),
        ..list("iac", "Managed by Terraform", &[a], -10)
    });
    let mail = h.next_mails(1).await.remove(0);
    assert_eq!(mail.to, a);
    assert!(
        mail.subject.starts_with(
            "Reminder: 2 Access Lists are due for review, the earliest 3 days past due"
        ),
        "{}",
        mail.subject
    );
    assert!(
        mail.text.contains("- Late (3 days past due)"),
        "{}",
        mail.text
    );
    assert!(mail.text.contains("- New (due by "), "{}", mail.text);
    for absent in ["Soon", "Far", "Terraform"] {
        assert!(!mail.text.contains(absent), "{absent}: {}", mail.text);
    }
    tokio::time::sleep(Duration::from_millis(900)).await;
    h.assert_quiet().await;
    assert_eq!(
        notified(&h.auth, "soon")[a],
        yesterday,
        "a list with nothing owed is not written"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_refused_reminder_is_claimed_back_and_sent_at_the_next_check() {
    let mut h = Harness::start_with(Backend::Smtp, FakeAuthOptions::default(), ON).await;
    h.smtp()
        .inject(Stage::RcptTo, "550 5.1.1 mailbox unavailable", 1);
    h.auth
        .put_access_list(list("ops", "Ops", &["alice@example.com"], 2));
    let mails = h.next_mails(1).await;
    assert_eq!(mails[0].to, "alice@example.com");
    tokio::time::sleep(Duration::from_millis(900)).await;
    h.assert_quiet().await;
    let stats = h.smtp().stats();
    assert_eq!(
        (stats.transactions, stats.messages),
        (2, 1),
        "one attempt refused, the next delivered"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_claim_left_mid_send_is_sent_again_once_it_runs_out_and_a_live_one_is_not() {
    let mut h = Harness::start_with(Backend::Smtp, FakeAuthOptions::default(), ON).await;
    let (a, b) = ("alice@example.com", "bob@example.com");
    let now = SystemTime::now();
    let recent = rfc3339(now - Duration::from_secs(600));
    let lapsed = rfc3339(now - Duration::from_secs(60));
    let live = rfc3339(now + Duration::from_secs(600));
    h.auth.put_access_list(list("ops", "Ops", &[a, b], 2));
    h.auth.put_list_plugin_data(
        "ops",
        "email",
        &[
            (
                "user_notifications",
                &format!("{{\"{a}\":\"{recent}\",\"{b}\":\"{recent}\"}}"),
            ),
            (
                "te_sending",
                &format!("{{\"{a}\":\"{lapsed}\",\"{b}\":\"{live}\"}}"),
            ),
        ],
    );
    let mails = h.next_mails(1).await;
    assert_eq!(
        mails[0].to, a,
        "bob's reminder is still being sent elsewhere"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    h.assert_quiet().await;
    let data = h.auth.list_plugin_data("ops", "email").unwrap();
    let sending: BTreeMap<String, String> = serde_json::from_str(&data["te_sending"]).unwrap();
    assert_eq!(sending.keys().collect::<Vec<_>>(), [b], "{data:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn a_cluster_without_access_lists_keeps_mailing_access_requests() {
    let opts = FakeAuthOptions {
        community_edition: true,
        ..FakeAuthOptions::default()
    };
    let mut h = Harness::start_with(Backend::Smtp, opts, ON).await;
    let id = h
        .auth
        .create_request("alice@example.com", &["editor"], "", &[]);
    let mail = h.next_mails(1).await.remove(0);
    assert_eq!(mail.request_id(), id);
    h.shutdown().await;
}

/// A replica of the reminders: its own client (and certificate) on the same cluster.
async fn replica(auth: &FakeAuth, smtp: &SmtpReceiver) -> ListReminders {
    let text = format!(
        "[teleport]\naddr = \"{}\"\nidentity = \"x\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\n\
         starttls_policy = \"disabled\"\n[delivery]\nsender = \"noreply@example.com\"\n\
         [role_to_recipients]\n\"*\" = \"all@example.com\"\n",
        auth.addr(),
        smtp.port()
    );
    let config = teleport_email::config::parse(&text, std::path::Path::new("r.toml"))
        .unwrap()
        .config;
    let mailer: Arc<dyn Mailer> =
        teleport_email::mail::from_config(&config.mailer, "noreply@example.com", &[]).unwrap();
    crate::support::lists::reminders(auth, mailer, Duration::from_secs(5)).await
}

#[tokio::test]
async fn replicas_checking_at_the_same_moment_send_each_reminder_once() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let smtp = SmtpReceiver::start().await.unwrap();
    let owners: Vec<String> = (0..6).map(|i| format!("owner{i}@example.com")).collect();
    let owners: Vec<&str> = owners.iter().map(String::as_str).collect();
    for i in 0..5 {
        auth.put_access_list(list(&format!("list{i}"), &format!("List {i}"), &owners, 3));
    }
    let one = replica(&auth, &smtp).await;
    let two = replica(&auth, &smtp).await;
    let stop = CancellationToken::new();
    for _ in 0..3 {
        let (a, b) = tokio::join!(one.check_once(&stop), two.check_once(&stop));
        a.unwrap();
        b.unwrap();
    }
    let mails: Vec<Mail> = smtp.messages().iter().map(|m| from_smtp(&m.data)).collect();
    let mut to: Vec<&str> = mails.iter().map(|m| m.to.as_str()).collect();
    to.sort();
    // Each owner once per list; the lists a replica lost to the other come in a mail of their own.
    let mut per_owner: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &mails {
        let lists = m.text.lines().filter(|l| l.starts_with("- List ")).count();
        *per_owner.entry(m.to.as_str()).or_default() += lists;
    }
    assert_eq!(per_owner.len(), 6, "{to:?}");
    assert!(per_owner.values().all(|n| *n == 5), "{per_owner:?}");
    for i in 0..5 {
        assert_eq!(notified(&auth, &format!("list{i}")).len(), 6);
    }
}
