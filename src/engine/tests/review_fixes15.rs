//! Second reader, fifteenth round of fixes (bf0e84d, 7e911ff, 3a28242, 6e7f85a, 18956ef,
//! 61c0e6d, 0a67493): the stages' recording and their jobs, not the lease timing.

use super::*;

/// stage.rs:283-301 (`Owed::new_threads`) with plugindata.rs:427 (`split_list`, used by decode at 273): the recorded
/// recipients (`te_recipients`) are "not trusted blindly" (README, Delivery guarantees), yet a
/// list naming one allowed address twice makes two jobs for it in one round, and both are
/// handed over before either is recorded (`Stage::record` only skips the second *thread*).
/// One writer of plugin data (or any corruption of the key) gets every routed reviewer the
/// same new-request mail twice, same Message-ID, in one round, from one replica.
#[tokio::test(start_paused = true)]
async fn review_fixes15_a_recipient_recorded_twice_gets_one_new_thread_mail() {
    let (store, mailer) = doubles();
    resumed(
        &store,
        "r1",
        &[(
            "te_recipients",
            "v1:a@example.com,a@example.com,b@example.com",
        )],
    );
    let a = engine(&store, &mailer, "a");
    a.handle_event(put("r1")).await;
    let counts = per_message(&mailer);
    assert!(
        counts.values().all(|n| *n == 1),
        "a mail sent twice in one round: {counts:?}"
    );
    assert_each_once(&mailer, 2);
}
