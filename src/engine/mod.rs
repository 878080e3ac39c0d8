//! What happens to one Access Request: the plugin data (read and compare-and-swap written), the
//! recipients, and the mails of its threads — new request, one reply per review, and the
//! resolution or expiry, each stage once.
//!
//! All per-request state lives in the plugin data, never in memory, so a restart, a second
//! replica or the original plugin can carry on where this one stopped.

mod plugindata;
mod recipients;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use futures_util::future::join_all;

pub use plugindata::{PLUGIN_NAME, PluginData, Resolution, Thread};
pub use recipients::{recipients_for, web_link};

use crate::config::RecipientMap;
use crate::mail::render::{self, RequestSummary, ReviewState, ReviewSummary};
use crate::mail::{MailError, Mailer, MessageId, OutgoingMail};
use crate::teleport::identity::rfc3339;
use crate::teleport::{
    AccessRequest, ClusterInfo, RequestState, Review, TeleportClient, TeleportError, WatchEvent,
};
use crate::watcher::{BoxFuture, EventHandler};

/// Compare-and-swap attempts before giving up, as the original.
const MAX_CAS_TRIES: usize = 5;

/// Why handling an event failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("plugin data: {0}")]
    Teleport(#[from] TeleportError),
    #[error("plugin data: gave up after {MAX_CAS_TRIES} compare-and-swap conflicts")]
    TooManyConflicts,
    #[error("{failed} of {total} mail(s) could not be sent: {first}")]
    Mail {
        failed: usize,
        total: usize,
        first: MailError,
    },
}

/// The settings that can change at run time (config reload).
#[derive(Debug, Clone)]
pub struct Routing {
    pub recipients: RecipientMap,
}

/// Handles access-request events.
pub struct Engine {
    client: TeleportClient,
    mailer: Arc<dyn Mailer>,
    cluster: ClusterInfo,
    routing: RwLock<Arc<Routing>>,
}

impl Engine {
    pub fn new(
        client: TeleportClient,
        mailer: Arc<dyn Mailer>,
        cluster: ClusterInfo,
        routing: Routing,
    ) -> Self {
        Self {
            client,
            mailer,
            cluster,
            routing: RwLock::new(Arc::new(routing)),
        }
    }

    /// Replaces the recipients (config reload); events handled later use the new ones.
    pub fn set_routing(&self, routing: Routing) {
        *self.routing.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(routing);
    }

    fn routing(&self) -> Arc<Routing> {
        self.routing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
        match req.state {
            RequestState::Pending => self.on_pending(req).await,
            RequestState::Approved => self.on_resolved(req, Resolution::Approved).await,
            RequestState::Denied => self.on_resolved(req, Resolution::Denied).await,
            RequestState::Promoted => self.on_resolved(req, Resolution::Promoted).await,
            other => {
                tracing::warn!(request_id = %req.id, state = ?other, "Unknown request state");
                Ok(())
            }
        }
    }

    async fn on_pending(&self, req: &AccessRequest) -> Result<(), EngineError> {
        let fresh = PluginData {
            user: req.user.clone(),
            roles: req.roles.clone(),
            request_reason: req.reason.clone(),
            ..Default::default()
        };
        let created = self
            .modify(&req.id, |old| match old {
                None => Some(fresh.clone()),
                Some(_) => None,
            })
            .await?;
        if let Some((_, data)) = created {
            let recipients = recipients_for(&self.routing().recipients, req);
            if recipients.is_empty() {
                tracing::warn!(request_id = %req.id, "No recipients to send");
                return Ok(());
            }
            self.send_new_threads(req, &data, &recipients).await?;
        }
        if !req.reviews.is_empty() {
            self.send_reviews(req).await?;
        }
        Ok(())
    }

