//! Second reader, sixth round of fixes (2fb8ab4).

use super::partition::{Write, partitioned};
use super::*;

/// round.rs:91-92 with delivery.rs `record` (2fb8ab4): `record_before_stop` answers `true`
/// whenever the write *succeeded*, but `record` renews the claim only "if it is still ours" and
/// otherwise still succeeds (it writes the marks, or nothing at all). `true` is taken as "the
/// claim was renewed at `sent_at`": `lease = Lease::since(sent_at, ..)`.
///
/// Here A claims at 0 s and renews at 10 s (its claim really runs to 40 s); the renewal at 20 s
/// hangs and is dropped by the stop at 25 s; the record at the stop, sent at 25 s, reaches Auth
/// only at 45 s, after B took the expired claim at 40 s. Its compare fails, the re-read shows
/// B's claim, nothing is left to write (nothing was delivered yet): `Ok`, so A believes its
/// claim runs to 55 s. The next renewal (45 s) finds the claim taken: `in_doubt`, but the wait
/// still runs to the believed 55 s, so A's two mails in flight (50 s) go out at 50 s, while B
/// sent them at 40 s. Had a record that did not renew the claim counted as a failed one, A would
/// have stopped waiting at 45 s (its last lease, to 40 s, long past).
#[tokio::test(start_paused = true)]
async fn review_fixes6_a_record_at_the_stop_that_did_not_renew_the_claim_does_not_extend_the_lease()
{
    let store = Arc::<MemoryStore>::default();
    resumed(&store, "r1", &[]);
    let mailer = Arc::<ScriptedMailer>::default();
    mailer.then([
        Answer::Slow(Duration::from_secs(50)),
        Answer::Slow(Duration::from_secs(50)),
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
