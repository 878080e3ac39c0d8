//! Second reader, twelfth round of fixes (6e7f85a, with bf0e84d, 7e911ff, 3a28242).

use super::partition::{Committing, Partitioned, Started, Write};
use super::*;

/// round.rs:215-218 with :118-121: the margin the round keeps ("given up a third of a lease
/// before it runs out, so the mails still in flight can finish while it is still ours",
/// round.rs:8-9) is enforced only at a renewal's *verdict*, and only against the lease as it
/// stands then. 6e7f85a closed this for the claim (round.rs:81) but not for renewals: a renewal
/// answered late moves `held_until` to `started + lease` while the next renewal is scheduled
/// from the *answer* (`next_renewal = now + every`), and is judged only `every` after that. A
/// renewal sent at 10 s and answered at 19.9 s gives a lease to 40 s, the next renewal at
/// 29.9 s, its verdict at 39.9 s: mail is handed over until 0.1 s before the lease ends.
///
/// A claims at 0 s; its first renewal is applied at once (until 40 s) but answered at 19.9 s;
/// the second hangs. a@ is owed five review replies, each 9 s at Mailgun (under its 10 s
/// deadline): review 4 is handed over at 36 s and out at 45 s. B at 40.5 s finds the claim run
/// out and no progress recorded (A records at settle, when review 4 is done), and sends all
/// five again. Under the margin the module promises (stop at 30 s), review 3 (out at 36 s) is
/// the last and A records at 36 s, before B looks.
#[tokio::test(start_paused = true)]
async fn review_fixes12_a_renewal_answered_late_lets_mail_be_handed_over_until_the_lease_ends() {
    let store = Arc::<MemoryStore>::default();
    threaded(&store, "r1", &[]);
    let mailer = Arc::<ScriptedMailer>::default();
    mailer.always(Some(Answer::Slow(Duration::from_secs(9))));
    let partitioned = Partitioned::over(&store);
    partitioned.then([
        Write::AnsweredLate(Duration::ZERO),
        Write::AnsweredLate(Duration::from_millis(9_900)),
        Write::Slow(Duration::from_secs(100)),
    ]);
    let a = engine_over(partitioned, Arc::new(Started(mailer.clone())), policy("a"));
    let b = engine(&store, &mailer, "b");
    let run_a = spawn_event(&a, reviewed("r1", 5));
    tokio::time::sleep(Duration::from_millis(40_500)).await;
    let run_b = spawn_event(&b, reviewed("r1", 5));
    run_a.await.unwrap();
    run_b.await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_each_once(&mailer, 5);
}

/// The same hole without any late answer: the first renewal fails at once (Auth refuses the
/// connection) and is not judged fatal (20 s of the lease left); the second, at 20 s, hangs and
/// is judged only at its timeout, 30 s: exactly when the lease ends. Mail is handed over until
/// then; a Mailgun request sent at 27 s is out at 36 s, long after B (at 30.5 s) took the
/// request and sent everything A had not recorded.
#[tokio::test(start_paused = true)]
async fn review_fixes12_a_failed_renewal_then_a_slow_one_hand_mail_over_until_the_lease_ends() {
    let store = Arc::<MemoryStore>::default();
    threaded(&store, "r1", &[]);
    let mailer = Arc::<ScriptedMailer>::default();
    mailer.always(Some(Answer::Slow(Duration::from_secs(9))));
    let partitioned = Partitioned::over(&store);
    partitioned.then([
        Write::AnsweredLate(Duration::ZERO),
        Write::Fail,
        Write::Slow(Duration::from_secs(100)),
    ]);
    let a = engine_over(partitioned, Arc::new(Started(mailer.clone())), policy("a"));
    let b = engine(&store, &mailer, "b");
    let run_a = spawn_event(&a, reviewed("r1", 4));
    tokio::time::sleep(Duration::from_millis(30_500)).await;
    let run_b = spawn_event(&b, reviewed("r1", 4));
    run_a.await.unwrap();
    run_b.await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_each_once(&mailer, 4);
}

