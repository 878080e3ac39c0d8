//! The original plugin's acceptance suite (upstream-behaviour.md 7b), run against the real daemon
//! (`app::run`) over the fake Auth Service, once with a real SMTP receiver and once with the
//! Mailgun stand-in.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use teleport_email::testkit::auth::FakeAuthOptions;

use crate::support::harness::{Backend, Harness, Mail, assert_threaded, sorted_to};

const SENDER: &str = "noreply@example.com";
const ALL: &str = "all@example.com";
const R1: &str = "reviewer1@example.com";
const R2: &str = "reviewer2@example.com";
const REQUESTER: &str = "requester-oss@example.com";

fn enterprise() -> FakeAuthOptions {
    FakeAuthOptions {
        advanced_workflows: true,
        proxy_public_addr: "teleport.example.com:443".into(),
        ..Default::default()
    }
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod smtp {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Smtp).await
                }
            )*
        }
        mod mailgun {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Mailgun).await
                }
            )*
        }
    };
}

both_backends!(
    new_threads,
    approval,
    denial,
    expiration,
    review_replies,
    approval_by_review,
    denial_by_review,
    race,
    continues_the_original_plugins_threads,
    promoted_requests_get_a_resolution,
);

async fn new_threads(backend: Backend) {
    let mut h = Harness::start(backend, FakeAuthOptions::default()).await;
    let id = h
        .auth
        .create_request(REQUESTER, &["editor"], "because of", &[R1, R2]);
    let mails = h.next_mails(3).await;
    assert_eq!(
        h.wait_threads(&id, 3).await["email_threads"]
            .split(',')
            .count(),
        3
    );
    assert_eq!(sorted_to(&mails), [ALL, R1, R2]);
    for m in &mails {
        assert_eq!(m.from, SENDER);
        assert!(m.subject.contains(&id), "{m:#?}");
        assert_eq!(m.subject, format!("{} Role Request {id}", h.auth.cluster()));
        assert!(
            m.text.starts_with("You have a new Role Request:"),
            "{}",
            m.text
        );
        assert!(m.text.contains(&format!("User: {REQUESTER}")), "{}", m.text);
        assert!(m.text.contains("Reason: because of"), "{}", m.text);
        assert!(m.text.contains("Status: ⏳ PENDING"), "{}", m.text);
        assert!(
            m.text
                .contains(&format!("Approve: tsh request review --approve {id}")),
            "{}",
            m.text
        );
        assert!(m.in_reply_to.is_none());
    }
    h.assert_quiet().await;
    h.shutdown().await;
}

/// A request with one suggested reviewer, resolved by an administrator.
async fn resolved_by_admin(backend: Backend, approve: bool, reason: &str, status: &str) {
    let mut h = Harness::start(backend, FakeAuthOptions::default()).await;
    let id = h
        .auth
        .create_request(REQUESTER, &["editor"], "because of", &[R1]);
    let first = h.next_mails(2).await;
    h.wait_threads(&id, 2).await;
    h.auth.resolve(&id, approve, reason);
    let follow = h.next_mails(2).await;
    assert_eq!(sorted_to(&follow), [ALL, R1]);
    for m in &follow {
        assert!(
            m.text.starts_with("Role Request has been resolved:"),
            "{}",
            m.text
        );
        assert!(m.text.contains(status), "{}", m.text);
    }
    assert_threaded(&first, &follow);
    h.assert_quiet().await;
    h.shutdown().await;
}

async fn approval(backend: Backend) {
    resolved_by_admin(backend, true, "okay", "Status: ✅ APPROVED (okay)").await
}

async fn denial(backend: Backend) {
    resolved_by_admin(backend, false, "not okay", "Status: ❌ DENIED (not okay)").await
}

async fn expiration(backend: Backend) {
    let mut h = Harness::start(backend, FakeAuthOptions::default()).await;
    let id = h
        .auth
        .create_request(REQUESTER, &["editor"], "because of", &[R1]);
    let first = h.next_mails(2).await;
    h.wait_threads(&id, 2).await;
    h.auth.delete_request(&id);
    let follow = h.next_mails(2).await;
    for m in &follow {
        assert!(m.text.contains("Status: ⌛ EXPIRED"), "{}", m.text);
    }
    assert_threaded(&first, &follow);
    h.assert_quiet().await;
    h.shutdown().await;
}

