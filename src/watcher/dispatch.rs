//! The dispatcher: hands each event to the handler, one at a time per request, concurrently
//! across requests, with the number in flight bounded (a reconcile's share of it too).

use super::*;

fn key_of(event: &WatchEvent) -> &str {
    match event {
        WatchEvent::Put(r) => &r.id,
        WatchEvent::Delete { id } => id,
        _ => "",
    }
}

/// An event's place among those in flight: a slot of the dispatcher's, and for a reconciled
/// event one of the reconcile's share too. Both are freed when the handler is done.
struct Slot {
    _permit: OwnedSemaphorePermit,
    _share: Option<OwnedSemaphorePermit>,
}

type Queues = Arc<Mutex<HashMap<String, VecDeque<(WatchEvent, Slot)>>>>;

/// Runs handlers: one at a time per request, concurrently across requests, bounded overall.
pub(super) struct Dispatcher {
    pub(super) handler: Arc<dyn EventHandler>,
    pub(super) permits: Arc<Semaphore>,
    /// Half of the slots: what reconciled events may hold at once.
    reconcile_share: Arc<Semaphore>,
    capacity: usize,
    queues: Queues,
    /// While a reconcile runs: the requests a live event came for since it started. A listed
    /// copy of one of them is older than that event and is not handed over after it.
    live_during_reconcile: Mutex<Option<HashSet<String>>>,
}

/// Marks a reconcile as running for as long as it lives (a reconcile cut short by a lost
/// watch is dropped, and so is the mark).
pub(super) struct Reconciling<'a>(&'a Dispatcher);

impl Drop for Reconciling<'_> {
    fn drop(&mut self) {
        *self.0.live_seen() = None;
    }
}

impl Dispatcher {
    pub(super) fn new(handler: Arc<dyn EventHandler>, capacity: usize) -> Self {
        Self {
            handler,
            permits: Arc::new(Semaphore::new(capacity)),
            reconcile_share: Arc::new(Semaphore::new((capacity / 2).max(1))),
            capacity,
            queues: Arc::default(),
            live_during_reconcile: Mutex::default(),
        }
    }

    fn live_seen(&self) -> std::sync::MutexGuard<'_, Option<HashSet<String>>> {
        (self.live_during_reconcile.lock()).unwrap_or_else(|e| e.into_inner())
    }

    /// Starts tracking live events for a reconcile.
    pub(super) fn reconciling(&self) -> Reconciling<'_> {
        *self.live_seen() = Some(HashSet::new());
        Reconciling(self)
    }

    /// Queues a live event; waits while `capacity` events are in flight.
    pub(super) async fn submit(&self, event: WatchEvent) {
        if let Some(seen) = self.live_seen().as_mut() {
            seen.insert(key_of(&event).to_owned());
        }
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        self.enqueue(
            event,
            Slot {
                _permit: permit,
                _share: None,
            },
        );
    }

    /// Queues a reconciled event; waits while the reconcile's share is in use, or every slot.
    pub(super) async fn submit_reconciled(&self, event: WatchEvent) {
        let newer = |seen: &Option<HashSet<String>>| {
            seen.as_ref().is_some_and(|s| s.contains(key_of(&event)))
        };
        if newer(&self.live_seen()) {
            return;
        }
        let Ok(share) = self.reconcile_share.clone().acquire_owned().await else {
            return;
        };
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        // Again after the wait, under the lock a live event is recorded with: one that came
        // meanwhile is newer, and one that comes later is queued after this copy.
        let seen = self.live_seen();
        if newer(&seen) {
            return;
        }
        self.enqueue(
            event,
            Slot {
                _permit: permit,
                _share: Some(share),
            },
        );
        drop(seen);
    }

    fn enqueue(&self, event: WatchEvent, slot: Slot) {
        let key = key_of(&event).to_owned();
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = queues.get_mut(&key) {
            queue.push_back((event, slot));
            return;
        }
        queues.insert(key.clone(), VecDeque::new());
        drop(queues);
        let handler = self.handler.clone();
        let queues = self.queues.clone();
        tokio::spawn(async move {
            let (mut event, mut slot) = (event, slot);
            loop {
                handler.clone().handle(event).await;
                drop(slot);
                let mut q = queues.lock().unwrap_or_else(|e| e.into_inner());
                match q.get_mut(&key).and_then(VecDeque::pop_front) {
                    Some((next, next_slot)) => (event, slot) = (next, next_slot),
                    None => {
                        q.remove(&key);
                        return;
                    }
                }
            }
        });
    }

    /// Waits until every event in flight is handled.
    pub(super) async fn drain(&self) {
        let _ = self.permits.acquire_many(self.capacity as u32).await;
    }
}
