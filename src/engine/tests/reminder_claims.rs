//! Reminders racing other replicas and the request's own events for the request's claim.

use super::*;

/// Replicas a and b over one fresh store and mailer, after a has sent request r1's
/// new-request threads to a@ and b@.
async fn two_replicas() -> (
    Arc<MemoryStore>,
    Arc<ScriptedMailer>,
    Arc<Engine>,
    Arc<Engine>,
) {
    let (store, mailer) = doubles();
    let a = engine(&store, &mailer, "a");
    let b = engine(&store, &mailer, "b");
    a.handle_event(put("r1")).await;
    (store, mailer, a, b)
}

/// Two replicas whose clocks fire for the same round at once send it once; a restarted one
/// (a fresh engine on the same data) does not send it again.
#[tokio::test(start_paused = true)]
async fn two_replicas_and_a_restart_send_each_reminder_once() {
    let (store, mailer, a, b) = two_replicas().await;
    let req = aged("r1", HOUR + Duration::from_secs(5), &[]);
    let one = spawn_remind(&a, &req);
    let two = spawn_remind(&b, &req);
    one.await.unwrap().unwrap();
    two.await.unwrap().unwrap();
    let restarted = engine(&store, &mailer, "restarted");
    restarted.remind(&req, HOUR, 3).await.unwrap();
    assert_eq!(reminders_to(&mailer).len(), 2, "a@ and b@, once each");
    assert_each_once(&mailer, 4);
    assert_eq!(decoded(&store, "r1").reminders, 1);
}

// ---------------------------------------------------------------------------------------------
// Second readers (review-rem, review-rem2, review-lock).

/// A reminder whose first send fails keeps the claim through its retries, so an approval that
/// another replica handles meanwhile cannot record the resolution (Busy); the retry then mails
/// "still waiting for a review" after the request was approved (and holds the resolution mail
/// back until it is done).
#[tokio::test(start_paused = true)]
async fn review_rem_a_reminder_retried_across_an_approval_is_not_sent() {
    let (_store, mailer, engine, other) = two_replicas().await;
    mailer.then([
        Answer::Fail(connection_refused()),
        Answer::Fail(connection_refused()),
    ]);
    let reminding = spawn_remind(&engine, &aged("r1", DUE, &[]));
    // The first attempt has failed; the reminder waits to retry, holding the claim.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let approved = AccessRequest {
        state: RequestState::Approved,
        ..aged("r1", DUE, &[])
    };
    let resolving = spawn_event(&other, put_of(approved));
    let reminded = reminding.await.unwrap();
    resolving.await.unwrap();
    let _ = reminded;
    assert!(
        reminders_to(&mailer).is_empty(),
        "reminders mailed after the approval came: {:?}",
        reminders_to(&mailer)
    );
}

