//! When pending requests are due a reminder (`delivery.reminder_interval`).
//!
//! Due reminders are found without scanning the cluster: an index in memory holds the pending
//! requests only, each with the time its next round falls due. It is fed by the events the
//! watcher hands over (a pending request is added or updated, a resolved or deleted one
//! dropped) and by every reconcile's listing, which sees each pending request even when the
//! survey spares it any call. Only a request whose time has come costs anything: one stage of
//! the engine, which reads its plugin data, claims it and records the round there, so a restart
//! or a second replica sends each round once. After a restart every pending request older than
//! one interval is looked at once (a read), in case its round went unsent while the daemon was
//! down.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Reminders;
use crate::engine::{Engine, reminder_round};
use crate::teleport::{AccessRequest, RequestState};

/// The pending requests and when each is next due.
pub(super) struct ReminderClock {
    settings: Reminders,
    index: Mutex<Index>,
    /// Woken when an entry may have become the earliest.
    changed: Notify,
}

#[derive(Default)]
struct Index {
    /// (due, id), earliest first.
    due: BTreeSet<(SystemTime, String)>,
    /// id → when it is next due (`None`: its reminder is being sent) and the request as seen
    /// with the most reviews (they say who reviewed; an older copy has fewer).
    requests: HashMap<String, (Option<SystemTime>, AccessRequest)>,
}

impl ReminderClock {
    pub(super) fn new(settings: Reminders) -> Self {
        Self {
            settings,
            index: Mutex::default(),
            changed: Notify::new(),
        }
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a request as the watch or a listing shows it: pending ones are (re)scheduled,
    /// others forgotten.
    pub(super) fn track(&self, req: &AccessRequest) {
        if req.state != RequestState::Pending {
            return self.forget(&req.id);
        }
        let Some(created) = req.created else {
            return;
        };
        let mut index = self.index();
        if let Some((_, seen)) = index.requests.get_mut(&req.id) {
            // Already held: a copy with more reviews is newer (reviews are only ever added).
            if req.reviews.len() >= seen.reviews.len() {
                *seen = req.clone();
            }
            return;
        }
        let Some(due) = self.first_due(created, SystemTime::now()) else {
            return;
        };
        index.due.insert((due, req.id.clone()));
        index
            .requests
            .insert(req.id.clone(), (Some(due), req.clone()));
        drop(index);
        self.changed.notify_one();
    }

    /// Drops a request (resolved, or deleted), also while its reminder is being sent.
    pub(super) fn forget(&self, id: &str) {
        let mut index = self.index();
        if let Some((Some(due), _)) = index.requests.remove(id) {
            index.due.remove(&(due, id.to_owned()));
        }
    }

    /// The round boundary to look at first: the latest one passed (its round may have gone
    /// unsent while no daemon ran), else the first; `None` once the last round is more than an
    /// interval past (a request listed again and again costs nothing then).
    fn first_due(&self, created: SystemTime, now: SystemTime) -> Option<SystemTime> {
        let Reminders { interval, limit } = self.settings;
        let passed = match now.duration_since(created) {
            Ok(age) => age.as_secs() / interval.as_secs().max(1),
            Err(_) => 0,
        };
        if passed > u64::from(limit) {
            return None;
        }
        boundary(created, interval, u32::try_from(passed.max(1)).ok()?)
    }

    /// The boundary after `round`, if there is one.
    fn after(&self, created: SystemTime, round: u32) -> Option<SystemTime> {
        let Reminders { interval, limit } = self.settings;
        (round < limit).then(|| boundary(created, interval, round + 1))?
    }

    /// The requests due at `now`, marked as being reminded.
    fn take_due(&self, now: SystemTime) -> Vec<AccessRequest> {
        let mut index = self.index();
        let mut out = Vec::new();
        while let Some((due, id)) = index.due.first().cloned() {
            if due > now {
                break;
            }
            index.due.pop_first();
            if let Some((when, req)) = index.requests.get_mut(&id) {
                *when = None;
                out.push(req.clone());
            }
        }
        out
    }

    /// Schedules a request's next round after `round`; drops it after the last one, and leaves
    /// it alone if it was dropped (resolved, deleted) while its reminder was being sent.
    fn reschedule(&self, req: AccessRequest, round: u32) {
        let mut index = self.index();
        let Some((when, _)) = index.requests.get_mut(&req.id) else {
            return;
        };
        if when.is_some() {
            return;
        }
        match req.created.and_then(|c| self.after(c, round)) {
            Some(due) => {
                *when = Some(due);
                index.due.insert((due, req.id));
            }
            None => {
                index.requests.remove(&req.id);
            }
        }
    }

    /// The request as last seen, while it is still tracked (`None`: resolved or deleted).
    fn current(&self, id: &str) -> Option<AccessRequest> {
        self.index().requests.get(id).map(|(_, req)| req.clone())
    }

    fn next_due(&self) -> Option<SystemTime> {
        self.index().due.first().map(|(due, _)| *due)
    }

    /// How many requests are waiting for a reminder.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.index().requests.len()
    }
}

