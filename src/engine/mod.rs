//! What happens to one Access Request: the plugin data (read and compare-and-swap written), the
//! recipients, and the mails of its threads — new request, one reply per review, and the
//! resolution or expiry, each stage once.
//!
//! Every per-request decision is taken on the plugin data, so a restart, a second replica or the
//! original plugin can carry on where this one stopped. The only thing kept in memory is our own
//! last write of each request, as a first guess that the compare-and-swap then proves or refutes.

mod delivery;
mod monitoring;
mod plugindata;
mod recipients;
mod round;
mod stage;
mod store;
mod survey;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cross;
#[cfg(test)]
mod tests_fixes2;
#[cfg(test)]
mod tests_fixes3;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use delivery::Fresh;
pub use delivery::{CLOCK_TOLERANCE, Holder, holder};
pub use monitoring::Directory;
use monitoring::{Monitoring, Users};
pub use plugindata::{Claim, PLUGIN_NAME, PluginData, RequesterThread, Resolution, Thread};
pub use recipients::{recipients_for, web_base, web_link};
use stage::Stage;
use store::PluginStore;
pub use store::{EachRecord, MAX_CAS_TRIES, PluginDataStore, RawPluginData};
pub use survey::Survey;

use crate::config::RecipientMap;
use crate::mail::render::RequestSummary;
use crate::mail::{MailError, Mailer};
use crate::metrics::Metrics;
use crate::rules::RuleSet;
use crate::teleport::{
    AccessRequest, ClusterInfo, RequestState, TeleportClient, TeleportError, WatchEvent,
};

/// How long a claim on a request's mails lasts unless renewed.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Why handling an event failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("plugin data: {0}")]
    Teleport(#[from] TeleportError),
    #[error("plugin data: gave up after {MAX_CAS_TRIES} compare-and-swap conflicts")]
    TooManyConflicts,
    #[error("{failed} recipient(s) did not get the {stage} mail: {first}")]
    Mail {
        stage: &'static str,
        failed: usize,
        first: MailError,
    },
}

/// The settings that can change at run time (config reload).
#[derive(Clone)]
pub struct Routing {
    pub recipients: RecipientMap,
    pub mailer: Arc<dyn Mailer>,
    /// `delivery.notify_requester`: the requester gets a confirmation and the outcome.
    pub notify_requester: bool,
}

/// How hard delivery tries.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// How long a failed mail is retried before an ERROR.
    pub retry_for: Duration,
    /// The first wait between retries; waits grow (with jitter) up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How long our claim on a request lasts without renewal.
    pub lease: Duration,
    /// Who we are in claims: unique per process.
    pub instance: String,
    /// The right-hand side of our Message-IDs: the sender's domain, the same for every replica.
    pub id_host: String,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            retry_for: Duration::from_secs(600),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            lease: DEFAULT_LEASE,
            instance: instance_id(),
            id_host: "localhost".into(),
        }
    }
}

/// A name for this process in claims: host, pid and a random part.
pub fn instance_id() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .collect();
    format!("{host}.{}.{:x}", std::process::id(), rand::random::<u32>())
}

/// Handles access-request events.
pub struct Engine {
    store: PluginStore,
    cluster: ClusterInfo,
    routing: RwLock<Arc<Routing>>,
    /// Bumped when the routing changes: retries waiting on a broken mailer try the new one at
    /// once (a watch keeps the change for a retry that was busy sending when it came).
    routing_changed: tokio::sync::watch::Sender<u64>,
    policy: DeliveryPolicy,
    /// Cancelled at shutdown: retries stop waiting, claims are released, the rest is left to the
    /// next start (or another replica), which the plugin data tells where to resume.
    stopping: CancellationToken,
    metrics: Arc<Metrics>,
    /// The Access Monitoring Rules that route requests, when they are watched.
    monitoring: Option<Monitoring>,
    /// Where users' traits are read (rules' conditions, the requester's `email` trait).
    users: Option<Arc<Users>>,
    /// The requests being worked on in this process, one stage at a time each.
    working: RequestLocks,
    /// The last survey (the bulk read before a reconcile) failed: further failures in a row are
    /// logged at DEBUG.
    survey_refused: AtomicBool,
    /// Requests whose requester could not be looked up yet, with their user as the request's
    /// events named them.
    undecided: Undecided,
}

