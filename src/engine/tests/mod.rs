//! The engine's decisions, with plugin data in memory (Teleport's compare-and-swap rules), a
//! scripted mailer and paused time: minutes of retries and leases take milliseconds.
//!
//! This module holds the fixtures every subject shares; the tests live in one file a subject.
//! Tests named `review*_` come from a second reader's review round and each failed on the change
//! it reviewed.

mod claims;
mod failures;
mod monitoring;
mod partition;
mod reminder_claims;
mod reminders;
mod requester;
mod requester_lookup;
mod review_fixes10;
mod review_fixes11;
mod review_fixes12;
mod review_fixes13;
mod review_fixes14;
mod review_fixes15;
mod review_fixes5;
mod review_fixes6;
mod review_fixes7;
mod review_fixes8;
mod review_fixes9;
mod shutdown;
mod survey;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

use super::testing::{Answer, MemoryStore, ScriptedMailer};
use super::*;
use crate::config::RecipientMap;
use crate::mail::{MailError, MessageId, OutgoingMail, SmtpStep};
use crate::teleport::{Review, Traits};

const LEASE: Duration = Duration::from_secs(30);
const HOUR: Duration = Duration::from_secs(3600);
/// A request old enough for its first reminder round.
const DUE: Duration = Duration::from_secs(3600 + 60);
const REQUESTER: &str = "alice@example.com";

// ---------------------------------------------------------------------------------------------
// Engines.

/// A fresh plugin-data store and a mailer that accepts everything.
fn doubles() -> (Arc<MemoryStore>, Arc<ScriptedMailer>) {
    (Arc::default(), Arc::default())
}

/// Everyone in `to`, for every role.
fn recipients(to: &[&str]) -> RecipientMap {
    let to = to.iter().map(|s| s.to_string()).collect();
    RecipientMap::new(BTreeMap::from([("*".to_owned(), to)]))
}

fn routing(mailer: Arc<dyn Mailer>, to: &[&str]) -> Routing {
    Routing {
        recipients: recipients(to),
        mailer,
        notify_requester: false,
    }
}

fn policy(name: &str) -> DeliveryPolicy {
    DeliveryPolicy {
        retry_for: Duration::from_secs(60),
        lease: LEASE,
        instance: name.into(),
        id_host: "example.com".into(),
        ..DeliveryPolicy::default()
    }
}

fn cluster() -> ClusterInfo {
    ClusterInfo {
        name: "cluster".into(),
        server_version: "18.0.0".into(),
        advanced_workflows: false,
        proxy_public_addr: String::new(),
    }
}

/// An engine over any store and mailer, mailing a@ and b@ for every role.
fn engine_over(
    store: Arc<dyn PluginDataStore>,
    mailer: Arc<dyn Mailer>,
    policy: DeliveryPolicy,
) -> Arc<Engine> {
    let routing = routing(mailer, &["a@example.com", "b@example.com"]);
    Arc::new(Engine::with_store(store, cluster(), routing, policy))
}

/// The engine of instance `name`, mailing a@ and b@ for every role.
fn engine(store: &Arc<MemoryStore>, mailer: &Arc<ScriptedMailer>, name: &str) -> Arc<Engine> {
    engine_over(store.clone(), mailer.clone(), policy(name))
}

/// An engine that also mails the requester (`delivery.notify_requester`).
fn engine_telling_requester(
    store: &Arc<MemoryStore>,
    mailer: &Arc<ScriptedMailer>,
    name: &str,
) -> Arc<Engine> {
    let engine = engine(store, mailer, name);
    let mut routing = (*engine.routing()).clone();
    routing.notify_requester = true;
    engine.set_routing(routing);
    engine
}

/// Mails everyone in `to` for every role from now on.
fn mail_to(engine: &Engine, to: &[&str]) {
    let mut routing = (*engine.routing()).clone();
    routing.recipients = recipients(to);
    engine.set_routing(routing);
}

/// Routes `engine` to a@ and b@ through `mailer` from now on, as a reload does.
fn reload(engine: &Engine, mailer: Arc<ScriptedMailer>) {
    engine.set_routing(routing(mailer, &["a@example.com", "b@example.com"]));
}

/// `engine`, reading users' traits from `directory`.
fn with_directory(engine: Arc<Engine>, directory: Arc<dyn Directory>) -> Arc<Engine> {
    let engine = Arc::into_inner(engine).expect("the only handle");
    Arc::new(engine.with_directory(directory))
}

/// `engine`, stopping (as at SIGTERM) when `stop` is cancelled.
fn stopped_by(engine: Arc<Engine>, stop: &CancellationToken) -> Arc<Engine> {
    let engine = Arc::into_inner(engine).expect("the only handle");
    Arc::new(engine.with_shutdown(stop.clone()))
}

/// Access Monitoring Rules of the `email` plugin, loaded.
fn rule_set(rules: Vec<crate::teleport::MonitoringRule>) -> Arc<crate::rules::RuleSet> {
    let set = Arc::new(crate::rules::RuleSet::new("email"));
    set.replace_all(rules);
    set
}