/// Schedules a request's next round when dropped.
struct Next {
    clock: Arc<ReminderClock>,
    req: Option<AccessRequest>,
    round: u32,
}

impl Drop for Next {
    fn drop(&mut self) {
        if let Some(req) = self.req.take() {
            self.clock.reschedule(req, self.round);
            self.clock.changed.notify_one();
        }
    }
}

/// When round `round` falls due; `None` past the end of time (a huge interval).
fn boundary(created: SystemTime, interval: Duration, round: u32) -> Option<SystemTime> {
    created.checked_add(interval.checked_mul(round)?)
}

/// Reminders being sent at once: a request whose claim another replica holds waits for it
/// (up to the retry period) without holding up the others.
const IN_FLIGHT: usize = 8;

/// Sends reminders as they fall due, a few requests at a time, until `stop`; then waits for the
/// reminders being sent to finish and be recorded (as the watcher drains its events), so one
/// the server took is not sent again after a restart. The process's grace period bounds it.
pub(super) async fn run(clock: Arc<ReminderClock>, engine: Arc<Engine>, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    send_due(&clock, &engine, &slots, &stop).await;
    // Each reminder holds a slot until it is done: all of them back means none in flight.
    let _ = slots.acquire_many(IN_FLIGHT as u32).await;
}