/// The watcher handles one request's events one at a time, but the reminders' loop is not
/// part of that: a reminder runs beside the event being handled for the same request, in
/// the same process, under the same claim owner (`Holder::Us`, not Busy). It claims over
/// the event's claim and, done, releases it (`record(.., keep = false)`) while the event's
/// stage is still sending. The other replica, waiting on that claim for the same event,
/// then takes it and sends the same review mail again: a reviewer mailed twice.
#[tokio::test(start_paused = true)]
async fn review_rem2_a_reminder_does_not_release_the_claim_of_a_stage_under_way_in_the_same_process()
 {
    let (_store, mailer, a, b) = two_replicas().await; // a@ and b@ get their threads
    // A review by someone else comes; replica a's first review mail is slow to go.
    let reviewed = aged("r1", DUE, &["c@example.com"]);
    mailer.then([Answer::Slow(Duration::from_secs(20))]);
    let on_a = spawn_event(&a, put_of(reviewed.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Replica b has the same event: it waits on a's claim.
    let on_b = spawn_event(&b, put_of(reviewed.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Replica a's reminders' loop: this request's round falls due now.
    a.remind(&reviewed, HOUR, 3).await.unwrap();
    on_a.await.unwrap();
    on_b.await.unwrap();
    let counts = per_message(&mailer);
    assert!(
        counts.values().all(|n| *n == 1),
        "a mail sent twice: {counts:?}"
    );
}

/// A reminder is tried once (zero retry window), and that window also bounds the wait for
/// a claim held by someone else: a Busy claim makes the reminder give up at once, leaving
/// the round "to the holder" — who may be doing another stage, or be dead. After a crash the
/// restarted daemon finds the dead instance's claim (up to a lease) on exactly the requests
/// it was working on; their round (the one the restart looks at "in case it went unsent")
/// is dropped, for good when it is the last one. The claim runs out within the lease.
#[tokio::test(start_paused = true)]
async fn review_rem2_a_reminder_waits_out_a_dead_instances_claim() {
    let (store, mailer) = doubles();
    engine(&store, &mailer, "dead")
        .handle_event(put("r1"))
        .await;
    // It crashed while holding the request (e.g. mid-review): its claim stays a lease.
    let mut left = decoded(&store, "r1");
    left.claim = Some(Claim {
        owner: "dead".into(),
        until_ms: now_ms() + LEASE.as_millis() as u64,
    });
    stored(&store, "r1", &left);
    let restarted = engine(&store, &mailer, "restarted");
    restarted
        .remind(
            &aged("r1", 3 * HOUR + Duration::from_secs(60), &[]),
            HOUR,
            3,
        )
        .await
        .unwrap();
    let sent = reminders_to(&mailer);
    assert_eq!(
        sent.len(),
        2,
        "the last round (3 of 3) given up for a claim that ran out {LEASE:?} later: {sent:?}"
    );
}

/// Two replicas' clocks fire for the same round at the same moment (the boundary is computed
/// from the request alone): one sends, the other finds its claim. That is the normal case
/// of every round of every request in a replicated deployment, yet the loser WARNs that
/// "another instance has held the request's claim for the whole retry period" (it waited
/// for nothing: the window is zero).
#[tokio::test(start_paused = true)]
async fn review_rem2_the_replica_that_loses_the_reminder_race_does_not_warn() {
    let (_store, mailer, a, b) = two_replicas().await;
    mailer.then([Answer::Slow(Duration::from_secs(1))]);
    let req = aged("r1", DUE, &[]);
    let warnings = Logged::warnings();
    let _guard = warnings.capture();
    let one = spawn_remind(&a, &req);
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.remind(&req, HOUR, 3).await.unwrap();
    one.await.unwrap().unwrap();
    assert_eq!(reminders_to(&mailer).len(), 2, "sent once, by a");
    assert!(
        warnings.all().is_empty(),
        "WARN for the ordinary race: {:?}",
        warnings.all()
    );
}

/// The reminder now waits out the other replica's claim (up to lease + tolerance) with the
/// copy of the request its clock took before the wait. The claim it waits for is, often,
/// the other replica announcing a new review of the same request; once it is released the
/// reminder claims and reminds that very reviewer to review. (Its own replica's event for
/// that review is queued behind it on the request's lock, so nothing here learns of it.)
/// Before the change the reminder gave up at the Busy claim.
#[tokio::test(start_paused = true)]
async fn review_lock_a_reminder_that_waited_for_a_claim_does_not_remind_the_reviewer_it_announced()
{
    let (_store, mailer, a, b) = two_replicas().await; // a@ and b@ get their threads
    // b@ reviews; replica b is announcing it (its first review mail is slow).
    mailer.then([Answer::Slow(Duration::from_secs(10))]);
    let on_b = spawn_event(&b, put_of(aged("r1", DUE, &["b@example.com"])));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Replica a's round falls due with the copy it held before the review.
    a.remind(&aged("r1", DUE, &[]), HOUR, 3).await.unwrap();
    on_b.await.unwrap();
    let to = reminded(&mailer);
    assert!(
        !to.iter().any(|t| t == "b@example.com"),
        "b@ reminded to review right after her review was mailed: {to:?}"
    );
}

/// "The other replica's round no longer loses the round": only when its claim goes within a
/// lease. A live replica that holds the request longer (an event's stage retrying a passing
/// failure, up to `retry_for`, renewing its claim) still makes the reminder give up — with a
/// WARN about "the whole retry period" after 35 s — and the holder never sends the round.
#[tokio::test(start_paused = true)]
async fn review_lock_a_reminder_is_not_lost_to_a_live_replica_retrying_an_event() {
    let (_store, mailer, a, b) = two_replicas().await;
    // c@ (not a recipient) reviews; replica b cannot reach the mail server for a while.
    mailer.always(Some(Answer::Fail(connection_refused())));
    let on_b = spawn_event(&b, put_of(aged("r1", DUE, &["c@example.com"])));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let on_a = spawn_remind(&a, &aged("r1", DUE, &["c@example.com"]));
    tokio::time::sleep(Duration::from_secs(45)).await;
    mailer.always(None); // the mail server is back, within b's retry period
    on_b.await.unwrap();
    let _ = on_a.await.unwrap();
    assert_eq!(
        reminders_to(&mailer).len(),
        2,
        "round 1 of 3 lost to a live replica's claim held past a lease"
    );
}
