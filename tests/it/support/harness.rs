//! The running daemon (`app::run`) over the fake Auth Service with either mail receiver: the
//! harness the acceptance suite, the delivery tests and the hostile-input tests share, and the
//! received mail in one form for both backends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use teleport_email::app;
use teleport_email::exit::Exit;
use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions};
use teleport_email::testkit::mailgun::MailgunStandIn;
use teleport_email::testkit::pki::KeyKind;
use teleport_email::testkit::smtp::SmtpReceiver;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::SENDER;

const ALL: &str = "all@example.com";
const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Smtp,
    Mailgun,
    /// An SMTP server the test runs itself on this loopback port (no TLS, no AUTH); its mails
    /// are read there, not through the harness.
    SmtpAt(u16),
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
    Outside(u16),
}

impl Receiver {
    /// The daemon's mailer section for this receiver.
    fn config_section(&self) -> String {
        match self {
            Receiver::Smtp(s) => Self::smtp_section(s.port()),
            Receiver::Outside(port) => Self::smtp_section(*port),
            Receiver::Mailgun(m) => format!(
                "[mailgun]\ndomain = \"test.example.com\"\nprivate_key = \"000000\"\napi_base = \"{}\"\n",
                m.api_base()
            ),
        }
    }

    fn smtp_section(port: u16) -> String {
        format!("[smtp]\nhost = \"127.0.0.1\"\nport = {port}\nstarttls_policy = \"disabled\"\n")
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
    delivery: &str,
) -> teleport_email::config::Config {
    let text = format!(
        "[teleport]\naddr = \"{}\"\nidentity = \"{}\"\n{mailer}[delivery]\nsender = \"{SENDER}\"\n{delivery}[role_to_recipients]\n\"*\" = \"{ALL}\"\n[log]\nseverity = \"debug\"\n",
        auth.addr(),
        identity.display()
    );
    teleport_email::config::parse(&text, std::path::Path::new("test.toml"))
        .expect("valid config")
        .config
}

/// Runs the daemon until `stop`; the receiver says when it is ready.
fn spawn_daemon(
    config: teleport_email::config::Config,
    stop: &CancellationToken,
) -> (JoinHandle<Exit>, watch::Receiver<bool>) {
    let (ready_tx, ready) = watch::channel(false);
    let hooks = app::Hooks {
        ready: Some(ready_tx),
        // Access Lists (when their reminders are on) are checked often, so a test waits little,
        // and every check after the first shows that nothing is sent twice.
        access_list_checks: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    (
        tokio::spawn(app::run_with(config, stop.clone(), hooks)),
        ready,
    )
}

/// A running daemon with its peers.
pub struct Harness {
    pub auth: Arc<FakeAuth>,
    receiver: Receiver,
    consumed: usize,
    stop: CancellationToken,
    task: Option<JoinHandle<Exit>>,
    ready: watch::Receiver<bool>,
    /// Extra `[delivery]` lines, kept for restarts.
    delivery: String,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub async fn start(backend: Backend, options: FakeAuthOptions) -> Self {
        Self::start_with(backend, options, "").await
    }

    /// As [`Self::start`], with `delivery` (lines of TOML) added to the `[delivery]` section.
    pub async fn start_with(backend: Backend, options: FakeAuthOptions, delivery: &str) -> Self {
        let auth = FakeAuth::start(options).await;
        let dir = tempfile::tempdir().unwrap();
        let identity = auth.write_plugin_identity(&dir.path().join("identity"), KeyKind::Ecdsa);
        let receiver = match backend {
            Backend::Smtp => Receiver::Smtp(SmtpReceiver::start().await.unwrap()),
            Backend::Mailgun => Receiver::Mailgun(MailgunStandIn::start().await.unwrap()),
            Backend::SmtpAt(port) => Receiver::Outside(port),
        };
        let mailer = receiver.config_section();
        let config = daemon_config(&auth, &identity, &mailer, delivery);
        let stop = CancellationToken::new();
        let (task, ready) = spawn_daemon(config, &stop);
        let mut h = Self {
            auth,
            receiver,
            consumed: 0,
            stop,
            task: Some(task),
            ready,
            delivery: delivery.to_owned(),
            _dir: dir,
        };
        h.wait_ready().await;
        h
    }

    /// Waits until the daemon says its watch is established.
    async fn wait_ready(&mut self) {
        let Some(task) = &mut self.task else {
            panic!("no daemon running");
        };
        tokio::select! {
            ready = tokio::time::timeout(WAIT, self.ready.wait_for(|r| *r)) => {
                assert!(matches!(ready, Ok(Ok(_))), "the plugin never became ready");
            }
            exit = task => panic!("the daemon exited before it was ready: {exit:?}"),
        }
    }

    /// The SMTP receiver (SMTP harnesses only).
    pub fn smtp(&self) -> &SmtpReceiver {
        match &self.receiver {
            Receiver::Smtp(s) => s,
            Receiver::Mailgun(_) | Receiver::Outside(_) => panic!("not an SMTP harness"),
        }
    }

    /// The Mailgun stand-in (Mailgun harnesses only).
    pub fn mailgun(&self) -> &MailgunStandIn {
        match &self.receiver {
            Receiver::Mailgun(m) => m,
            Receiver::Smtp(_) | Receiver::Outside(_) => panic!("not a Mailgun harness"),
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
            Receiver::Outside(port) => panic!("read the mails at the server on port {port}"),
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
        let config = daemon_config(&self.auth, &identity, &mailer, &self.delivery);
        self.stop = CancellationToken::new();
        let (task, ready) = spawn_daemon(config, &self.stop);
        (self.task, self.ready) = (Some(task), ready);
        self.wait_ready().await;
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