/// The daemon over `backend` and a request suggesting R1 as reviewer that two approvals (or
/// denials) decide, with its new-request mails (to R1 and all@).
async fn needing_two_reviews(backend: Backend) -> (Harness, String, Vec<Mail>) {
    let mut h = Harness::start(backend, enterprise()).await;
    let id = h.auth.create_request_with_thresholds(
        "requester1@example.com",
        &["editor"],
        "because of",
        &[R1],
        2,
        2,
    );
    let first = h.next_mails(2).await;
    (h, id, first)
}

async fn review_replies(backend: Backend) {
    let (mut h, id, first) = needing_two_reviews(backend).await;
    for m in &first {
        assert!(
            m.text.contains(&format!(
                "Link: https://teleport.example.com/web/requests/{id}"
            )),
            "{}",
            m.text
        );
        assert!(!m.text.contains("tsh request review"), "{}", m.text);
    }
    h.wait_threads(&id, 2).await;
    h.auth.review(&id, R1, true, "okay");
    let replies = h.next_mails(2).await;
    for m in &replies {
        assert!(
            m.text.contains(&format!("{R1} reviewed the request")),
            "{}",
            m.text
        );
        assert!(m.text.contains("Resolution: ✅ APPROVED"), "{}", m.text);
        assert!(m.text.contains("Reason: okay"), "{}", m.text);
    }
    assert_threaded(&first, &replies);
    h.auth.review(&id, R2, false, "not okay");
    let replies = h.next_mails(2).await;
    for m in &replies {
        assert!(
            m.text.contains(&format!("{R2} reviewed the request")),
            "{}",
            m.text
        );
        assert!(m.text.contains("Resolution: ❌ DENIED"), "{}", m.text);
        assert!(m.text.contains("Reason: not okay"), "{}", m.text);
    }
    h.assert_quiet().await;
    h.shutdown().await;
}

async fn by_review(backend: Backend, approve: bool) {
    let (mut h, id, first) = needing_two_reviews(backend).await;
    h.wait_threads(&id, 2).await;
    let (first_reason, last_reason) = if approve {
        ("okay", "finally okay")
    } else {
        ("not okay", "finally not okay")
    };
    h.auth.review(&id, R1, approve, first_reason);
    let r1 = h.next_mails(2).await;
    assert!(
        r1.iter()
            .all(|m| m.text.contains(&format!("{R1} reviewed the request")))
    );
    h.auth.review(&id, R2, approve, last_reason);
    let r2 = h.next_mails(2).await;
    assert!(
        r2.iter()
            .all(|m| m.text.contains(&format!("{R2} reviewed the request"))),
        "{r2:#?}"
    );
    let resolved = h.next_mails(2).await;
    let status = if approve {
        "Status: ✅ APPROVED (finally okay)"
    } else {
        "Status: ❌ DENIED (finally not okay)"
    };
    for m in &resolved {
        assert!(m.text.contains(status), "{}", m.text);
    }
    assert_threaded(&first, &[r1, r2, resolved].concat());
    h.assert_quiet().await;
    h.shutdown().await;
}

async fn approval_by_review(backend: Backend) {
    by_review(backend, true).await
}

async fn denial_by_review(backend: Backend) {
    by_review(backend, false).await
}