/// Requests whose requester's address is still undecided → their user (as the watch showed the
/// request): what an expiry, which carries only the id, needs to tell them. Bounded: emptied
/// when full (those requesters are then not told of an expiry, with a WARN).
#[derive(Default)]
struct Undecided(std::sync::Mutex<HashMap<String, String>>);

/// The most requests [`Undecided`] holds.
const UNDECIDED_MAX: usize = 10_000;

impl Undecided {
    fn note(&self, id: &str, user: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= UNDECIDED_MAX && !map.contains_key(id) {
            map.clear();
        }
        map.insert(id.to_owned(), user.to_owned());
    }

    fn take(&self, id: &str) -> Option<String> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(id)
    }
}

impl Engine {
    pub fn new(
        client: TeleportClient,
        cluster: ClusterInfo,
        routing: Routing,
        policy: DeliveryPolicy,
    ) -> Self {
        Self::with_store(Arc::new(client), cluster, routing, policy)
    }

    /// An engine keeping its plugin data in `store` (tests use one in memory).
    pub fn with_store(
        store: Arc<dyn PluginDataStore>,
        cluster: ClusterInfo,
        routing: Routing,
        policy: DeliveryPolicy,
    ) -> Self {
        Self {
            store: PluginStore::new(store),
            cluster,
            routing: RwLock::new(Arc::new(routing)),
            routing_changed: tokio::sync::watch::Sender::new(0),
            policy,
            stopping: CancellationToken::new(),
            metrics: Arc::default(),
            monitoring: None,
            users: None,
            survey_refused: AtomicBool::new(false),
            working: RequestLocks::default(),
            undecided: Undecided::default(),
        }
    }

    /// Routes requests by `rules` when any applies, reading requesters' traits from `directory`
    /// when a rule's condition needs them.
    pub fn with_rules(mut self, rules: Arc<RuleSet>, directory: Arc<dyn Directory>) -> Self {
        let users = Arc::new(Users::new(directory));
        self.monitoring = Some(Monitoring {
            rules,
            users: users.clone(),
        });
        self.users = Some(users);
        self
    }

    /// Reads users' traits from `directory` (the requester's `email` trait), when no rules do.
    pub fn with_directory(mut self, directory: Arc<dyn Directory>) -> Self {
        if self.users.is_none() {
            self.users = Some(Arc::new(Users::new(directory)));
        }
        self
    }

    /// Stops retries when `token` is cancelled (graceful shutdown).
    pub fn with_shutdown(mut self, token: CancellationToken) -> Self {
        self.stopping = token;
        self
    }

    /// Counts sends, failures and retries in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Replaces recipients and mailer (config reload); events handled later use the new ones.
    pub fn set_routing(&self, routing: Routing) {
        *self.routing.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(routing);
        self.routing_changed
            .send_modify(|generation| *generation += 1);
    }

    /// The cluster, as Ping described it at start.
    pub fn cluster(&self) -> &ClusterInfo {
        &self.cluster
    }

    /// The mailer in use now (a reload may replace it).
    pub fn mailer(&self) -> Arc<dyn Mailer> {
        self.routing().mailer.clone()
    }

