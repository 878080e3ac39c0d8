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
    /// id → its due time and the request as last seen (its reviews say who reviewed).
    requests: HashMap<String, (SystemTime, AccessRequest)>,
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
            // Already scheduled: only the reviews may have changed.
            *seen = req.clone();
            return;
        }
        let Some(due) = self.first_due(created, SystemTime::now()) else {
            return;
        };
        index.due.insert((due, req.id.clone()));
        index.requests.insert(req.id.clone(), (due, req.clone()));
        drop(index);
        self.changed.notify_one();
    }

    /// Drops a request (resolved, or deleted).
    pub(super) fn forget(&self, id: &str) {
        let mut index = self.index();
        if let Some((due, _)) = index.requests.remove(id) {
            index.due.remove(&(due, id.to_owned()));
        }
    }

    /// The round boundary to look at first: the latest one already passed (it may have gone
    /// unsent while no daemon ran), else the first; `None` once every round is in the past
    /// and more than one interval old.
    fn first_due(&self, created: SystemTime, now: SystemTime) -> Option<SystemTime> {
        let Reminders { interval, limit } = self.settings;
        let round = reminder_round(Some(created), interval, limit, now).unwrap_or(1);
        boundary(created, interval, round)
    }

    /// The boundary after `round`, if there is one.
    fn after(&self, created: SystemTime, round: u32) -> Option<SystemTime> {
        let Reminders { interval, limit } = self.settings;
        (round < limit).then(|| boundary(created, interval, round + 1))?
    }

    /// The requests due at `now`, taken out of the index.
    fn take_due(&self, now: SystemTime) -> Vec<AccessRequest> {
        let mut index = self.index();
        let mut out = Vec::new();
        while let Some((due, id)) = index.due.first().cloned() {
            if due > now {
                break;
            }
            index.due.pop_first();
            if let Some((_, req)) = index.requests.remove(&id) {
                out.push(req);
            }
        }
        out
    }

    /// Puts a request back for its next round, unless a newer event dropped or re-added it.
    fn reschedule(&self, req: AccessRequest, round: u32) {
        let Some(created) = req.created else {
            return;
        };
        let Some(due) = self.after(created, round) else {
            return;
        };
        let mut index = self.index();
        if index.requests.contains_key(&req.id) {
            return;
        }
        index.due.insert((due, req.id.clone()));
        index.requests.insert(req.id.clone(), (due, req));
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

/// When round `round` falls due; `None` past the end of time (a huge interval).
fn boundary(created: SystemTime, interval: Duration, round: u32) -> Option<SystemTime> {
    created.checked_add(interval.checked_mul(round)?)
}

/// Reminders being sent at once: a request whose claim another replica holds waits for it
/// (up to the retry period) without holding up the others.
const IN_FLIGHT: usize = 8;

/// Sends reminders as they fall due, a few requests at a time, until `stop`.
pub(super) async fn run(clock: Arc<ReminderClock>, engine: Arc<Engine>, stop: CancellationToken) {
    let Reminders { interval, limit } = clock.settings;
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
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
            let round = reminder_round(req.created, interval, limit, now).unwrap_or(0);
            clock.reschedule(req.clone(), round);
            let engine = engine.clone();
            tokio::spawn(async move {
                if let Err(e) = engine.remind(&req, interval, limit).await {
                    tracing::debug!(request_id = %req.id, error = %e, "Reminder not (all) sent; the next round tries again");
                }
                drop(slot);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: &str, created: SystemTime) -> AccessRequest {
        AccessRequest {
            id: id.into(),
            user: "alice".into(),
            roles: vec!["editor".into()],
            state: RequestState::Pending,
            reason: String::new(),
            resolve_reason: String::new(),
            created: Some(created),
            expires: None,
            reviews: vec![],
            suggested_reviewers: vec![],
            promoted_to: None,
            system_annotations: Default::default(),
            requested_resources: 0,
            request_expires: None,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn only_pending_requests_are_held_and_each_once() {
        let clock = ReminderClock::new(Reminders {
            interval: HOUR,
            limit: 3,
        });
        let now = SystemTime::now();
        clock.track(&pending("a", now));
        clock.track(&pending("a", now));
        clock.track(&pending("b", now - 10 * HOUR));
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
        let clock = ReminderClock::new(Reminders {
            interval: HOUR,
            limit: 3,
        });
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
}
