//! The engine's decisions, with plugin data in memory (Teleport's compare-and-swap rules), a
//! scripted mailer and paused time: minutes of retries and leases take milliseconds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::testing::{Answer, MemoryStore, ScriptedMailer};
use super::*;
use crate::config::RecipientMap;
use crate::mail::{MailError, SmtpStep};

const LEASE: Duration = Duration::from_secs(30);

fn routing(mailer: Arc<ScriptedMailer>, to: &[&str]) -> Routing {
    let map = BTreeMap::from([("*".to_owned(), to.iter().map(|s| s.to_string()).collect())]);
    Routing {
        recipients: RecipientMap::new(map),
        mailer,
        notify_requester: false,
    }
}

fn engine(store: &Arc<MemoryStore>, mailer: &Arc<ScriptedMailer>, name: &str) -> Arc<Engine> {
    let policy = DeliveryPolicy {
        retry_for: Duration::from_secs(60),
        lease: LEASE,
        instance: name.into(),
        id_host: "example.com".into(),
        ..DeliveryPolicy::default()
    };
    let cluster = ClusterInfo {
        name: "cluster".into(),
        server_version: "18.0.0".into(),
        advanced_workflows: false,
        proxy_public_addr: String::new(),
    };
    let to = ["a@example.com", "b@example.com"];
    Arc::new(Engine::with_store(
        store.clone(),
        cluster,
        routing(mailer.clone(), &to),
        policy,
    ))
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

fn request(id: &str) -> AccessRequest {
    AccessRequest::sample(id)
}

/// Handles a PUT of request `id` in a task of its own.
fn spawn_put(engine: &Arc<Engine>, id: &str) -> tokio::task::JoinHandle<()> {
    let (engine, event) = (engine.clone(), put(id));
    tokio::spawn(async move { engine.handle_event(event).await })
}

fn put(id: &str) -> WatchEvent {
    WatchEvent::Put(Box::new(request(id)))
}

/// The plugin data of a request whose new-thread stage was started and not finished (recipients
/// stored, no thread yet, no claim): what a give-up or a released claim leaves.
fn resumed(store: &MemoryStore, id: &str, extra: &[(&str, &str)]) {
    let mut raw: RawPluginData = PluginData {
        user: "alice".into(),
        roles: vec!["editor".into()],
        request_reason: "please".into(),
        intended: Some(vec!["a@example.com".into(), "b@example.com".into()]),
        ..Default::default()
    }
    .encode()
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .collect();
    for (k, v) in extra {
        raw.insert(k.to_string(), v.to_string());
    }
    store.put(id, raw);
}

fn decoded(store: &MemoryStore, id: &str) -> PluginData {
    PluginData::decode(&store.raw(id).expect("plugin data"))
}

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

/// Issue 17.1: a resumed stage changes none of the original's seven keys, so only a pinned
/// `te_claim` (absent → `""`) stops a second replica from claiming it as well.
#[tokio::test(start_paused = true)]
async fn two_replicas_resuming_a_stage_send_each_mail_once() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    mailer.always(Some(Answer::Slow(Duration::from_millis(200))));
    resumed(&store, "r1", &[]);
    let (a, b) = (engine(&store, &mailer, "a"), engine(&store, &mailer, "b"));
    tokio::join!(a.handle_event(put("r1")), b.handle_event(put("r1")));
    assert_each_once(&mailer, 2);
    let d = decoded(&store, "r1");
    assert_eq!(d.threads.len(), 2);
    assert_eq!(d.claim, None, "the claim is released");
}

/// Issue 17.2: a send that outlasts the lease keeps the claim (renewed), so a second replica
/// arriving after the first lease would have run out waits instead of resending.
#[tokio::test(start_paused = true)]
async fn a_send_longer_than_the_lease_keeps_its_claim() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    mailer.then([Answer::Slow(4 * LEASE), Answer::Slow(4 * LEASE)]);
    resumed(&store, "r1", &[]);
    let (a, b) = (engine(&store, &mailer, "a"), engine(&store, &mailer, "b"));
    let first = spawn_put(&a, "r1");
    tokio::time::sleep(LEASE + LEASE / 3).await;
    let claim = decoded(&store, "r1").claim.expect("claimed");
    assert_eq!(claim.owner, "a");
    b.handle_event(put("r1")).await;
    first.await.unwrap();
    assert_each_once(&mailer, 2);
    assert_eq!(decoded(&store, "r1").claim, None);
}

/// Issue 17.2: once the claim is someone else's, sending stops and the final write leaves the
/// other's claim alone (it used to overwrite it), while what was delivered is recorded.
#[tokio::test(start_paused = true)]
async fn a_claim_taken_over_stops_sending_and_is_not_overwritten() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    mailer.then([Answer::Accept, Answer::Slow(3 * LEASE)]);
    resumed(&store, "r1", &[]);
    let a = engine(&store, &mailer, "a");
    let run = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Another instance takes the request (e.g. it judged our lease gone during a stall).
    let other = format!("v1:other/{}", now_ms() + 25_000);
    let mut raw = store.raw("r1").unwrap();
    raw.insert("te_claim".into(), other.clone());
    store.put("r1", raw);
    run.await.unwrap();
    assert_eq!(store.raw("r1").unwrap()["te_claim"], other);
    assert_eq!(mailer.delivered().len(), 1, "the slow send was abandoned");
    assert_eq!(
        decoded(&store, "r1").threads.len(),
        1,
        "the delivery is recorded"
    );
}

/// Issues 17.2 and 17.7: a claim that runs out far beyond any lease (clock skew, hostile write)
/// is not believed, while a plausible one is waited for.
#[tokio::test(start_paused = true)]
async fn a_claim_far_in_the_future_does_not_park_the_request() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let far = format!("v1:ghost/{}", now_ms() + 86_400_000);
    resumed(&store, "r1", &[("te_claim", far.as_str())]);
    let a = engine(&store, &mailer, "a");
    let started = tokio::time::Instant::now();
    a.handle_event(put("r1")).await;
    assert_each_once(&mailer, 2);
    assert!(started.elapsed() < Duration::from_secs(1));

    assert_eq!(
        holder(
            Some(&Claim {
                owner: "b".into(),
                until_ms: 10_000 + 20_000
            }),
            "a",
            10_000,
            LEASE
        ),
        Holder::Other(30_000)
    );
    let past = Claim {
        owner: "b".into(),
        until_ms: 9_000,
    };
    assert_eq!(holder(Some(&past), "a", 10_000, LEASE), Holder::Nobody);
    assert_eq!(holder(Some(&past), "b", 10_000, LEASE), Holder::Us);
}

/// A live claim of another instance is waited for, then taken when it runs out.
#[tokio::test(start_paused = true)]
async fn a_live_claim_is_waited_for_until_it_runs_out() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let soon = format!("v1:dead-replica/{}", now_ms() + 10_000);
    resumed(&store, "r1", &[("te_claim", soon.as_str())]);
    let a = engine(&store, &mailer, "a");
    a.handle_event(put("r1")).await;
    assert_each_once(&mailer, 2);
}

/// Issue 17.3: a failure of the mailer as a whole (bad password) is retried, never recorded as
/// the recipients' own; after the operator fixes the password and reloads, the mail goes out.
#[tokio::test(start_paused = true)]
async fn a_mailer_wide_failure_is_retried_and_a_reload_delivers() {
    let store = Arc::new(MemoryStore::default());
    let broken = Arc::new(ScriptedMailer::default());
    broken.always(Some(Answer::Fail(auth_failure())));
    let a = engine(&store, &broken, "a");
    let run = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(broken.attempts() > 2, "retried: {}", broken.attempts());
    let d = decoded(&store, "r1");
    assert!(d.failed.is_empty(), "recorded as permanent: {:?}", d.failed);
    let fixed = Arc::new(ScriptedMailer::default());
    let to = ["a@example.com", "b@example.com"];
    a.set_routing(routing(fixed.clone(), &to));
    run.await.unwrap();
    assert_each_once(&fixed, 2);
    assert_eq!(decoded(&store, "r1").claim, None);
}

/// Issue 17.3: given up after the retry period, a mailer-wide failure leaves nothing recorded
/// against the recipients, so the next pass (reconcile after a reload or reconnect) delivers.
#[tokio::test(start_paused = true)]
async fn after_giving_up_on_a_mailer_wide_failure_the_next_pass_delivers() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    mailer.always(Some(Answer::Fail(auth_failure())));
    let a = engine(&store, &mailer, "a");
    a.handle_event(put("r1")).await;
    let d = decoded(&store, "r1");
    assert!(d.failed.is_empty(), "{:?}", d.failed);
    assert_eq!(d.claim, None);
    mailer.always(None);
    a.handle_event(put("r1")).await;
    assert_each_once(&mailer, 2);
}

/// A recipient's own refusal (550 to RCPT TO) is permanent for that recipient only.
#[tokio::test(start_paused = true)]
async fn a_recipients_own_refusal_is_recorded_once_and_not_retried() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    mailer.then([Answer::Fail(refused_recipient())]);
    let a = engine(&store, &mailer, "a");
    a.handle_event(put("r1")).await;
    assert_eq!(mailer.attempts(), 2);
    assert_eq!(mailer.delivered().len(), 1);
    let d = decoded(&store, "r1");
    assert_eq!(d.failed.len(), 1, "{:?}", d.failed);
    a.handle_event(put("r1")).await;
    assert_eq!(mailer.attempts(), 2, "not retried on the next pass");
}

/// A 15 s outage of the mail server, retried with backoff: in paused time, milliseconds.
#[tokio::test(start_paused = true)]
async fn a_15_second_outage_is_retried_until_the_server_is_back() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    mailer.always(Some(Answer::Fail(connection_refused())));
    let a = engine(&store, &mailer, "a");
    let run = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_secs(15)).await;
    mailer.always(None);
    run.await.unwrap();
    assert_each_once(&mailer, 2);
    assert!(mailer.attempts() > 4, "{}", mailer.attempts());
}

/// Issue 17.4: a `Retry-After` of an hour is not obeyed past the lease: the next attempt comes
/// within half a lease, while the claim is still ours.
#[tokio::test(start_paused = true)]
async fn retry_after_is_capped_by_the_lease() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let slow_down = MailError::Http {
        url: "https://api.example/v3/d/messages".into(),
        status: 429,
        message: "slow down".into(),
        retry_after: Some(Duration::from_secs(3600)),
    };
    mailer.then([Answer::Fail(slow_down.clone()), Answer::Fail(slow_down)]);
    let a = engine(&store, &mailer, "a");
    let run = spawn_put(&a, "r1");
    tokio::time::sleep(LEASE / 2 + Duration::from_secs(1)).await;
    assert_each_once(&mailer, 2);
    run.await.unwrap();
}

/// Issue 17.7: an address added to `te_recipients` by whoever may write plugin data is not
/// mailed; the request's real recipients are.
#[tokio::test(start_paused = true)]
async fn an_address_injected_into_stored_recipients_is_not_mailed() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    resumed(
        &store,
        "r1",
        &[(
            "te_recipients",
            "v1:a@example.com,b@example.com,eve@evil.example",
        )],
    );
    engine(&store, &mailer, "a").handle_event(put("r1")).await;
    assert_each_once(&mailer, 2);
    assert!(
        mailer
            .delivered()
            .iter()
            .all(|m| m.to != "eve@evil.example"),
        "{:?}",
        mailer.deliveries()
    );
}

/// A new request is one compare-and-swap to claim and one to record, without a read.
#[tokio::test(start_paused = true)]
async fn a_new_request_costs_two_writes_and_no_read() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let mut req = request("r1");
    req.created = Some(SystemTime::now());
    engine(&store, &mailer, "a")
        .handle_event(WatchEvent::Put(Box::new(req)))
        .await;
    assert_each_once(&mailer, 2);
    assert_eq!((store.reads(), store.writes()), (0, 2));
}

// ---------------------------------------------------------------------------------------------
// Second reader's tests (review-engine): each fails on the change under review.
// ---------------------------------------------------------------------------------------------

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::mail::{MessageId, OutgoingMail};
use crate::teleport::Review;

/// A mailer that hands each mail to a task of its own, as `SmtpMailer` hands it to a pool worker
/// (`send` only waits on a oneshot): dropping the caller's `send` future does not stop the mail.
#[derive(Default)]
struct QueuedMailer {
    /// How long each send takes, in order; then at once.
    delays: Mutex<VecDeque<Duration>>,
    delivered: Arc<Mutex<Vec<(String, String)>>>,
}

impl QueuedMailer {
    fn with_delays(delays: impl IntoIterator<Item = Duration>) -> Arc<Self> {
        let m = Self::default();
        m.delays.lock().unwrap().extend(delays);
        Arc::new(m)
    }

    fn per_message(&self) -> BTreeMap<(String, String), usize> {
        let mut counts = BTreeMap::new();
        for key in self.delivered.lock().unwrap().iter().cloned() {
            *counts.entry(key).or_default() += 1;
        }
        counts
    }
}