    async fn on_resolved(&self, req: &AccessRequest, tag: Resolution) -> Result<(), EngineError> {
        let reviews = self.send_reviews(req).await;
        let reason = req.resolve_reason.clone();
        let resolution = self
            .send_resolution(&req.id, tag, &reason, req.promoted_to.as_deref())
            .await;
        reviews.and(resolution)
    }

    async fn on_delete(&self, id: &str) -> Result<(), EngineError> {
        self.send_resolution(id, Resolution::Expired, "", None)
            .await
    }

    /// One new-thread mail per recipient, then the threads recorded.
    async fn send_new_threads(
        &self,
        req: &AccessRequest,
        data: &PluginData,
        recipients: &[String],
    ) -> Result<(), EngineError> {
        let summary = self.summary(&req.id, data);
        let rendered = render::new_request(&summary, &render::Resolution::Pending);
        let sends = recipients.iter().map(|to| {
            let mail = OutgoingMail::new(to.clone(), rendered.clone(), MessageId::generate(), None);
            async move {
                let result = self.mailer.send(&mail).await;
                (to.clone(), result)
            }
        });
        let results = join_all(sends).await;
        let mut threads = Vec::new();
        let mut failures = Vec::new();
        for (to, result) in results {
            match result {
                Ok(id) => {
                    tracing::info!(request_id = %req.id, email = %to, message_id = %id, kind = "new threads", "Successfully sent");
                    threads.push(Thread {
                        email: to,
                        timestamp: rfc3339(SystemTime::now()),
                        message_id: id.as_str().to_owned(),
                    });
                }
                Err(e) => failures.push((to, e)),
            }
        }
        if !threads.is_empty() {
            self.modify(&req.id, |old| {
                let mut d = old.cloned().unwrap_or_default();
                d.threads.extend(threads.iter().cloned());
                Some(d)
            })
            .await?;
        }
        mail_result(&req.id, "new threads", recipients.len(), failures)
    }

    /// Replies for the reviews not yet announced, in every thread.
    async fn send_reviews(&self, req: &AccessRequest) -> Result<(), EngineError> {
        let count = req.reviews.len();
        let claimed = self
            .modify(&req.id, |old| {
                let d = old?;
                if d.threads.is_empty() || d.reviews_count >= count {
                    return None;
                }
                let mut d = d.clone();
                d.reviews_count = count;
                Some(d)
            })
            .await?;
        let Some((old, data)) = claimed else {
            tracing::debug!(request_id = %req.id, "No new reviews to announce");
            return Ok(());
        };
        let summary = self.summary(&req.id, &data);
        let mut total = 0;
        let mut failures = Vec::new();
        for review in &req.reviews[old.map_or(0, |o| o.reviews_count).min(count)..] {
            let rendered = render::review(&summary, &review_summary(review));
            let (n, mut f) = self
                .send_to_threads(&req.id, &data.threads, &rendered, "new review")
                .await;
            total += n;
            failures.append(&mut f);
        }
        mail_result(&req.id, "new review", total, failures)
    }

    /// The resolution (or expiry) mail in every thread, once.
    async fn send_resolution(
        &self,
        id: &str,
        tag: Resolution,
        reason: &str,
        access_list: Option<&str>,
    ) -> Result<(), EngineError> {
        let claimed = self
            .modify(id, |old| {
                let d = old?;
                if d.threads.is_empty() || d.is_resolved() {
                    return None;
                }
                let mut d = d.clone();
                d.resolution = Some(tag);
                d.resolve_reason = reason.to_owned();
                Some(d)
            })
            .await?;
        let Some((_, data)) = claimed else {
            tracing::debug!(request_id = %id, "Resolution already announced (or no threads)");
            return Ok(());
        };
        let status = match tag {
            Resolution::Approved => render::Resolution::Approved(reason.to_owned()),
            Resolution::Denied => render::Resolution::Denied(reason.to_owned()),
            Resolution::Expired => render::Resolution::Expired,
            Resolution::Promoted => render::Resolution::Promoted {
                reason: reason.to_owned(),
                access_list: access_list.unwrap_or_default().to_owned(),
            },
        };
        let rendered = render::resolved(&self.summary(id, &data), &status);
        let (total, failures) = self
            .send_to_threads(id, &data.threads, &rendered, "request resolved")
            .await;
        tracing::info!(request_id = %id, resolution = ?tag, "Marked request with resolution and sent emails");
        mail_result(id, "request resolved", total, failures)
    }

