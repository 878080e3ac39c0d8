//! Second reader, tenth round of fixes (bf0e84d, 7e911ff).

use super::partition::{Partitioned, Started, Write};
use super::*;

/// 7e911ff: "Reaching held_until ... always stops hand-over". It does not when the round
/// *starts* at or after `held_until`: round.rs's `select!` is `biased` and polls `sends.next()`
/// (round.rs:106, which runs every `send_job` up to its first `send_unless_withdrawn`) before
/// the `held_until` arm (round.rs:134), and nothing checks the lease before the first
/// hand-over. So a claim answered as late as Teleport's own deadline allows (CALL_TIMEOUT,
/// 30 s, a whole lease) has every mail handed over after the stored claim ran out; a mailer
/// that cannot withdraw (Mailgun: the default of `send_unless_withdrawn`) sends them all, while
/// another replica, seeing the claim expired, claims and sends them too. (The same with a claim
/// answered at 25 s: 5 s left, less than the third of a lease the module keeps as the margin
/// "so the mails still in flight can finish while it is still ours", and no renewal confirmed.)
///
/// A composes its claim at 0 s (until 30 s); Auth applies it at once and answers at 30 s; A's
/// renewal hangs. B, at 30.5 s, finds the claim run out, claims and sends both mails; A handed
/// both to its mailer at 30 s (out at 31 s).
#[tokio::test(start_paused = true)]
async fn review_fixes10_no_mail_is_handed_over_once_the_lease_has_run_out() {
    let store = Arc::<MemoryStore>::default();
    resumed(&store, "r1", &[]);
    let mailer = Arc::<ScriptedMailer>::default();
    mailer.always(Some(Answer::Slow(Duration::from_secs(1))));
    let partitioned = Partitioned::over(&store);
    partitioned.then([
        Write::AnsweredLate(LEASE),
        Write::Slow(Duration::from_secs(100)),
    ]);
    let a = engine_over(partitioned, Arc::new(Started(mailer.clone())), policy("a"));
    let b = engine(&store, &mailer, "b");
    let run_a = spawn_put(&a, "r1");
    tokio::time::sleep(LEASE + Duration::from_millis(500)).await;
    let run_b = spawn_put(&b, "r1");
    run_a.await.unwrap();
    run_b.await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_each_once(&mailer, 2);
}

/// Decided: a claim confirmed a third of a lease late (fixes11: with less than two thirds left) is not sent under (see
/// the first test); what the test holds is that the reminder is not lost in silence.
///
/// 7e911ff made `held_until` withdraw in every round, a healthy one too: a claim answered late
/// (here 25 s) whose renewal answers a second after `held_until`. For an event's stage the
/// withdrawn mails are retried. A reminder is "tried once" (delivery.rs:131-135: its retry
/// window is zero), so `settle` does not retry it, records nothing, releases the claim, logs
/// nothing (`failures` is empty: a withdrawn mail is neither `refused` nor `stopped`, and the
/// "Sending stopped early" WARN is only for a taken claim or a stop) and `remind` returns
/// `Ok`: the reviewers never get this round's reminder, and nobody is told. No other replica was
/// ever in play; before 7e911ff these reminders went out, once.
///
/// Threads sent; the reminder's claim is composed at 0 s and answered at 25 s; its renewal
/// (25 s) lands at 31 s; both reminders wait 8 s in the SMTP queue. At 30 s both are
/// withdrawn and the round ends.
#[tokio::test(start_paused = true)]
async fn review_fixes10_a_reminder_confirmed_too_late_is_not_lost_in_silence() {
    let store = Arc::<MemoryStore>::default();
    let mailer = Arc::<ScriptedMailer>::default();
    let partitioned = Partitioned::over(&store);
    let a = engine_over(partitioned.clone(), mailer.clone(), policy("a"));
    a.handle_event(put("r1")).await;
    assert_each_once(&mailer, 2);
    partitioned.then([
        Write::AnsweredLate(Duration::from_secs(25)),
        Write::Slow(Duration::from_secs(6)),
    ]);
    mailer.then([
        Answer::Slow(Duration::from_secs(8)),
        Answer::Slow(Duration::from_secs(8)),
    ]);
    let errors = Logged::warnings();
    let _e = errors.capture();
    let reminded_ok = a.remind(&aged("r1", DUE, &[]), HOUR, 3).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    // Decided (fixes10, fixes11): a claim confirmed with less than two thirds of its lease left is too
    // little to send under, so nothing is handed over; it is not lost in silence: a WARN
    // says so, and the next attempt sends the round's reminders, once.
    let to = reminded(&mailer);
    assert!(
        to.is_empty() && !errors.containing("Reminder not sent").is_empty(),
        "reminders sent: {to:?}; remind() = {reminded_ok:?}; errors: {:?}",
        errors.all()
    );
    a.remind(&aged("r1", DUE, &[]), HOUR, 3).await.unwrap();
    assert_eq!(reminded(&mailer).len(), 2);
    assert_each_once(&mailer, 4);
}

/// The same reminder, confirmed in time but its renewal lost: withdrawn from the queue when the
/// lease runs out, and said (WARN: the next round or another replica sends it); the next attempt sends it once.
#[tokio::test(start_paused = true)]
async fn review_fixes10_a_reminder_withdrawn_when_its_lease_runs_out_is_said_and_sent_later() {
    let store = Arc::<MemoryStore>::default();
    let mailer = Arc::<ScriptedMailer>::default();
    let partitioned = Partitioned::over(&store);
    let a = engine_over(partitioned.clone(), mailer.clone(), policy("a"));
    a.handle_event(put("r1")).await;
    assert_each_once(&mailer, 2);
    partitioned.then([
        Write::AnsweredLate(Duration::from_secs(5)),
        // Every renewal hangs (fixes13: a failed one is tried again soon).
        Write::Slow(Duration::from_secs(100)),
        Write::Slow(Duration::from_secs(100)),
    ]);
    mailer.then([
        Answer::Slow(Duration::from_secs(40)),
        Answer::Slow(Duration::from_secs(40)),
    ]);
    let errors = Logged::warnings();
    let _e = errors.capture();
    a.remind(&aged("r1", DUE, &[]), HOUR, 3).await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(reminded(&mailer).is_empty(), "{:?}", mailer.deliveries());
    assert!(
        !errors.containing("Reminder not sent").is_empty(),
        "{:?}",
        errors.all()
    );
    a.remind(&aged("r1", DUE, &[]), HOUR, 3).await.unwrap();
    assert_eq!(reminded(&mailer).len(), 2);
    assert_each_once(&mailer, 4);
}