#[async_trait::async_trait]
impl Mailer for QueuedMailer {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        let delay = self.delays.lock().unwrap().pop_front().unwrap_or_default();
        let (done, outcome) = tokio::sync::oneshot::channel();
        let delivered = self.delivered.clone();
        let key = (mail.to.clone(), mail.message_id.as_str().to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            delivered.lock().unwrap().push(key);
            let _ = done.send(());
        });
        let _ = outcome.await;
        Ok(mail.message_id.clone())
    }

    async fn health_check(&self) -> Result<(), MailError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "queued"
    }
}

/// What a plugin-data write does, per call, in [`FlakyStore`].
#[derive(Clone, Copy)]
enum Write {
    Pass,
    /// The Auth Service is unreachable for this call.
    Fail,
    /// The call never returns (a hung Auth Service; unary calls have no deadline).
    Hang,
}

/// The shared in-memory store seen through a flaky connection: writes answer as scripted (then
/// pass); reads pass.
struct FlakyStore {
    inner: Arc<MemoryStore>,
    writes: Mutex<VecDeque<Write>>,
}

impl FlakyStore {
    fn new(inner: &Arc<MemoryStore>, writes: impl IntoIterator<Item = Write>) -> Arc<Self> {
        Arc::new(Self {
            inner: inner.clone(),
            writes: Mutex::new(writes.into_iter().collect()),
        })
    }
}

#[async_trait::async_trait]
impl PluginDataStore for FlakyStore {
    async fn get(&self, id: &str) -> Result<Option<RawPluginData>, TeleportError> {
        self.inner.get(id).await
    }

    async fn update(
        &self,
        id: &str,
        set: &RawPluginData,
        expect: &RawPluginData,
    ) -> Result<(), TeleportError> {
        let next = self
            .writes
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Write::Pass);
        match next {
            Write::Pass => self.inner.update(id, set, expect).await,
            Write::Fail => Err(TeleportError::Unavailable("auth unreachable".into())),
            Write::Hang => std::future::pending().await,
        }
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
    let map = BTreeMap::from([(
        "*".to_owned(),
        vec!["a@example.com".to_owned(), "b@example.com".to_owned()],
    )]);
    let routing = Routing {
        recipients: RecipientMap::new(map),
        mailer,
        notify_requester: false,
    };
    Arc::new(Engine::with_store(store, cluster(), routing, policy))
}

fn assert_queued_once(mailer: &QueuedMailer, expected: usize) {
    let counts = mailer.per_message();
    assert!(counts.values().all(|n| *n == 1), "duplicates: {counts:?}");
    assert_eq!(counts.len(), expected, "{counts:?}");
}

