//! The watch stream's life: open it, require INIT within 15 s, reconcile, hand events to the
//! handler, reconnect with backoff when the stream is lost. Events of one request are handled one
//! at a time in arrival order; different requests run concurrently, at most 128 events in flight,
//! and beyond that the stream is not read (back-pressure).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::teleport::{TeleportClient, TeleportError, WatchEvent};

/// A boxed future, as handlers return.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What is done with each event.
pub trait EventHandler: Send + Sync + 'static {
    /// Handles one PUT or DELETE of one request.
    fn handle(self: Arc<Self>, event: WatchEvent) -> BoxFuture;
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
}

impl Default for WatcherConfig {
    fn default() -> Self {
        Self {
            fail_fast: false,
            init_timeout: Duration::from_secs(15),
            max_in_flight: 128,
            reconcile: true,
        }
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

/// Watches until `stop` (then waits for the events in flight) or a fatal error.
pub async fn run(
    client: TeleportClient,
    handler: Arc<dyn EventHandler>,
    config: WatcherConfig,
    ready: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Result<(), WatchError> {
    let dispatcher = Dispatcher::new(handler, config.max_in_flight);
    let mut backoff = Backoff::reconnect();
    let mut announced = false;
    let result = loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            r = watch_once(&client, &dispatcher, &config, &ready, &metrics, &mut announced, &mut backoff) => r,
        };
        ready.send_replace(false);
        metrics.set_ready(false);
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
        metrics.reconnect();
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    };
    ready.send_replace(false);
    dispatcher.drain().await;
    result
}

/// One watch stream from open to loss. `Err` says why it ended.
async fn watch_once(
    client: &TeleportClient,
    dispatcher: &Dispatcher,
    config: &WatcherConfig,
    ready: &watch::Sender<bool>,
    metrics: &Metrics,
    announced: &mut bool,
    backoff: &mut Backoff,
) -> Result<(), TeleportError> {
    let mut stream = client.watch_access_requests().await?;
    let first = tokio::time::timeout(config.init_timeout, stream.next())
        .await
        .map_err(|_| TeleportError::Unavailable("watcher initialization timed out".into()))?;
    match first {
        Some(Ok(WatchEvent::Init)) => metrics.event("init"),
        Some(Ok(other)) => {
            return Err(TeleportError::Unavailable(format!(
                "unexpected first event on the watch (expected INIT): {other:?}"
            )));
        }
        Some(Err(e)) => return Err(e),
        None => {
            return Err(TeleportError::Unavailable(
                "the watch stream closed before INIT".into(),
            ));
        }
    }
    backoff.reset();
    if config.reconcile {
        let requests = client.list_access_requests(None).await?;
        tracing::debug!(
            count = requests.len(),
            "Reconciling the existing access requests"
        );
        for r in requests {
            dispatcher.submit(WatchEvent::Put(Box::new(r))).await;
        }
    }
    ready.send_replace(true);
    metrics.set_ready(true);
    if !*announced {
        tracing::info!("Plugin is ready");
        *announced = true;
    } else {
        tracing::info!("Watch re-established");
    }
    loop {
        match stream.next().await {
            Some(Ok(event @ (WatchEvent::Put(_) | WatchEvent::Delete { .. }))) => {
                metrics.event(if matches!(event, WatchEvent::Put(_)) {
                    "put"
                } else {
                    "delete"
                });
                dispatcher.submit(event).await;
            }
            Some(Ok(WatchEvent::Init)) => {
                metrics.event("init");
                tracing::debug!("Ignoring a second INIT");
            }
            // The rule cache is not wired yet (issue 18): the old opener never asks for rules.
            Some(Ok(event @ (WatchEvent::RulePut(_) | WatchEvent::RuleDelete { .. }))) => {
                metrics.event("other");
                tracing::debug!(?event, "Ignoring a rule event");
            }
            Some(Ok(WatchEvent::Other(what))) => {
                metrics.event("other");
                tracing::debug!(%what, "Ignoring an event");
            }
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        }
    }
}

fn key_of(event: &WatchEvent) -> &str {
    match event {
        WatchEvent::Put(r) => &r.id,
        WatchEvent::Delete { id } => id,
        _ => "",
    }
}

type Queues = Arc<Mutex<HashMap<String, VecDeque<(WatchEvent, OwnedSemaphorePermit)>>>>;

/// Runs handlers: one at a time per request, concurrently across requests, bounded overall.
struct Dispatcher {
    handler: Arc<dyn EventHandler>,
    permits: Arc<Semaphore>,
    capacity: usize,
    queues: Queues,
}

impl Dispatcher {
    fn new(handler: Arc<dyn EventHandler>, capacity: usize) -> Self {
        Self {
            handler,
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            queues: Arc::default(),
        }
    }

    /// Queues an event; waits while `capacity` events are in flight.
    async fn submit(&self, event: WatchEvent) {
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        let key = key_of(&event).to_owned();
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = queues.get_mut(&key) {
            queue.push_back((event, permit));
            return;
        }
        queues.insert(key.clone(), VecDeque::new());
        drop(queues);
        let handler = self.handler.clone();
        let queues = self.queues.clone();
        tokio::spawn(async move {
            let (mut event, mut permit) = (event, permit);
            loop {
                handler.clone().handle(event).await;
                drop(permit);
                let mut q = queues.lock().unwrap_or_else(|e| e.into_inner());
                match q.get_mut(&key).and_then(VecDeque::pop_front) {
                    Some((next, next_permit)) => (event, permit) = (next, next_permit),
                    None => {
                        q.remove(&key);
                        return;
                    }
                }
            }
        });
    }

    /// Waits until every event in flight is handled.
    async fn drain(&self) {
        let _ = self.permits.acquire_many(self.capacity as u32).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::teleport::{AccessRequest, RequestState};

    fn put(id: &str, reason: &str) -> WatchEvent {
        WatchEvent::Put(Box::new(AccessRequest {
            id: id.into(),
            user: "u".into(),
            roles: vec![],
            state: RequestState::Pending,
            reason: reason.into(),
            resolve_reason: String::new(),
            created: None,
            expires: None,
            reviews: vec![],
            suggested_reviewers: vec![],
            promoted_to: None,
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
