//! Replicas coordinating through plugin data: claims, leases, renewals and what a
//! compare-and-swap records.

use std::collections::VecDeque;

use super::partition::{Write, partitioned};
use super::*;

/// Issue 17.1: a resumed stage changes none of the original's seven keys, so only a pinned
/// `te_claim` (absent → `""`) stops a second replica from claiming it as well.
#[tokio::test(start_paused = true)]
async fn two_replicas_resuming_a_stage_send_each_mail_once() {
    let (store, mailer) = doubles();
    mailer.always(Some(Answer::Slow(Duration::from_millis(200))));
    resumed(&store, "r1", &[]);
    let (a, b) = (engine(&store, &mailer, "a"), engine(&store, &mailer, "b"));
    tokio::join!(a.handle_event(put("r1")), b.handle_event(put("r1")));
    assert_each_once(&mailer, 2);
    let d = decoded(&store, "r1");
    assert_eq!(d.threads.len(), 2);
    assert_eq!(d.claim, None, "the claim is released");
}

/// Issue 17.2: a send that outlasts the lease keeps the claim (renewed), so a second replica
/// arriving after the first lease would have run out waits instead of resending.
#[tokio::test(start_paused = true)]
async fn a_send_longer_than_the_lease_keeps_its_claim() {
    let (store, mailer) = doubles();
    mailer.then([Answer::Slow(4 * LEASE), Answer::Slow(4 * LEASE)]);
    resumed(&store, "r1", &[]);
    let (a, b) = (engine(&store, &mailer, "a"), engine(&store, &mailer, "b"));
    let first = spawn_put(&a, "r1");
    tokio::time::sleep(LEASE + LEASE / 3).await;
    let claim = decoded(&store, "r1").claim.expect("claimed");
    assert_eq!(claim.owner, "a");
    b.handle_event(put("r1")).await;
    first.await.unwrap();
    assert_each_once(&mailer, 2);
    assert_eq!(decoded(&store, "r1").claim, None);
}

/// Issue 17.2: once the claim is someone else's, sending stops and the final write leaves the
/// other's claim alone (it used to overwrite it), while what was delivered is recorded.
#[tokio::test(start_paused = true)]
async fn a_claim_taken_over_stops_sending_and_is_not_overwritten() {
    let (store, mailer) = doubles();
    mailer.then([Answer::Accept, Answer::Slow(3 * LEASE)]);
    resumed(&store, "r1", &[]);
    let a = engine(&store, &mailer, "a");
    let run = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Another instance takes the request (e.g. it judged our lease gone during a stall).
    let other = format!("v1:other/{}", now_ms() + 25_000);
    plant(&store, "r1", &[("te_claim", &other)]);
    run.await.unwrap();
    assert_eq!(store.raw("r1").unwrap()["te_claim"], other);
    assert_eq!(mailer.delivered().len(), 1, "the slow send was abandoned");
    assert_eq!(
        decoded(&store, "r1").threads.len(),
        1,
        "the delivery is recorded"
    );
}

/// Issues 17.2 and 17.7: a claim that runs out far beyond any lease (clock skew, hostile write)
/// is not believed, while a plausible one is waited for.
#[tokio::test(start_paused = true)]
async fn a_claim_far_in_the_future_does_not_park_the_request() {
    let (store, mailer) = doubles();
    let far = format!("v1:ghost/{}", now_ms() + 86_400_000);
    resumed(&store, "r1", &[("te_claim", far.as_str())]);
    let a = engine(&store, &mailer, "a");
    let started = tokio::time::Instant::now();
    a.handle_event(put("r1")).await;
    assert_each_once(&mailer, 2);
    assert!(started.elapsed() < Duration::from_secs(1));

    assert_eq!(
        holder(
            Some(&Claim {
                owner: "b".into(),
                until_ms: 10_000 + 20_000
            }),
            "a",
            10_000,
            LEASE
        ),
        Holder::Other(30_000)
    );
    let past = Claim {
        owner: "b".into(),
        until_ms: 9_000,
    };
    assert_eq!(holder(Some(&past), "a", 10_000, LEASE), Holder::Nobody);
    assert_eq!(holder(Some(&past), "b", 10_000, LEASE), Holder::Us);
}

/// A live claim of another instance is waited for, then taken when it runs out.
#[tokio::test(start_paused = true)]
async fn a_live_claim_is_waited_for_until_it_runs_out() {
    let (store, mailer) = doubles();
    let soon = format!("v1:dead-replica/{}", now_ms() + 10_000);
    resumed(&store, "r1", &[("te_claim", soon.as_str())]);
    let a = engine(&store, &mailer, "a");
    a.handle_event(put("r1")).await;
    assert_each_once(&mailer, 2);
}

/// A new request is one compare-and-swap to claim and one to record, without a read.
#[tokio::test(start_paused = true)]
async fn a_new_request_costs_two_writes_and_no_read() {
    let (store, mailer) = doubles();
    let req = AccessRequest {
        created: Some(SystemTime::now()),
        ..request("r1")
    };
    engine(&store, &mailer, "a").handle_event(put_of(req)).await;
    assert_each_once(&mailer, 2);
    assert_eq!((store.reads(), store.writes()), (0, 2));
}

