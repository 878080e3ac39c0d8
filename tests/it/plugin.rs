//! The original plugin's acceptance suite (upstream-behaviour.md 7b), run against the real daemon
//! (`app::run`) over the fake Auth Service, once with a real SMTP receiver and once with the
//! Mailgun stand-in.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use teleport_email::app;
use teleport_email::exit::Exit;
use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions};
use teleport_email::testkit::mailgun::MailgunStandIn;
use teleport_email::testkit::pki::KeyKind;
use teleport_email::testkit::smtp::SmtpReceiver;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SENDER: &str = "noreply@example.com";
const ALL: &str = "all@example.com";
const R1: &str = "reviewer1@example.com";
const R2: &str = "reviewer2@example.com";
const REQUESTER: &str = "requester-oss@example.com";
const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Smtp,
    Mailgun,
}

/// One mail as either backend received it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub message_id: String,
    pub in_reply_to: Option<String>,
    pub references: Option<String>,
}

impl Mail {
    /// The request id, from the subject after "Role Request ".
    pub fn request_id(&self) -> String {
        self.subject
            .rsplit("Role Request ")
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

enum Receiver {
    Smtp(SmtpReceiver),
    Mailgun(MailgunStandIn),
}

impl Receiver {
    /// The daemon's mailer section for this receiver.
    fn config_section(&self) -> String {
        match self {
            Receiver::Smtp(s) => format!(
                "[smtp]\nhost = \"127.0.0.1\"\nport = {}\nstarttls_policy = \"disabled\"\n",
                s.port()
            ),
            Receiver::Mailgun(m) => format!(
                "[mailgun]\ndomain = \"test.example.com\"\nprivate_key = \"000000\"\napi_base = \"{}\"\n",
                m.api_base()
            ),
        }
    }
}

fn bracketed(s: &str) -> String {
    format!(
        "<{}>",
        s.trim().trim_start_matches('<').trim_end_matches('>')
    )
}

pub fn from_smtp(raw: &[u8]) -> Mail {
    let msg = mail_parser::MessageParser::default()
        .parse(raw)
        .expect("a parseable message");
    let addr = |a: Option<&mail_parser::Address>| {
        a.and_then(|a| a.first())
            .and_then(|a| a.address())
            .unwrap_or_default()
            .to_owned()
    };
    let id_header = |h: &mail_parser::HeaderValue| -> Option<String> {
        match h {
            mail_parser::HeaderValue::Text(t) => Some(bracketed(t)),
            mail_parser::HeaderValue::TextList(l) => l.first().map(|t| bracketed(t)),
            _ => None,
        }
    };
    Mail {
        from: addr(msg.from()),
        to: addr(msg.to()),
        subject: msg.subject().unwrap_or_default().to_owned(),
        text: msg.body_text(0).unwrap_or_default().replace("\r\n", "\n"),
        message_id: bracketed(msg.message_id().unwrap_or_default()),
        in_reply_to: id_header(msg.in_reply_to()),
        references: id_header(msg.references()),
    }
}

/// The daemon's config for these peers.
fn daemon_config(
    auth: &FakeAuth,
    identity: &std::path::Path,
    mailer: &str,
) -> teleport_email::config::Config {
    let text = format!(
        "[teleport]\naddr = \"{}\"\nidentity = \"{}\"\n{mailer}[delivery]\nsender = \"{SENDER}\"\n[role_to_recipients]\n\"*\" = \"{ALL}\"\n[log]\nseverity = \"debug\"\n",
        auth.addr(),
        identity.display()
    );
    teleport_email::config::parse(&text, std::path::Path::new("test.toml"))
        .expect("valid config")
        .config
}

/// A running daemon with its peers.
pub struct Harness {
    pub auth: Arc<FakeAuth>,
    receiver: Receiver,
    consumed: usize,
    stop: CancellationToken,
    task: Option<JoinHandle<Exit>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub async fn start(backend: Backend, options: FakeAuthOptions) -> Self {
        let auth = FakeAuth::start(options).await;
        let dir = tempfile::tempdir().unwrap();
        let identity = auth.write_plugin_identity(&dir.path().join("identity"), KeyKind::Ecdsa);
        let receiver = match backend {
            Backend::Smtp => Receiver::Smtp(SmtpReceiver::start().await.unwrap()),
            Backend::Mailgun => Receiver::Mailgun(MailgunStandIn::start().await.unwrap()),
        };
        let mailer = receiver.config_section();
        let config = daemon_config(&auth, &identity, &mailer);
        let stop = CancellationToken::new();
        let task = tokio::spawn(app::run(config, stop.clone()));
        let mut h = Self {
            auth,
            receiver,
            consumed: 0,
            stop,
            task: Some(task),
            _dir: dir,
        };
        h.wait_ready().await;
        h
    }

    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.auth.watcher_count() == 0 {
            if let Some(task) = &self.task
                && task.is_finished()
            {
                let exit = self.task.take().unwrap().await.unwrap();
                panic!("the daemon exited before it was ready: {exit:?}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the plugin never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The SMTP receiver (SMTP harnesses only).
    pub fn smtp(&self) -> &SmtpReceiver {
        match &self.receiver {
            Receiver::Smtp(s) => s,
            Receiver::Mailgun(_) => panic!("not an SMTP harness"),
        }
    }

    /// The Mailgun stand-in (Mailgun harnesses only).
    pub fn mailgun(&self) -> &MailgunStandIn {
        match &self.receiver {
            Receiver::Mailgun(m) => m,
            Receiver::Smtp(_) => panic!("not a Mailgun harness"),
        }
    }

    /// Every mail received so far.
    pub fn all_mails(&self) -> Vec<Mail> {
        match &self.receiver {
            Receiver::Smtp(s) => s.messages().iter().map(|m| from_smtp(&m.data)).collect(),
            Receiver::Mailgun(m) => m
                .deliveries()
                .iter()
                .map(|r| Mail {
                    from: r.field("from").unwrap_or_default().to_owned(),
                    to: r.field("to").unwrap_or_default().to_owned(),
                    subject: r.field("subject").unwrap_or_default().to_owned(),
                    text: r.field("text").unwrap_or_default().to_owned(),
                    message_id: bracketed(r.field("h:Message-Id").unwrap_or_default()),
                    in_reply_to: r.field("h:In-Reply-To").map(bracketed),
                    references: r.field("h:References").map(bracketed),
                })
                .collect(),
        }
    }

    /// Waits for the next `n` mails and returns them.
    pub async fn next_mails(&mut self, n: usize) -> Vec<Mail> {
        let want = self.consumed + n;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let all = self.all_mails();
            if all.len() >= want {
                let out = all[self.consumed..want].to_vec();
                self.consumed = want;
                return out;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited for {n} more mail(s), got {} of {want}: {:#?}",
                all.len(),
                all
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts no further mail arrives for a moment.
    pub async fn assert_quiet(&self) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let all = self.all_mails();
        assert_eq!(
            all.len(),
            self.consumed,
            "unexpected mail: {:#?}",
            &all[self.consumed..]
        );
    }

    /// Waits until the request's plugin data has threads.
    pub async fn wait_threads(&self, id: &str, n: usize) -> BTreeMap<String, String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(d) = self.auth.plugin_data(id, "email")
                && d.get("email_threads")
                    .is_some_and(|t| t.split(',').count() >= n)
            {
                return d;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no threads for {id}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the daemon and checks it exited cleanly.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let exit = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
            assert_eq!(exit, Exit::Success);
        }
    }
}

pub fn sorted_to(mails: &[Mail]) -> Vec<String> {
    let mut to: Vec<_> = mails.iter().map(|m| m.to.clone()).collect();
    to.sort();
    to
}

fn enterprise() -> FakeAuthOptions {
    FakeAuthOptions {
        advanced_workflows: true,
        proxy_public_addr: "teleport.example.com:443".into(),
        ..Default::default()
    }
}

/// Asserts each follow-up threads under the first mail its recipient got.
pub fn assert_threaded(first: &[Mail], follow_ups: &[Mail]) {
    for f in follow_ups {
        let root = first
            .iter()
            .find(|m| m.to == f.to)
            .unwrap_or_else(|| panic!("no thread for {}", f.to));
        assert_eq!(
            f.in_reply_to.as_deref(),
            Some(root.message_id.as_str()),
            "{f:#?}"
        );
        assert_eq!(
            f.references.as_deref(),
            Some(root.message_id.as_str()),
            "{f:#?}"
        );
        assert_eq!(f.subject, root.subject);
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

async fn review_replies(backend: Backend) {
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

impl Harness {
    /// Stops our daemon but keeps the fake cluster and the mail receiver.
    pub async fn shutdown_daemon_only(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            assert_eq!(
                tokio::time::timeout(WAIT, task).await.unwrap().unwrap(),
                Exit::Success
            );
        }
        while self.auth.watcher_count() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts our daemon again with the same peers.
    pub async fn restart_daemon(&mut self) {
        let identity = self._dir.path().join("identity");
        let mailer = self.receiver.config_section();
        let config = daemon_config(&self.auth, &identity, &mailer);
        self.stop = CancellationToken::new();
        self.task = Some(tokio::spawn(app::run(config, self.stop.clone())));
        self.wait_ready().await;
    }
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
