//! Shutdown: what a SIGTERM during a round sends, records and leaves to the next start
//! (second readers, review-engine and review-watch).

use super::*;

/// delivery.rs `send_holding_claim` / `pause`: a SIGTERM during a round is not seen until the
/// round ends, and nothing is recorded before it does; when the grace period (15 s) ends the
/// process, a mail delivered seconds before the signal is sent again by the next start.
#[tokio::test(start_paused = true)]
async fn a_mail_delivered_before_a_forced_stop_is_not_sent_again() {
    let (store, mailer) = doubles();
    resumed(&store, "r1", &[]);
    // a@ at once; b@'s server is slow (but within its own timeouts).
    mailer.then([Answer::Accept, Answer::Slow(Duration::from_secs(60))]);
    let stop = CancellationToken::new();
    let a = stopped_by(engine(&store, &mailer, "a"), &stop);
    let run = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    tokio::time::sleep(crate::shutdown::GRACE_PERIOD).await;
    run.abort(); // the grace period is over: the process exits
    let _ = run.await;
    tokio::time::sleep(LEASE).await;
    engine(&store, &mailer, "restarted")
        .handle_event(put("r1"))
        .await;
    assert_each_once(&mailer, 2);
}

/// delivery.rs `run_stage` / round.rs `send_round` (the `stopping` branch): at SIGTERM the round
/// records what was delivered and *releases the claim* at once (`record(.., keep = false)`),
/// although a mail it handed over is still in flight (the module's own rule: "once handed over it
/// is waited for"). Another replica polling for the claim (it got the same event) takes the
/// request and sends that mail again; so does a new pod of a rolling update.
#[tokio::test(start_paused = true)]
async fn a_stop_does_not_release_the_claim_while_a_handed_over_mail_is_in_flight() {
    let (store, mailer) = doubles();
    resumed(&store, "r1", &[]);
    // One recipient's mail goes at once; the other's is handed over and takes 10 s.
    mailer.then([Answer::Accept, Answer::Slow(Duration::from_secs(10))]);
    let stop = CancellationToken::new();
    let a = stopped_by(engine(&store, &mailer, "a"), &stop);
    let b = engine(&store, &mailer, "b");
    let run_a = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // B got the same event: A holds the claim, so B waits for it.
    let run_b = spawn_put(&b, "r1");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel(); // SIGTERM on A, well within the grace period of the slow mail
    run_a.await.unwrap();
    run_b.await.unwrap();
    assert_each_once(&mailer, 2);
}

/// delivery.rs `run_stage` / `claim`: once `stopping` is cancelled, events still queued in the
/// dispatcher (up to 128, and a reconcile's) are handled as usual: each takes a claim and its
/// round may hand mail over (`send_round`'s `select!` polls the sends and the stop in random
/// order). That lengthens the shutdown past the grace period with mail in flight, which the next
/// start then sends again; "the rest is left to the next start" says the field's doc.
#[tokio::test(start_paused = true)]
async fn after_the_stop_no_new_claim_is_taken_and_no_mail_handed_over() {
    let (store, mailer) = doubles();
    let stop = CancellationToken::new();
    stop.cancel();
    let a = stopped_by(engine(&store, &mailer, "a"), &stop);
    for i in 0..UNDECIDED_MAX {
        let id = format!("r{i}");
        resumed(&store, &id, &[]);
        a.handle_event(put(&id)).await;
    }
    assert_eq!(
        mailer.attempts(),
        0,
        "mail handed over after the stop: {:?}",
        mailer.deliveries()
    );
}
