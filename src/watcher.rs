//! The watch stream's life: open it, require INIT within 15 s, reconcile while reading it, hand
//! events to the handler, make sure a quiet stream's server still answers, reconnect with backoff
//! when the stream is lost. Events of one request are handled one at a time in arrival order;
//! different requests run concurrently, at most 128 events in flight, and beyond that the stream
//! is not read (back-pressure). A reconcile may fill only half of those slots, so live events keep
//! flowing while it runs.

mod dispatch;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::OptionFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::rules::RuleSet;
use crate::teleport::{
    ACCESS_MONITORING_RULE_KIND, AccessRequest, TeleportClient, TeleportError, WatchEvent,
};
use dispatch::Dispatcher;

/// A boxed future, as handlers return.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What is done with each event.
pub trait EventHandler: Send + Sync + 'static {
    /// Handles one PUT or DELETE of one request.
    fn handle(self: Arc<Self>, event: WatchEvent) -> BoxFuture;

    /// Before a reconcile lists the requests: a look at all of them at once that tells which
    /// need nothing, so that those are not handed over one by one. `None`: nothing is known,
    /// every listed request is handed over.
    fn survey(self: Arc<Self>) -> SurveyFuture {
        Box::pin(async { None })
    }
}

/// What [`EventHandler::survey`] returns.
pub type SurveyFuture = Pin<Box<dyn Future<Output = Option<Box<dyn Settled>>> + Send>>;

/// Which listed requests need nothing from the handler.
pub trait Settled: Send + Sync {
    /// `true` only when handling `request` as listed would send nothing (nor record anything
    /// that leads to a send later: at most a lapsed claim would be tidied away).
    fn owes_nothing(&self, request: &AccessRequest) -> bool;
}

/// Watcher settings.
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// `TELEPORT_PLUGIN_FAIL_FAST`: a lost watch ends the process instead of reconnecting.
    pub fail_fast: bool,
    /// How long the first event (INIT) may take.
    pub init_timeout: Duration,
    /// Events in flight (running or queued) before the stream is no longer read.
    pub max_in_flight: usize,
    /// After every INIT, list the requests and handle each as if it had just been PUT.
    pub reconcile: bool,
    /// How long the stream may stay quiet before the server must answer a Ping.
    pub quiet_probe: Duration,
}

impl Default for WatcherConfig {
    fn default() -> Self {
        Self {
            fail_fast: false,
            init_timeout: Duration::from_secs(15),
            max_in_flight: 128,
            reconcile: true,
            // A live watch carries nothing but events: Teleport's keep-alives are HTTP/2 PINGs,
            // which catch a dead link (60 s + 180 s) but not a server that stopped serving. On a
            // quiet cluster a Ping every two minutes is cheap; a stuck watch is re-opened within
            // this plus `CALL_TIMEOUT`.
            quiet_probe: Duration::from_secs(120),
        }
    }
}

/// How the watcher and the rest of the daemon talk.
pub struct Links {
    /// `true` while a watch is established and its first reconcile has handed over every
    /// existing request, until the watch is lost.
    pub ready: watch::Sender<bool>,
    /// Each message asks for one more reconcile on the live watch (a reload fixed the mailer).
    pub reconcile: mpsc::Receiver<()>,
    pub metrics: Arc<Metrics>,
    /// The Access Monitoring Rules to keep current: watched beside the requests and listed
    /// afresh at every (re)connect. `None`: requests only.
    pub rules: Option<Arc<RuleSet>>,
    /// The plugin name rules must notify (`email`).
    pub plugin: &'static str,
}

impl Links {
    /// Links nobody listens to, with fresh metrics.
    pub fn detached() -> Self {
        Self {
            ready: watch::channel(false).0,
            reconcile: mpsc::channel(1).1,
            metrics: Arc::default(),
            rules: None,
            plugin: "email",
        }
    }