/// Issue 17.7: an address added to `te_recipients` by whoever may write plugin data is not
/// mailed; the request's real recipients are.
#[tokio::test(start_paused = true)]
async fn an_address_injected_into_stored_recipients_is_not_mailed() {
    let (store, mailer) = doubles();
    resumed(
        &store,
        "r1",
        &[(
            "te_recipients",
            "v1:a@example.com,b@example.com,eve@evil.example",
        )],
    );
    engine(&store, &mailer, "a").handle_event(put("r1")).await;
    assert_each_once(&mailer, 2);
    assert!(
        mailer
            .delivered()
            .iter()
            .all(|m| m.to != "eve@evil.example"),
        "{:?}",
        mailer.deliveries()
    );
}

// ---------------------------------------------------------------------------------------------
// A replica whose writes to the Auth Service fail or hang (second reader, review-engine).

/// A mailer that hands each mail to a task of its own, as `SmtpMailer` hands it to a pool worker
/// (`send` only waits on a oneshot): dropping the caller's `send` future does not stop the mail.
#[derive(Default)]
struct QueuedMailer {
    /// How long each send takes, in order; then at once.
    delays: Mutex<VecDeque<Duration>>,
    delivered: Arc<Mutex<Vec<(String, String)>>>,
}

impl QueuedMailer {
    fn with_delays(delays: impl IntoIterator<Item = Duration>) -> Arc<Self> {
        let m = Self::default();
        m.delays.lock().unwrap().extend(delays);
        Arc::new(m)
    }

    fn per_message(&self) -> BTreeMap<(String, String), usize> {
        let mut counts = BTreeMap::new();
        for key in self.delivered.lock().unwrap().iter().cloned() {
            *counts.entry(key).or_default() += 1;
        }
        counts
    }
}

#[async_trait::async_trait]
impl Mailer for QueuedMailer {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        let delay = self.delays.lock().unwrap().pop_front().unwrap_or_default();
        let (done, outcome) = tokio::sync::oneshot::channel();
        let delivered = self.delivered.clone();
        let key = (mail.to.clone(), mail.message_id.as_str().to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            delivered.lock().unwrap().push(key);
            let _ = done.send(());
        });
        let _ = outcome.await;
        Ok(mail.message_id.clone())
    }

    async fn health_check(&self) -> Result<(), MailError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "queued"
    }
}

fn assert_queued_once(mailer: &QueuedMailer, expected: usize) {
    let counts = mailer.per_message();
    assert!(counts.values().all(|n| *n == 1), "duplicates: {counts:?}");
    assert_eq!(counts.len(), expected, "{counts:?}");
}

/// delivery.rs `send_job`: abandoning a send drops its future, but `SmtpMailer::send` only
/// waits for a pool worker, which still sends the mail. Renewal fails twice (an Auth blip), the
/// engine counts b@'s queued mail as not sent, releases the claim, and the next pass sends it
/// again.
#[tokio::test(start_paused = true)]
async fn an_abandoned_send_that_still_goes_out_is_sent_twice() {
    let store = Arc::<MemoryStore>::default();
    resumed(&store, "r1", &[]);
    // Writes: claim, renewal at 10 s (fails), renewal at 20 s (fails), then the rest.
    let flaky = partitioned(&store, [Write::Pass, Write::Fail, Write::Fail]);
    let mailer = QueuedMailer::with_delays([Duration::ZERO, Duration::from_secs(25)]);
    let a = engine_over(flaky, mailer.clone(), policy("a"));
    a.handle_event(put("r1")).await;
    // The next pass (a reconcile after the Auth blip, or another replica).
    a.handle_event(put("r1")).await;
    tokio::time::sleep(LEASE).await;
    assert_queued_once(&mailer, 2);
}

/// delivery.rs `send_holding_claim`: after a renewal fails twice (no other instance took the
/// request), the round's unsent mail is "left to the instance that holds it": nobody. It is not
/// retried and no ERROR says it was not delivered.
#[tokio::test(start_paused = true)]
async fn a_claim_lost_to_nobody_still_delivers_the_rest() {
    let store = Arc::<MemoryStore>::default();
    resumed(&store, "r1", &[]);
    let flaky = partitioned(&store, [Write::Pass, Write::Fail, Write::Fail]);
    let mailer = Arc::<ScriptedMailer>::default();
    mailer.then([Answer::Accept, Answer::Slow(Duration::from_secs(25))]);
    let a = engine_over(flaky, mailer.clone(), policy("a"));
    a.handle_event(put("r1")).await;
    assert_each_once(&mailer, 2);
}