    fn routing(&self) -> Arc<Routing> {
        Arc::clone(&self.routing.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Handles one event; errors are logged here, at ERROR when mail was lost.
    pub async fn handle_event(&self, event: WatchEvent) {
        let key = match &event {
            WatchEvent::Put(req) => req.id.as_str(),
            WatchEvent::Delete { id } => id.as_str(),
            _ => return,
        };
        let _one_at_a_time = self.working.lock(key).await;
        if self.stopping.is_cancelled() {
            // Stopping: nothing new is claimed (the next start, or a replica, carries on), so
            // there is nothing to read for it either.
            return;
        }
        let (id, result) = match &event {
            WatchEvent::Put(req) => (req.id.clone(), self.on_put(req).await),
            WatchEvent::Delete { id } => (id.clone(), self.on_delete(id).await),
            _ => return,
        };
        match result {
            // Each undelivered mail has had its ERROR, naming the recipient.
            Ok(()) | Err(EngineError::Mail { .. }) => {}
            Err(e) => {
                tracing::error!(request_id = %id, error = %e, "Failed to handle the access request event");
            }
        }
    }

    /// Before a reconcile: every request's plugin data read in one call, to tell which listed
    /// requests owe nothing. `None` (each listed request is then read on its own) when Teleport
    /// cannot answer that call.
    pub async fn survey(&self) -> Option<Survey> {
        match self.store.survey(self.routing().notify_requester).await {
            Ok((survey, read)) => {
                // A later failure is worth a WARN again.
                self.survey_refused.store(false, Ordering::Relaxed);
                tracing::debug!(
                    read,
                    settled = survey.len(),
                    "Read every request's plugin data in one call"
                );
                Some(survey)
            }
            Err(e) => {
                // Said once at WARN: a server that refuses it will refuse it at every reconnect.
                if self.survey_refused.swap(true, Ordering::Relaxed) {
                    tracing::debug!(error = %e, "Could not read every request's plugin data in one call; each request's is read on its own");
                } else {
                    tracing::warn!(error = %e, "Could not read every request's plugin data in one call; each request's is read on its own (said once until it works again)");
                }
                None
            }
        }
    }

    async fn on_put(&self, req: &AccessRequest) -> Result<(), EngineError> {
        let tag = match req.state {
            RequestState::Pending => return self.on_pending(req).await,
            RequestState::Approved => Resolution::Approved,
            RequestState::Denied => Resolution::Denied,
            RequestState::Promoted => Resolution::Promoted,
            other => {
                tracing::warn!(request_id = %req.id, state = ?other, "Unknown request state");
                return Ok(());
            }
        };
        // A request resolved before we ever saw it pending still gets its threads first. One
        // recipient's failure there does not keep the others from the resolution.
        let earlier = self.on_pending(req).await;
        let resolution = Stage::Resolution {
            tag,
            reason: req.resolve_reason.clone(),
            access_list: req.promoted_to.clone(),
        };
        let resolved = self.run_stage(&req.id, resolution, None).await;
        let requester = self
            .tell_requester(&req.id, tag, &req.resolve_reason, req.promoted_to.clone())
            .await;
        earlier.and(resolved).and(requester)
    }

    /// The outcome in the requester's thread, when they are mailed.
    async fn tell_requester(
        &self,
        id: &str,
        tag: Resolution,
        reason: &str,
        access_list: Option<String>,
    ) -> Result<(), EngineError> {
        if !self.routing().notify_requester {
            return Ok(());
        }
        let outcome = Stage::RequesterOutcome {
            tag,
            reason: reason.to_owned(),
            access_list,
        };
        self.run_stage(id, outcome, None).await
    }

    async fn on_pending(&self, req: &AccessRequest) -> Result<(), EngineError> {
        let (mut recipients, settled) = self.routing_of(req).await;
        let notify_requester = self.routing().notify_requester;
        let looked_up = notify_requester && self.requester_owed(&req.id);
        let requester = match looked_up {
            true => self.requester_address(req).await,
            false => None,
        };
        // Only a requester just looked up in vain is remembered as undecided (one already told,
        // or with no address, is not).
        if looked_up {
            match requester {
                None => self.undecided.note(&req.id, &req.user),
                Some(_) => drop(self.undecided.take(&req.id)),
            }
        }
        // The requester hears about their request as its requester, not as a reviewer.
        if let Some(me) = requester.as_deref().filter(|a| !a.is_empty()) {
            recipients.retain(|r| !r.eq_ignore_ascii_case(me));
        }
        // The plugin data is created by the first claim (one write, not two); a request created
        // moments ago almost certainly has none yet, so that write is tried without a read.
        let fresh = PluginData {
            user: req.user.clone(),
            roles: req.roles.clone(),
            request_reason: req.reason.clone(),
            intended: Some(recipients),
            // Not readable now (a passing failure): decided at a later event.
            requester: notify_requester.then(|| {
                (requester.clone()).unwrap_or_else(|| plugindata::REQUESTER_UNDECIDED.to_owned())
            }),
            ..Default::default()
        };
        let fresh = Fresh {
            guess_absent: req.reviews.is_empty() && just_created(req.created),
            data: fresh,
        };
        let new_threads = Stage::NewThreads {
            allowed: fresh.data.intended.clone().unwrap_or_default(),
            settled,
        };
        let threads = self.run_stage(&req.id, new_threads, Some(fresh)).await;
        let confirmed = match notify_requester {
            true => {
                let confirmation = Stage::RequesterThread { address: requester };
                self.run_stage(&req.id, confirmation, None).await
            }
            false => Ok(()),
        };
        let threads = threads.and(confirmed);
        if req.reviews.is_empty() {
            return threads;
        }
        let reviews = Stage::Reviews(req.reviews.clone());
        threads.and(self.run_stage(&req.id, reviews, None).await)
    }

    /// Whether the requester may still be owed their confirmation: false once our own last
    /// write shows it sent, or shows the request's data created without a requester (saves
    /// reading their traits on every later event).
    fn requester_owed(&self, id: &str) -> bool {
        self.store.last_written(id).is_none_or(|d| {
            let waiting = |a: &str| d.requester_thread.is_none() && !d.failed_at(a, "requester");
            d.requester_undecided() || d.requester_address().is_some_and(waiting)
        })
    }

    /// The reminder of the round due now for a pending request (nothing before its first
    /// `interval`, nothing past `limit` rounds): to each recipient with an open thread who has
    /// not reviewed it and has not had this round's reminder. The round is recorded in the
    /// plugin data, so a restart or another replica sends it once.
    pub async fn remind(
        &self,
        req: &AccessRequest,
        interval: Duration,
        limit: u32,
    ) -> Result<(), EngineError> {
        let Some(round) = reminder_round(req.created, interval, limit, SystemTime::now()) else {
            return Ok(());
        };
        let now = SystemTime::now();
        let expired = req.request_expires.is_some_and(|e| e <= now);
        if req.state != RequestState::Pending || expired {
            return Ok(());
        }
        // One stage of a request at a time in this process: a reminder never runs beside an
        // event's stage of the same request (both would take the claim as ours).
        let _one_at_a_time = self.working.lock(&req.id).await;
        // Who is not reminded: whoever reviewed, and the requester (who cannot review it), by
        // their name and by their address.
        let requester = match self.users.is_some() {
            true => self.requester_address_quietly(req).await,
            false => None,
        };
        let reviewed_by = (req.reviews.iter().map(|r| r.author.clone()))
            .chain([req.user.clone()])
            .chain(requester)
            .collect();
        let stage = Stage::Reminder {
            round,
            limit,
            reviewed_by,
            reviews: req.reviews.len(),
        };
        self.run_stage(&req.id, stage, None).await
    }

    async fn on_delete(&self, id: &str) -> Result<(), EngineError> {
        let expired = Stage::Resolution {
            tag: Resolution::Expired,
            reason: String::new(),
            access_list: None,
        };
        // The request is gone: whatever the reviewers' mails came to, the requester is told.
        let reviewers = self.run_stage(id, expired, None).await;
        let late = self.confirm_undecided(id).await;
        let requester = self.tell_requester(id, Resolution::Expired, "", None).await;
        self.store.forget(id);
        reviewers.and(late).and(requester)
    }

    /// A requester whose address could not be read while the request was pending (a passing
    /// failure, and no later event) is looked up once more as the request goes, by the user
    /// name in its data, and gets the confirmation the outcome is threaded under: otherwise they
    /// would never hear of their request.
    async fn confirm_undecided(&self, id: &str) -> Result<(), EngineError> {
        if !self.routing().notify_requester {
            return Ok(());
        }
        // The request is gone. Its user is not taken from the plugin data (whoever may update
        // plugin data could name anyone there) but from this process's memory of the request's
        // events; after a restart the requester is not told, and a WARN says so.
        let Some(user) = self.undecided.take(id) else {
            let data = self.store.read(id).await?;
            if data.is_some_and(|d| d.requester_undecided()) {
                tracing::warn!(request_id = %id, "The requester of an expired request was never looked up, and this instance did not see the request to know who they are; they are not told it expired");
            }
            return Ok(());
        };
        let data = self.store.read(id).await?;
        let Some(data) = data.filter(|d| d.requester_undecided()) else {
            return Ok(());
        };
        let gone = AccessRequest {
            id: id.to_owned(),
            user,
            roles: data.roles.clone(),
            state: RequestState::Pending,
            reason: data.request_reason.clone(),
            resolve_reason: String::new(),
            created: None,
            expires: None,
            reviews: Vec::new(),
            suggested_reviewers: Vec::new(),
            promoted_to: None,
            system_annotations: Default::default(),
            request_expires: None,
        };
        let address = self.requester_address(&gone).await;
        if address.is_none() {
            tracing::warn!(request_id = %id, "The requester of an expired request still cannot be looked up; they are not told it expired");
        }
        self.run_stage(id, Stage::RequesterThread { address }, None)
            .await
    }

    fn summary(&self, id: &str, data: &PluginData) -> RequestSummary {
        RequestSummary {
            id: id.to_owned(),
            cluster: self.cluster.name.clone(),
            user: data.user.clone(),
            roles: data.roles.clone(),
            reason: data.request_reason.clone(),
            link: self
                .cluster
                .advanced_workflows
                .then(|| web_link(&self.cluster.proxy_public_addr, id))
                .flatten(),
        }
    }
}

/// The reminder round due at `now` for a request created at `created`: the number of whole
/// `interval`s since, at most `limit`; `None` before the first.
pub fn reminder_round(
    created: Option<SystemTime>,
    interval: Duration,
    limit: u32,
    now: SystemTime,
) -> Option<u32> {
    let age = now.duration_since(created?).ok()?;
    let rounds = age.as_secs() / interval.as_secs().max(1);
    (rounds >= 1).then(|| u32::try_from(rounds).unwrap_or(u32::MAX).min(limit))
}

/// One lock per request being worked on, gone when nobody holds or waits for it.
#[derive(Default)]
struct RequestLocks(std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

/// Holds (or waits for) a request's lock; the last one out, holder or waiter, removes it from
/// the map, a waiter whose wait is cancelled included.
struct RequestLock<'a> {
    locks: &'a RequestLocks,
    id: String,
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl RequestLocks {
    async fn lock(&self, id: &str) -> RequestLock<'_> {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(id.to_owned()).or_default().clone()
        };
        let mut held = RequestLock {
            locks: self,
            id: id.to_owned(),
            lock: Some(lock.clone()),
            guard: None,
        };
        held.guard = Some(lock.lock_owned().await);
        held
    }
}

impl Drop for RequestLock<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        drop(self.lock.take());
        let mut map = self.locks.0.lock().unwrap_or_else(|e| e.into_inner());
        // Only the map holds it now: nobody holds or waits.
        if map.get(&self.id).is_some_and(|l| Arc::strong_count(l) == 1) {
            map.remove(&self.id);
        }
    }
}

/// Whether a request was created in the last minute (by our clock; a skewed one only costs a
/// read).
fn just_created(created: Option<SystemTime>) -> bool {
    // A creation time ahead of our clock counts as just now.
    created
        .map(|c| SystemTime::now().duration_since(c).unwrap_or_default())
        .is_some_and(|age| age < Duration::from_secs(60))
}

/// The wall clock in Unix milliseconds, which claims are written in (replicas' clocks are
/// assumed to agree, see [`CLOCK_TOLERANCE`]). Unit tests read tokio's clock instead, so that
/// leases run out in paused time.
fn now_ms() -> u64 {
    #[cfg(test)]
    if let Some(now) = testing::now_ms() {
        return now;
    }
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