    fn set_ready(&self, ready: bool) {
        self.ready.send_replace(ready);
        self.metrics.set_ready(ready);
    }
}

/// Why watching stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the watch on access requests was lost and TELEPORT_PLUGIN_FAIL_FAST is set: {0}")]
    LostFailFast(TeleportError),
    #[error("cannot watch access requests: {0}")]
    Fatal(TeleportError),
}

/// Watches until `stop` (then waits for the events in flight) or a fatal error, which cancels
/// `stop` before that wait so that the work the events started ends as at shutdown.
pub async fn run(
    client: TeleportClient,
    handler: Arc<dyn EventHandler>,
    config: WatcherConfig,
    mut links: Links,
    stop: CancellationToken,
) -> Result<(), WatchError> {
    let dispatcher = Dispatcher::new(handler, config.max_in_flight);
    let mut backoff = Backoff::reconnect();
    let mut announced = false;
    let result = loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            r = watch_once(&client, &dispatcher, &config, &mut links, &mut announced, &mut backoff) => r,
        };
        links.set_ready(false);
        let error = match outcome {
            Ok(()) => TeleportError::Unavailable("the watch stream ended".into()),
            Err(e) => e,
        };
        if !(error.is_connection_problem()) {
            break Err(WatchError::Fatal(error));
        }
        if config.fail_fast {
            break Err(WatchError::LostFailFast(error));
        }
        let delay = backoff.next_delay();
        tracing::warn!(error = %error, retry_in = ?delay, "Connection problem with the watch; reconnecting");
        links.metrics.reconnect();
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    };
    links.set_ready(false);
    if result.is_err() {
        stop.cancel();
    }
    dispatcher.drain().await;
    result
}

type Reconcile<'a> = Pin<Box<dyn Future<Output = Result<Reconciled, TeleportError>> + Send + 'a>>;

/// One watch stream from open to loss. `Err` says why it ended.
async fn watch_once(
    client: &TeleportClient,
    dispatcher: &Dispatcher,
    config: &WatcherConfig,
    links: &mut Links,
    announced: &mut bool,
    backoff: &mut Backoff,
) -> Result<(), TeleportError> {
    let mut stream = open_stream(client, config, links).await?;
    backoff.reset();
    // This watch's own reconcile covers what was asked for while there was none.
    while links.reconcile.try_recv().is_ok() {}
    let start = || -> Reconcile<'_> { Box::pin(reconcile(client, dispatcher)) };
    let mut reconciling = config.reconcile.then(start);
    if reconciling.is_none() {
        caught_up(links, announced);
    }
    let mut again = false;
    let mut asks_open = true;
    loop {
        tokio::select! {
            done = OptionFuture::from(reconciling.as_mut()), if reconciling.is_some() => {
                reconciling = std::mem::take(&mut again).then(start);
                if let Some(done) = done.transpose()? {
                    tracing::debug!(listed = done.listed, settled = done.settled, "Reconciled the existing access requests");
                }
                if !*links.ready.borrow() {
                    caught_up(links, announced);
                }
            }
            asked = links.reconcile.recv(), if asks_open => match asked {
                Some(()) if reconciling.is_some() => again = true,
                Some(()) => reconciling = Some(start()),
                None => asks_open = false,
            },
            event = next_event(client, &mut stream, config.quiet_probe) => match event? {
                Some(event) => dispatch(event, dispatcher, links).await,
                None => return Ok(()),
            },
        }
    }
}

/// A watch stream past its INIT event, with the rules listed afresh when they are watched too.
async fn open_stream(
    client: &TeleportClient,
    config: &WatcherConfig,
    links: &Links,
) -> Result<crate::teleport::WatchStream, TeleportError> {
    let mut stream = match &links.rules {
        Some(_) => client.watch_requests_and_rules().await?,
        None => client.watch_access_requests().await?,
    };
    expect_init(&mut stream, config.init_timeout).await?;
    links.metrics.event("init");
    if let Some(rules) = &links.rules {
        load_rules(client, rules, links.plugin, stream.confirmed_kinds()).await?;
    }
    Ok(stream)
}