/// Traits served to the engine: `user` → `email` trait, or a refusal.
struct Emails(Option<&'static str>);

#[async_trait::async_trait]
impl Directory for Emails {
    async fn user_traits(&self, _user: &str) -> Result<Traits, TeleportError> {
        match self.0 {
            Some(email) => Ok(email_trait(email)),
            None => Err(TeleportError::AccessDenied("read user".into())),
        }
    }
}

fn email_trait(email: &str) -> Traits {
    [("email".to_owned(), vec![email.to_owned()])].into()
}

// ---------------------------------------------------------------------------------------------
// Requests and events.

fn request(id: &str) -> AccessRequest {
    AccessRequest::sample(id)
}

fn put(id: &str) -> WatchEvent {
    put_of(request(id))
}

fn put_of(req: AccessRequest) -> WatchEvent {
    WatchEvent::Put(Box::new(req))
}

fn delete(id: &str) -> WatchEvent {
    WatchEvent::Delete { id: id.into() }
}

/// A review by `author` proposing approval.
fn approval(author: &str) -> Review {
    Review {
        author: author.into(),
        proposed: RequestState::Approved,
        reason: String::new(),
        created: None,
    }
}

/// Request `id` with `n` reviews (by reviewer0, reviewer1, …).
fn reviewed(id: &str, n: usize) -> WatchEvent {
    let reviews = (0..n).map(|i| approval(&format!("reviewer{i}"))).collect();
    put_of(AccessRequest {
        reviews,
        ..request(id)
    })
}

/// Request `id`, created `age` ago and reviewed by `reviewed_by`.
fn aged(id: &str, age: Duration, reviewed_by: &[&str]) -> AccessRequest {
    AccessRequest {
        created: Some(SystemTime::now() - age),
        reviews: reviewed_by.iter().map(|a| approval(a)).collect(),
        ..request(id)
    }
}

/// Request `id` of [`REQUESTER`], in `state`.
fn of_requester(id: &str, state: RequestState) -> AccessRequest {
    AccessRequest {
        user: REQUESTER.into(),
        state,
        resolve_reason: "go ahead".into(),
        ..request(id)
    }
}

fn by_requester(id: &str, state: RequestState) -> WatchEvent {
    put_of(of_requester(id, state))
}

/// Request r1 of [`REQUESTER`], pending.
fn r1_pending() -> WatchEvent {
    by_requester("r1", RequestState::Pending)
}

/// Request r1 of [`REQUESTER`], approved.
fn r1_approved() -> WatchEvent {
    by_requester("r1", RequestState::Approved)
}

/// Request `id`, in `state`.
fn put_in(id: &str, state: RequestState) -> WatchEvent {
    put_of(AccessRequest {
        state,
        ..request(id)
    })
}

/// Handles `event` in a task of its own.
fn spawn_event(engine: &Arc<Engine>, event: WatchEvent) -> tokio::task::JoinHandle<()> {
    let engine = engine.clone();
    tokio::spawn(async move { engine.handle_event(event).await })
}

/// Handles a PUT of request `id` in a task of its own.
fn spawn_put(engine: &Arc<Engine>, id: &str) -> tokio::task::JoinHandle<()> {
    spawn_event(engine, put(id))
}

/// Runs the reminders (hourly, three rounds) of `req` in a task of its own.
fn spawn_remind(
    engine: &Arc<Engine>,
    req: &AccessRequest,
) -> tokio::task::JoinHandle<Result<(), EngineError>> {
    let (engine, req) = (engine.clone(), req.clone());
    tokio::spawn(async move { engine.remind(&req, HOUR, 3).await })
}

// ---------------------------------------------------------------------------------------------
// Plugin data.

/// Stores `data` for request `id` as the engine would write it.
fn stored(store: &MemoryStore, id: &str, data: &PluginData) {
    let raw = (data.encode().into_iter())
        .filter(|(_, v)| !v.is_empty())
        .collect();
    store.put(id, raw);
}

/// Writes `keys` into the stored plugin data of `id`, as another writer would.
fn plant(store: &MemoryStore, id: &str, keys: &[(&str, &str)]) {
    let mut raw = store.raw(id).expect("plugin data to write into");
    for (k, v) in keys {
        raw.insert(k.to_string(), v.to_string());
    }
    store.put(id, raw);
}

/// The plugin data of a request whose new-thread stage was started and not finished (recipients
/// stored, no thread yet, no claim): what a give-up or a released claim leaves.
fn resumed(store: &MemoryStore, id: &str, extra: &[(&str, &str)]) {
    let data = PluginData {
        user: "alice".into(),
        roles: vec!["editor".into()],
        request_reason: "please".into(),
        intended: Some(vec!["a@example.com".into(), "b@example.com".into()]),
        ..Default::default()
    };
    stored(store, id, &data);
    plant(store, id, extra);
}

/// Plugin data with a thread for a@ only (b@ is not a recipient of this request).
fn threaded(store: &MemoryStore, id: &str, extra: &[(&str, &str)]) {
    let keys = [
        ("user", "alice"),
        ("roles", "editor"),
        ("request_reason", "please"),
        (
            "email_threads",
            "a@example.com/2024-01-01T00:00:00Z/<t.1@example.com>",
        ),
        ("te_recipients", "v1:a@example.com"),
    ];
    store.put(id, RawPluginData::default());
    plant(store, id, &keys);
    plant(store, id, extra);
}

/// The new-request thread of reviewer `email`.
fn thread(email: &str) -> Thread {
    Thread {
        email: email.into(),
        timestamp: "2026-01-01T00:00:00Z".into(),
        message_id: format!("<{email}.new@example.com>"),
    }
}

/// Plugin data of a request of `user` whose new-request threads reached a@ and b@.
fn both_threads(user: &str) -> PluginData {
    let (a, b) = ("a@example.com", "b@example.com");
    PluginData {
        user: user.into(),
        roles: vec!["editor".into()],
        request_reason: "please".into(),
        intended: Some(vec![a.into(), b.into()]),
        threads: vec![thread(a), thread(b)],
        ..Default::default()
    }
}

fn decoded(store: &MemoryStore, id: &str) -> PluginData {
    PluginData::decode(&store.raw(id).expect("plugin data"))
}

// ---------------------------------------------------------------------------------------------
// What was mailed.

/// How many mails each recipient got, by Message-ID.
fn per_message(mailer: &ScriptedMailer) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for key in mailer.deliveries() {
        *counts.entry(key).or_default() += 1;
    }
    counts
}

