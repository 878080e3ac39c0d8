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

/// round.rs `send_round` (the `stopping` branch) with app/mod.rs `run_inner` (a6c98a4): after a
/// stop the round stops renewing its claim and no longer gives up at the claim's end
/// (`held_until` is watched only for `i != Interrupted::Stopping`): it waits for the mail in
/// flight however long it takes, relying on the 15 s grace period (shorter than the two
/// thirds of a lease left after a renewal) to end the process before the claim runs out. Since
/// a6c98a4 a fatal watch error cancels the engine's token (`ending`) but starts no grace
/// period: nothing but the mailer's own per-operation timeouts bounds the wait (an SMTP mail
/// whose every reply comes in 9.5 s of 10 takes ~38 s, and mails queued behind a busy pool take
/// longer still). Here A's token is cancelled as the fatal error does, and its b@ mail takes 40 s
/// (the lease is 30 s): the lease A wrote at the stop runs out with the mail still in flight,
/// replica B (polling for the claim; its watch is fine) takes the request and mails b@, and A's
/// mail goes out too.
#[tokio::test(start_paused = true)]
async fn review_fixes4_after_a_fatal_watch_error_a_mail_in_flight_does_not_outlive_the_claim() {
    let (store, mailer) = doubles();
    resumed(&store, "r1", &[]);
    // a@ at once; b@'s server is slow, within its per-operation timeouts.
    mailer.then([Answer::Accept, Answer::Slow(Duration::from_secs(40))]);
    let ending = CancellationToken::new();
    let a = stopped_by(engine(&store, &mailer, "a"), &ending);
    let b = engine(&store, &mailer, "b");
    let run_a = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // B got the same event: A holds the claim, so B waits for it.
    let run_b = spawn_put(&b, "r1");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A fatal watch error on A: `watcher::run` cancels `ending` and drains; no grace period.
    ending.cancel();
    run_a.await.unwrap();
    run_b.await.unwrap();
    assert_each_once(&mailer, 2);
}

/// A directory whose every read hangs until the client's per-call deadline (Auth not
/// answering), counting the reads.
#[derive(Default)]
struct HangingDirectory(std::sync::atomic::AtomicUsize);

#[async_trait::async_trait]
impl Directory for HangingDirectory {
    async fn user_traits(&self, _user: &str) -> Result<Traits, TeleportError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(crate::teleport::CALL_TIMEOUT).await;
        Err(TeleportError::Unavailable("deadline exceeded".into()))
    }
}

/// engine/mod.rs `on_pending` (`routing_of`, `requester_address`) with watcher.rs `run`
/// (a6c98a4): after a fatal watch error `ending` is cancelled and the dispatcher drains the
/// events still queued, and nothing but per-call deadlines bounds that drain any more (no
/// grace period). Each queued event of a pending request still reads the requester's traits,
/// twice when the rules' read failed (the rules', then the requester's: a failure that may
/// pass is not remembered), before `run_stage` sees the stop and sends nothing. With Auth not
/// answering, each event costs 2 x `CALL_TIMEOUT` (60 s), one after another for the events of
/// one request (the dispatcher runs them in turn): four queued events (a live one per review,
/// the reconcile's copy) keep the daemon from exiting for four minutes, doing nothing. On
/// SIGTERM the grace period cuts the same wait at 15 s.
#[tokio::test(start_paused = true)]
async fn review_fixes4_after_a_fatal_watch_error_queued_events_do_not_wait_on_teleport() {
    let (store, mailer) = doubles();
    let directory = Arc::new(HangingDirectory::default());
    let rules = rule_set(vec![crate::teleport::MonitoringRule::for_email(
        "editors",
        r#"access_request.spec.roles.contains("editor")"#,
        &["a@example.com"],
    )]);
    let engine = engine_telling_requester(&store, &mailer, "a");
    let engine = Arc::into_inner(engine).expect("the only handle");
    let ending = CancellationToken::new();
    let engine = engine
        .with_rules(rules, directory.clone())
        .with_shutdown(ending.clone());
    // The fatal error: `ending` is cancelled, then the queued events are handled in turn.
    ending.cancel();
    let started = tokio::time::Instant::now();
    for _ in 0..4 {
        engine.handle_event(put("r1")).await;
    }
    let took = started.elapsed();
    assert_eq!(mailer.attempts(), 0);
    assert!(
        took < crate::shutdown::GRACE_PERIOD,
        "after the stop, 4 queued events of one request took {took:?} ({} reads of the \
         requester's traits), with nothing sent",
        directory.0.load(std::sync::atomic::Ordering::SeqCst)
    );
}
