//! Second reader, fifth round of fixes (76b01f9, 5131b18, 4630008).

use super::partition::{Write, partitioned};
use super::*;

/// round.rs:87 (76b01f9): after `record_before_stop` the round sets `lease = Lease::new(..)`
/// whether or not that write landed (`record_before_stop` only WARNs on an error). Here A's
/// writes fail from t=20 s (A cut off from Auth; B is not): the claim A really holds runs out at
/// 40 s (its last renewal, at 10 s), but after the fatal error at 25 s A believes it holds it
/// until 55 s, gives up only then (`held_until`), and its two mails in flight (45 s each) go out
/// at 45 s. B, polling for the claim, takes the request at 40 s and sends both too. Had the
/// failed write left the lease alone, A would have stopped waiting at 40 s.
#[tokio::test(start_paused = true)]
async fn review_fixes5_a_failed_record_at_the_stop_does_not_extend_the_lease() {
    let store = Arc::<MemoryStore>::default();
    resumed(&store, "r1", &[]);
    let mailer = Arc::<ScriptedMailer>::default();
    mailer.then([
        Answer::Slow(Duration::from_secs(45)),
        Answer::Slow(Duration::from_secs(45)),
    ]);
    // A's writes: claim (0 s), renewal (10 s), renewal (20 s, fails), the record at the stop
    // (25 s, fails), renewals at 35 s and 45 s (fail); then Auth is back for A.
    let writes = [
        Write::Pass,
        Write::Pass,
        Write::Fail,
        Write::Fail,
        Write::Fail,
        Write::Fail,
    ];
    let ending = CancellationToken::new();
    let a = stopped_by(
        engine_over(partitioned(&store, writes), mailer.clone(), policy("a")),
        &ending,
    );
    let b = engine(&store, &mailer, "b");
    let run_a = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // B got the same event: A holds the claim, so B waits for it.
    let run_b = spawn_put(&b, "r1");
    tokio::time::sleep(Duration::from_secs(25)).await;
    // A fatal watch error on A: no grace period.
    ending.cancel();
    run_a.await.unwrap();
    run_b.await.unwrap();
    assert_each_once(&mailer, 2);
}

/// round.rs:87 (76b01f9), the same with a write that lands late: the record at the stop is sent
/// at 11 s (its lease runs to 41 s) but answered at 36 s (Auth slow), and `Lease::new` counts
/// the lease from the answer (to 66 s), against `Lease::renewed`'s own rule ("the lease runs
/// from when the renewal was sent"). A's renewals then fail; A waits for its mails in flight
/// (50 s) until 66 s, while B takes the request at 41 s and sends them again.
#[tokio::test(start_paused = true)]
async fn review_fixes5_a_slow_record_at_the_stop_counts_the_lease_from_when_it_was_sent() {
    let store = Arc::<MemoryStore>::default();
    resumed(&store, "r1", &[]);
    let mailer = Arc::<ScriptedMailer>::default();
    mailer.then([
        Answer::Slow(Duration::from_secs(50)),
        Answer::Slow(Duration::from_secs(50)),
    ]);
    // A's writes: claim (0 s), renewal (10 s), the record at the stop (11 s, answered at 36 s),
    // renewals at 46 s and 56 s (fail); then Auth is back for A.
    let writes = [
        Write::Pass,
        Write::Pass,
        Write::Slow(Duration::from_secs(25)),
        Write::Fail,
        Write::Fail,
    ];
    let ending = CancellationToken::new();
    let a = stopped_by(
        engine_over(partitioned(&store, writes), mailer.clone(), policy("a")),
        &ending,
    );
    let b = engine(&store, &mailer, "b");
    let run_a = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let run_b = spawn_put(&b, "r1");
    tokio::time::sleep(Duration::from_secs(11)).await;
    ending.cancel();
    run_a.await.unwrap();
    run_b.await.unwrap();
    assert_each_once(&mailer, 2);
}

/// round.rs:104 (76b01f9) with delivery.rs `settle`: a renewal that fails after the stop turns
/// `interrupted` from `Stopping` into `ClaimUnconfirmed`, which `settle` does not count as
/// settled: it plans another attempt, so the record at the round's end *keeps* the claim (a fresh
/// 30 s lease, `record_until_landed(.., keep = true)`) instead of releasing it, and only `pause`
/// then releases it, in a write of its own. When that one write fails (the same Auth blip that
/// failed the renewals), the exiting A leaves a claim running to 71 s; B, waiting for the
/// holder since 0 s, gives up at its retry deadline (60 s, "leaving the request to it"), and
/// a@'s mail (refused for now at 0 s) is sent by nobody. As `Stopping`, the round's last record
/// would have released the claim at 41 s and B would have sent it.
#[tokio::test(start_paused = true)]
async fn review_fixes5_a_renewal_failing_after_the_stop_does_not_keep_the_claim_past_the_round() {
    let store = Arc::<MemoryStore>::default();
    resumed(&store, "r1", &[]);
    let mailer = Arc::<ScriptedMailer>::default();
    // a@'s server refuses the connection for now; b@'s mail takes 40 s.
    mailer.then([
        Answer::Fail(connection_refused()),
        Answer::Slow(Duration::from_secs(40)),
    ]);
    // A's writes: claim (0 s), renewal (10 s), the record at the stop (11 s), renewals at 21 s
    // and 31 s (fail), the round's record (41 s), the release in `pause` (41 s, fails).
    let writes = [
        Write::Pass,
        Write::Pass,
        Write::Pass,
        Write::Fail,
        Write::Fail,
        Write::Pass,
        Write::Fail,
    ];
    let ending = CancellationToken::new();
    let a = stopped_by(
        engine_over(partitioned(&store, writes), mailer.clone(), policy("a")),
        &ending,
    );
    let b = engine(&store, &mailer, "b");
    let run_a = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let run_b = spawn_put(&b, "r1");
    tokio::time::sleep(Duration::from_secs(11)).await;
    ending.cancel();
    run_a.await.unwrap();
    run_b.await.unwrap();
    assert_each_once(&mailer, 2);
}