/// A renewal that hangs (Auth unresponsive for this replica only) neither blocks the sends nor
/// lets the lease run out under them: the renewal has a deadline, the claim is judged
/// unconfirmed a third of a lease before its end, no further mail is handed over, and the mail
/// in flight is recorded. Another replica arriving after the lease would have run out sends
/// only what was never handed over. (A mail handed over and still in flight when a lease runs
/// out cannot be called back: that window is what the early judgement keeps closed.)
#[tokio::test(start_paused = true)]
async fn a_hung_renewal_stops_handing_over_mail_before_the_lease_runs_out() {
    let store = Arc::<MemoryStore>::default();
    threaded(&store, "r1", &[]);
    // A's first write (the claim) passes; its renewal at 10 s hangs; later writes pass.
    let hung = partitioned(&store, [Write::Pass, Write::Hang]);
    let mailer = Arc::<ScriptedMailer>::default();
    let slow = Answer::Slow(Duration::from_secs(12));
    mailer.then([slow.clone(), slow.clone(), slow]);
    let a = engine_over(hung, mailer.clone(), policy("a"));
    let b = engine_over(store.clone(), mailer.clone(), policy("b"));
    let run = spawn_event(&a, reviewed("r1", 3));
    tokio::time::sleep(LEASE + Duration::from_secs(1)).await;
    b.handle_event(reviewed("r1", 3)).await;
    run.await.unwrap();
    assert_each_once(&mailer, 3);
}

/// delivery.rs `record` / stage.rs `Stage::record` (Reviews): progress is added to the count
/// stored *now*, not to where the job started. When the claim was lost and the new holder has
/// recorded its own partial progress, the two are summed and a review nobody sent is marked sent.
#[tokio::test(start_paused = true)]
async fn progress_recorded_after_losing_the_claim_is_not_double_counted() {
    let (store, mailer) = doubles();
    threaded(&store, "r1", &[]);
    // a@ is owed reviews 0 and 1: review 0 goes out, review 1 hangs.
    mailer.then([Answer::Accept, Answer::Slow(3 * LEASE)]);
    let a = engine(&store, &mailer, "a");
    let run = spawn_event(&a, reviewed("r1", 2));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Another instance took the request (A's lease judged gone), sent review 0 again and failed
    // review 1 for now: it recorded one review for a@ and keeps its claim to retry.
    let other = format!("v1:other/{}", now_ms() + 25_000);
    let keys = [
        ("te_claim", other.as_str()),
        ("te_reviews_sent", "v1:a@example.com/1"),
        ("te_reviews_for", "v1:2"),
    ];
    plant(&store, "r1", &keys);
    run.await.unwrap();
    let d = decoded(&store, "r1");
    assert_eq!(
        d.reviews_sent_to("a@example.com"),
        1,
        "review 1 was delivered by nobody, yet is recorded as sent"
    );
}

/// delivery.rs `run_stage`: when the write recording a round fails once (the Auth Service
/// blinks), the error ends the stage: what was delivered is never recorded and the next pass
/// sends it all again.
#[tokio::test(start_paused = true)]
async fn a_failed_record_write_does_not_resend_what_was_delivered() {
    let store = Arc::<MemoryStore>::default();
    resumed(&store, "r1", &[]);
    // Writes: claim passes, the record fails, then all pass.
    let flaky = partitioned(&store, [Write::Pass, Write::Fail]);
    let mailer = Arc::<ScriptedMailer>::default();
    let a = engine_over(flaky, mailer.clone(), policy("a"));
    a.handle_event(put("r1")).await;
    tokio::time::sleep(LEASE).await;
    a.handle_event(put("r1")).await;
    assert_each_once(&mailer, 2);
}

/// stage.rs `Stage::record` (Reviews): `before + delivered` on a count read from the plugin data
/// at record time. A count of `usize::MAX` written meanwhile by anyone who may write plugin data
/// panics the handler (debug) or wraps to 0 and resends every review (release).
#[tokio::test(start_paused = true)]
async fn a_hostile_review_count_written_mid_round_does_not_panic() {
    let (store, mailer) = doubles();
    threaded(&store, "r1", &[]);
    mailer.then([Answer::Slow(Duration::from_secs(2))]);
    let a = engine(&store, &mailer, "a");
    let run = spawn_event(&a, reviewed("r1", 1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hostile = format!("v1:a@example.com/{}", usize::MAX);
    let keys = [
        ("te_reviews_sent", hostile.as_str()),
        ("te_reviews_for", "v1:1"),
    ];
    plant(&store, "r1", &keys);
    let outcome = run.await;
    assert!(outcome.is_ok(), "the handler panicked: {outcome:?}");
}

/// Latent (no caller drops a `lock` future today; all run in spawned tasks): a waiter whose
/// future is dropped after the holder released leaves the entry behind, since the holder's
/// Drop saw the waiter's clone and the waiter has no Drop of its own.
#[tokio::test(start_paused = true)]
async fn review_lock_a_cancelled_waiter_leaves_no_entry_in_the_lock_map() {
    let locks = RequestLocks::default();
    let held = locks.lock("r1").await;
    let mut waiter = Box::pin(locks.lock("r1"));
    assert!(
        tokio::time::timeout(Duration::from_millis(1), &mut waiter)
            .await
            .is_err()
    );
    drop(held);
    drop(waiter);
    let left = locks.0.lock().unwrap().len();
    assert_eq!(left, 0, "entries left in the lock map");
}
