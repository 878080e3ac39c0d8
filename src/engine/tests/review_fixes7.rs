//! Second reader, seventh round of fixes (2873d9a).

use super::partition::{Write, partitioned};
use super::*;

/// round.rs:91 (2873d9a): `record_before_stop` is awaited inside the `select!` arm, with no
/// deadline, after the renewal in flight was dropped. For as long as that write takes, the round
/// neither renews the claim nor watches `held_until`, and `in_doubt` is still false, so nothing
/// ends the wait at the last confirmed lease.
///
/// The fixes6 scenario, with mails finishing sooner: A claims at 0 s and renews at 10 s (its
/// claim runs to 40 s); the renewal at 20 s hangs and is dropped by the stop at 25 s; the record
/// at the stop, sent at 25 s, reaches Auth only at 45 s. B takes the expired claim at 40 s and
/// sends both mails. A's two mails in flight finish at 43 s, past A's last confirmed lease (40 s)
/// and while A is still blocked in the record: A never got to stop waiting at 40 s (as a round
/// that is not stopping does, see round.rs `held_until`), so both go out twice. The fixes6 test
/// passes only because its mails end (50 s) after the renewal that follows the record (45 s).
#[tokio::test(start_paused = true)]
async fn review_fixes7_a_slow_record_at_the_stop_does_not_hold_the_wait_past_the_lease() {
    let store = Arc::<MemoryStore>::default();
    resumed(&store, "r1", &[]);
    let mailer = Arc::<ScriptedMailer>::default();
    mailer.then([
        Answer::Slow(Duration::from_secs(43)),
        Answer::Slow(Duration::from_secs(43)),
    ]);
    // A's writes: claim (0 s), renewal (10 s), renewal (20 s, hangs: dropped at the stop), the
    // record at the stop (25 s, reaches Auth at 45 s); then all pass.
    let writes = [
        Write::Pass,
        Write::Pass,
        Write::Slow(Duration::from_secs(100)),
        Write::Slow(Duration::from_secs(20)),
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
    ending.cancel();
    run_a.await.unwrap();
    run_b.await.unwrap();
    assert_each_once(&mailer, 2);
}