/// Lists the rules afresh when the server confirmed it will send their changes (or did not say);
/// a role that may not read them routes by `role_to_recipients` alone, as the original does.
async fn load_rules(
    client: &TeleportClient,
    rules: &RuleSet,
    plugin: &str,
    confirmed: Option<&[String]>,
) -> Result<(), TeleportError> {
    let watched = confirmed.is_none_or(|k| k.iter().any(|k| k == ACCESS_MONITORING_RULE_KIND));
    let listed = match watched {
        true => client.list_monitoring_rules(plugin).await,
        false => Err(TeleportError::AccessDenied(
            "the watch left out access_monitoring_rule".into(),
        )),
    };
    match listed {
        Ok(list) => {
            rules.replace_all(list);
            tracing::info!(count = rules.len(), "Access monitoring rules loaded");
            Ok(())
        }
        Err(e @ (TeleportError::AccessDenied(_) | TeleportError::Unimplemented(_))) => {
            rules.replace_all(Vec::new());
            tracing::warn!(error = %e, "Access monitoring rules cannot be read (the plugin's role needs `read` and `list` on `access_monitoring_rule`); mail is routed by role_to_recipients only");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The watch is established and every existing request handed over: ready.
fn caught_up(links: &Links, announced: &mut bool) {
    links.set_ready(true);
    if !*announced {
        tracing::info!("Plugin is ready");
        *announced = true;
    } else {
        tracing::info!("Watch re-established");
    }
}

/// The first event must be INIT, within `timeout`.
async fn expect_init(
    stream: &mut crate::teleport::WatchStream,
    timeout: Duration,
) -> Result<(), TeleportError> {
    let first = tokio::time::timeout(timeout, stream.next())
        .await
        .map_err(|_| TeleportError::Unavailable("watcher initialization timed out".into()))?;
    match first {
        Some(Ok(WatchEvent::Init)) => Ok(()),
        Some(Ok(other)) => Err(TeleportError::Unavailable(format!(
            "unexpected first event on the watch (expected INIT): {other:?}"
        ))),
        Some(Err(e)) => Err(e),
        None => Err(TeleportError::Unavailable(
            "the watch stream closed before INIT".into(),
        )),
    }
}

/// The next event (`None`: the server ended the stream). After `quiet` without one, the server
/// must answer a Ping, or the watch counts as stuck. Cancel-safe.
async fn next_event(
    client: &TeleportClient,
    stream: &mut crate::teleport::WatchStream,
    quiet: Duration,
) -> Result<Option<WatchEvent>, TeleportError> {
    loop {
        match tokio::time::timeout(quiet, stream.next()).await {
            Ok(next) => return next.transpose(),
            Err(_) => {
                client.ping().await.map_err(|e| {
                    TeleportError::Unavailable(format!(
                        "no event for {}s and Teleport does not answer: {e}",
                        quiet.as_secs()
                    ))
                })?;
                tracing::debug!(quiet = ?quiet, "The watch is quiet; Teleport answered a Ping");
            }
        }
    }
}

/// Hands a request's event to the handler; applies a rule's change before the next event.
async fn dispatch(event: WatchEvent, dispatcher: &Dispatcher, links: &Links) {
    let metrics = &links.metrics;
    match event {
        WatchEvent::Put(_) | WatchEvent::Delete { .. } => {
            metrics.event(if matches!(event, WatchEvent::Put(_)) {
                "put"
            } else {
                "delete"
            });
            dispatcher.submit(event).await;
        }
        WatchEvent::Init => {
            metrics.event("init");
            tracing::debug!("Ignoring a second INIT");
        }
        WatchEvent::RulePut(rule) => {
            metrics.event("rule");
            tracing::info!(rule = %rule.name, "Access monitoring rule created or changed");
            if let Some(rules) = &links.rules {
                rules.put(*rule);
            }
        }
        WatchEvent::RuleDelete { name } => {
            metrics.event("rule");
            tracing::info!(rule = %name, "Access monitoring rule deleted");
            if let Some(rules) = &links.rules {
                rules.delete(&name);
            }
        }
        WatchEvent::Other(what) => {
            metrics.event("other");
            tracing::debug!(%what, "Ignoring an event");
        }
    }
}

/// Hands every existing request to the handler as if it had just been PUT, a page at a time,
/// except those the handler's survey (read before the listing) says need nothing.
async fn reconcile(
    client: &TeleportClient,
    dispatcher: &Dispatcher,
) -> Result<Reconciled, TeleportError> {
    let _mark = dispatcher.reconciling();
    let settled = dispatcher.handler.clone().survey().await;
    let owes_nothing = |r: &AccessRequest| settled.as_ref().is_some_and(|s| s.owes_nothing(r));
    let mut pages = client.access_request_pages(None);
    let mut done = Reconciled::default();
    while let Some(page) = pages.next_page().await? {
        done.listed += page.len();
        for request in page {
            if owes_nothing(&request) {
                done.settled += 1;
                continue;
            }
            dispatcher
                .submit_reconciled(WatchEvent::Put(Box::new(request)))
                .await;
        }
    }
    Ok(done)
}

/// What a reconcile did.
#[derive(Debug, Default)]
struct Reconciled {
    listed: usize,
    /// Listed, but owing nothing: not handed over.
    settled: usize,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::teleport::AccessRequest;

    fn put(id: &str, reason: &str) -> WatchEvent {
        WatchEvent::Put(Box::new(AccessRequest {
            user: "u".into(),
            roles: vec![],
            reason: reason.into(),
            ..AccessRequest::sample(id)
        }))
    }

    struct Recorder {
        log: Mutex<Vec<String>>,
        running: AtomicUsize,
        max_running: AtomicUsize,
    }

    impl EventHandler for Recorder {
        fn handle(self: Arc<Self>, event: WatchEvent) -> BoxFuture {
            Box::pin(async move {
                let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_running.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                if let WatchEvent::Put(r) = &event {
                    self.log
                        .lock()
                        .unwrap()
                        .push(format!("{}:{}", r.id, r.reason));
                }
                self.running.fetch_sub(1, Ordering::SeqCst);
            })
        }
    }

    #[tokio::test]
    async fn per_request_order_and_cross_request_concurrency() {
        let rec = Arc::new(Recorder {
            log: Mutex::default(),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
        });
        let d = Dispatcher::new(rec.clone(), 128);
        for i in 0..5 {
            for id in ["a", "b", "c"] {
                d.submit(put(id, &i.to_string())).await;
            }
        }
        d.drain().await;
        let log = rec.log.lock().unwrap().clone();
        for id in ["a", "b", "c"] {
            let seq: Vec<_> = log.iter().filter(|l| l.starts_with(id)).cloned().collect();
            let want: Vec<_> = (0..5).map(|i| format!("{id}:{i}")).collect();
            assert_eq!(seq, want);
        }
        assert!(
            rec.max_running.load(Ordering::SeqCst) >= 2,
            "requests did not run concurrently"
        );
        assert!(rec.max_running.load(Ordering::SeqCst) <= 3);
    }

    #[tokio::test]
    async fn in_flight_is_bounded() {
        let rec = Arc::new(Recorder {
            log: Mutex::default(),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
        });
        let d = Dispatcher::new(rec.clone(), 4);
        for i in 0..20 {
            d.submit(put(&format!("r{i}"), "x")).await;
            assert!(d.permits.available_permits() <= 4);
        }
        d.drain().await;
        assert_eq!(rec.log.lock().unwrap().len(), 20);
        assert!(rec.max_running.load(Ordering::SeqCst) <= 4);
    }
}
