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

fn request(id: &str) -> AccessRequest {
    AccessRequest {
        id: id.into(),
        user: "alice".into(),
        roles: vec!["editor".into()],
        state: RequestState::Pending,
        reason: "please".into(),
        resolve_reason: String::new(),
        created: None,
        expires: None,
        reviews: vec![],
        suggested_reviewers: vec![],
        promoted_to: None,
    }
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
