//! Access List reminders driven directly (not through the daemon), for tests that run replicas'
//! checks side by side or control the mailer: the lists, the claims they leave, and a mailer
//! under the test's control.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use teleport_email::lists::{ListReminders, MailerSource, Settings};
use teleport_email::mail::{MailError, Mailer, MessageId, OutgoingMail};
use teleport_email::metrics::Metrics;
use teleport_email::testkit::auth::{FakeAuth, FakeList};
use tokio_util::sync::CancellationToken;

use super::plugin_client;

/// A replica of the reminders: a client of its own on `auth`, mailing through `mailer`, retrying
/// a mail for `retry_for`.
pub async fn reminders(
    auth: &FakeAuth,
    mailer: Arc<dyn Mailer>,
    retry_for: Duration,
) -> ListReminders {
    // The identity file is read once, at load: its directory may go.
    let (client, _dir) = plugin_client(auth).await;
    let source: MailerSource = Arc::new(move || mailer.clone());
    let settings = Settings {
        plugin: "email",
        cluster: "teleport.example.com".into(),
        web_base: None,
        id_host: "example.com".into(),
        retry_for,
        every: Duration::from_secs(3 * 3600),
        first_within: Duration::ZERO,
    };
    ListReminders::new(client, source, Arc::new(Metrics::default()), settings)
}

/// Runs one check of `reminders` in a task of its own, until done or `stop`.
pub fn spawn_check(
    reminders: ListReminders,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<Result<usize, String>> {
    let stop = stop.clone();
    tokio::spawn(async move { reminders.check_once(&stop).await })
}

pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// List `name` (titled in capitals) owned by `owners`, due for review in `due_in_days` days and
/// an hour.
pub fn list(name: &str, owners: &[&str], due_in_days: u32) -> FakeList {
    FakeList {
        name: name.into(),
        title: name.to_uppercase(),
        owners: owners.iter().map(|o| o.to_string()).collect(),
        next_review: Some(SystemTime::now() + DAY * due_in_days + Duration::from_secs(3600)),
        ..FakeList::default()
    }
}

/// The claims on reminders being sent for `list` (`te_sending`): owner → until when.
pub fn sending(auth: &FakeAuth, list: &str) -> BTreeMap<String, String> {
    let data = auth.list_plugin_data(list, "email").unwrap_or_default();
    let json = data.get("te_sending").cloned().unwrap_or_default();
    serde_json::from_str(&json).unwrap_or_default()
}

/// What a [`Probe`] runs before each send.
pub type Hook = Box<dyn Fn(&OutgoingMail) + Send + Sync>;

/// A mailer under the test's control: each send runs `hook` first, takes `delay` (per address,
/// else `default`), fails with a passing error while `failing`, and is recorded once delivered.
#[derive(Default)]
pub struct Probe {
    pub default: Duration,
    pub delay: HashMap<String, Duration>,
    pub hook: Option<Hook>,
    pub failing: bool,
    pub attempts: AtomicUsize,
    pub delivered: Mutex<Vec<OutgoingMail>>,
}

#[async_trait::async_trait]
impl Mailer for Probe {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if let Some(hook) = &self.hook {
            hook(mail);
        }
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
    /// The addresses mailed, in order.
    pub fn delivered_to(&self) -> Vec<String> {
        let d = self.delivered.lock().unwrap();
        d.iter().map(|m| m.to.clone()).collect()
    }

    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }
}