    async fn send_to_threads(
        &self,
        id: &str,
        threads: &[Thread],
        rendered: &render::RenderedMail,
        kind: &'static str,
    ) -> (usize, Vec<(String, MailError)>) {
        let sends = threads.iter().map(|t| {
            let parent = MessageId::parse(&t.message_id).ok();
            let mail = OutgoingMail::new(
                t.email.clone(),
                rendered.clone(),
                MessageId::generate(),
                parent,
            );
            async move { (t.email.clone(), self.mailer.send(&mail).await) }
        });
        let mut failures = Vec::new();
        for (to, result) in join_all(sends).await {
            match result {
                Ok(mid) => {
                    tracing::info!(request_id = %id, email = %to, message_id = %mid, kind, "Successfully sent")
                }
                Err(e) => failures.push((to, e)),
            }
        }
        (threads.len(), failures)
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

    /// Compare-and-swap on the request's plugin data. `update` sees the current data (`None` when
    /// there is none) and returns the new data, or `None` to leave it alone. Returns the old and
    /// new data when a write happened.
    async fn modify(
        &self,
        id: &str,
        update: impl Fn(Option<&PluginData>) -> Option<PluginData>,
    ) -> Result<Option<(Option<PluginData>, PluginData)>, EngineError> {
        for _ in 0..MAX_CAS_TRIES {
            let raw = self.client.get_plugin_data(id, PLUGIN_NAME).await?;
            let old = raw.as_ref().map(PluginData::decode);
            let Some(new) = update(old.as_ref()) else {
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
            // Keys we do not write (e.g. the legacy `email`/`timestamp`) are cleared.
            for k in expect.keys() {
                set.entry(k.clone()).or_default();
            }
            match self
                .client
                .update_plugin_data(id, PLUGIN_NAME, &set, &expect)
                .await
            {
                Ok(()) => return Ok(Some((old, new))),
                Err(TeleportError::CompareFailed(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::TooManyConflicts)
    }
}

fn review_summary(r: &Review) -> ReviewSummary {
    ReviewSummary {
        author: r.author.clone(),
        state: match r.proposed {
            RequestState::Approved => ReviewState::Approved,
            RequestState::Denied => ReviewState::Denied,
            RequestState::Promoted => ReviewState::Other("PROMOTED".into()),
            RequestState::Pending => ReviewState::Other("PENDING".into()),
            RequestState::None => ReviewState::Other("NONE".into()),
            RequestState::Unknown(v) => ReviewState::Other(v.to_string()),
        },
        reason: r.reason.clone(),
        created: r.created.unwrap_or_else(SystemTime::now),
    }
}

fn mail_result(
    id: &str,
    kind: &str,
    total: usize,
    failures: Vec<(String, MailError)>,
) -> Result<(), EngineError> {
    let failed = failures.len();
    let mut first = None;
    for (to, e) in failures {
        tracing::error!(request_id = %id, email = %to, kind, error = %e, transient = e.is_transient(), "Mail could not be delivered");
        first.get_or_insert(e);
    }
    match first {
        None => Ok(()),
        Some(first) => Err(EngineError::Mail {
            failed,
            total,
            first,
        }),
    }
}

impl EventHandler for Engine {
    fn handle(self: Arc<Self>, event: WatchEvent) -> BoxFuture {
        Box::pin(async move { self.handle_event(event).await })
    }
}

/// The plugin data map type, for tests.
pub type RawPluginData = BTreeMap<String, String>;