async fn send_due(
    clock: &Arc<ReminderClock>,
    engine: &Arc<Engine>,
    slots: &Arc<tokio::sync::Semaphore>,
    stop: &CancellationToken,
) {
    let Reminders { interval, limit } = clock.settings;
    loop {
        let wait = clock
            .next_due()
            .map(|due| due.duration_since(SystemTime::now()).unwrap_or_default())
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = clock.changed.notified() => continue,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = SystemTime::now();
        for req in clock.take_due(now) {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            if stop.is_cancelled() {
                return;
            }
            // The copy as it is now: a review that came while this one waited for a slot
            // says who no longer needs reminding (an older copy would be refused as stale).
            let Some(req) = clock.current(&req.id) else {
                continue;
            };
            let round = reminder_round(req.created, interval, limit, now).unwrap_or(0);
            let (engine, clock) = (engine.clone(), clock.clone());
            tokio::spawn(async move {
                // Put back for its next round however the task ends (a panic included).
                let next = Next {
                    clock,
                    req: Some(req.clone()),
                    round,
                };
                if let Err(e) = engine.remind(&req, interval, limit).await {
                    tracing::debug!(request_id = %req.id, error = %e, "Reminder not (all) sent; the next round tries again");
                }
                drop(next);
                drop(slot);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::engine::testing::MemoryStore;
    use crate::engine::{PluginDataStore, RawPluginData};
    use crate::teleport::{TeleportError, WatchEvent};

    fn pending(id: &str, created: SystemTime) -> AccessRequest {
        AccessRequest {
            created: Some(created),
            ..AccessRequest::sample(id)
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// Hourly reminders, three rounds.
    fn hourly() -> ReminderClock {
        ReminderClock::new(Reminders {
            interval: HOUR,
            limit: 3,
        })
    }

    #[test]
    fn only_pending_requests_are_held_and_each_once() {
        let clock = hourly();
        let now = SystemTime::now();
        clock.track(&pending("a", now));
        clock.track(&pending("a", now));
        clock.track(&pending("b", now - 2 * HOUR));
        clock.track(&pending("long past its last round", now - 10 * HOUR));
        assert_eq!(clock.len(), 2);
        let resolved = AccessRequest {
            state: RequestState::Approved,
            ..pending("a", now)
        };
        clock.track(&resolved);
        assert_eq!(clock.len(), 1);
        clock.forget("b");
        assert_eq!(clock.len(), 0);
        assert_eq!(clock.next_due(), None);
    }

    #[test]
    fn a_new_request_is_due_after_one_interval_and_an_old_one_at_once() {
        let clock = hourly();
        let now = SystemTime::now();
        clock.track(&pending("new", now));
        clock.track(&pending("old", now - HOUR * 2 - Duration::from_secs(60)));
        let due = clock.take_due(now);
        assert_eq!(
            due.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["old"]
        );
        assert_eq!(clock.next_due(), Some(now + HOUR));
        // The old one comes back for its third (last) round, then no more.
        clock.reschedule(due.into_iter().next().unwrap(), 2);
        assert_eq!(clock.len(), 2);
        let old = clock.take_due(now + HOUR * 2);
        assert_eq!(old.len(), 2);
        for req in old {
            clock.reschedule(req, 3);
        }
        assert_eq!(clock.len(), 0, "no round past the limit");
    }

    #[test]
    fn an_interval_past_the_end_of_time_schedules_nothing_and_does_not_panic() {
        let clock = ReminderClock::new(Reminders {
            interval: Duration::from_secs(u64::MAX / 4),
            limit: 100,
        });
        let now = SystemTime::now();
        clock.track(&pending("a", now));
        clock.track(&pending("b", now - Duration::from_secs(60)));
        assert_eq!(clock.after(now, 99), None);
        assert!(clock.take_due(now).is_empty());
    }

    // -----------------------------------------------------------------------------------------
    // Review tests (review-rem).

    /// A request past its last round leaves the index; the next reconcile lists it again (it is
    /// still pending) and must not make it due again: else every reconcile reads every old
    /// pending request once more (the full scan the index was to avoid).
    #[test]
    fn review_rem_a_request_past_its_last_round_is_not_due_again_when_listed_again() {
        let clock = hourly();
        let now = SystemTime::now();
        let old = pending("old", now - 10 * HOUR);
        clock.track(&old);
        for req in clock.take_due(now) {
            clock.reschedule(req, 3);
        }
        assert_eq!(clock.len(), 0);
        // The next reconcile's listing.
        clock.track(&old);
        assert!(
            clock.take_due(now).is_empty(),
            "every round of it is long past: nothing is due"
        );
    }

    /// A request resolved or deleted while its reminder is in flight (taken out of the index)
    /// is forgotten then, and must not be put back by the reschedule that follows the reminder.
    #[test]
    fn review_rem_a_request_dropped_while_its_reminder_is_in_flight_is_not_put_back() {
        let clock = hourly();
        let now = SystemTime::now();
        clock.track(&pending("r", now - HOUR - Duration::from_secs(60)));
        let due = clock.take_due(now);
        assert_eq!(due.len(), 1);
        // Meanwhile: the request is deleted (or an approval comes: `track` of a resolved copy).
        clock.forget("r");
        let resolved = AccessRequest {
            state: RequestState::Approved,
            ..pending("r", now - HOUR)
        };
        clock.track(&resolved);
        // The reminder is done: back it goes.
        for req in due {
            clock.reschedule(req, 1);
        }
        assert_eq!(
            clock.len(),
            0,
            "a resolved or deleted request held for two more rounds"
        );
    }

    /// The index keeps the copy it saw last, not the newest: a reconcile's listed copy (read
    /// before a live event that added a review) replaces the event's, and the reviewer is then
    /// reminded although they reviewed. The watcher drops such stale listed copies
    /// (`live_during_reconcile`); `Listed::owes_nothing` tracks them before that check.
    #[test]
    fn review_rem_an_older_copy_does_not_undo_a_review() {
        let clock = hourly();
        let now = SystemTime::now();
        let created = now - HOUR - Duration::from_secs(60);
        let listed = pending("r", created);
        clock.track(&listed);
        let reviewed = AccessRequest {
            reviews: vec![crate::teleport::Review {
                author: "b@example.com".into(),
                proposed: RequestState::Approved,
                reason: String::new(),
                created: None,
            }],
            ..pending("r", created)
        };
        clock.track(&reviewed); // the live event
        clock.track(&listed); // the reconcile's older listed copy, handled after it
        let due = clock.take_due(now);
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].reviews.len(),
            1,
            "b@'s review was lost from the index"
        );
    }

    /// `created + interval * round` overflows for a long interval (accepted by the config:
    /// `reminder_interval = "3000000000000000h"`), and `track` runs in the watcher's handler
    /// before the engine: a panic there loses every event's mail, not only reminders.
    #[test]
    fn review_rem_a_huge_interval_does_not_panic() {
        let interval = crate::config::parse_go_duration("3000000000000000h").expect("accepted");
        let clock = ReminderClock::new(Reminders { interval, limit: 3 });
        let now = SystemTime::now();
        let tracked = std::panic::catch_unwind(|| clock.track(&pending("r", now)));
        assert!(tracked.is_ok(), "track panicked");
    }

    // The run loop over a real engine: the engine's plugin-data store in memory and a mailer
    // that fails one request's mails for good measure.

    /// Accepts every mail except those of request `r1`, which fail as a passing failure would.
    #[derive(Default)]
    struct Mails(Mutex<Vec<crate::mail::OutgoingMail>>);

    #[async_trait::async_trait]
    impl crate::mail::Mailer for Mails {
        async fn send(
            &self,
            mail: &crate::mail::OutgoingMail,
        ) -> Result<crate::mail::MessageId, crate::mail::MailError> {
            if mail.subject.contains("Request r1") && mail.in_reply_to.is_some() {
                return Err(crate::mail::MailError::Connect {
                    server: "mail:587".into(),
                    reason: "refused".into(),
                });
            }
            self.0.lock().unwrap().push(mail.clone());
            Ok(mail.message_id.clone())
        }

        async fn health_check(&self) -> Result<(), crate::mail::MailError> {
            Ok(())
        }

        fn backend(&self) -> &'static str {
            "test"
        }
    }

    /// An engine (instance "me") over `store`, mailing a@ for every role through `mails`.
    fn engine_over(store: Arc<dyn PluginDataStore>, mails: Arc<Mails>) -> Arc<Engine> {
        let map = BTreeMap::from([("*".to_owned(), vec!["a@example.com".to_owned()])]);
        let routing = crate::engine::Routing {
            recipients: crate::config::RecipientMap::new(map),
            mailer: mails,
            notify_requester: false,
        };
        let policy = crate::engine::DeliveryPolicy {
            instance: "me".into(),
            id_host: "example.com".into(),
            ..Default::default()
        };
        let cluster = crate::teleport::ClusterInfo {
            name: "cluster".into(),
            server_version: "18.0.0".into(),
            advanced_workflows: false,
            proxy_public_addr: String::new(),
        };
        Arc::new(Engine::with_store(store, cluster, routing, policy))
    }

    fn put(req: &AccessRequest) -> WatchEvent {
        WatchEvent::Put(Box::new(req.clone()))
    }

    /// The loop reminds one request at a time, each with the engine's whole retry period: one
    /// request whose recipient's server is down (or whose claim another replica holds) keeps
    /// every other due reminder waiting for `retry_timeout` (10 minutes by default), one after
    /// the other — after a restart with thousands due, for hours or days.
    #[tokio::test(start_paused = true)]
    async fn review_rem_one_failing_request_does_not_hold_back_the_others_reminders() {
        let store = Arc::new(MemoryStore::default());
        let mails = Arc::new(Mails::default());
        let engine = engine_over(store, mails.clone());
        let now = SystemTime::now();
        // r1 falls due a minute before r2.
        let r1 = pending("r1", now - HOUR - Duration::from_secs(120));
        let r2 = pending("r2", now - HOUR - Duration::from_secs(60));
        for r in [&r1, &r2] {
            engine.handle_event(put(r)).await;
        }
        let clock = Arc::new(hourly());
        clock.track(&r1);
        clock.track(&r2);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(clock.clone(), engine, stop.clone()));
        tokio::time::sleep(Duration::from_secs(60)).await;
        let r2_reminded = (mails.0.lock().unwrap().iter())
            .any(|m| m.subject.contains("Request r2") && m.in_reply_to.is_some());
        stop.cancel();
        let _ = task.await;
        assert!(r2_reminded, "r2's reminder waits for r1's retries");
    }

    // -----------------------------------------------------------------------------------------
    // Second reader's tests (review-rem2). Each fails on 7cf3c57.

    /// Plugin data that panics at the first call once armed (any bug under `remind`).
    #[derive(Default)]
    struct Panicky(MemoryStore, AtomicBool);

    #[async_trait::async_trait]
    impl PluginDataStore for Panicky {
        async fn get(&self, id: &str) -> Result<Option<RawPluginData>, TeleportError> {
            if self.1.swap(false, Ordering::SeqCst) {
                panic!("a bug under remind");
            }
            self.0.get(id).await
        }

        async fn update(
            &self,
            id: &str,
            set: &RawPluginData,
            expect: &RawPluginData,
        ) -> Result<(), TeleportError> {
            if self.1.swap(false, Ordering::SeqCst) {
                panic!("a bug under remind");
            }
            self.0.update(id, set, expect).await
        }
    }

    /// `take_due` marks a request in flight (`None`) and only the reminder task's `reschedule`
    /// puts it back. A task that dies before it (a panic anywhere under `remind`) leaves the
    /// request in flight for good: never due again while it stays pending, and the next
    /// reconcile's `track` of the same pending request does not heal it (a held request only
    /// has its copy replaced). Its remaining rounds are lost until a restart.
    #[tokio::test(start_paused = true)]
    async fn review_rem2_a_reminder_task_that_dies_does_not_lose_the_request_for_good() {
        let store = Arc::new(Panicky::default());
        let mails = Arc::new(Mails::default());
        let engine = engine_over(store.clone(), mails.clone());
        let r = pending("r", SystemTime::now() - HOUR - Duration::from_secs(60));
        engine.handle_event(put(&r)).await;
        store.1.store(true, Ordering::SeqCst);
        let clock = Arc::new(hourly());
        clock.track(&r);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(clock.clone(), engine, stop.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!store.1.load(Ordering::SeqCst), "the task ran");
        // The next reconcile lists the request, still pending.
        clock.track(&r);
        let next = clock.next_due();
        stop.cancel();
        let _ = task.await;
        assert_eq!(clock.len(), 1, "still held");
        assert!(
            next.is_some(),
            "a pending request with two rounds to go is never due again"
        );
    }
}

#[cfg(test)]
mod review_cross;
#[cfg(test)]
mod review_fixes14;
