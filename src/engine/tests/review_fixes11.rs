//! Second reader, eleventh round of fixes (3a28242).

use super::partition::{Partitioned, Started, Write};
use super::*;

/// round.rs:81: the new guard refuses a claim confirmed with less than *a third* of its lease
/// left. The margin the module rests on ("given up a third of a lease before it runs out, so the
/// mails still in flight can finish while it is still ours", round.rs:8-9) needs *two* thirds:
/// the first renewal of a late claim starts at once (next_renewal = since + every is already
/// past) and is judged failed only at its timeout, `every` later (round.rs:119, :222). A claim
/// confirmed at 15 s of 30 therefore hands mail over until 25 s, and a Mailgun request (10 s
/// deadline of its own) sent then is still out when the lease ends at 30 s. Nothing is recorded
/// before the round ends, so the mails already delivered at 23 s are not recorded either.
///
/// A composes its claim at 0 s (until 30 s); Auth applies it and answers at 15 s; A's renewal
/// hangs. a@ is owed three review replies, each taking 8 s at Mailgun: review 0 is out at 23 s,
/// review 1 handed over at 23 s is out at 31 s. B at 30.5 s finds the claim run out, reads no
/// progress and sends reviews 0, 1 and 2; A records 0 and 1 at 31 s. With the claim confirmed on
/// time, the same mails are all recorded at 24 s (hand-over stops at 20 s).
#[tokio::test(start_paused = true)]
async fn review_fixes11_a_claim_confirmed_with_under_two_thirds_left_sends_past_its_lease() {
    let store = Arc::<MemoryStore>::default();
    threaded(&store, "r1", &[]);
    let mailer = Arc::<ScriptedMailer>::default();
    mailer.always(Some(Answer::Slow(Duration::from_secs(8))));
    let partitioned = Partitioned::over(&store);
    partitioned.then([
        Write::AnsweredLate(Duration::from_secs(15)),
        Write::Slow(Duration::from_secs(100)),
    ]);
    let a = engine_over(partitioned, Arc::new(Started(mailer.clone())), policy("a"));
    let b = engine(&store, &mailer, "b");
    let run_a = spawn_event(&a, reviewed("r1", 3));
    tokio::time::sleep(LEASE + Duration::from_millis(500)).await;
    let run_b = spawn_event(&b, reviewed("r1", 3));
    run_a.await.unwrap();
    run_b.await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_each_once(&mailer, 3);
}

/// delivery.rs:196-201 with round.rs:81-87: a round whose claim was confirmed too late hands
/// nothing over, yet `settle` records it with `keep = true` (a fresh lease for A) and retries; the
/// retry's claim is as late again. As long as A's path to Auth is slow, A holds the request
/// without ever sending, renewing its claim at every attempt, and replica B, whose Auth answers
/// at once, waits for that claim until its own retry period runs out and leaves the request to
/// A ("Another instance has held the request's claim for the whole retry period"). A gives up
/// (ERROR) and releases the claim only then: the mail is never sent, though a healthy replica
/// stood by the whole time. README.md:311-313 says a replica that cannot renew "leaves the claim
/// to its holder"; before 3a28242 A would have sent.
///
/// A's writes are all applied at once and answered 22 s later (every claim has 8 s left: too
/// late). A claims at 0 s; B, 100 ms later, finds A's claim and waits. A records (keeping its
/// claim, until 52 s) at 22 s, claims again at ~46 s (until 76 s), gives up at 68 s. B gives up
/// at 60 s.
#[tokio::test(start_paused = true)]
async fn review_fixes11_a_replica_that_cannot_send_under_its_claim_does_not_keep_it_from_others() {
    let store = Arc::<MemoryStore>::default();
    resumed(&store, "r1", &[]);
    let mailer = Arc::<ScriptedMailer>::default();
    let partitioned = Partitioned::over(&store);
    partitioned.always(Write::AnsweredLate(Duration::from_secs(22)));
    let a = engine_over(partitioned, mailer.clone(), policy("a"));
    let b = engine(&store, &mailer, "b");
    let run_a = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let run_b = spawn_put(&b, "r1");
    run_a.await.unwrap();
    run_b.await.unwrap();
    assert_each_once(&mailer, 2);
}

/// delivery.rs:209-217: the new ERROR says "Reminder not sent ... the next round tries again"
/// whenever a reminder's claim was confirmed too late, though every replica runs the same
/// reminder round: B, waiting for A's claim, takes it once A releases it and sends the
/// reminders at once. Nothing was lost, yet an ERROR (what operators page on) says it was.
///
/// A's reminder claim is applied at once and answered at 22 s (8 s left); B asks 100 ms later
/// and waits for A. A hands nothing over, releases its claim at 22 s, logs the ERROR; B claims
/// within 5 s and sends both reminders.
#[tokio::test(start_paused = true)]
async fn review_fixes11_a_reminder_another_replica_sends_is_not_an_error() {
    let store = Arc::<MemoryStore>::default();
    let mailer = Arc::<ScriptedMailer>::default();
    let partitioned = Partitioned::over(&store);
    let a = engine_over(partitioned.clone(), mailer.clone(), policy("a"));
    let b = engine(&store, &mailer, "b");
    a.handle_event(put("r1")).await;
    assert_each_once(&mailer, 2);
    partitioned.then([Write::AnsweredLate(Duration::from_secs(22))]);
    let errors = Logged::errors();
    let _e = errors.capture();
    let req = aged("r1", DUE, &[]);
    let run_a = spawn_remind(&a, &req);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let run_b = spawn_remind(&b, &req);
    run_a.await.unwrap().unwrap();
    run_b.await.unwrap().unwrap();
    assert_eq!(reminded(&mailer).len(), 2, "{:?}", mailer.deliveries());
    assert_each_once(&mailer, 4);
    assert!(
        errors.containing("Reminder not sent").is_empty(),
        "ERROR for reminders another replica sent: {:?}",
        errors.all()
    );
}

/// round.rs:81-87 and :98: the too-late guard sets `interrupted` before the `biased` stop arm
/// runs, and that arm is enabled only `if interrupted.is_none()`; so a reminder round under way
/// at SIGTERM is not a stop but a "claim unconfirmed" one, and delivery.rs:212-213 says at ERROR
/// that it was not sent. Any other round at a stop says so at WARN ("left to ... the next
/// start", delivery.rs:205); stopping is not a failure.
///
/// A's reminder claim is answered at 22 s; SIGTERM at 5 s.
#[tokio::test(start_paused = true)]
async fn review_fixes11_a_stop_during_a_late_reminder_claim_is_not_an_error() {
    let store = Arc::<MemoryStore>::default();
    let mailer = Arc::<ScriptedMailer>::default();
    let partitioned = Partitioned::over(&store);
    let stop = CancellationToken::new();
    let a = stopped_by(
        engine_over(partitioned.clone(), mailer.clone(), policy("a")),
        &stop,
    );
    a.handle_event(put("r1")).await;
    assert_each_once(&mailer, 2);
    partitioned.then([Write::AnsweredLate(Duration::from_secs(22))]);
    let errors = Logged::errors();
    let _e = errors.capture();
    let run_a = spawn_remind(&a, &aged("r1", DUE, &[]));
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    run_a.await.unwrap().unwrap();
    assert!(reminded(&mailer).is_empty(), "{:?}", mailer.deliveries());
    assert!(
        errors.all().is_empty(),
        "ERROR at a stop: {:?}",
        errors.all()
    );
}