/// Plugin data with a thread for a@ only (b@ is not a recipient of this request).
fn threaded(store: &MemoryStore, id: &str, extra: &[(&str, &str)]) {
    let mut raw: RawPluginData = [
        ("user", "alice"),
        ("roles", "editor"),
        ("request_reason", "please"),
        (
            "email_threads",
            "a@example.com/2024-01-01T00:00:00Z/<t.1@example.com>",
        ),
        ("te_recipients", "v1:a@example.com"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        raw.insert(k.to_string(), v.to_string());
    }
    store.put(id, raw);
}

fn reviewed(id: &str, n: usize) -> WatchEvent {
    let mut req = request(id);
    req.reviews = (0..n)
        .map(|i| Review {
            author: format!("reviewer{i}"),
            proposed: RequestState::Approved,
            reason: String::new(),
            created: None,
        })
        .collect();
    WatchEvent::Put(Box::new(req))
}

/// delivery.rs `send_job`: abandoning a send drops its future, but `SmtpMailer::send` only
/// waits for a pool worker, which still sends the mail. Renewal fails twice (an Auth blip), the
/// engine counts b@'s queued mail as not sent, releases the claim, and the next pass sends it
/// again.
#[tokio::test(start_paused = true)]
async fn an_abandoned_send_that_still_goes_out_is_sent_twice() {
    let store = Arc::new(MemoryStore::default());
    resumed(&store, "r1", &[]);
    // Writes: claim, renewal at 10 s (fails), renewal at 20 s (fails), then the rest.
    let flaky = FlakyStore::new(&store, [Write::Pass, Write::Fail, Write::Fail]);
    let mailer = QueuedMailer::with_delays([Duration::ZERO, Duration::from_secs(25)]);
    let a = engine_over(flaky, mailer.clone(), policy("a"));
    a.handle_event(put("r1")).await;
    // The next pass (a reconcile after the Auth blip, or another replica).
    a.handle_event(put("r1")).await;
    tokio::time::sleep(LEASE).await;
    assert_queued_once(&mailer, 2);
}

/// delivery.rs `send_holding_claim`: after a renewal fails twice (no other instance took the
/// request), the round's unsent mail is "left to the instance that holds it": nobody. It is not
/// retried and no ERROR says it was not delivered.
#[tokio::test(start_paused = true)]
async fn a_claim_lost_to_nobody_still_delivers_the_rest() {
    let store = Arc::new(MemoryStore::default());
    resumed(&store, "r1", &[]);
    let flaky = FlakyStore::new(&store, [Write::Pass, Write::Fail, Write::Fail]);
    let mailer = Arc::new(ScriptedMailer::default());
    mailer.then([Answer::Accept, Answer::Slow(Duration::from_secs(25))]);
    let a = engine_over(flaky, mailer.clone(), policy("a"));
    a.handle_event(put("r1")).await;
    assert_each_once(&mailer, 2);
}

/// A renewal that hangs (Auth unresponsive for this replica only) neither blocks the sends nor
/// lets the lease run out under them: the renewal has a deadline, the claim is judged
/// unconfirmed a third of a lease before its end, no further mail is handed over, and the mail
/// in flight is recorded. Another replica arriving after the lease would have run out sends
/// only what was never handed over. (A mail handed over and still in flight when a lease runs
/// out cannot be called back: that window is what the early judgement keeps closed.)
#[tokio::test(start_paused = true)]
async fn a_hung_renewal_stops_handing_over_mail_before_the_lease_runs_out() {
    let store = Arc::new(MemoryStore::default());
    threaded(&store, "r1", &[]);
    // A's first write (the claim) passes; its renewal at 10 s hangs; later writes pass.
    let hung = FlakyStore::new(&store, [Write::Pass, Write::Hang]);
    let mailer = Arc::new(ScriptedMailer::default());
    let slow = Answer::Slow(Duration::from_secs(12));
    mailer.then([slow.clone(), slow.clone(), slow]);
    let a = engine_over(hung, mailer.clone(), policy("a"));
    let b = engine_over(store.clone(), mailer.clone(), policy("b"));
    let (engine, event) = (a.clone(), reviewed("r1", 3));
    let run = tokio::spawn(async move { engine.handle_event(event).await });
    tokio::time::sleep(LEASE + Duration::from_secs(1)).await;
    b.handle_event(reviewed("r1", 3)).await;
    run.await.unwrap();
    assert_each_once(&mailer, 3);
}

/// delivery.rs `record` / stage.rs `Stage::record` (Reviews): progress is added to the count
/// stored *now*, not to where the job started. When the claim was lost and the new holder has
/// recorded its own partial progress, the two are summed and a review nobody sent is marked sent.
#[tokio::test(start_paused = true)]
async fn progress_recorded_after_losing_the_claim_is_not_double_counted() {
    let store = Arc::new(MemoryStore::default());
    threaded(&store, "r1", &[]);
    let mailer = Arc::new(ScriptedMailer::default());
    // a@ is owed reviews 0 and 1: review 0 goes out, review 1 hangs.
    mailer.then([Answer::Accept, Answer::Slow(3 * LEASE)]);
    let a = engine(&store, &mailer, "a");
    let (engine, event) = (a.clone(), reviewed("r1", 2));
    let run = tokio::spawn(async move { engine.handle_event(event).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Another instance took the request (A's lease judged gone), sent review 0 again and failed
    // review 1 for now: it recorded one review for a@ and keeps its claim to retry.
    let mut raw = store.raw("r1").unwrap();
    raw.insert("te_claim".into(), format!("v1:other/{}", now_ms() + 25_000));
    raw.insert("te_reviews_sent".into(), "v1:a@example.com/1".into());
    raw.insert("te_reviews_for".into(), "v1:2".into());
    store.put("r1", raw);
    run.await.unwrap();
    let d = decoded(&store, "r1");
    assert_eq!(
        d.reviews_sent_to("a@example.com"),
        1,
        "review 1 was delivered by nobody, yet is recorded as sent"
    );
}

/// delivery.rs `run_stage`: when the write recording a round fails once (the Auth Service
/// blinks), the error ends the stage: what was delivered is never recorded and the next pass
/// sends it all again.
#[tokio::test(start_paused = true)]
async fn a_failed_record_write_does_not_resend_what_was_delivered() {
    let store = Arc::new(MemoryStore::default());
    resumed(&store, "r1", &[]);
    // Writes: claim passes, the record fails, then all pass.
    let flaky = FlakyStore::new(&store, [Write::Pass, Write::Fail]);
    let mailer = Arc::new(ScriptedMailer::default());
    let a = engine_over(flaky, mailer.clone(), policy("a"));
    a.handle_event(put("r1")).await;
    tokio::time::sleep(LEASE).await;
    a.handle_event(put("r1")).await;
    assert_each_once(&mailer, 2);
}

/// delivery.rs `send_holding_claim` / `pause`: a SIGTERM during a round is not seen until the
/// round ends, and nothing is recorded before it does; when the grace period (15 s) ends the
/// process, a mail delivered seconds before the signal is sent again by the next start.
#[tokio::test(start_paused = true)]
async fn a_mail_delivered_before_a_forced_stop_is_not_sent_again() {
    let store = Arc::new(MemoryStore::default());
    resumed(&store, "r1", &[]);
    let mailer = Arc::new(ScriptedMailer::default());
    // a@ at once; b@'s server is slow (but within its own timeouts).
    mailer.then([Answer::Accept, Answer::Slow(Duration::from_secs(60))]);
    let stop = CancellationToken::new();
    let a = Arc::new(
        Arc::into_inner(engine(&store, &mailer, "a"))
            .unwrap()
            .with_shutdown(stop.clone()),
    );
    let run = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    tokio::time::sleep(crate::shutdown::GRACE_PERIOD).await;
    run.abort(); // the grace period is over: the process exits
    let _ = run.await;
    tokio::time::sleep(LEASE).await;
    engine(&store, &mailer, "restarted")
        .handle_event(put("r1"))
        .await;
    assert_each_once(&mailer, 2);
}

/// delivery.rs `Failures::sort` + plugindata `fail(email, stage)`: one message refused at its
/// end (a 554 at DATA, e.g. a content filter tripping on one review's reason) is recorded as
/// `email/review`, which silences every later review to that recipient too.
#[tokio::test(start_paused = true)]
async fn one_refused_review_does_not_silence_the_later_ones() {
    let store = Arc::new(MemoryStore::default());
    threaded(&store, "r1", &[]);
    let mailer = Arc::new(ScriptedMailer::default());
    mailer.then([Answer::Fail(MailError::Rejected {
        server: "mail:587".into(),
        code: 554,
        reason: "5.6.0 message content rejected".into(),
        step: SmtpStep::Message,
    })]);
    let a = engine(&store, &mailer, "a");
    a.handle_event(reviewed("r1", 1)).await;
    a.handle_event(reviewed("r1", 2)).await;
    let got: Vec<_> = mailer.deliveries();
    assert_eq!(got.len(), 1, "the second review never reached a@: {got:?}");
}

/// mail/smtp/mod.rs `classify` labels every 5xx `SmtpStep::Message`, so a sender refused at
/// `MAIL FROM` (553 here; 530 "authentication required" and a 554 greeting go the same way) is
/// "message specific" and `Failures::sort` writes it into `te_failed` for every recipient of the
/// round: after the operator fixes the sender and reloads, those mails are never sent.
#[cfg(feature = "testkit")]
#[tokio::test]
async fn a_sender_refused_at_mail_from_is_not_written_off_as_the_recipients_failure() {
    use crate::config::{SmtpConfig, StartTlsPolicy};
    use crate::mail::smtp::{SmtpMailer, SmtpOptions};
    use crate::testkit::smtp::{SmtpReceiver, Stage as At};

    let receiver = SmtpReceiver::start().await.unwrap();
    receiver.inject(
        At::MailFrom,
        "553 5.7.1 Sender address rejected: not owned by user",
        1000,
    );
    let config = SmtpConfig {
        host: "127.0.0.1".into(),
        port: receiver.port(),
        username: None,
        password: None,
        starttls: StartTlsPolicy::Disabled,
        implicit_tls: false,
        allow_plaintext_auth: false,
    };
    let mailer = SmtpMailer::new(&config, "noreply@example.com", SmtpOptions::default()).unwrap();
    let store = Arc::new(MemoryStore::default());
    let policy = DeliveryPolicy {
        retry_for: Duration::from_millis(300),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..policy("a")
    };
    let a = engine_over(store.clone(), Arc::new(mailer), policy);
    a.handle_event(put("r1")).await;
    let d = decoded(&store, "r1");
    assert!(
        d.failed.is_empty(),
        "a refused sender recorded as the recipients' own failure: {:?}",
        d.failed
    );
}

/// mod.rs `on_put` / `on_pending`: one recipient's permanent refusal in the new-thread stage
/// makes `run_stage` return `Err`, and `?` skips the later stages of the event for everyone: a@
/// never gets the resolution of an approved request (until a restart or reconnect). The
/// original sends the resolution even when earlier sends failed.
#[tokio::test(start_paused = true)]
async fn one_recipients_refusal_does_not_skip_the_others_resolution() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    mailer.then([Answer::Accept, Answer::Fail(refused_recipient())]);
    let mut req = request("r1");
    req.state = RequestState::Approved;
    engine(&store, &mailer, "a")
        .handle_event(WatchEvent::Put(Box::new(req)))
        .await;
    let to_a = mailer
        .deliveries()
        .into_iter()
        .filter(|(to, _)| to == "a@example.com")
        .count();
    assert_eq!(
        to_a,
        2,
        "a@: new thread and resolution: {:?}",
        mailer.deliveries()
    );
}

/// stage.rs `Stage::record` (Reviews): `before + delivered` on a count read from the plugin data
/// at record time. A count of `usize::MAX` written meanwhile by anyone who may write plugin data
/// panics the handler (debug) or wraps to 0 and resends every review (release).
#[tokio::test(start_paused = true)]
async fn a_hostile_review_count_written_mid_round_does_not_panic() {
    let store = Arc::new(MemoryStore::default());
    threaded(&store, "r1", &[]);
    let mailer = Arc::new(ScriptedMailer::default());
    mailer.then([Answer::Slow(Duration::from_secs(2))]);
    let a = engine(&store, &mailer, "a");
    let (engine, event) = (a.clone(), reviewed("r1", 1));
    let run = tokio::spawn(async move { engine.handle_event(event).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut raw = store.raw("r1").unwrap();
    raw.insert(
        "te_reviews_sent".into(),
        format!("v1:a@example.com/{}", usize::MAX),
    );
    raw.insert("te_reviews_for".into(), "v1:1".into());
    store.put("r1", raw);
    let outcome = run.await;
    assert!(outcome.is_ok(), "the handler panicked: {outcome:?}");
}

// ---------------------------------------------------------------------------------------------
// Second reader's tests (review-watch): each fails on the change under review.
// ---------------------------------------------------------------------------------------------

/// delivery.rs `run_stage` / round.rs `send_round` (the `stopping` branch): at SIGTERM the round
/// records what was delivered and *releases the claim* at once (`record(.., keep = false)`),
/// although a mail it handed over is still in flight (the module's own rule: "once handed over it
/// is waited for"). Another replica polling for the claim (it got the same event) takes the
/// request and sends that mail again; so does a new pod of a rolling update.
#[tokio::test(start_paused = true)]
async fn a_stop_does_not_release_the_claim_while_a_handed_over_mail_is_in_flight() {
    let store = Arc::new(MemoryStore::default());
    resumed(&store, "r1", &[]);
    let mailer = Arc::new(ScriptedMailer::default());
    // One recipient's mail goes at once; the other's is handed over and takes 10 s.
    mailer.then([Answer::Accept, Answer::Slow(Duration::from_secs(10))]);
    let stop = CancellationToken::new();
    let a = Arc::new(
        Arc::into_inner(engine(&store, &mailer, "a"))
            .unwrap()
            .with_shutdown(stop.clone()),
    );
    let b = engine(&store, &mailer, "b");
    let run_a = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // B got the same event: A holds the claim, so B waits for it.
    let run_b = spawn_put(&b, "r1");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel(); // SIGTERM on A, well within the grace period of the slow mail
    run_a.await.unwrap();
    run_b.await.unwrap();
    assert_each_once(&mailer, 2);
}

/// delivery.rs `run_stage` / `claim`: once `stopping` is cancelled, events still queued in the
/// dispatcher (up to 128, and a reconcile's) are handled as usual: each takes a claim and its
/// round may hand mail over (`send_round`'s `select!` polls the sends and the stop in random
/// order). That lengthens the shutdown past the grace period with mail in flight, which the next
/// start then sends again; "the rest is left to the next start" says the field's doc.
#[tokio::test(start_paused = true)]
async fn after_the_stop_no_new_claim_is_taken_and_no_mail_handed_over() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let stop = CancellationToken::new();
    stop.cancel();
    let a = Arc::new(
        Arc::into_inner(engine(&store, &mailer, "a"))
            .unwrap()
            .with_shutdown(stop.clone()),
    );
    for i in 0..UNDECIDED_MAX {
        let id = format!("r{i}");
        resumed(&store, &id, &[]);
        a.handle_event(put(&id)).await;
    }
    assert_eq!(
        mailer.attempts(),
        0,
        "mail handed over after the stop: {:?}",
        mailer.deliveries()
    );
}

/// Review (AMR routing): where the recipients chosen by Access Monitoring Rules differ from the
/// original plugin's (`integrations/access/accessmonitoring/access_monitoring_rules.go`,
/// `lib/accessmonitoring/request_mapping.go`, `api/types/access_request.go`).
mod amr_review {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::super::testing::{MemoryStore, ScriptedMailer};
    use super::*;
    use crate::rules::RuleSet;
    use crate::teleport::pb::types::{AccessRequestSpecV3, AccessRequestV3, Metadata, ResourceId};
    use crate::teleport::{MonitoringRule, TeleportError, Traits};

    const FALLBACK: &str = "all@example.com";

    /// A directory where every user exists and has no traits.
    struct NoTraits;

    #[async_trait::async_trait]
    impl Directory for NoTraits {
        async fn user_traits(&self, _user: &str) -> Result<Traits, TeleportError> {
            Ok(Traits::default())
        }
    }

    fn rule(name: &str, condition: &str, to: &[&str]) -> MonitoringRule {
        MonitoringRule::for_email(name, condition, to)
    }

    fn engine_with(rules: Vec<MonitoringRule>) -> Engine {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let map = BTreeMap::from([("*".to_owned(), vec![FALLBACK.to_owned()])]);
        let set = Arc::new(RuleSet::new("email"));
        set.replace_all(rules);
        Engine::with_store(
            store,
            ClusterInfo {
                name: "cluster".into(),
                server_version: "18.0.0".into(),
                advanced_workflows: false,
                proxy_public_addr: String::new(),
            },
            Routing {
                recipients: RecipientMap::new(map),
                mailer,
                notify_requester: false,
            },
            DeliveryPolicy::default(),
        )
        .with_rules(set, Arc::new(NoTraits))
    }

    fn ts(t: SystemTime) -> prost_types::Timestamp {
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        prost_types::Timestamp {
            seconds: d.as_secs() as i64,
            nanos: 0,
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// v18.0's conditions know nothing of the requested resources (`has_labels` never shipped;
    /// `resource_labels_union`/`_intersection` came in later 18.x releases): such a rule does not
    /// parse, so neither a resource request nor a roles-only one is routed by it, and both go to
    /// `role_to_recipients`, as with the original v18.0. Before, ours accepted `has_labels` and
    /// it was vacuously true for a roles-only request (or a negated one for a resource request),
    /// mailing the rule's recipients.
    #[tokio::test]
    async fn a_rule_on_requested_resources_routes_nothing_as_in_v18_0() {
        let engine = engine_with(vec![
            rule(
                "prod-nodes",
                r#"has_labels(access_request.spec.requested_resources, "env", "prod")"#,
                &["prod-oncall@example.com"],
            ),
            rule(
                "not-prod",
                r#"!has_labels(access_request.spec.requested_resources, "env", "prod")"#,
                &["dev-oncall@example.com"],
            ),
            rule(
                "union",
                r#"access_request.spec.resource_labels_union["env"].contains("dev")"#,
                &["union@example.com"],
            ),
        ]);
        for resources in [Vec::new(), vec!["dev-node-labelled-env-dev"]] {
            let wire = AccessRequestV3 {
                metadata: Some(Metadata {
                    name: "r1".into(),
                    ..Default::default()
                }),
                spec: Some(AccessRequestSpecV3 {
                    user: "alice".into(),
                    roles: vec!["access".into()],
                    requested_resource_i_ds: resources
                        .iter()
                        .map(|name| ResourceId {
                            cluster_name: "cluster".into(),
                            kind: "node".into(),
                            name: (*name).into(),
                            sub_resource_name: String::new(),
                        })
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let req = AccessRequest::from(wire);
            let to = engine.recipients(&req).await;
            assert_eq!(
                to,
                vec![FALLBACK.to_owned()],
                "a rule on the requested resources routed a request naming {resources:?}"
            );
        }
    }

    /// Upstream `access_request.spec.expiry` is `req.Expiry()`: the request resource's expiry
    /// (`spec.resource_expiry`, else `metadata.expires`), not the access expiry `spec.expires`
    /// (`GetAccessExpiry()`), which ours binds (monitoring.rs `expiry: req.expires`).
    #[tokio::test]
    async fn spec_expiry_is_the_request_resource_expiry_as_upstream() {
        // Access would end at t=1000; the pending request itself expires at t=5000.
        let engine = engine_with(vec![rule(
            "long-lived-requests",
            r#"access_request.spec.expiry.after(time.RFC3339("1970-01-01T00:50:00Z"))"#,
            &["long@example.com"],
        )]);
        let wire = AccessRequestV3 {
            metadata: Some(Metadata {
                name: "r2".into(),
                expires: Some(ts(at(5000))),
                ..Default::default()
            }),
            spec: Some(AccessRequestSpecV3 {
                user: "alice".into(),
                roles: vec!["access".into()],
                expires: Some(ts(at(1000))),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = AccessRequest::from(wire.clone());
        assert_eq!(
            engine.recipients(&req).await,
            ["long@example.com"],
            "metadata.expires (t=5000) is after t=3000: the original matches"
        );
        // With resource_expiry set, that is what upstream's Expiry() returns.
        let mut wire = wire;
        if let Some(spec) = wire.spec.as_mut() {
            spec.resource_expiry = Some(ts(at(6000)));
        }
        let req = AccessRequest::from(wire);
        assert_eq!(engine.recipients(&req).await, ["long@example.com"]);
    }

    /// When a rule matches, the original mails its recipients and nobody else, even when none of
    /// them is a valid address (`getRecipients` returns the non-empty rule set; the
    /// FetchRecipientCallback does not validate). Ours drops the invalid ones and, left with none,
    /// mails `role_to_recipients`: people the matching rule does not name.
    #[tokio::test]
    async fn a_matching_rule_with_only_bad_addresses_does_not_fall_back_to_role_to_recipients() {
        let engine = engine_with(vec![rule("dev", "true", &["dev-team", "bob"])]);
        let to = engine.recipients(&super::request("r3")).await;
        assert!(
            !to.contains(&FALLBACK.to_owned()),
            "a matching rule's (unmailable) recipients replaced by role_to_recipients: {to:?}"
        );
    }

    /// Upstream `getRecipients` falls back to `role_to_recipients` when the matching rules give an
    /// empty recipient set (`recipientSet.Len() != 0` check); a rule with `notification.name:
    /// email` and no recipients (e.g. one that exists for `automatic_review`) contributes nothing.
    /// Ours returns `Some(vec![])` for any match (set.rs `out.get_or_insert_with`), so nobody is
    /// mailed.
    #[tokio::test]
    async fn a_matching_rule_without_recipients_falls_back_to_role_to_recipients_as_upstream() {
        let engine = engine_with(vec![rule("no-recipients", "true", &[])]);
        let to = engine.recipients(&super::request("r5")).await;
        assert_eq!(
            to,
            [FALLBACK],
            "a matching rule with no recipients silenced routing"
        );
    }

    /// A directory where no user exists.
    struct NoUsers;

    #[async_trait::async_trait]
    impl Directory for NoUsers {
        async fn user_traits(&self, user: &str) -> Result<Traits, TeleportError> {
            Err(TeleportError::NotFound(format!("user {user:?} not found")))
        }
    }

    /// v18.0's original reads the requester for every request (`getUserTraits`, PR #55101); on
    /// any error (a deleted user, an expired SSO user, Auth unavailable) it WARNs and evaluates
    /// the rules without traits, so a rule that does not need them still routes the request.
    /// (Later 18.x releases, through `GetUserOrLoginState`, fall back to `role_to_recipients`
    /// instead; an earlier review pinned that, before v18.0 was settled on as the target.)
    #[tokio::test]
    async fn a_requester_that_cannot_be_read_is_routed_without_traits_as_v18_0() {
        let set = Arc::new(RuleSet::new("email"));
        set.replace_all(vec![
            rule("all-requests", "true", &["rule@example.com"]),
            rule(
                "team",
                r#"user.traits["team"].contains("x")"#,
                &["team@example.com"],
            ),
        ]);
        let engine = engine_with(vec![]).with_rules(set, Arc::new(NoUsers));
        let to = engine.recipients(&super::request("r4")).await;
        assert_eq!(
            to,
            ["rule@example.com"],
            "v18.0 evaluates without traits when GetUser fails"
        );
    }
}

/// Plugin data in many states a request's mails can be in (complete, partial, failed, the
/// original's), for checking the survey against what the engine really does.
fn survey_states() -> Vec<PluginData> {
    let (a, b) = ("a@example.com".to_owned(), "b@example.com".to_owned());
    let thread = |e: &str| Thread {
        email: e.into(),
        timestamp: "2026-01-01T00:00:00Z".into(),
        message_id: format!("<{e}.new@example.com>"),
    };
    let mut out = Vec::new();
    let intendeds = [
        None,
        Some(vec![a.clone()]),
        Some(vec![a.clone(), b.clone()]),
    ];
    let threadss = [vec![], vec![thread(&a)], vec![thread(&a), thread(&b)]];
    let faileds: [&[&str]; 4] = [
        &[],
        &["b@example.com/new"],
        &["a@example.com/review"],
        &["b@example.com/resolution"],
    ];
    let sents = [
        None,
        Some(vec![]),
        Some(vec![a.clone()]),
        Some(vec![a.clone(), b.clone()]),
    ];
    let reviews_sents = [None, Some(BTreeMap::from([(a.clone(), 1), (b.clone(), 2)]))];
    for intended in &intendeds {
        for threads in &threadss {
            for failed in faileds {
                for reviews_count in 0..=2 {
                    for reviews_sent in &reviews_sents {
                        for (resolution, sent) in (sents.iter().map(|s| (None, s.clone()))).chain(
                            sents
                                .iter()
                                .map(|s| (Some(Resolution::Approved), s.clone())),
                        ) {
                            out.push(PluginData {
                                user: "alice".into(),
                                roles: vec!["editor".into()],
                                request_reason: "please".into(),
                                intended: intended.clone(),
                                threads: threads.clone(),
                                failed: failed.iter().map(|f| f.to_string()).collect(),
                                reviews_count,
                                reviews_sent: reviews_sent.clone(),
                                resolution,
                                resolution_sent: sent,
                                ..Default::default()
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// Finished and unfinished states of the requester's own thread, on reviewers' threads that
/// are complete or not.
fn requester_states() -> Vec<PluginData> {
    let me = "alice@example.com";
    let bases = survey_states().into_iter().filter(|d| {
        d.failed.is_empty()
            && d.reviews_sent.is_none()
            && d.intended.as_ref().is_some_and(|i| i.len() == 2)
    });
    let mut out = Vec::new();
    for base in bases.step_by(3) {
        for requester in [Some(""), Some("?"), Some(me)] {
            for thread in [false, true] {
                for done in [false, true] {
                    for failed in [None, Some("requester"), Some("requester-outcome")] {
                        let mut d = base.clone();
                        d.requester = requester.map(str::to_owned);
                        d.requester_thread = thread.then(|| RequesterThread {
                            email: me.into(),
                            timestamp: "2026-01-01T00:00:00Z".into(),
                            message_id: "<alice.requester@example.com>".into(),
                        });
                        d.requester_done = done;
                        if let Some(stage) = failed {
                            d.fail(me, stage);
                        }
                        out.push(d);
                    }
                }
            }
        }
    }
    out
}

fn with_reviews(id: &str, state: RequestState, reviews: usize) -> AccessRequest {
    let review = |i| Review {
        author: format!("bob{i}"),
        proposed: RequestState::Approved,
        reason: String::new(),
        created: Some(SystemTime::UNIX_EPOCH),
    };
    AccessRequest {
        state,
        user: "alice@example.com".into(),
        reviews: (0..reviews).map(review).collect(),
        ..request(id)
    }
}

/// The survey says "owes nothing" only where the engine, handed the request, neither sends nor
/// writes anything; and it does say so for the states a finished request is left in.
#[tokio::test(start_paused = true)]
async fn the_survey_skips_only_requests_the_engine_would_leave_alone() {
    let mut settled = 0;
    let mut idle_but_handed_over = 0;
    let states = survey_states().into_iter().chain(requester_states());
    for (n, data) in states.enumerate() {
        for state in [RequestState::Pending, RequestState::Approved] {
            for reviews in 0..=2 {
                let id = format!("00000000-0000-4000-8000-{n:012x}");
                let store = Arc::new(MemoryStore::default());
                store.put(
                    &id,
                    data.encode()
                        .into_iter()
                        .filter(|(_, v)| !v.is_empty())
                        .collect(),
                );
                let mailer = Arc::new(ScriptedMailer::default());
                let engine = engine_telling_requester(&store, &mailer, "r1");
                let survey = engine.survey().await.expect("the memory store scans");
                let req = with_reviews(&id, state, reviews);
                let skip = survey.owes_nothing(&req);
                let writes = store.writes();
                engine.handle_event(WatchEvent::Put(Box::new(req))).await;
                let idle = mailer.attempts() == 0 && store.writes() == writes;
                assert!(
                    !skip || idle,
                    "skipped, but the engine acted ({} sends, {} writes) for {state:?} with {reviews} reviews on {data:?}",
                    mailer.attempts(),
                    store.writes() - writes
                );
                settled += usize::from(skip);
                idle_but_handed_over += usize::from(idle && !skip);
            }
        }
    }
    assert!(settled > 500, "only {settled} states were found settled");
    eprintln!("settled {settled}, idle but handed over {idle_but_handed_over}");
}

// ---------------------------------------------------------------------------------------------
// Second reader's tests (review-scan): each fails on the change under review.
// ---------------------------------------------------------------------------------------------

/// A request whose mails are all out, with the claim of a replica that died (lease long over)
/// still stored: the survey skips it, though the engine, handed it, would drop the dead claim.
/// That is the survey's contract — it owes no *mail* — and the claim left behind is nobody's (a
/// claim past its lease is not believed). Found by the second reader, who held the survey to
/// "would change nothing".
#[tokio::test(start_paused = true)]
async fn review_scan_a_dead_claim_on_finished_data_is_skipped_and_owes_no_mail() {
    let (a, b) = ("a@example.com", "b@example.com");
    let thread = |e: &str| Thread {
        email: e.into(),
        timestamp: "2026-01-01T00:00:00Z".into(),
        message_id: format!("<{e}.new@example.com>"),
    };
    let now = super::now_ms();
    let finished = PluginData {
        user: "alice".into(),
        roles: vec!["editor".into()],
        request_reason: "please".into(),
        intended: Some(vec![a.into(), b.into()]),
        threads: vec![thread(a), thread(b)],
        resolution: Some(Resolution::Approved),
        resolution_sent: Some(vec![a.into(), b.into()]),
        claim: Some(Claim {
            owner: "replica-that-died".into(),
            until_ms: now - 60_000,
        }),
        ..Default::default()
    };
    let id = "00000000-0000-4000-8000-00000000c1a1";
    let store = Arc::new(MemoryStore::default());
    store.put(
        id,
        (finished.encode().into_iter())
            .filter(|(_, v)| !v.is_empty())
            .collect(),
    );
    let mailer = Arc::new(ScriptedMailer::default());
    let engine = engine(&store, &mailer, "r1");
    let survey = engine.survey().await.expect("the memory store scans");
    let req = with_reviews(id, RequestState::Approved, 0);
    assert!(survey.owes_nothing(&req), "the survey skips it");
    let writes = store.writes();
    engine.handle_event(WatchEvent::Put(Box::new(req))).await;
    assert_eq!(mailer.attempts(), 0, "no mail was owed");
    let after = decoded(&store, id);
    assert_eq!(
        PluginData {
            claim: None,
            ..after.clone()
        },
        PluginData {
            claim: None,
            ..finished
        },
        "the engine would change nothing but the dead claim ({} writes)",
        store.writes() - writes
    );
}

// ---------------------------------------------------------------------------------------------
// delivery.notify_requester: the requester's own thread.

const REQUESTER: &str = "alice@example.com";

fn by_requester(id: &str, state: RequestState) -> WatchEvent {
    WatchEvent::Put(Box::new(AccessRequest {
        user: REQUESTER.into(),
        state,
        resolve_reason: "go ahead".into(),
        ..request(id)
    }))
}

fn to_requester(mailer: &ScriptedMailer) -> Vec<crate::mail::OutgoingMail> {
    (mailer.delivered().into_iter())
        .filter(|m| m.to == REQUESTER)
        .collect()
}

/// Traits served to the engine: `user` → `email` trait, or a refusal.
struct Emails(Option<&'static str>);

#[async_trait::async_trait]
impl Directory for Emails {
    async fn user_traits(&self, _user: &str) -> Result<crate::teleport::Traits, TeleportError> {
        match self.0 {
            Some(email) => Ok([("email".to_owned(), vec![email.to_owned()])].into()),
            None => Err(TeleportError::AccessDenied("read user".into())),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_requester_gets_a_confirmation_then_the_outcome_in_its_thread_once() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let engine = engine_telling_requester(&store, &mailer, "r1");
    engine
        .handle_event(by_requester("r1", RequestState::Pending))
        .await;
    let mine = to_requester(&mailer);
    assert_eq!(mine.len(), 1, "{:?}", mailer.deliveries());
    let confirmation = &mine[0];
    assert_eq!(
        confirmation.subject,
        "Your Role Request r1 was submitted (cluster)"
    );
    assert!(
        confirmation
            .text
            .contains("Reviewers asked: a@example.com, b@example.com"),
        "{}",
        confirmation.text
    );
    assert!(
        !confirmation.text.contains("tsh request review"),
        "{}",
        confirmation.text
    );
    assert_eq!(
        mailer.delivered().len(),
        3,
        "two reviewers and the requester"
    );

    for _ in 0..2 {
        engine
            .handle_event(by_requester("r1", RequestState::Approved))
            .await;
    }
    let mine = to_requester(&mailer);
    assert_eq!(
        mine.len(),
        2,
        "one confirmation and one outcome: {:?}",
        mine.iter()
            .map(|m| (&m.subject, &m.message_id))
            .collect::<Vec<_>>()
    );
    let outcome = &mine[1];
    assert_eq!(
        outcome.subject,
        "Your Role Request r1 was approved (cluster)"
    );
    assert!(
        outcome.text.contains("APPROVED (go ahead)"),
        "{}",
        outcome.text
    );
    assert_eq!(outcome.in_reply_to.as_ref(), Some(&confirmation.message_id));
    assert_each_once(&mailer, 6);
    let data = decoded(&store, "r1");
    assert_eq!(data.requester.as_deref(), Some(REQUESTER));
    assert!(data.requester_done);
}

#[tokio::test(start_paused = true)]
async fn an_expired_request_tells_its_requester() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let engine = engine_telling_requester(&store, &mailer, "r1");
    engine
        .handle_event(by_requester("r1", RequestState::Pending))
        .await;
    engine
        .handle_event(WatchEvent::Delete { id: "r1".into() })
        .await;
    let mine = to_requester(&mailer);
    assert_eq!(mine.len(), 2);
    assert_eq!(mine[1].subject, "Your Role Request r1 expired (cluster)");
}

/// A requester who is also among the recipients hears as the requester only: no reviewer
/// thread, no review replies (they cannot review their own request).
#[tokio::test(start_paused = true)]
async fn a_requester_among_the_recipients_is_not_mailed_as_a_reviewer() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let engine = engine_telling_requester(&store, &mailer, "r1");
    let mut routing = (*engine.routing()).clone();
    routing.recipients = RecipientMap::new(BTreeMap::from([(
        "*".to_owned(),
        vec![REQUESTER.to_owned(), "b@example.com".to_owned()],
    )]));
    engine.set_routing(routing);
    engine
        .handle_event(by_requester("r1", RequestState::Pending))
        .await;
    let mut reviewed = by_requester("r1", RequestState::Pending);
    if let WatchEvent::Put(r) = &mut reviewed {
        r.reviews = vec![Review {
            author: "bob".into(),
            proposed: RequestState::Approved,
            reason: String::new(),
            created: None,
        }];
    }
    engine.handle_event(reviewed).await;
    let mine = to_requester(&mailer);
    assert_eq!(mine.len(), 1, "{:?}", mailer.deliveries());
    assert!(mine[0].subject.contains("was submitted"));
    assert!(
        mine[0].text.contains("Reviewers asked: b@example.com"),
        "{}",
        mine[0].text
    );
    assert_eq!(
        decoded(&store, "r1").intended,
        Some(vec!["b@example.com".to_owned()])
    );
}

/// A requester whose name is not an address is mailed at their `email` trait; one whose traits
/// may not be read is not mailed, and that is decided once, in the plugin data.
#[tokio::test(start_paused = true)]
async fn a_requester_named_otherwise_is_mailed_at_the_email_trait_or_not_at_all() {
    for (traits, expected) in [(Some("alice@corp.example"), 1), (None, 0)] {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let engine = engine_telling_requester(&store, &mailer, "r1");
        let engine = Arc::new(
            Arc::into_inner(engine)
                .unwrap()
                .with_directory(Arc::new(Emails(traits))),
        );
        engine.handle_event(put("r1")).await; // user "alice"
        let mine: Vec<_> = (mailer.delivered().into_iter())
            .filter(|m| Some(m.to.as_str()) == traits)
            .collect();
        assert_eq!(mine.len(), expected, "{:?}", mailer.deliveries());
        let stored = decoded(&store, "r1").requester;
        assert_eq!(stored.as_deref(), Some(traits.unwrap_or("")));
    }
}

/// Two replicas handling the same new request send the confirmation once.
#[tokio::test(start_paused = true)]
async fn two_replicas_confirm_to_the_requester_once() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let a = engine_telling_requester(&store, &mailer, "a");
    let b = engine_telling_requester(&store, &mailer, "b");
    let event = by_requester("r1", RequestState::Pending);
    let (ea, eb) = (event.clone(), event);
    let (a2, b2) = (a.clone(), b.clone());
    let one = tokio::spawn(async move { a2.handle_event(ea).await });
    let two = tokio::spawn(async move { b2.handle_event(eb).await });
    one.await.unwrap();
    two.await.unwrap();
    assert_eq!(to_requester(&mailer).len(), 1);
    assert_each_once(&mailer, 3);
}

/// Off by default: with an original config, nothing goes to the requester and no requester key
/// is written, so the original plugin can take over the data as it was.
#[tokio::test(start_paused = true)]
async fn the_requester_is_not_mailed_unless_asked() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let engine = engine(&store, &mailer, "r1");
    engine
        .handle_event(by_requester("r1", RequestState::Pending))
        .await;
    engine
        .handle_event(by_requester("r1", RequestState::Approved))
        .await;
    assert!(to_requester(&mailer).is_empty());
    let raw = store.raw("r1").unwrap();
    assert!(
        raw.keys().all(|k| !k.starts_with("te_requester")),
        "{raw:?}"
    );
}
// Second reader (review-class): whose a permanent SMTP refusal is, as the engine acts on it.

/// Refuses every mail to `refused` with `refusal` (counting the tries); delivers the rest.
struct RefusesOne {
    refused: &'static str,
    refusal: MailError,
    tries: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl crate::mail::Mailer for RefusesOne {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        if mail.to == self.refused {
            self.tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(self.refusal.clone());
        }
        Ok(mail.message_id.clone())
    }

    async fn health_check(&self) -> Result<(), MailError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "refuses-one"
    }
}

/// mail/error.rs `refusal_blames_message`: at RCPT TO only 5.1.x/5.2.x are the recipient's.
/// Outlook.com answers a mailbox that does not exist with `550 5.5.0 Requested action not
/// taken: mailbox unavailable`, Exchange Online (directory-based edge blocking) with `550 5.4.1
/// Recipient address rejected: Access denied`. Both are taken for the mailer's: b@ is tried
/// again every 1-10 s for the whole retry period (a WARN each time, and an ERROR telling the
/// operator the server refuses the mailer itself), never recorded in te_failed, and so handed
/// over again, for another retry period, at every reconnect, reload and restart.
#[tokio::test(start_paused = true)]
async fn review_class_a_mailbox_that_does_not_exist_is_tried_once_and_written_off() {
    for reason in [
        "5.5.0 Requested action not taken: mailbox unavailable (S2017062302). [HE1EUR01FT020.eop-EUR01.prod.protection.outlook.com]",
        "5.4.1 Recipient address rejected: Access denied. AS(201806281) [CY4PEPF0000EE3C.namprd03.prod.outlook.com]",
    ] {
        let mailer = Arc::new(RefusesOne {
            refused: "b@example.com",
            refusal: MailError::Rejected {
                server: "mx:25".into(),
                code: 550,
                reason: reason.into(),
                step: SmtpStep::Recipient,
            },
            tries: Default::default(),
        });
        let store = Arc::new(MemoryStore::default());
        let a = engine_over(store.clone(), mailer.clone(), policy("a"));
        let started = tokio::time::Instant::now();
        a.handle_event(put("r1")).await;
        let took = started.elapsed();
        // A reconnect (or a reload) hands the request over again.
        a.handle_event(put("r1")).await;
        let tries = mailer.tries.load(std::sync::atomic::Ordering::SeqCst);
        let d = decoded(&store, "r1");
        assert!(
            tries == 1 && d.failed_at("b@example.com", "new"),
            "{reason}: b@ was tried {tries} times (the first handling took {took:?}); te_failed: {:?}",
            d.failed
        );
    }
}

/// mail/error.rs `refusal_blames_message`: at the message's end a reply without an enhanced
/// code is the message's own. Amazon SES refuses an unverified sender there with `554 Message
/// rejected: Email address is not verified`, SendGrid with `550 The from address does not match
/// a verified Sender Identity`; Office 365 refuses a From the account may not send as with
/// `554 5.2.0 ...SendAsDenied...`. Each is written into te_failed for every recipient: once the
/// operator verifies the sender (or fixes delivery.sender) and reloads, nothing is sent.
#[tokio::test(start_paused = true)]
async fn review_class_a_sender_refused_at_the_end_of_data_is_sent_once_fixed() {
    for (code, reason) in [
        (
            554,
            "Message rejected: Email address is not verified. The following identities failed the check in region US-EAST-1: noreply@example.com",
        ),
        (
            550,
            "The from address does not match a verified Sender Identity. Mail cannot be sent until this error is resolved.",
        ),
        (
            554,
            "5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception with message Cannot submit message.",
        ),
    ] {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        mailer.always(Some(Answer::Fail(MailError::Rejected {
            server: "smtp.example.net:587".into(),
            code,
            reason: reason.into(),
            step: SmtpStep::Message,
        })));
        let a = engine(&store, &mailer, "a");
        a.handle_event(put("r1")).await;
        // The operator fixes the sender and reloads; the reload's reconcile hands it over.
        mailer.always(None);
        a.set_routing(routing(mailer.clone(), &["a@example.com", "b@example.com"]));
        a.handle_event(put("r1")).await;
        let got = mailer.deliveries();
        assert_eq!(
            got.len(),
            2,
            "{code} {reason}: written off as the recipients' own ({:?}); delivered {got:?}",
            decoded(&store, "r1").failed
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Second reader's tests (review-req): delivery.notify_requester. Each fails on the change under
// review (4ec472e, 76a3816).
// ---------------------------------------------------------------------------------------------

mod review_req {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// The WARN lines logged while it lives (on this thread: `#[tokio::test]` runs on one).
    #[derive(Clone, Default)]
    struct Warnings(Arc<Mutex<Vec<String>>>);

    struct Message(String);

    impl tracing::field::Visit for Message {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Warnings {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if *event.metadata().level() == tracing::Level::WARN {
                let mut m = Message(String::new());
                event.record(&mut m);
                self.0.lock().unwrap().push(m.0);
            }
        }
    }

    impl Warnings {
        fn capture(&self) -> tracing::subscriber::DefaultGuard {
            let subscriber = tracing_subscriber::registry().with(self.clone());
            tracing::subscriber::set_default(subscriber)
        }

        fn containing(&self, needle: &str) -> Vec<String> {
            (self.0.lock().unwrap().iter())
                .filter(|m| m.contains(needle))
                .cloned()
                .collect()
        }
    }

    /// Users' traits, scripted per call: counts the calls.
    struct ScriptedUsers {
        calls: AtomicUsize,
        answer: fn(usize) -> Result<crate::teleport::Traits, TeleportError>,
    }

    #[async_trait::async_trait]
    impl Directory for ScriptedUsers {
        async fn user_traits(&self, _user: &str) -> Result<crate::teleport::Traits, TeleportError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            (self.answer)(n)
        }
    }

    fn email_trait(email: &str) -> crate::teleport::Traits {
        [("email".to_owned(), vec![email.to_owned()])].into()
    }

    fn with_directory(engine: Arc<Engine>, directory: Arc<ScriptedUsers>) -> Arc<Engine> {
        Arc::new(Arc::into_inner(engine).unwrap().with_directory(directory))
    }

    fn put_of(req: AccessRequest) -> WatchEvent {
        WatchEvent::Put(Box::new(req))
    }

    fn stored(store: &MemoryStore, id: &str, data: &PluginData) {
        let raw = (data.encode().into_iter())
            .filter(|(_, v)| !v.is_empty())
            .collect();
        store.put(id, raw);
    }

    /// HIGH. `on_delete` runs the reviewers' expiry with `?`: one reviewer whose mailbox is gone
    /// (550, a failure of that reviewer alone) ends the event before the requester is told. The
    /// request is deleted, so no reconcile ever lists it again: the requester never hears.
    #[tokio::test(start_paused = true)]
    async fn review_req_an_expiry_tells_the_requester_even_when_a_reviewer_refuses_it() {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let engine = engine_telling_requester(&store, &mailer, "r1");
        engine
            .handle_event(by_requester("r1", RequestState::Pending))
            .await;
        assert_eq!(to_requester(&mailer).len(), 1, "the confirmation");
        mailer.then([Answer::Fail(refused_recipient())]);
        engine
            .handle_event(WatchEvent::Delete { id: "r1".into() })
            .await;
        let mine = to_requester(&mailer);
        assert_eq!(
            mine.len(),
            2,
            "the requester of an expired request was never told: {:?}",
            mailer.deliveries()
        );
        assert!(mine[1].subject.contains("expired"), "{}", mine[1].subject);
    }

    /// MEDIUM. The requester's address is decided once, when the data is created; a passing
    /// failure to read the user then (Auth restarting, a timeout) yields `None`, which is stored
    /// as "the requester is not mailed" (`te_requester` absent) for good. The next event, with
    /// the user readable again, still sends nothing: the confirmation and the outcome are lost.
    #[tokio::test(start_paused = true)]
    async fn review_req_a_passing_failure_to_read_the_requester_does_not_cost_them_every_mail() {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let directory = Arc::new(ScriptedUsers {
            calls: AtomicUsize::new(0),
            answer: |n| match n {
                0 => Err(TeleportError::Unavailable("auth restarting".into())),
                _ => Ok(email_trait("alice@corp.example")),
            },
        });
        let engine = with_directory(engine_telling_requester(&store, &mailer, "r1"), directory);
        engine.handle_event(put("r1")).await; // user "alice": the read fails, for now
        engine.handle_event(put("r1")).await; // the same request again (a reconcile): it works
        engine
            .handle_event(put_of(AccessRequest {
                state: RequestState::Approved,
                ..request("r1")
            }))
            .await;
        let mine: Vec<_> = (mailer.delivered().into_iter())
            .filter(|m| m.to == "alice@corp.example")
            .map(|m| m.subject)
            .collect();
        assert_eq!(
            mine.len(),
            2,
            "confirmation and outcome, once the user could be read; stored: {:?}",
            decoded(&store, "r1").requester
        );
    }

    /// Open finding (session 5): the requester's address could not be read while the request
    /// was pending (a passing failure), and no later event came before it expired. The delete
    /// carries no request to read the user from, and the outcome needs the confirmation's
    /// thread: the requester never heard of their request at all.
    #[tokio::test(start_paused = true)]
    async fn an_undecided_requester_is_looked_up_and_told_when_the_request_expires() {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let directory = Arc::new(ScriptedUsers {
            calls: AtomicUsize::new(0),
            answer: |n| match n {
                0 => Err(TeleportError::Unavailable("auth restarting".into())),
                _ => Ok(email_trait("alice@corp.example")),
            },
        });
        let engine = with_directory(engine_telling_requester(&store, &mailer, "r1"), directory);
        engine.handle_event(put("r1")).await; // user "alice": the read fails, for now
        assert_eq!(decoded(&store, "r1").requester.as_deref(), Some("?"));
        engine
            .handle_event(WatchEvent::Delete { id: "r1".into() })
            .await;
        let mine: Vec<_> = (mailer.delivered().into_iter())
            .filter(|m| m.to == "alice@corp.example")
            .map(|m| m.subject)
            .collect();
        assert_eq!(mine.len(), 2, "confirmation, then the outcome: {mine:?}");
        assert!(mine[1].contains("expired"), "{mine:?}");
        // Told once: the same delete again (a replica, a retry) sends nothing more.
        engine
            .handle_event(WatchEvent::Delete { id: "r1".into() })
            .await;
        let again = (mailer.delivered().into_iter())
            .filter(|m| m.to == "alice@corp.example")
            .count();
        assert_eq!(again, 2);
    }

    /// MEDIUM. The confirmation goes only to the stored address if it is still the requester's
    /// today; the outcome goes to whatever `te_requester` says, unchecked. Whoever may write the
    /// `email` plugin's data (another plugin's role) points it at their own mailbox, or at a
    /// comma list (Mailgun's `to` takes a list; only CR/LF are removed from it), and receives
    /// the request's outcome, user, roles and reasons.
    #[tokio::test(start_paused = true)]
    async fn review_req_the_outcome_goes_to_no_address_a_plugin_data_writer_planted() {
        for planted in [
            "mallory@evil.example",
            "alice@example.com,mallory@evil.example",
        ] {
            let store = Arc::new(MemoryStore::default());
            let mailer = Arc::new(ScriptedMailer::default());
            let engine = engine_telling_requester(&store, &mailer, "r1");
            engine
                .handle_event(by_requester("r1", RequestState::Pending))
                .await;
            let mut raw = store.raw("r1").unwrap();
            raw.insert("te_requester".into(), format!("v1:{planted}"));
            store.put("r1", raw);
            engine
                .handle_event(by_requester("r1", RequestState::Approved))
                .await;
            let strays: Vec<_> = (mailer.delivered().into_iter())
                .filter(|m| m.to.contains("mallory"))
                .map(|m| (m.to, m.subject))
                .collect();
            assert!(strays.is_empty(), "mailed to a planted address: {strays:?}");
        }
    }

    /// MEDIUM. The requester's outcome takes its tag from the event, the reviewers' from the
    /// data. An approval whose requester mail could not go out (mail server down past
    /// `retry_timeout`) is followed, when the approved request is deleted, by "Your Role Request
    /// … expired" to the requester, while the reviewers are told APPROVED.
    #[tokio::test(start_paused = true)]
    async fn review_req_a_deleted_approved_request_is_not_told_to_its_requester_as_expired() {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let engine = engine_telling_requester(&store, &mailer, "r1");
        engine
            .handle_event(by_requester("r1", RequestState::Pending))
            .await;
        mailer.always(Some(Answer::Fail(connection_refused())));
        engine
            .handle_event(by_requester("r1", RequestState::Approved))
            .await;
        mailer.always(None);
        engine
            .handle_event(WatchEvent::Delete { id: "r1".into() })
            .await;
        let reviewer: Vec<_> = (mailer.delivered().into_iter())
            .filter(|m| m.to == "a@example.com")
            .collect();
        assert!(
            reviewer.last().unwrap().text.contains("APPROVED"),
            "the reviewers are told it was approved"
        );
        let mine = to_requester(&mailer);
        assert_eq!(mine.len(), 2);
        assert!(
            mine[1].subject.contains("was approved"),
            "the requester is told: {:?}",
            mine[1].subject
        );
    }

    /// LOW-MEDIUM. Turned off again, the feature leaves `te_requester` in the data of every
    /// request it touched; the survey counts the requester's mails as owed whatever the config
    /// says, so every such request (finished for the engine that is running) is handed over at
    /// every reconcile, for as long as the request lives.
    #[tokio::test(start_paused = true)]
    async fn review_req_with_the_feature_off_the_survey_settles_what_the_engine_leaves_alone() {
        let (a, b) = ("a@example.com", "b@example.com");
        let thread = |e: &str| Thread {
            email: e.into(),
            timestamp: "2026-01-01T00:00:00Z".into(),
            message_id: format!("<{e}.new@example.com>"),
        };
        let base = PluginData {
            user: REQUESTER.into(),
            roles: vec!["editor".into()],
            request_reason: "please".into(),
            intended: Some(vec![a.into(), b.into()]),
            threads: vec![thread(a), thread(b)],
            requester: Some(REQUESTER.into()),
            ..Default::default()
        };
        let confirmed = Some(RequesterThread {
            email: REQUESTER.into(),
            timestamp: "2026-01-01T00:00:00Z".into(),
            message_id: "<alice.requester@example.com>".into(),
        });
        let cases = [
            // Pending; the confirmation never went out (it gave up, or the feature went off).
            (RequestState::Pending, base.clone()),
            // Approved while the feature was off: the outcome will never be sent.
            (
                RequestState::Approved,
                PluginData {
                    requester_thread: confirmed,
                    resolution: Some(Resolution::Approved),
                    resolution_sent: Some(vec![a.into(), b.into()]),
                    ..base.clone()
                },
            ),
        ];
        let mut handed_over = Vec::new();
        for (n, (state, data)) in cases.into_iter().enumerate() {
            let id = format!("00000000-0000-4000-8000-00000000f0f{n}");
            let store = Arc::new(MemoryStore::default());
            stored(&store, &id, &data);
            let mailer = Arc::new(ScriptedMailer::default());
            let engine = engine(&store, &mailer, "r1"); // notify_requester = false
            let survey = engine.survey().await.expect("the memory store scans");
            let req = with_reviews(&id, state, 0);
            let writes = store.writes();
            engine.handle_event(put_of(req.clone())).await;
            assert!(
                mailer.attempts() == 0 && store.writes() == writes,
                "the engine leaves it alone"
            );
            if !survey.owes_nothing(&req) {
                handed_over.push(state);
            }
        }
        assert!(
            handed_over.is_empty(),
            "handed over at every reconcile while the feature is off: {handed_over:?}"
        );
    }

    /// LOW. "Read once per request, with a clear WARN": the user is read (and, refused, the WARN
    /// logged) at every event and every reconcile of the request, because `requester_owed` trusts
    /// only our cached last write, which a stage that owes nothing drops. A refusal is not
    /// remembered by the traits cache either.
    #[tokio::test(start_paused = true)]
    async fn review_req_a_user_that_may_not_be_read_is_read_and_warned_about_once() {
        let warnings = Warnings::default();
        let _guard = warnings.capture();
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let directory = Arc::new(ScriptedUsers {
            calls: AtomicUsize::new(0),
            answer: |_| Err(TeleportError::AccessDenied("read user".into())),
        });
        let engine = with_directory(
            engine_telling_requester(&store, &mailer, "r1"),
            directory.clone(),
        );
        // Created; handed over again by two reconciles; approved.
        for _ in 0..3 {
            engine.handle_event(put("r1")).await;
        }
        engine
            .handle_event(put_of(AccessRequest {
                state: RequestState::Approved,
                ..request("r1")
            }))
            .await;
        assert_eq!(decoded(&store, "r1").requester.as_deref(), Some(""));
        let warned = warnings.containing("may not read users");
        assert_eq!(
            (directory.calls.load(Ordering::SeqCst), warned.len()),
            (1, 1),
            "(GetUser calls, WARNs) for one request"
        );
    }

    /// LOW. A requester whose confirmation is owed but whose address today differs (trait
    /// changed, user deleted, Auth briefly unreachable) gets a WARN suggesting tampered data at
    /// every event and every reconcile, forever: nothing is recorded, so the survey never
    /// settles the request (a deleted user also gets a second WARN per event, "Cannot read the
    /// requester's `email` trait").
    #[tokio::test(start_paused = true)]
    async fn review_req_a_requester_gone_since_is_warned_about_once_not_at_every_reconcile() {
        let warnings = Warnings::default();
        let _guard = warnings.capture();
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let directory = Arc::new(ScriptedUsers {
            calls: AtomicUsize::new(0),
            answer: |_| Err(TeleportError::NotFound("user \"alice\" not found".into())),
        });
        let (a, b) = ("a@example.com", "b@example.com");
        let thread = |e: &str| Thread {
            email: e.into(),
            timestamp: "2026-01-01T00:00:00Z".into(),
            message_id: format!("<{e}.new@example.com>"),
        };
        let id = "00000000-0000-4000-8000-0000000a11ce";
        stored(
            &store,
            id,
            &PluginData {
                user: "alice".into(),
                roles: vec!["editor".into()],
                request_reason: "please".into(),
                intended: Some(vec![a.into(), b.into()]),
                threads: vec![thread(a), thread(b)],
                requester: Some("alice@corp.example".into()),
                ..Default::default()
            },
        );
        let engine = with_directory(
            engine_telling_requester(&store, &mailer, "r1"),
            directory.clone(),
        );
        for _ in 0..3 {
            let survey = engine.survey().await.expect("the memory store scans");
            let req = request(id);
            if !survey.owes_nothing(&req) {
                engine.handle_event(put_of(req)).await;
            }
        }
        assert_eq!(mailer.attempts(), 0);
        let warned = warnings.containing("does not have today");
        assert!(
            warned.len() <= 1,
            "{} WARNs over three reconciles: {warned:?}",
            warned.len()
        );
    }

    /// LOW. The requester is taken out of the reviewers by exact string comparison: listed as
    /// `alice@Example.com` in `role_to_recipients` (a domain's case means nothing), the SSO user
    /// `alice@example.com` gets the reviewer's mail, review commands and all, beside their
    /// confirmation.
    #[tokio::test(start_paused = true)]
    async fn review_req_a_requester_listed_in_another_case_is_not_mailed_as_a_reviewer() {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let engine = engine_telling_requester(&store, &mailer, "r1");
        let mut routing = (*engine.routing()).clone();
        routing.recipients = RecipientMap::new(BTreeMap::from([(
            "*".to_owned(),
            vec!["alice@Example.com".to_owned(), "b@example.com".to_owned()],
        )]));
        engine.set_routing(routing);
        engine
            .handle_event(by_requester("r1", RequestState::Pending))
            .await;
        let as_reviewer: Vec<_> = (mailer.delivered().into_iter())
            .filter(|m| m.to.eq_ignore_ascii_case(REQUESTER) && m.to != REQUESTER)
            .map(|m| (m.to, m.subject))
            .collect();
        assert!(
            as_reviewer.is_empty(),
            "the requester was also mailed as a reviewer: {as_reviewer:?}"
        );
    }
    /// Second reader (review-last), engine/mod.rs `on_pending`: with the requester undecided
    /// (`?`, a passing GetUser failure at creation) nobody is taken out of the reviewers, so a
    /// requester who is also a recipient gets the reviewer's mail ("review this request") and,
    /// at the next event, the requester's confirmation too: mailed as both, which the README
    /// rules out ("a requester who is also a recipient is mailed as the requester only").
    #[tokio::test(start_paused = true)]
    async fn review_last_an_undecided_requester_among_the_recipients_is_not_mailed_as_a_reviewer() {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let directory = Arc::new(ScriptedUsers {
            calls: AtomicUsize::new(0),
            answer: |n| match n {
                0 => Err(TeleportError::Unavailable("auth restarting".into())),
                _ => Ok(email_trait("alice@corp.example")),
            },
        });
        let engine = with_directory(engine_telling_requester(&store, &mailer, "r1"), directory);
        let mut routing = (*engine.routing()).clone();
        routing.recipients = RecipientMap::new(BTreeMap::from([(
            "*".to_owned(),
            vec!["alice@corp.example".to_owned(), "b@example.com".to_owned()],
        )]));
        engine.set_routing(routing);
        engine.handle_event(put("r1")).await; // user "alice": the read fails, for now
        engine.handle_event(put("r1")).await; // a reconcile: it works
        let mine: Vec<_> = (mailer.delivered().into_iter())
            .filter(|m| m.to == "alice@corp.example")
            .map(|m| m.subject)
            .collect();
        // Decided (author's fix): whoever the requester is cannot be told while their address
        // cannot be read, so the reviewers' threads go out; once it can, a requester who already
        // has a reviewer's thread hears through it only — once, not twice.
        assert_eq!(
            mine.len(),
            1,
            "the requester is mailed as a reviewer and as the requester: {mine:?}"
        );
    }
    /// Second reader (review-last), engine/monitoring.rs `Users::traits`: the "fresh" flag is
    /// spent by whichever caller reads first. With rules loaded, `rule_recipients` reads the
    /// requester's traits first and logs the rules' WARN; `requester_address` then gets the
    /// remembered refusal and logs nothing, so the operator is never told that the requester
    /// (whose name is not an address) is not mailed and that `delivery.notify_requester` does
    /// nothing for them.
    #[tokio::test(start_paused = true)]
    async fn review_last_a_refused_user_read_still_warns_that_the_requester_is_not_mailed() {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let set = Arc::new(crate::rules::RuleSet::new("email"));
        set.replace_all(vec![crate::teleport::MonitoringRule::for_email(
            "all-requests",
            "true",
            &["rule@example.com"],
        )]);
        let engine = engine_telling_requester(&store, &mailer, "r1");
        let engine = Arc::into_inner(engine)
            .unwrap()
            .with_rules(set, Arc::new(Emails(None)));
        let warnings = Warnings::default();
        let _guard = warnings.capture();
        engine.handle_event(put("r1")).await; // user "alice": not an address, may not be read
        assert_eq!(
            warnings.containing("Cannot mail the requester").len(),
            1,
            "no WARN says the requester is not mailed; WARNs: {:?}",
            warnings.0.lock().unwrap()
        );
    }

    /// Review 2, finding E1 (MEDIUM; src/engine/mod.rs:440-462 `confirm_undecided`). On a
    /// delete the requester is looked up by the `user` field of the plugin data, a field anyone
    /// who may write the `email` plugin's data can change (the request itself is gone, so it is
    /// not checked against anything). Every other requester mail is addressed from the request's
    /// own user, and the stored address is only trusted when it is still that user's today
    /// (`review_req_the_outcome_goes_to_no_address_a_plugin_data_writer_planted`). Here the
    /// stored `user` is changed to another person's address while the requester is undecided:
    /// when the request expires that person is sent the "your request" confirmation and the
    /// outcome, with the request's roles and reason.
    #[tokio::test(start_paused = true)]
    async fn review2_an_expiry_mails_no_requester_the_plugin_data_alone_names() {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let directory = Arc::new(ScriptedUsers {
            calls: AtomicUsize::new(0),
            answer: |_| Err(TeleportError::Unavailable("auth restarting".into())),
        });
        let engine = with_directory(engine_telling_requester(&store, &mailer, "r1"), directory);
        engine.handle_event(put("r1")).await; // user "alice": cannot be read for now
        assert!(decoded(&store, "r1").requester_undecided());
        // Another writer of the plugin's data names someone else as the request's user.
        let mut raw = store.raw("r1").unwrap();
        raw.insert("user".into(), "victim@elsewhere.example".into());
        store.put("r1", raw);
        engine
            .handle_event(WatchEvent::Delete { id: "r1".into() })
            .await;
        let strays: Vec<_> = (mailer.delivered().into_iter())
            .filter(|m| m.to.contains("victim"))
            .map(|m| (m.to, m.subject))
            .collect();
        assert!(
            strays.is_empty(),
            "mailed as the requester of a request they never made: {strays:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// delivery.reminder_interval: reminders of pending requests.

const HOUR: Duration = Duration::from_secs(3600);

fn aged(id: &str, age: Duration, reviewed_by: &[&str]) -> AccessRequest {
    let review = |author: &&str| Review {
        author: author.to_string(),
        proposed: RequestState::Approved,
        reason: String::new(),
        created: None,
    };
    AccessRequest {
        created: Some(SystemTime::now() - age),
        reviews: reviewed_by.iter().map(review).collect(),
        ..request(id)
    }
}

fn reminders_to(mailer: &ScriptedMailer) -> Vec<(String, String)> {
    (mailer.delivered().into_iter())
        .filter(|m| m.text.starts_with("Reminder "))
        .map(|m| (m.to, m.text.lines().next().unwrap_or_default().to_owned()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_reminder_goes_to_each_reviewer_who_has_not_reviewed_once_per_round() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let engine = engine(&store, &mailer, "r1");
    engine.handle_event(put("r1")).await;
    // Two hours and a bit later, a@ has reviewed (without deciding): round 2 of 3 to b@ only.
    let req = aged("r1", 2 * HOUR + Duration::from_secs(60), &["a@example.com"]);
    engine.remind(&req, HOUR, 3).await.unwrap();
    engine.remind(&req, HOUR, 3).await.unwrap();
    let sent = reminders_to(&mailer);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, "b@example.com");
    assert!(sent[0].1.starts_with("Reminder 2 of 3"), "{sent:?}");
    let reminder = (mailer.delivered().into_iter()).find(|m| m.text.starts_with("Reminder"));
    assert!(
        reminder.unwrap().in_reply_to.is_some(),
        "in the reviewer's thread"
    );
    // Ten hours on: the last round (3), once.
    let later = aged("r1", 10 * HOUR, &["a@example.com"]);
    engine.remind(&later, HOUR, 3).await.unwrap();
    engine.remind(&later, HOUR, 3).await.unwrap();
    assert_eq!(reminders_to(&mailer).len(), 2);
    assert_each_once(&mailer, 4);
}

#[tokio::test(start_paused = true)]
async fn no_reminder_before_the_interval_nor_for_a_resolved_request() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let engine = engine(&store, &mailer, "r1");
    engine.handle_event(put("r1")).await;
    let young = aged("r1", HOUR / 2, &[]);
    engine.remind(&young, HOUR, 3).await.unwrap();
    let approved = AccessRequest {
        state: RequestState::Approved,
        ..aged("r1", 2 * HOUR, &[])
    };
    engine
        .handle_event(WatchEvent::Put(Box::new(approved.clone())))
        .await;
    let pending_copy = aged("r1", 2 * HOUR, &[]);
    engine.remind(&pending_copy, HOUR, 3).await.unwrap();
    assert!(
        reminders_to(&mailer).is_empty(),
        "{:?}",
        reminders_to(&mailer)
    );
}

/// Two replicas whose clocks fire for the same round at once send it once; a restarted one
/// (a fresh engine on the same data) does not send it again.
#[tokio::test(start_paused = true)]
async fn two_replicas_and_a_restart_send_each_reminder_once() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let a = engine(&store, &mailer, "a");
    let b = engine(&store, &mailer, "b");
    a.handle_event(put("r1")).await;
    let req = aged("r1", HOUR + Duration::from_secs(5), &[]);
    let (a2, b2, r1, r2) = (a.clone(), b.clone(), req.clone(), req.clone());
    let one = tokio::spawn(async move { a2.remind(&r1, HOUR, 3).await });
    let two = tokio::spawn(async move { b2.remind(&r2, HOUR, 3).await });
    one.await.unwrap().unwrap();
    two.await.unwrap().unwrap();
    engine(&store, &mailer, "restarted")
        .remind(&req, HOUR, 3)
        .await
        .unwrap();
    assert_eq!(reminders_to(&mailer).len(), 2, "a@ and b@, once each");
    assert_each_once(&mailer, 4);
    assert_eq!(decoded(&store, "r1").reminders, 1);
}

// ---------------------------------------------------------------------------------------------
// Review tests (review-rem): reminders.

/// The reminders delivered (by their first line, whatever their subject): (to, first line).
fn review_rem_reminders(mailer: &ScriptedMailer) -> Vec<(String, String)> {
    (mailer.delivered().into_iter())
        .filter(|m| m.text.starts_with("Reminder "))
        .map(|m| (m.to, m.text.lines().next().unwrap_or_default().to_owned()))
        .collect()
}

/// A reminder whose first send fails keeps the claim through its retries, so an approval that
/// another replica handles meanwhile cannot record the resolution (Busy); the retry then mails
/// "still waiting for a review" after the request was approved (and holds the resolution mail
/// back until it is done).
#[tokio::test(start_paused = true)]
async fn review_rem_a_reminder_retried_across_an_approval_is_not_sent() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let engine = engine(&store, &mailer, "a");
    let other = self::engine(&store, &mailer, "b");
    engine.handle_event(put("r1")).await;
    mailer.then([
        Answer::Fail(connection_refused()),
        Answer::Fail(connection_refused()),
    ]);
    let req = aged("r1", HOUR + Duration::from_secs(60), &[]);
    let reminding = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.remind(&req, HOUR, 3).await })
    };
    // The first attempt has failed; the reminder waits to retry, holding the claim.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let approved = AccessRequest {
        state: RequestState::Approved,
        ..aged("r1", HOUR + Duration::from_secs(60), &[])
    };
    let resolving = {
        let engine = other.clone();
        tokio::spawn(async move {
            engine
                .handle_event(WatchEvent::Put(Box::new(approved)))
                .await
        })
    };
    let reminded = reminding.await.unwrap();
    resolving.await.unwrap();
    let _ = reminded;
    assert!(
        review_rem_reminders(&mailer).is_empty(),
        "reminders mailed after the approval came: {:?}",
        review_rem_reminders(&mailer)
    );
}

/// "until the request is resolved or expires": a pending request past its own expiry (Teleport
/// deletes it a little later) is not reminded.
#[tokio::test(start_paused = true)]
async fn review_rem_no_reminder_for_a_request_past_its_expiry() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let engine = engine(&store, &mailer, "r1");
    engine.handle_event(put("r1")).await;
    let req = AccessRequest {
        request_expires: Some(SystemTime::now() - Duration::from_secs(60)),
        ..aged("r1", 2 * HOUR, &[])
    };
    engine.remind(&req, HOUR, 3).await.unwrap();
    assert!(
        review_rem_reminders(&mailer).is_empty(),
        "{:?}",
        review_rem_reminders(&mailer)
    );
}

/// The requester among the recipients (a team list that includes them) has a thread, but cannot
/// review their own request: they are not reminded to.
#[tokio::test(start_paused = true)]
async fn review_rem_the_requester_is_not_reminded_to_review_their_own_request() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let engine = engine(&store, &mailer, "r1");
    let mine = |age| AccessRequest {
        user: "A@example.com".into(),
        ..aged("r1", age, &[])
    };
    engine
        .handle_event(WatchEvent::Put(Box::new(mine(Duration::ZERO))))
        .await;
    engine
        .remind(&mine(HOUR + Duration::from_secs(60)), HOUR, 3)
        .await
        .unwrap();
    let to: Vec<String> = review_rem_reminders(&mailer)
        .into_iter()
        .map(|(to, _)| to)
        .collect();
    assert_eq!(to, ["b@example.com"]);
}

/// A reminder is a reply in the reviewer's thread; a different subject ("Reminder: …") splits
/// the conversation in clients that thread by subject too (Gmail, Outlook), unlike the review
/// and resolution replies, which keep the thread's subject.
#[tokio::test(start_paused = true)]
async fn review_rem_a_reminder_keeps_the_threads_subject() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let engine = engine(&store, &mailer, "r1");
    engine.handle_event(put("r1")).await;
    let first = mailer.delivered()[0].subject.clone();
    engine
        .remind(&aged("r1", HOUR + Duration::from_secs(60), &[]), HOUR, 3)
        .await
        .unwrap();
    let delivered = mailer.delivered();
    let reminder = delivered.iter().find(|m| m.in_reply_to.is_some()).unwrap();
    let bare = |s: &str| s.trim_start_matches("Re: ").to_owned();
    assert_eq!(bare(&reminder.subject), bare(&first));
}

// ---------------------------------------------------------------------------------------------
// Second reader's tests (review-rem2): reminders after "Review fixes (reminders)". Each fails on
// 7cf3c57.
// ---------------------------------------------------------------------------------------------

mod review_rem2 {
    use std::sync::Mutex;

    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// The log lines at `level` logged while it lives (this thread: paused tests run on one).
    #[derive(Clone)]
    struct Lines(Arc<Mutex<Vec<String>>>, tracing::Level);

    struct Message(String);

    impl tracing::field::Visit for Message {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Lines {
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

    impl Lines {
        fn at(level: tracing::Level) -> Self {
            Self(Arc::default(), level)
        }

        fn capture(&self) -> tracing::subscriber::DefaultGuard {
            let subscriber = tracing_subscriber::registry().with(self.clone());
            tracing::subscriber::set_default(subscriber)
        }

        fn all(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    const DUE: Duration = Duration::from_secs(3600 + 60);

    /// The watcher handles one request's events one at a time, but the reminders' loop is not
    /// part of that: a reminder runs beside the event being handled for the same request, in
    /// the same process, under the same claim owner (`Holder::Us`, not Busy). It claims over
    /// the event's claim and, done, releases it (`record(.., keep = false)`) while the event's
    /// stage is still sending. The other replica, waiting on that claim for the same event,
    /// then takes it and sends the same review mail again: a reviewer mailed twice.
    #[tokio::test(start_paused = true)]
    async fn review_rem2_a_reminder_does_not_release_the_claim_of_a_stage_under_way_in_the_same_process()
     {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let a = engine(&store, &mailer, "a");
        let b = engine(&store, &mailer, "b");
        a.handle_event(put("r1")).await; // a@ and b@ get their threads
        // A review by someone else comes; replica a's first review mail is slow to go.
        let reviewed = aged("r1", DUE, &["c@example.com"]);
        mailer.then([Answer::Slow(Duration::from_secs(20))]);
        let on_a = {
            let (a, req) = (a.clone(), reviewed.clone());
            tokio::spawn(async move { a.handle_event(WatchEvent::Put(Box::new(req))).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Replica b has the same event: it waits on a's claim.
        let on_b = {
            let (b, req) = (b.clone(), reviewed.clone());
            tokio::spawn(async move { b.handle_event(WatchEvent::Put(Box::new(req))).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Replica a's reminders' loop: this request's round falls due now.
        a.remind(&reviewed, HOUR, 3).await.unwrap();
        on_a.await.unwrap();
        on_b.await.unwrap();
        let counts = per_message(&mailer);
        assert!(
            counts.values().all(|n| *n == 1),
            "a mail sent twice: {counts:?}"
        );
    }

    /// A reminder is tried once (zero retry window), and that window also bounds the wait for
    /// a claim held by someone else: a Busy claim makes the reminder give up at once, leaving
    /// the round "to the holder" — who may be doing another stage, or be dead. After a crash the
    /// restarted daemon finds the dead instance's claim (up to a lease) on exactly the requests
    /// it was working on; their round (the one the restart looks at "in case it went unsent")
    /// is dropped, for good when it is the last one. The claim runs out within the lease.
    #[tokio::test(start_paused = true)]
    async fn review_rem2_a_reminder_waits_out_a_dead_instances_claim() {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        engine(&store, &mailer, "dead")
            .handle_event(put("r1"))
            .await;
        // It crashed while holding the request (e.g. mid-review): its claim stays a lease.
        let mut left = decoded(&store, "r1");
        left.claim = Some(Claim {
            owner: "dead".into(),
            until_ms: crate::engine::now_ms() + LEASE.as_millis() as u64,
        });
        store.put(
            "r1",
            (left.encode().into_iter())
                .filter(|(_, v)| !v.is_empty())
                .collect(),
        );
        let restarted = engine(&store, &mailer, "restarted");
        restarted
            .remind(
                &aged("r1", 3 * HOUR + Duration::from_secs(60), &[]),
                HOUR,
                3,
            )
            .await
            .unwrap();
        let sent = reminders_to(&mailer);
        assert_eq!(
            sent.len(),
            2,
            "the last round (3 of 3) given up for a claim that ran out {LEASE:?} later: {sent:?}"
        );
    }

    /// Two replicas' clocks fire for the same round at the same moment (the boundary is computed
    /// from the request alone): one sends, the other finds its claim. That is the normal case
    /// of every round of every request in a replicated deployment, yet the loser WARNs that
    /// "another instance has held the request's claim for the whole retry period" (it waited
    /// for nothing: the window is zero).
    #[tokio::test(start_paused = true)]
    async fn review_rem2_the_replica_that_loses_the_reminder_race_does_not_warn() {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let a = engine(&store, &mailer, "a");
        let b = engine(&store, &mailer, "b");
        a.handle_event(put("r1")).await;
        mailer.then([Answer::Slow(Duration::from_secs(1))]);
        let req = aged("r1", DUE, &[]);
        let warnings = Lines::at(tracing::Level::WARN);
        let _guard = warnings.capture();
        let one = {
            let (a, req) = (a.clone(), req.clone());
            tokio::spawn(async move { a.remind(&req, HOUR, 3).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.remind(&req, HOUR, 3).await.unwrap();
        one.await.unwrap().unwrap();
        assert_eq!(reminders_to(&mailer).len(), 2, "sent once, by a");
        assert!(
            warnings.all().is_empty(),
            "WARN for the ordinary race: {:?}",
            warnings.all()
        );
    }

    /// A reminder that fails for a passing reason is not retried: the next round is its retry
    /// (README). The ERROR says the opposite of what happens: "giving up until the next
    /// reload, restart or reconnect" (neither a reload nor a reconnect retries it: `track` of a
    /// held request changes nothing) with `retried_for` = the whole retry period, though it was
    /// tried once.
    #[tokio::test(start_paused = true)]
    async fn review_rem2_a_failed_reminder_says_the_next_round_retries_it() {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let engine = engine(&store, &mailer, "r1");
        engine.handle_event(put("r1")).await;
        mailer.then([
            Answer::Fail(connection_refused()),
            Answer::Fail(connection_refused()),
        ]);
        let errors = Lines::at(tracing::Level::ERROR);
        let _guard = errors.capture();
        let _ = engine.remind(&aged("r1", DUE, &[]), HOUR, 3).await;
        let misleading: Vec<String> = (errors.all().into_iter())
            .filter(|m| m.contains("reload, restart or reconnect"))
            .collect();
        assert!(
            misleading.is_empty(),
            "a reminder's failure logged as waiting for a reload: {misleading:?}"
        );
    }

    /// "The requester is never reminded": only a requester whose user name is their address,
    /// or whose address was stored for `notify_requester`, is left out. A requester `alice`
    /// whose `email` trait is a@example.com, a recipient (a team list), is reminded to review
    /// her own request (which she cannot).
    #[tokio::test(start_paused = true)]
    async fn review_rem2_a_requester_known_by_her_email_trait_is_not_reminded() {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let engine = engine(&store, &mailer, "r1");
        let engine = Arc::into_inner(engine)
            .unwrap()
            .with_directory(Arc::new(Emails(Some("a@example.com"))));
        engine.handle_event(put("r1")).await; // user "alice"
        engine.remind(&aged("r1", DUE, &[]), HOUR, 3).await.unwrap();
        let to: Vec<String> = reminders_to(&mailer)
            .into_iter()
            .map(|(to, _)| to)
            .collect();
        assert_eq!(
            to,
            ["b@example.com"],
            "alice reminded to review her own request"
        );
    }
}

/// Second read of the per-request lock and the reminders' holder deadline.
mod review_lock {
    use std::sync::Mutex;

    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const DUE: Duration = Duration::from_secs(3600 + 60);

    /// WARN lines logged while the guard lives (paused tests run on one thread).
    #[derive(Clone, Default)]
    struct Warns(Arc<Mutex<Vec<String>>>);

    struct Message(String);

    impl tracing::field::Visit for Message {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Warns {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if *event.metadata().level() == tracing::Level::WARN {
                let mut m = Message(String::new());
                event.record(&mut m);
                self.0.lock().unwrap().push(m.0);
            }
        }
    }

    /// The reminder now waits out the other replica's claim (up to lease + tolerance) with the
    /// copy of the request its clock took before the wait. The claim it waits for is, often,
    /// the other replica announcing a new review of the same request; once it is released the
    /// reminder claims and reminds that very reviewer to review. (Its own replica's event for
    /// that review is queued behind it on the request's lock, so nothing here learns of it.)
    /// Before the change the reminder gave up at the Busy claim.
    #[tokio::test(start_paused = true)]
    async fn review_lock_a_reminder_that_waited_for_a_claim_does_not_remind_the_reviewer_it_announced()
     {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let a = engine(&store, &mailer, "a");
        let b = engine(&store, &mailer, "b");
        a.handle_event(put("r1")).await; // a@ and b@ get their threads
        // b@ reviews; replica b is announcing it (its first review mail is slow).
        mailer.then([Answer::Slow(Duration::from_secs(10))]);
        let on_b = {
            let (b, req) = (b.clone(), aged("r1", DUE, &["b@example.com"]));
            tokio::spawn(async move { b.handle_event(WatchEvent::Put(Box::new(req))).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Replica a's round falls due with the copy it held before the review.
        a.remind(&aged("r1", DUE, &[]), HOUR, 3).await.unwrap();
        on_b.await.unwrap();
        let to: Vec<String> = reminders_to(&mailer)
            .into_iter()
            .map(|(to, _)| to)
            .collect();
        assert!(
            !to.iter().any(|t| t == "b@example.com"),
            "b@ reminded to review right after her review was mailed: {to:?}"
        );
    }

    /// "The other replica's round no longer loses the round": only when its claim goes within a
    /// lease. A live replica that holds the request longer (an event's stage retrying a passing
    /// failure, up to `retry_for`, renewing its claim) still makes the reminder give up — with a
    /// WARN about "the whole retry period" after 35 s — and the holder never sends the round.
    #[tokio::test(start_paused = true)]
    async fn review_lock_a_reminder_is_not_lost_to_a_live_replica_retrying_an_event() {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let a = engine(&store, &mailer, "a");
        let b = engine(&store, &mailer, "b");
        a.handle_event(put("r1")).await;
        // c@ (not a recipient) reviews; replica b cannot reach the mail server for a while.
        mailer.always(Some(Answer::Fail(connection_refused())));
        let on_b = {
            let (b, req) = (b.clone(), aged("r1", DUE, &["c@example.com"]));
            tokio::spawn(async move { b.handle_event(WatchEvent::Put(Box::new(req))).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let on_a = {
            let (a, req) = (a.clone(), aged("r1", DUE, &["c@example.com"]));
            tokio::spawn(async move { a.remind(&req, HOUR, 3).await })
        };
        tokio::time::sleep(Duration::from_secs(45)).await;
        mailer.always(None); // the mail server is back, within b's retry period
        on_b.await.unwrap();
        let _ = on_a.await.unwrap();
        assert_eq!(
            reminders_to(&mailer).len(),
            2,
            "round 1 of 3 lost to a live replica's claim held past a lease"
        );
    }

    /// Every reminder now reads the requester's traits, also with `notify_requester` off. A
    /// role without `read` on `user` (needed for nothing else then) gets a WARN at the first
    /// reminder telling the operator the requester cannot be mailed and to grant the
    /// permission — for a feature that is off.
    #[tokio::test(start_paused = true)]
    async fn review_lock_a_reminder_with_notify_requester_off_does_not_warn_about_reading_users() {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let engine = engine(&store, &mailer, "r1"); // notify_requester off
        let engine = Arc::into_inner(engine)
            .unwrap()
            .with_directory(Arc::new(Emails(None))); // access denied
        engine.handle_event(put("r1")).await;
        let warns = Warns::default();
        let _guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(warns.clone()));
        engine.remind(&aged("r1", DUE, &[]), HOUR, 3).await.unwrap();
        let all = warns.0.lock().unwrap().clone();
        assert!(all.is_empty(), "WARN from a reminder: {all:?}");
        assert_eq!(reminders_to(&mailer).len(), 2);
    }

    /// Latent (no caller drops a `lock` future today; all run in spawned tasks): a waiter whose
    /// future is dropped after the holder released leaves the entry behind, since the holder's
    /// Drop saw the waiter's clone and the waiter has no Drop of its own.
    #[tokio::test(start_paused = true)]
    async fn review_lock_a_cancelled_waiter_leaves_no_entry_in_the_lock_map() {
        let locks = super::super::RequestLocks::default();
        let held = locks.lock("r1").await;
        let mut waiter = Box::pin(locks.lock("r1"));
        assert!(
            tokio::time::timeout(Duration::from_millis(1), &mut waiter)
                .await
                .is_err()
        );
        drop(held);
        drop(waiter);
        let left = locks.0.lock().unwrap().len();
        assert_eq!(left, 0, "entries left in the lock map");
    }
}

// ---------------------------------------------------------------------------------------------
// Third reader (review-third) of 0328c7d: `Undecided`, the in-memory map of requesters not yet
// looked up. Each test FAILS on 0328c7d; see its comment.

mod review_third {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// `alice`'s traits cannot be read on the first call (Auth restarting), then can; every
    /// other user is named by their address and never looked up.
    struct FlakyAlice(AtomicUsize);

    #[async_trait::async_trait]
    impl Directory for FlakyAlice {
        async fn user_traits(&self, user: &str) -> Result<crate::teleport::Traits, TeleportError> {
            assert_eq!(user, "alice", "only alice is looked up");
            match self.0.fetch_add(1, Ordering::SeqCst) {
                0 => Err(TeleportError::Unavailable("auth restarting".into())),
                _ => Ok([("email".to_owned(), vec!["alice@corp.example".to_owned()])].into()),
            }
        }
    }

    fn noted(engine: &Engine, id: &str) -> bool {
        engine.undecided.0.lock().unwrap().contains_key(id)
    }

    /// Finding 1 (LOW-MEDIUM; src/engine/mod.rs:352-361 `on_pending`). `requester` is `None`
    /// both when the lookup failed and when it was not made at all because `requester_owed` says
    /// nothing is owed (the confirmation went out). The second case is noted as "undecided" too:
    /// every later event of a request whose requester was already told (a review, a reconcile,
    /// the approval, which runs `on_pending` first) puts it in the map, where it stays until the
    /// request's DELETE is seen (never, when it came during a watch gap). The map meant for the
    /// rare undecided requester holds nearly every live request; see the next test for what that
    /// costs.
    #[tokio::test(start_paused = true)]
    async fn review3_a_requester_already_told_is_not_kept_as_undecided() {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let engine = engine_telling_requester(&store, &mailer, "r1");
        engine
            .handle_event(by_requester("r1", RequestState::Pending))
            .await;
        assert_eq!(to_requester(&mailer).len(), 1, "the confirmation");
        assert!(!noted(&engine, "r1"), "decided at the first event");
        // A later event of the same request (a reconcile's copy, a review, the approval).
        engine
            .handle_event(by_requester("r1", RequestState::Pending))
            .await;
        engine
            .handle_event(by_requester("r1", RequestState::Approved))
            .await;
        assert!(
            !noted(&engine, "r1"),
            "a request whose requester was told long ago is kept as 'undecided'"
        );
    }

    /// Finding 2 (LOW-MEDIUM; src/engine/mod.rs:155-161 `Undecided::note`, with finding 1). The
    /// map is emptied when 10,000 entries are held. Because of finding 1 it fills with requests
    /// that are not undecided at all (two events each), and the clear drops the one requester
    /// who really is undecided: when their request expires, they are not told (a WARN), though
    /// this process saw the request and the user can be read by then. 10,000 requests seen
    /// during one process's life (resolved ones live until their access expires; a DELETE
    /// missed in a watch gap is never taken out) is a large but not absurd cluster.
    #[tokio::test(start_paused = true)]
    async fn review3_an_undecided_requester_is_not_forgotten_for_requesters_already_told() {
        let store = Arc::new(MemoryStore::default());
        let mailer = Arc::new(ScriptedMailer::default());
        let engine = engine_telling_requester(&store, &mailer, "r1");
        // Only the requester is mailed: keeps the 20,000 events cheap.
        let mut routing = (*engine.routing()).clone();
        routing.recipients = RecipientMap::new(BTreeMap::new());
        engine.set_routing(routing);
        let engine = Arc::new(
            Arc::into_inner(engine)
                .unwrap()
                .with_directory(Arc::new(FlakyAlice(AtomicUsize::new(0)))),
        );
        engine.handle_event(put("r1")).await; // alice: cannot be read for now
        assert!(decoded(&store, "r1").requester_undecided());
        assert!(noted(&engine, "r1"));
        for i in 0..UNDECIDED_MAX {
            let event = || {
                WatchEvent::Put(Box::new(AccessRequest {
                    user: format!("u{i}@example.com"),
                    ..request(&format!("s{i}"))
                }))
            };
            engine.handle_event(event()).await; // confirmation sent
            engine.handle_event(event()).await; // a later event of the same request
        }
        engine
            .handle_event(WatchEvent::Delete { id: "r1".into() })
            .await;
        let alice: Vec<_> = (mailer.delivered().into_iter())
            .filter(|m| m.to == "alice@corp.example")
            .map(|m| m.subject)
            .collect();
        assert_eq!(
            alice.len(),
            2,
            "the undecided requester was dropped from memory by requests already settled: {alice:?}"
        );
    }
}
