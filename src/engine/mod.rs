//! What happens to one Access Request: the plugin data (read and compare-and-swap written), the
//! recipients, and the mails of its threads — new request, one reply per review, and the
//! resolution or expiry, each stage once.
//!
//! All per-request state lives in the plugin data, never in memory, so a restart, a second
//! replica or the original plugin can carry on where this one stopped.

mod plugindata;
mod recipients;
mod stage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

pub use plugindata::{Claim, PLUGIN_NAME, PluginData, Resolution, Thread};
pub use recipients::{recipients_for, web_link};
use stage::{Job, Stage};

use crate::config::RecipientMap;
use crate::mail::render::RequestSummary;
use crate::mail::{MailError, Mailer, MessageId};
use crate::metrics::Metrics;
use crate::teleport::{
    AccessRequest, ClusterInfo, RequestState, TeleportClient, TeleportError, WatchEvent,
};

/// Compare-and-swap attempts before giving up (the original tries 5 times; replicas contend more).
const MAX_CAS_TRIES: usize = 10;

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
}

/// How hard delivery tries.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// How long a transient failure is retried before an ERROR.
    pub retry_for: Duration,
    /// The first wait between retries; it doubles up to `max_backoff`.
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
    client: TeleportClient,
    cluster: ClusterInfo,
    routing: RwLock<Arc<Routing>>,
    policy: DeliveryPolicy,
    /// Cancelled at shutdown: retries stop waiting, claims are released, the rest is left to the
    /// next start (or another replica), which the plugin data tells where to resume.
    stopping: CancellationToken,
    metrics: Arc<Metrics>,
    /// Request id → the plugin data as we last wrote it: saves a read before the next write.
    written: Mutex<HashMap<String, RawPluginData>>,
}

/// Plugin data as stored: key → value.
type RawPluginData = std::collections::BTreeMap<String, String>;

/// Requests whose last write is remembered; the cache is simply emptied when full.
const WRITTEN_CACHE_MAX: usize = 4096;

enum Claimed {
    /// Nothing owed in this stage.
    Done,
    /// Another instance holds the request until then (Unix ms).
    Busy(u64),
    /// Ours; the mails owed.
    Ours(Vec<Job>),
}

impl Engine {
    pub fn new(
        client: TeleportClient,
        cluster: ClusterInfo,
        routing: Routing,
        policy: DeliveryPolicy,
    ) -> Self {
        Self {
            client,
            cluster,
            routing: RwLock::new(Arc::new(routing)),
            policy,
            stopping: CancellationToken::new(),
            metrics: Arc::default(),
            written: Mutex::default(),
        }
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
    }

