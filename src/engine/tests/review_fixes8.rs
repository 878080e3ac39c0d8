//! Second reader, eighth round of fixes (48c39b3).

use super::partition::{Started, Write, partitioned};
use super::*;

/// round.rs:92-93 (48c39b3) bounds the stop's write by `lease.held_until`, "the last confirmed
/// lease"; but before the first renewal `held_until` is `Lease::new` at the *start of the round*
/// (round.rs:74, :162), i.e. after the claim write was answered, while the claim stored runs
/// from when that write was composed (`Engine::lease()` in the `claim` closure). A claim write
/// that takes 8 s makes `held_until` 8 s later than the claim B reads.
///
/// A composes its claim at 0 s (until 30 s), answered at 8 s: held_until = 38 s. Stop at 12 s;
/// the record at the stop hangs. B takes the expired claim at 30 s and sends both mails; A's
/// two mails (in flight since 8 s, done at 35 s) are still waited for until 38 s and counted as
/// ours: both go out twice.
#[tokio::test(start_paused = true)]

async fn review_fixes8_the_wait_at_a_stop_ends_with_the_claim_as_stored_not_as_answered() {
    let store = Arc::<MemoryStore>::default();
    resumed(&store, "r1", &[]);
    let mailer = Arc::<ScriptedMailer>::default();
    mailer.then([
        Answer::Slow(Duration::from_secs(27)),
        Answer::Slow(Duration::from_secs(27)),
    ]);
    let writes = [
        Write::Slow(Duration::from_secs(8)),
        Write::Slow(Duration::from_secs(100)),
    ];
    let ending = CancellationToken::new();
    let a = stopped_by(
        engine_over(partitioned(&store, writes), mailer.clone(), policy("a")),
        &ending,
    );
    let b = engine(&store, &mailer, "b");
    let run_a = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_secs(9)).await;
    let run_b = spawn_put(&b, "r1");
    tokio::time::sleep(Duration::from_secs(3)).await;
    ending.cancel();
    run_a.await.unwrap();
    run_b.await.unwrap();
    assert_each_once(&mailer, 2);
}

/// round.rs:92-93 (48c39b3): a write *applied* in time but *answered* after `held_until` is
/// taken as a lost claim. The round stops waiting for the mails in flight (which an SMTP worker
/// still sends), and `settle` (delivery.rs:195) then records without them and releases the claim
/// that the very write had just extended, so B takes it at once and sends them again. Before
/// 48c39b3 the round went on waiting, renewing, and recorded them.
///
/// A claims at 0 s, renews at 10 s (until 40 s); the renewal at 20 s hangs and is dropped by
/// the stop at 25 s; the record at the stop is applied at 25 s (claim until 55 s) but answered
/// at 46 s. At 40 s A gives up on its two mails (done at 43 s by the worker) and releases; B
/// claims and sends both.
#[tokio::test(start_paused = true)]

async fn review_fixes8_a_record_at_the_stop_applied_but_answered_late_does_not_abandon_the_mail() {
    let store = Arc::<MemoryStore>::default();
    resumed(&store, "r1", &[]);
    let mailer = Arc::<ScriptedMailer>::default();
    mailer.then([
        Answer::Slow(Duration::from_secs(43)),
        Answer::Slow(Duration::from_secs(43)),
    ]);
    let writes = [
        Write::Pass,
        Write::Pass,
        Write::Slow(Duration::from_secs(100)),
        Write::AnsweredLate(Duration::from_secs(21)),
    ];
    let ending = CancellationToken::new();
    let a = stopped_by(
        engine_over(
            partitioned(&store, writes),
            Arc::new(Started(mailer.clone())),
            policy("a"),
        ),
        &ending,
    );
    let b = engine(&store, &mailer, "b");
    let run_a = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let run_b = spawn_put(&b, "r1");
    tokio::time::sleep(Duration::from_secs(25)).await;
    ending.cancel();
    run_a.await.unwrap();
    run_b.await.unwrap();
    // Let A's workers finish.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_each_once(&mailer, 2);
}
