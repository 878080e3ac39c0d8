//! Second reader's tests (review-cross): the reminders' task at shutdown. Fails on dc9f96b.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::engine::testing::MemoryStore;
use crate::engine::{DeliveryPolicy, Routing};
use crate::mail::{MailError, Mailer, MessageId, OutgoingMail};
use crate::teleport::{ClusterInfo, WatchEvent};

/// Accepts every mail; a reply (the reminder) takes 20 s to be accepted (a slow server, or a
/// big queue in front of it). Counts the mails being sent.
#[derive(Default)]
struct SlowReplies {
    in_flight: AtomicUsize,
    delivered: Mutex<Vec<OutgoingMail>>,
}

#[async_trait::async_trait]
impl Mailer for SlowReplies {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if mail.in_reply_to.is_some() {
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
        self.delivered.lock().unwrap().push(mail.clone());
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
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

/// At shutdown the watcher drains: each event's stage finishes its mail in flight and records
/// it before `run_inner` returns (within the 15 s grace). The reminders' task does not: `run`
/// returns at the stop while the reminders it spawned are still sending, and `run_inner`
/// (app/mod.rs) neither awaits it nor them. `start` then drops the runtime, and a reminder the
/// server has already taken is never recorded in `te_reminded`: after the restart it is sent
/// again (and its claim parks the request for a lease on every replica meanwhile).
#[tokio::test(start_paused = true)]
async fn review_cross_a_reminder_in_flight_at_shutdown_is_finished_and_recorded_before_run_returns()
{
    let store = Arc::new(MemoryStore::default());
    let mails = Arc::new(SlowReplies::default());
    let map =
        std::collections::BTreeMap::from([("*".to_owned(), vec!["a@example.com".to_owned()])]);
    let routing = Routing {
        recipients: crate::config::RecipientMap::new(map),
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
    let root = CancellationToken::new();
    let engine = Arc::new(
        Engine::with_store(store.clone(), cluster, routing, policy).with_shutdown(root.clone()),
    );
    let r = AccessRequest {
        created: Some(SystemTime::now() - HOUR - Duration::from_secs(60)),
        ..AccessRequest::sample("r")
    };
    engine
        .handle_event(WatchEvent::Put(Box::new(r.clone())))
        .await;
    assert_eq!(mails.delivered.lock().unwrap().len(), 1, "the new thread");

    let clock = Arc::new(ReminderClock::new(Reminders {
        interval: HOUR,
        limit: 3,
    }));
    clock.track(&r);
    let task = tokio::spawn(run(clock.clone(), engine, root.child_token()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        mails.in_flight.load(Ordering::SeqCst),
        1,
        "the reminder is being sent"
    );

    root.cancel(); // SIGTERM
    let _ = task.await;
    // What `start` does next is drop the runtime: whatever is still running is lost.
    let in_flight = mails.in_flight.load(Ordering::SeqCst);
    let recorded = (store.raw("r")).is_some_and(|d| d.contains_key("te_reminded"));
    assert!(
        in_flight == 0 && recorded,
        "the reminders' task returned with a reminder still being sent ({in_flight} in flight, \
         recorded: {recorded})"
    );
}