fn assert_each_once(mailer: &ScriptedMailer, expected: usize) {
    let counts = per_message(mailer);
    assert!(counts.values().all(|n| *n == 1), "duplicates: {counts:?}");
    assert_eq!(counts.len(), expected, "{counts:?}");
}

/// The mails delivered to `to`, in order.
fn delivered_to(mailer: &ScriptedMailer, to: &str) -> Vec<OutgoingMail> {
    (mailer.delivered().into_iter())
        .filter(|m| m.to == to)
        .collect()
}

/// The subjects of the mails delivered to `to`, in order.
fn subjects_to(mailer: &ScriptedMailer, to: &str) -> Vec<String> {
    (delivered_to(mailer, to).into_iter())
        .map(|m| m.subject)
        .collect()
}

/// (to, subject) of the mails delivered to an address that `stray` picks.
fn mailed_where(mailer: &ScriptedMailer, stray: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    (mailer.delivered().into_iter())
        .filter(|m| stray(&m.to))
        .map(|m| (m.to, m.subject))
        .collect()
}

fn to_requester(mailer: &ScriptedMailer) -> Vec<OutgoingMail> {
    delivered_to(mailer, REQUESTER)
}

/// The reminders delivered (by their first line, whatever their subject): (to, first line).
fn reminders_to(mailer: &ScriptedMailer) -> Vec<(String, String)> {
    (mailer.delivered().into_iter())
        .filter(|m| m.text.starts_with("Reminder "))
        .map(|m| (m.to, m.text.lines().next().unwrap_or_default().to_owned()))
        .collect()
}

/// Who was reminded, in order.
fn reminded(mailer: &ScriptedMailer) -> Vec<String> {
    (reminders_to(mailer).into_iter())
        .map(|(to, _)| to)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Mail failures.

fn auth_failure() -> MailError {
    MailError::Auth {
        server: "mail:587".into(),
        reason: "535 5.7.8 bad credentials".into(),
    }
}

fn refused_recipient() -> MailError {
    MailError::Rejected {
        server: "mail:587".into(),
        code: 550,
        reason: "no such user".into(),
        step: SmtpStep::Recipient,
    }
}

fn connection_refused() -> MailError {
    MailError::Connect {
        server: "mail:587".into(),
        reason: "refused".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Logs.

/// The messages of the log lines at one level, logged while its guard lives (on this thread:
/// each `#[tokio::test]` runs on one).
#[derive(Clone)]
struct Logged(Arc<Mutex<Vec<String>>>, tracing::Level);

impl Logged {
    fn warnings() -> Self {
        Self(Arc::default(), tracing::Level::WARN)
    }

    fn errors() -> Self {
        Self(Arc::default(), tracing::Level::ERROR)
    }

    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::registry().with(self.clone());
        tracing::subscriber::set_default(subscriber)
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn containing(&self, needle: &str) -> Vec<String> {
        (self.all().into_iter())
            .filter(|m| m.contains(needle))
            .collect()
    }
}

impl<S: tracing::Subscriber> Layer<S> for Logged {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if *event.metadata().level() == self.1 {
            let mut m = Message(String::new());
            event.record(&mut m);
            self.0.lock().unwrap().push(m.0);
        }
    }
}

/// The `message` field of a log event.
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}
