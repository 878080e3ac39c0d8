//! Second reader, fourteenth round of fixes: the reminders' loop against the engine's
//! per-request stages.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;
use crate::engine::testing::MemoryStore;
use crate::engine::{DeliveryPolicy, Routing};
use crate::mail::{MailError, Mailer, MessageId, OutgoingMail};
use crate::teleport::{ClusterInfo, Review, WatchEvent};

/// Accepts every mail; the reminders of requests `busy*` take 20 s each (a slow server).
#[derive(Default)]
struct Mails(Mutex<Vec<OutgoingMail>>);

#[async_trait::async_trait]
impl Mailer for Mails {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        if mail.text.starts_with("Reminder ") && mail.subject.contains("Role Request busy") {
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
        self.0.lock().unwrap().push(mail.clone());
        Ok(mail.message_id.clone())
    }

    async fn health_check(&self) -> Result<(), MailError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "test"
    }
}

const HOUR: Duration = Duration::from_secs(3600);

fn put(req: &AccessRequest) -> WatchEvent {
    WatchEvent::Put(Box::new(req.clone()))
}

/// reminders.rs:212-221 with engine/stage.rs:107-108: `send_due` takes every due request's
/// copy at once (`take_due`), then waits for one of 8 slots for each in turn; a review that
/// comes meanwhile updates the index's copy, not the one already taken. When its turn comes,
/// `remind` runs with the old copy (no review), the stage finds more reviews counted in the
/// plugin data than the copy has and does nothing ("the round waits for the next look",
/// stage.rs:36-38), silently. `Next` then schedules the round after it: for the last round
/// there is none, and the request leaves the index. Every reviewer who has not reviewed never
/// gets the last reminder, and nothing says so. (The same happens to any round: the next look
/// is an interval later and is the next round's.) A restart with many reminders due, or a
/// few slow ones, is all it takes.
///
/// Eight requests fall due a minute before `late`; their reminders take 20 s. At 5 s a@
/// reviews `late` (the watcher tracks it and the engine sends the review replies). At 20 s
/// `late`'s last-round reminder runs with the copy taken at 0 s: b@, who has not reviewed,
/// must get it.
#[tokio::test(start_paused = true)]
async fn review_fixes14_a_review_while_a_due_reminder_waits_for_a_slot_does_not_drop_the_last_round()
 {
    let store = Arc::new(MemoryStore::default());
    let mails = Arc::new(Mails::default());
    let to = vec!["a@example.com".to_owned(), "b@example.com".to_owned()];
    let routing = Routing {
        recipients: crate::config::RecipientMap::new(BTreeMap::from([("*".to_owned(), to)])),
        mailer: mails.clone(),
        notify_requester: false,
    };
    let policy = DeliveryPolicy {
        instance: "me".into(),
        id_host: "example.com".into(),
        ..Default::default()
    };
    let cluster = ClusterInfo {
        name: "cluster".into(),
        server_version: "18.0.0".into(),
        advanced_workflows: false,
        proxy_public_addr: String::new(),
    };
    let engine = Arc::new(Engine::with_store(store, cluster, routing, policy));
    let now = SystemTime::now();
    let clock = Arc::new(ReminderClock::new(Reminders {
        interval: HOUR,
        limit: 3,
    }));
    let mut requests: Vec<AccessRequest> = (0..IN_FLIGHT)
        .map(|i| AccessRequest {
            created: Some(now - 3 * HOUR - Duration::from_secs(120)),
            ..AccessRequest::sample(&format!("busy{i}"))
        })
        .collect();
    let late = AccessRequest {
        created: Some(now - 3 * HOUR - Duration::from_secs(60)),
        ..AccessRequest::sample("late")
    };
    requests.push(late.clone());
    for r in &requests {
        engine.handle_event(put(r)).await;
        clock.track(r);
    }
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(clock.clone(), engine.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    // a@ reviews `late`: the watcher's handler tracks it, then the engine handles it.
    let reviewed = AccessRequest {
        reviews: vec![Review {
            author: "a@example.com".into(),
            proposed: RequestState::Approved,
            reason: String::new(),
            created: None,
        }],
        ..late.clone()
    };
    clock.track(&reviewed);
    engine.handle_event(put(&reviewed)).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    stop.cancel();
    let _ = task.await;
    let reminded: Vec<String> = (mails.0.lock().unwrap().iter())
        .filter(|m| m.text.starts_with("Reminder ") && m.subject.ends_with("Role Request late"))
        .map(|m| m.to.clone())
        .collect();
    assert_eq!(
        reminded,
        ["b@example.com"],
        "`late`'s last reminder, to the reviewer who has not reviewed"
    );
}