async fn race(backend: Backend) {
    const N: usize = 32;
    let mut h = Harness::start(backend, enterprise()).await;
    let auth = h.auth.clone();
    let creators: Vec<_> = (0..N)
        .map(|i| {
            let auth = auth.clone();
            tokio::spawn(async move {
                auth.create_request_with_thresholds(
                    &format!("requester{i}@example.com"),
                    &["editor"],
                    "because of",
                    &[R1, R2],
                    2,
                    2,
                )
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for c in creators {
        ids.insert(c.await.unwrap());
    }
    // Whenever a reviewer receives its new-thread mail, it approves.
    let mut reviewed = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while h.all_mails().len() < 12 * N {
        for m in h.all_mails() {
            if m.text.contains("You have a new Role Request")
                && (m.to == R1 || m.to == R2)
                && reviewed.insert((m.request_id(), m.to.clone()))
            {
                h.auth.review(&m.request_id(), &m.to, true, "okay");
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} mails arrived",
            h.all_mails().len(),
            12 * N
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mails = h.next_mails(12 * N).await;
    let mut per_request: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for m in &mails {
        let e = per_request.entry(m.request_id()).or_default();
        if m.text.contains("You have a new Role Request") {
            e.0 += 1;
        } else if m.text.contains("reviewed the request") {
            e.1 += 1;
        } else if m.text.contains("has been resolved") {
            e.2 += 1;
        } else {
            panic!("unclassified mail {m:#?}");
        }
    }
    assert_eq!(per_request.len(), N);
    for (id, counts) in &per_request {
        assert!(ids.contains(id), "unknown request {id}");
        assert_eq!(*counts, (3, 6, 3), "request {id}");
    }
    let distinct: HashSet<_> = mails.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(distinct.len(), mails.len(), "Message-IDs are not distinct");
    h.assert_quiet().await;
    h.shutdown().await;
}

/// Plugin data the Go plugin wrote (threads, some Message-IDs with brackets as its Mailgun path
/// stores them) is continued: no second new-thread mail, follow-ups in the original threads.
async fn continues_the_original_plugins_threads(backend: Backend) {
    let auth_opts = FakeAuthOptions::default();
    // Start once so the request exists before our daemon; then restart the harness around it.
    let mut h = Harness::start(backend, auth_opts).await;
    h.shutdown_daemon_only().await;
    let id = h
        .auth
        .create_request(REQUESTER, &["editor"], "because of", &[R1]);
    let threads = format!(
        "{ALL}/2024-05-01 10:00:00.123456 +0000 UTC m=+1.5/ORIG1.ABC@go-host,{R1}/2024-05-01 10:00:00.2 +0000 UTC/<20240501.XYZ@test.example.com>"
    );
    h.auth.put_plugin_data(
        &id,
        "email",
        &[
            ("user", REQUESTER),
            ("roles", "editor"),
            ("request_reason", "because of"),
            ("email_threads", &threads),
        ],
    );
    h.restart_daemon().await;
    h.assert_quiet().await;
    h.auth.resolve(&id, true, "okay");
    let follow = h.next_mails(2).await;
    for m in &follow {
        assert!(m.text.contains("Status: ✅ APPROVED (okay)"), "{}", m.text);
        let want = if m.to == ALL {
            "<ORIG1.ABC@go-host>"
        } else {
            "<20240501.XYZ@test.example.com>"
        };
        assert_eq!(m.in_reply_to.as_deref(), Some(want), "{m:#?}");
        assert_eq!(m.references.as_deref(), Some(want), "{m:#?}");
    }
    // The stored data is still readable by the original: seven keys, threads untouched.
    let data = h.auth.plugin_data(&id, "email").unwrap();
    assert_eq!(data.get("email_threads"), Some(&threads));
    assert_eq!(data.get("resolution").map(String::as_str), Some("APPROVED"));
    h.assert_quiet().await;
    h.shutdown().await;
}

async fn promoted_requests_get_a_resolution(backend: Backend) {
    let mut h = Harness::start(backend, FakeAuthOptions::default()).await;
    let id = h
        .auth
        .create_request(REQUESTER, &["editor"], "because of", &[]);
    let first = h.next_mails(1).await;
    h.wait_threads(&id, 1).await;
    h.auth.promote(&id, "long-term access");
    let follow = h.next_mails(1).await;
    assert!(follow[0].text.contains("PROMOTED"), "{}", follow[0].text);
    assert_threaded(&first, &follow);
    h.shutdown().await;
}

/// A new request costs the Auth Service two plugin-data writes (claim with the new data, then the
/// threads with the claim released) and no read: the daemon neither reads before creating nor
/// re-reads what it wrote itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_request_costs_two_plugin_data_writes_and_no_read() {
    let mut h = Harness::start(Backend::Smtp, FakeAuthOptions::default()).await;
    let (writes, reads) = (h.auth.plugin_data_writes(), h.auth.plugin_data_reads());
    let id = h
        .auth
        .create_request(REQUESTER, &["editor"], "because of", &[R1, R2]);
    assert_eq!(sorted_to(&h.next_mails(3).await), [ALL, R1, R2]);
    let data = h.wait_threads(&id, 3).await;
    assert!(!data.contains_key("te_claim"), "{data:?}");
    h.assert_quiet().await;
    assert_eq!(h.auth.plugin_data_writes() - writes, 2);
    assert_eq!(h.auth.plugin_data_reads() - reads, 0);
    h.shutdown().await;
}
