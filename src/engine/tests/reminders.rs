//! `delivery.reminder_interval`: reminders of pending requests, to the reviewers who have not
//! reviewed, once a round. Races with other replicas are in `reminder_claims`.

use super::*;

/// A fresh engine (instance r1) that has sent request r1's new-request threads to a@ and b@.
async fn threads_sent() -> (Arc<ScriptedMailer>, Arc<Engine>) {
    let (store, mailer) = doubles();
    let engine = engine(&store, &mailer, "r1");
    engine.handle_event(put("r1")).await;
    (mailer, engine)
}

#[tokio::test(start_paused = true)]
async fn a_reminder_goes_to_each_reviewer_who_has_not_reviewed_once_per_round() {
    let (mailer, engine) = threads_sent().await;
    // Two hours and a bit later, a@ has reviewed (without deciding): round 2 of 3 to b@ only.
    let req = aged("r1", 2 * HOUR + Duration::from_secs(60), &["a@example.com"]);
    engine.remind(&req, HOUR, 3).await.unwrap();
    engine.remind(&req, HOUR, 3).await.unwrap();
    let sent = reminders_to(&mailer);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, "b@example.com");
    assert!(sent[0].1.starts_with("Reminder 2 of 3"), "{sent:?}");
    let reminder = (mailer.delivered().into_iter()).find(|m| m.text.starts_with("Reminder"));
    assert!(
        reminder.unwrap().in_reply_to.is_some(),
        "in the reviewer's thread"
    );
    // Ten hours on: the last round (3), once.
    let later = aged("r1", 10 * HOUR, &["a@example.com"]);
    engine.remind(&later, HOUR, 3).await.unwrap();
    engine.remind(&later, HOUR, 3).await.unwrap();
    assert_eq!(reminders_to(&mailer).len(), 2);
    assert_each_once(&mailer, 4);
}

#[tokio::test(start_paused = true)]
async fn no_reminder_before_the_interval_nor_for_a_resolved_request() {
    let (mailer, engine) = threads_sent().await;
    let young = aged("r1", HOUR / 2, &[]);
    engine.remind(&young, HOUR, 3).await.unwrap();
    let approved = AccessRequest {
        state: RequestState::Approved,
        ..aged("r1", 2 * HOUR, &[])
    };
    engine.handle_event(put_of(approved)).await;
    let pending_copy = aged("r1", 2 * HOUR, &[]);
    engine.remind(&pending_copy, HOUR, 3).await.unwrap();
    assert!(
        reminders_to(&mailer).is_empty(),
        "{:?}",
        reminders_to(&mailer)
    );
}

// ---------------------------------------------------------------------------------------------
// Second readers (review-rem, review-rem2, review-lock).

/// "until the request is resolved or expires": a pending request past its own expiry (Teleport
/// deletes it a little later) is not reminded.
#[tokio::test(start_paused = true)]
async fn review_rem_no_reminder_for_a_request_past_its_expiry() {
    let (mailer, engine) = threads_sent().await;
    let req = AccessRequest {
        request_expires: Some(SystemTime::now() - Duration::from_secs(60)),
        ..aged("r1", 2 * HOUR, &[])
    };
    engine.remind(&req, HOUR, 3).await.unwrap();
    assert!(
        reminders_to(&mailer).is_empty(),
        "{:?}",
        reminders_to(&mailer)
    );
}

/// The requester among the recipients (a team list that includes them) has a thread, but cannot
/// review their own request: they are not reminded to.
#[tokio::test(start_paused = true)]
async fn review_rem_the_requester_is_not_reminded_to_review_their_own_request() {
    let (store, mailer) = doubles();
    let engine = engine(&store, &mailer, "r1");
    let mine = |age| AccessRequest {
        user: "A@example.com".into(),
        ..aged("r1", age, &[])
    };
    engine.handle_event(put_of(mine(Duration::ZERO))).await;
    engine.remind(&mine(DUE), HOUR, 3).await.unwrap();
    let to = reminded(&mailer);
    assert_eq!(to, ["b@example.com"]);
}

/// A reminder is a reply in the reviewer's thread; a different subject ("Reminder: …") splits
/// the conversation in clients that thread by subject too (Gmail, Outlook), unlike the review
/// and resolution replies, which keep the thread's subject.
#[tokio::test(start_paused = true)]
async fn review_rem_a_reminder_keeps_the_threads_subject() {
    let (mailer, engine) = threads_sent().await;
    let first = mailer.delivered()[0].subject.clone();
    engine.remind(&aged("r1", DUE, &[]), HOUR, 3).await.unwrap();
    let delivered = mailer.delivered();
    let reminder = delivered.iter().find(|m| m.in_reply_to.is_some()).unwrap();
    let bare = |s: &str| s.trim_start_matches("Re: ").to_owned();
    assert_eq!(bare(&reminder.subject), bare(&first));
}

/// A reminder that fails for a passing reason is not retried: the next round is its retry
/// (README). The ERROR says the opposite of what happens: "giving up until the next
/// reload, restart or reconnect" (neither a reload nor a reconnect retries it: `track` of a
/// held request changes nothing) with `retried_for` = the whole retry period, though it was
/// tried once.
#[tokio::test(start_paused = true)]
async fn review_rem2_a_failed_reminder_says_the_next_round_retries_it() {
    let (mailer, engine) = threads_sent().await;
    mailer.then([
        Answer::Fail(connection_refused()),
        Answer::Fail(connection_refused()),
    ]);
    let errors = Logged::errors();
    let _guard = errors.capture();
    let _ = engine.remind(&aged("r1", DUE, &[]), HOUR, 3).await;
    let misleading = errors.containing("reload, restart or reconnect");
    assert!(
        misleading.is_empty(),
        "a reminder's failure logged as waiting for a reload: {misleading:?}"
    );
}

/// "The requester is never reminded": only a requester whose user name is their address,
/// or whose address was stored for `notify_requester`, is left out. A requester `alice`
/// whose `email` trait is a@example.com, a recipient (a team list), is reminded to review
/// her own request (which she cannot).
#[tokio::test(start_paused = true)]
async fn review_rem2_a_requester_known_by_her_email_trait_is_not_reminded() {
    let (store, mailer) = doubles();
    let engine = engine(&store, &mailer, "r1");
    let engine = with_directory(engine, Arc::new(Emails(Some("a@example.com"))));
    engine.handle_event(put("r1")).await; // user "alice"
    engine.remind(&aged("r1", DUE, &[]), HOUR, 3).await.unwrap();
    let to = reminded(&mailer);
    assert_eq!(
        to,
        ["b@example.com"],
        "alice reminded to review her own request"
    );
}

/// Every reminder now reads the requester's traits, also with `notify_requester` off. A
/// role without `read` on `user` (needed for nothing else then) gets a WARN at the first
/// reminder telling the operator the requester cannot be mailed and to grant the
/// permission — for a feature that is off.
#[tokio::test(start_paused = true)]
async fn review_lock_a_reminder_with_notify_requester_off_does_not_warn_about_reading_users() {
    let (store, mailer) = doubles();
    let engine = engine(&store, &mailer, "r1"); // notify_requester off
    let engine = with_directory(engine, Arc::new(Emails(None))); // access denied
    engine.handle_event(put("r1")).await;
    let warns = Logged::warnings();
    let _guard = warns.capture();
    engine.remind(&aged("r1", DUE, &[]), HOUR, 3).await.unwrap();
    let all = warns.all();
    assert!(all.is_empty(), "WARN from a reminder: {all:?}");
    assert_eq!(reminders_to(&mailer).len(), 2);
}