/// round.rs:99 (`if interrupted.is_none()`) with round.rs:65-66 ("On shutdown, what was
/// delivered so far is recorded at once, so a forced exit does not send it again"): once a
/// renewal was judged failed (ClaimUnconfirmed) the stop arm is off, so a SIGTERM then records
/// nothing until the round's last started mail is done, which may be past the 15 s grace
/// period (shutdown.rs:13). The process exits at the grace period with the mail it delivered
/// before the stop unrecorded, and the next start sends it again. The same SIGTERM a moment
/// before the verdict would have recorded it at once.
///
/// A claims at 0 s; its renewal at 10 s hangs and is judged at 20 s (ClaimUnconfirmed). b@'s
/// mail went out at once. a@'s waits in the SMTP queue until 28 s, then its message is
/// written and the server answers the final dot at 37 s. SIGTERM at 21 s; the grace period
/// ends at 36 s (the task is dropped: a forced exit). The next start (at 60 s) sends b@'s mail
/// again. (a@'s may go out twice too, being in flight at the exit: not what is asserted.)
#[tokio::test(start_paused = true)]
async fn review_fixes12_a_stop_after_a_failed_renewal_records_what_was_delivered_at_once() {
    let store = Arc::<MemoryStore>::default();
    resumed(&store, "r1", &[]);
    let delivered = Arc::<ScriptedMailer>::default();
    let mailer = Arc::new(Committing {
        delivered: delivered.clone(),
        timing: BTreeMap::from([(
            "a@example.com",
            (Duration::from_secs(28), Duration::from_secs(9)),
        )]),
    });
    let partitioned = Partitioned::over(&store);
    partitioned.then([
        Write::AnsweredLate(Duration::ZERO),
        Write::Slow(Duration::from_secs(100)),
    ]);
    let stop = CancellationToken::new();
    let a = stopped_by(engine_over(partitioned, mailer, policy("a")), &stop);
    let run_a = spawn_put(&a, "r1");
    tokio::time::sleep(Duration::from_secs(21)).await;
    stop.cancel();
    // The grace period (15 s), then a forced exit.
    tokio::time::sleep(Duration::from_secs(15)).await;
    run_a.abort();
    let _ = run_a.await;
    tokio::time::sleep(Duration::from_secs(24)).await;
    let next_start = engine(&store, &delivered, "a2");
    next_start.handle_event(put("r1")).await;
    let to_b = delivered_to(&delivered, "b@example.com");
    assert_eq!(
        to_b.len(),
        1,
        "b@'s mail, delivered before the stop, sent again by the next start: {:?}",
        delivered.deliveries()
    );
}

/// delivery.rs:215-218 (6e7f85a): a reminder left unsent for want of a confirmed claim is now
/// a WARN, "another replica or the next round sends it". For the *last* round (`limit`) there
/// is no next round: the reminder clock drops the request after it (app/reminders.rs:103-106,
/// :131-140), and with one replica (the default deployment) nobody else sends it. The last
/// reminder is never sent, and the only word of it is a WARN saying it will be. 3a28242 said
/// "unsent mail not retried is an ERROR"; this one is not retried by anyone.
///
/// One replica; the new-request mails go out; the third (last) reminder round's claim is
/// applied at once but answered at 22 s (too late to send under).
#[tokio::test(start_paused = true)]
async fn review_fixes12_the_last_reminder_left_unsent_is_not_a_warning_that_it_will_be_sent() {
    let store = Arc::<MemoryStore>::default();
    let mailer = Arc::<ScriptedMailer>::default();
    let partitioned = Partitioned::over(&store);
    let a = engine_over(partitioned.clone(), mailer.clone(), policy("a"));
    a.handle_event(put("r1")).await;
    assert_each_once(&mailer, 2);
    partitioned.then([Write::AnsweredLate(Duration::from_secs(22))]);
    let errors = Logged::errors();
    let _e = errors.capture();
    let last_round = aged("r1", 3 * HOUR + Duration::from_secs(60), &[]);
    a.remind(&last_round, HOUR, 3).await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let sent = reminded(&mailer);
    assert!(
        !sent.is_empty() || !errors.containing("Reminder not sent").is_empty(),
        "the last round's reminder: sent {sent:?}, errors {:?}",
        errors.all()
    );
}

/// delivery.rs:203 and round.rs:118-121 against README.md:309-318 ("a replica that cannot renew
/// (Auth unreachable) ... records what it did deliver ... That is the one mail that can reach a
/// recipient twice: its message on the wire just as the lease runs out"): a round records its
/// progress only when it ends (settle), and renewals carry none. When A loses its path to Auth
/// mid-round, the record at settle cannot land before the lease runs out, so B resends
/// *everything* A delivered in the round, however long before: here a mail delivered at 5 s,
/// before a renewal (at 10 s) that landed and could have carried it.
///
/// a@ is owed six review replies, 5 s each (out at 5, 10, ... 30 s). A's claim and its renewal
/// at 10 s land (lease to 40 s); from then on A's writes hang (partitioned from Auth). The
/// renewal at 20 s is judged failed at 30 s; the record at settle hangs. B at 40.5 s finds the
/// claim run out and no progress, and sends all six again, review 0 included.
#[tokio::test(start_paused = true)]
async fn review_fixes12_mail_delivered_before_a_renewal_that_landed_is_not_resent_when_auth_goes() {
    let store = Arc::<MemoryStore>::default();
    threaded(&store, "r1", &[]);
    let mailer = Arc::<ScriptedMailer>::default();
    mailer.always(Some(Answer::Slow(Duration::from_secs(5))));
    let partitioned = Partitioned::over(&store);
    partitioned.then([Write::AnsweredLate(Duration::ZERO); 2]);
    partitioned.then([Write::Slow(Duration::from_secs(1000)); 8]);
    let a = engine_over(partitioned, mailer.clone(), policy("a"));
    let b = engine(&store, &mailer, "b");
    let run_a = spawn_event(&a, reviewed("r1", 6));
    tokio::time::sleep(Duration::from_millis(40_500)).await;
    let first = mailer
        .delivered()
        .first()
        .cloned()
        .expect("review 0 out at 5 s");
    mailer.always(None);
    b.handle_event(reviewed("r1", 6)).await;
    run_a.abort();
    let again = (mailer.delivered().iter())
        .filter(|m| m.message_id == first.message_id)
        .count();
    assert_eq!(
        again,
        1,
        "review 0, delivered at 5 s (before the renewal at 10 s landed), sent again: {:?}",
        mailer.deliveries()
    );
}
