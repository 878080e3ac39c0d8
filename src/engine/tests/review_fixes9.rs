//! Second reader, ninth round of fixes (bf0e84d).

use super::partition::{Started, Write, partitioned};
use super::*;

/// bf0e84d moved `held_until` back to when the claim's expiry was set (delivery.rs:243), but
/// the round still acts on `held_until` only once something else went wrong: the arm at
/// round.rs:125 is enabled only `if in_doubt || interrupted...`. A claim write answered late
/// (Teleport's own call deadline is 30 s, a whole lease) starts the round with the claim about
/// to run out; nothing is withdrawn, nor is hand-over stopped, until the first renewal answers or
/// times out (round.rs:106-109: `timeout(every, ...)`), up to a third of a lease *after* the
/// stored claim ran out. Meanwhile B takes the expired claim and sends the same mails.
///
/// A composes its claim at 0 s (until 30 s); Auth applies it at once but answers at 25 s. The
/// round starts at 25 s with held_until = 30 s; the renewal starts at once and hangs (timed out
/// at 35 s). A's two mails wait in the SMTP queue (8 s, out at 33 s). B claims at 31 s and
/// sends both; A's queue sends them again at 33 s: nothing was withdrawn at 30 s.
#[tokio::test(start_paused = true)]
async fn review_fixes9_a_claim_answered_late_withdraws_when_its_lease_runs_out() {
    let store = Arc::<MemoryStore>::default();
    resumed(&store, "r1", &[]);
    let mailer = Arc::<ScriptedMailer>::default();
    mailer.then([
        Answer::Slow(Duration::from_secs(8)),
        Answer::Slow(Duration::from_secs(8)),
    ]);
    let writes = [
        Write::AnsweredLate(Duration::from_secs(25)),
        Write::Slow(Duration::from_secs(100)),
    ];
    let a = engine_over(partitioned(&store, writes), mailer.clone(), policy("a"));
    let b = engine(&store, &mailer, "b");
    let run_a = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_secs(31)).await;
    let run_b = spawn_put(&b, "r1");
    run_a.await.unwrap();
    run_b.await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_each_once(&mailer, 2);
}

/// round.rs:75-76 and :129 bound the wait for started mails at one more lease, "for a mailer that
/// would never answer (both have timeouts of their own, far shorter)". SMTP's timeout is per network
/// operation (10 s each: connect, greeting, EHLO, STARTTLS, TLS, EHLO, AUTH, MAIL, RCPT, DATA,
/// the dot), and a mail counts as started from the moment a worker pops it, dial included
/// (see tests/it/review_fixes9_smtp.rs): well over a lease against a slow server. At
/// round.rs:131-134 the round then gives up on the mail the worker is still sending; `settle`
/// records without it and keeps the claim (delivery.rs:196-201), and the next round — the same
/// replica, no other in play — sends it again. Auth was silent for one renewal (10 s), not
/// "past a whole lease" as README.md:316 says.
///
/// A claims at 0 s; its mails are taken by workers at once and out at 65 s. The renewal at
/// 10 s is lost (timed out at 20 s: claim unconfirmed); nothing is withdrawable at 30 s; the
/// wait ends at 60 s; A records, keeps the claim and sends both again at 61 s.
#[tokio::test(start_paused = true)]
async fn review_fixes9_a_started_mail_outlasting_the_wait_is_not_sent_again_by_its_own_replica() {
    let store = Arc::<MemoryStore>::default();
    resumed(&store, "r1", &[]);
    let mailer = Arc::<ScriptedMailer>::default();
    mailer.then([
        Answer::Slow(Duration::from_secs(65)),
        Answer::Slow(Duration::from_secs(65)),
    ]);
    let writes = [Write::Pass, Write::Slow(Duration::from_secs(100))];
    let policy = DeliveryPolicy {
        retry_for: Duration::from_secs(600),
        ..policy("a")
    };
    let a = engine_over(
        partitioned(&store, writes),
        Arc::new(Started(mailer.clone())),
        policy,
    );
    let run_a = spawn_put(&a, "r1");
    run_a.await.unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_each_once(&mailer, 2);
}

/// round.rs:108-121 and :125: a renewal that finds the claim *someone else's* (certain, not in
/// doubt) cancels the hand-over only; the mails still waiting in the SMTP queue are withdrawn at
/// `held_until`, up to two thirds of a lease later, and until then the queue's workers go on
/// taking and sending them while the new holder sends the same mails. (The scenario of
/// claims.rs `a_claim_taken_over_stops_sending_and_is_not_overwritten`: another instance took
/// the request, e.g. it judged our lease gone during a stall or by a skewed clock.)
///
/// A claims at 0 s; its two mails wait in the queue until 15 s. At 1 s instance "b" holds the
/// claim and sends both. A's renewal at 10 s finds the claim taken; its queue sends both
/// again at 15 s, while held_until is 30 s.
#[tokio::test(start_paused = true)]
async fn review_fixes9_a_claim_found_taken_withdraws_the_mail_still_queued() {
    let store = Arc::<MemoryStore>::default();
    resumed(&store, "r1", &[]);
    let mailer = Arc::<ScriptedMailer>::default();
    mailer.then([
        Answer::Slow(Duration::from_secs(15)),
        Answer::Slow(Duration::from_secs(15)),
    ]);
    let a = engine(&store, &mailer, "a");
    let b = engine(&store, &mailer, "b");
    let run_a = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let taken = format!("v1:b/{}", now_ms() + 25_000);
    plant(&store, "r1", &[("te_claim", &taken)]);
    let run_b = spawn_put(&b, "r1");
    run_a.await.unwrap();
    run_b.await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_each_once(&mailer, 2);
}