    fn routing(&self) -> Arc<Routing> {
        Arc::clone(&self.routing.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Handles one event; errors are logged here, at ERROR when mail was lost.
    pub async fn handle_event(&self, event: WatchEvent) {
        let (id, result) = match &event {
            WatchEvent::Put(req) => (req.id.clone(), self.on_put(req).await),
            WatchEvent::Delete { id } => (id.clone(), self.on_delete(id).await),
            _ => return,
        };
        if let Err(e) = result {
            tracing::error!(request_id = %id, error = %e, "Failed to handle the access request event");
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
        // A request resolved before we ever saw it pending still gets its threads first.
        self.on_pending(req).await?;
        self.run_stage(
            &req.id,
            Stage::Resolution {
                tag,
                reason: req.resolve_reason.clone(),
                access_list: req.promoted_to.clone(),
            },
        )
        .await
    }

    async fn on_pending(&self, req: &AccessRequest) -> Result<(), EngineError> {
        let recipients = recipients_for(&self.routing().recipients, req);
        // The plugin data is created by the first claim (one write, not two); a request created
        // moments ago almost certainly has none yet, so that write is tried without a read.
        let fresh = PluginData {
            user: req.user.clone(),
            roles: req.roles.clone(),
            request_reason: req.reason.clone(),
            intended: Some(recipients),
            ..Default::default()
        };
        let guess_absent = req.reviews.is_empty() && just_created(req.created);
        self.run_stage_from(&req.id, Stage::NewThreads, Some((fresh, guess_absent)))
            .await?;
        if !req.reviews.is_empty() {
            self.run_stage(&req.id, Stage::Reviews(req.reviews.clone()))
                .await?;
        }
        Ok(())
    }

    async fn on_delete(&self, id: &str) -> Result<(), EngineError> {
        self.run_stage(
            id,
            Stage::Resolution {
                tag: Resolution::Expired,
                reason: String::new(),
                access_list: None,
            },
        )
        .await
    }

    /// Delivers everything `stage` still owes: claim the request, send, record each recipient's
    /// progress, release; transient failures are retried with backoff for `retry_for`.
    async fn run_stage(&self, id: &str, stage: Stage) -> Result<(), EngineError> {
        self.run_stage_from(id, stage, None).await
    }

    /// [`Self::run_stage`], creating the plugin data as `fresh` when there is none (with `true`:
    /// first try writing without reading, expecting none).
    async fn run_stage_from(
        &self,
        id: &str,
        stage: Stage,
        mut fresh: Option<(PluginData, bool)>,
    ) -> Result<(), EngineError> {
        let deadline = Instant::now() + self.policy.retry_for;
        let mut backoff = self.policy.min_backoff;
        loop {
            let claimed = self.claim(id, &stage, fresh.as_ref()).await?;
            // Created (or found) by now: later rounds read what is stored.
            fresh = None;
            let jobs = match claimed {
                Claimed::Done => return Ok(()),
                Claimed::Busy(_) if self.stopping.is_cancelled() => return Ok(()),
                Claimed::Busy(until) => {
                    // Poll: the holder usually finishes well before its lease runs out.
                    let wait = until.saturating_sub(now_ms()).clamp(50, 500);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    continue;
                }
                Claimed::Ours(jobs) => jobs,
            };
            let mailer = Arc::clone(&self.routing().mailer);
            let outcomes = join_all(jobs.iter().map(|job| send_job(mailer.as_ref(), job))).await;

            let mut transient = Vec::new();
            let mut permanent = Vec::new();
            let mut retry_after = None;
            for (job, (delivered, _, error)) in jobs.iter().zip(&outcomes) {
                for _ in 0..*delivered {
                    self.metrics.mail(mailer.backend(), stage.name(), true);
                }
                if error.is_some() {
                    self.metrics.mail(mailer.backend(), stage.name(), false);
                }
                for mail in &job.mails[..*delivered] {
                    tracing::info!(request_id = %id, email = %job.email, message_id = %mail.message_id, kind = stage.kind(), "Successfully sent");
                }
                match error {
                    Some(e) if e.is_transient() => {
                        retry_after = retry_after.max(e.retry_after());
                        transient.push((job.email.clone(), e.clone()));
                    }
                    Some(e) => permanent.push((job.email.clone(), e.clone())),
                    None => {}
                }
            }
            let give_up = !transient.is_empty() && Instant::now() + backoff > deadline;
            let keep_claim = !transient.is_empty() && !give_up;
            let stage_name = stage.name();
            self.modify(id, |old| {
                let mut d = old?.clone();
                for (job, (delivered, first_id, _)) in jobs.iter().zip(&outcomes) {
                    stage.record(&mut d, &job.email, *delivered, first_id.as_ref());
                }
                for (email, _) in &permanent {
                    d.failed.push(format!("{email}/{stage_name}"));
                }
                d.claim = keep_claim.then(|| self.lease());
                Some(d)
            })
            .await?;
            for (email, e) in &permanent {
                tracing::error!(request_id = %id, email = %email, stage = stage_name, error = %e, "Mail could not be delivered and will not be retried (permanent failure)");
            }
            if give_up {
                for (email, e) in &transient {
                    tracing::error!(request_id = %id, email = %email, stage = stage_name, error = %e, retried_for = ?self.policy.retry_for, "Mail could not be delivered; giving up until the next restart or reconnect");
                }
            }
            if transient.is_empty() || give_up {
                let failed = permanent.len() + if give_up { transient.len() } else { 0 };
                let first = permanent.into_iter().chain(transient).next();
                return match first {
                    Some((_, first)) if failed > 0 => Err(EngineError::Mail {
                        stage: stage_name,
                        failed,
                        first,
                    }),
                    _ => Ok(()),
                };
            }
            let wait = retry_after.unwrap_or(backoff).max(backoff);
            for (email, e) in &transient {
                tracing::warn!(request_id = %id, email = %email, stage = stage_name, error = %e, retry_in = ?wait, "Mail delivery failed; will retry");
            }
            self.metrics.retry();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stopping.cancelled() => {
                    self.release(id).await?;
                    tracing::warn!(request_id = %id, stage = stage_name, pending = transient.len(), "Stopping: undelivered mail is left for the next start");
                    return Ok(());
                }
            }
            backoff = (backoff * 2).min(self.policy.max_backoff);
        }
    }

    /// Drops our claim on the request, if we hold it.
    async fn release(&self, id: &str) -> Result<(), EngineError> {
        self.modify(id, |old| {
            let d = old?;
            if d.claim
                .as_ref()
                .is_some_and(|c| c.owner == self.policy.instance)
            {
                let mut d = d.clone();
                d.claim = None;
                Some(d)
            } else {
                None
            }
        })
        .await?;
        Ok(())
    }

    fn lease(&self) -> Claim {
        Claim {
            owner: self.policy.instance.clone(),
            until_ms: now_ms() + self.policy.lease.as_millis() as u64,
        }
    }

    /// Takes the request for `stage`, unless nothing is owed or another live instance holds it.
    async fn claim(
        &self,
        id: &str,
        stage: &Stage,
        fresh: Option<&(PluginData, bool)>,
    ) -> Result<Claimed, EngineError> {
        let mut outcome = Claimed::Done;
        let guess_absent = fresh.is_some_and(|(_, absent)| *absent);
        let written = self
            .modify_guessing(id, guess_absent, |old| {
                outcome = Claimed::Done;
                let creating = old.is_none();
                let data = old.or(fresh.map(|(d, _)| d))?;
                if let Some(c) = &data.claim
                    && c.owner != self.policy.instance
                    && c.until_ms > now_ms()
                {
                    outcome = Claimed::Busy(c.until_ms);
                    return None;
                }
                let mut d = stage.begin(data)?;
                let jobs = stage.work(&d, &self.summary(id, &d), &self.policy.id_host);
                if jobs.is_empty() {
                    // Nothing owed: still write the stage's start marks (and drop a stale claim).
                    d.claim = None;
                    return (creating || d != *data).then_some(d);
                }
                d.claim = Some(self.lease());
                outcome = Claimed::Ours(jobs);
                Some(d)
            })
            .await?;
        if let Some((None, created)) = &written
            && created.intended.as_ref().is_some_and(|r| r.is_empty())
        {
            tracing::warn!(request_id = %id, "No recipients to send");
        }
        Ok(outcome)
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

    /// Reads (`store` = `None`) or replaces our last written copy of a request's plugin data.
    fn written_cache(&self, id: &str, store: Option<RawPluginData>) -> Option<RawPluginData> {
        let mut cache = self.written.lock().unwrap_or_else(|e| e.into_inner());
        match store {
            None => cache.get(id).cloned(),
            Some(raw) => {
                if cache.len() >= WRITTEN_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(id.to_owned(), raw);
                None
            }
        }
    }

    fn forget(&self, id: &str) {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Compare-and-swap on the request's plugin data. `update` sees the current data (`None` when
    /// there is none) and returns the new data, or `None` to leave it alone. Returns the old and
    /// new data when a write happened.
    async fn modify(
        &self,
        id: &str,
        update: impl FnMut(Option<&PluginData>) -> Option<PluginData>,
    ) -> Result<Option<(Option<PluginData>, PluginData)>, EngineError> {
        self.modify_guessing(id, false, update).await
    }

    /// [`Self::modify`]; with `guess_absent`, when we have written nothing for the request, the
    /// first attempt assumes it has no plugin data instead of reading it.
    async fn modify_guessing(
        &self,
        id: &str,
        guess_absent: bool,
        mut update: impl FnMut(Option<&PluginData>) -> Option<PluginData>,
    ) -> Result<Option<(Option<PluginData>, PluginData)>, EngineError> {
        // Our own last write is the first guess of the stored data (the compare-and-swap proves
        // it); a decision not to write is only ever taken on data freshly read.
        let mut guess = match self.written_cache(id, None) {
            Some(raw) => Some(Some(raw)),
            None if guess_absent => Some(None),
            None => None,
        };
        for attempt in 0..MAX_CAS_TRIES {
            let from_guess = guess.is_some();
            let raw = match guess.take() {
                Some(raw) => raw,
                None => self.client.get_plugin_data(id, PLUGIN_NAME).await?,
            };
            let old = raw.as_ref().map(PluginData::decode);
            let Some(new) = update(old.as_ref()) else {
                if from_guess {
                    continue;
                }
                self.forget(id);
                return Ok(None);
            };
            let expect = match &raw {
                Some(raw) => {
                    let mut e = raw.clone();
                    for k in plugindata::KEYS {
                        e.entry(k.to_owned()).or_default();
                    }
                    e
                }
                None => PluginData::empty_encoding(),
            };
            let mut set = new.encode();
            // Keys we no longer write (a released claim, the legacy `email`/`timestamp`) are cleared.
            for k in expect.keys() {
                set.entry(k.clone()).or_default();
            }
            match self
                .client
                .update_plugin_data(id, PLUGIN_NAME, &set, &expect)
                .await
            {
                Ok(()) => {
                    let stored = set.into_iter().filter(|(_, v)| !v.is_empty()).collect();
                    self.written_cache(id, Some(stored));
                    return Ok(Some((old, new)));
                }
                Err(TeleportError::CompareFailed(_)) if from_guess => self.forget(id),
                Err(TeleportError::CompareFailed(_)) => {
                    let jitter = rand::random_range(0..10u64 << attempt.min(5));
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::TooManyConflicts)
    }
}

/// Sends one recipient's mails in order; stops at the first failure.
/// Returns how many went out, the first one's Message-ID, and the failure.
async fn send_job(mailer: &dyn Mailer, job: &Job) -> (usize, Option<MessageId>, Option<MailError>) {
    let mut first = None;
    for (i, mail) in job.mails.iter().enumerate() {
        match mailer.send(mail).await {
            Ok(id) => {
                first.get_or_insert(id);
            }
            Err(e) => return (i, first, Some(e)),
        }
    }
    (job.mails.len(), first, None)
}

/// Whether a request was created in the last minute (by our clock; a skewed one only costs a
/// read).
fn just_created(created: Option<SystemTime>) -> bool {
    // A creation time ahead of our clock counts as just now.
    created
        .map(|c| SystemTime::now().duration_since(c).unwrap_or_default())
        .is_some_and(|age| age < Duration::from_secs(60))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
