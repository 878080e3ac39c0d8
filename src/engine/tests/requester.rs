//! `delivery.notify_requester`: the requester's own thread (confirmation, then the outcome).

use super::*;

#[tokio::test(start_paused = true)]
async fn the_requester_gets_a_confirmation_then_the_outcome_in_its_thread_once() {
    let (store, mailer) = doubles();
    let engine = engine_telling_requester(&store, &mailer, "r1");
    engine.handle_event(r1_pending()).await;
    let mine = to_requester(&mailer);
    assert_eq!(mine.len(), 1, "{:?}", mailer.deliveries());
    let confirmation = &mine[0];
    assert_eq!(
        confirmation.subject,
        "Your Role Request r1 was submitted (cluster)"
    );
    assert!(
        confirmation
            .text
            .contains("Reviewers asked: a@example.com, b@example.com"),
        "{}",
        confirmation.text
    );
    assert!(
        !confirmation.text.contains("tsh request review"),
        "{}",
        confirmation.text
    );
    assert_eq!(
        mailer.delivered().len(),
        3,
        "two reviewers and the requester"
    );

    for _ in 0..2 {
        engine.handle_event(r1_approved()).await;
    }
    let mine = to_requester(&mailer);
    assert_eq!(
        mine.len(),
        2,
        "one confirmation and one outcome: {:?}",
        mine.iter()
            .map(|m| (&m.subject, &m.message_id))
            .collect::<Vec<_>>()
    );
    let outcome = &mine[1];
    assert_eq!(
        outcome.subject,
        "Your Role Request r1 was approved (cluster)"
    );
    assert!(
        outcome.text.contains("APPROVED (go ahead)"),
        "{}",
        outcome.text
    );
    assert_eq!(outcome.in_reply_to.as_ref(), Some(&confirmation.message_id));
    assert_each_once(&mailer, 6);
    let data = decoded(&store, "r1");
    assert_eq!(data.requester.as_deref(), Some(REQUESTER));
    assert!(data.requester_done);
}

#[tokio::test(start_paused = true)]
async fn an_expired_request_tells_its_requester() {
    let (store, mailer) = doubles();
    let engine = engine_telling_requester(&store, &mailer, "r1");
    engine.handle_event(r1_pending()).await;
    engine.handle_event(delete("r1")).await;
    let mine = to_requester(&mailer);
    assert_eq!(mine.len(), 2);
    assert_eq!(mine[1].subject, "Your Role Request r1 expired (cluster)");
}

/// A requester who is also among the recipients hears as the requester only: no reviewer
/// thread, no review replies (they cannot review their own request).
#[tokio::test(start_paused = true)]
async fn a_requester_among_the_recipients_is_not_mailed_as_a_reviewer() {
    let (store, mailer) = doubles();
    let engine = engine_telling_requester(&store, &mailer, "r1");
    mail_to(&engine, &[REQUESTER, "b@example.com"]);
    engine.handle_event(r1_pending()).await;
    let reviewed = AccessRequest {
        reviews: vec![approval("bob")],
        ..of_requester("r1", RequestState::Pending)
    };
    engine.handle_event(put_of(reviewed)).await;
    let mine = to_requester(&mailer);
    assert_eq!(mine.len(), 1, "{:?}", mailer.deliveries());
    assert!(mine[0].subject.contains("was submitted"));
    assert!(
        mine[0].text.contains("Reviewers asked: b@example.com"),
        "{}",
        mine[0].text
    );
    assert_eq!(
        decoded(&store, "r1").intended,
        Some(vec!["b@example.com".to_owned()])
    );
}

/// Two replicas handling the same new request send the confirmation once.
#[tokio::test(start_paused = true)]
async fn two_replicas_confirm_to_the_requester_once() {
    let (store, mailer) = doubles();
    let a = engine_telling_requester(&store, &mailer, "a");
    let b = engine_telling_requester(&store, &mailer, "b");
    let one = spawn_event(&a, r1_pending());
    let two = spawn_event(&b, r1_pending());
    one.await.unwrap();
    two.await.unwrap();
    assert_eq!(to_requester(&mailer).len(), 1);
    assert_each_once(&mailer, 3);
}

/// Off by default: with an original config, nothing goes to the requester and no requester key
/// is written, so the original plugin can take over the data as it was.
#[tokio::test(start_paused = true)]
async fn the_requester_is_not_mailed_unless_asked() {
    let (store, mailer) = doubles();
    let engine = engine(&store, &mailer, "r1");
    engine.handle_event(r1_pending()).await;
    engine.handle_event(r1_approved()).await;
    assert!(to_requester(&mailer).is_empty());
    let raw = store.raw("r1").unwrap();
    assert!(
        raw.keys().all(|k| !k.starts_with("te_requester")),
        "{raw:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Second reader (review-req) of 4ec472e and 76a3816.

/// HIGH. `on_delete` runs the reviewers' expiry with `?`: one reviewer whose mailbox is gone
/// (550, a failure of that reviewer alone) ends the event before the requester is told. The
/// request is deleted, so no reconcile ever lists it again: the requester never hears.
#[tokio::test(start_paused = true)]
async fn review_req_an_expiry_tells_the_requester_even_when_a_reviewer_refuses_it() {
    let (store, mailer) = doubles();
    let engine = engine_telling_requester(&store, &mailer, "r1");
    engine.handle_event(r1_pending()).await;
    assert_eq!(to_requester(&mailer).len(), 1, "the confirmation");
    mailer.then([Answer::Fail(refused_recipient())]);
    engine.handle_event(delete("r1")).await;
    let mine = to_requester(&mailer);
    assert_eq!(
        mine.len(),
        2,
        "the requester of an expired request was never told: {:?}",
        mailer.deliveries()
    );
    assert!(mine[1].subject.contains("expired"), "{}", mine[1].subject);
}

/// MEDIUM. The confirmation goes only to the stored address if it is still the requester's
/// today; the outcome goes to whatever `te_requester` says, unchecked. Whoever may write the
/// `email` plugin's data (another plugin's role) points it at their own mailbox, or at a
/// comma list (Mailgun's `to` takes a list; only CR/LF are removed from it), and receives
/// the request's outcome, user, roles and reasons.
#[tokio::test(start_paused = true)]
async fn review_req_the_outcome_goes_to_no_address_a_plugin_data_writer_planted() {
    for planted in [
        "mallory@evil.example",
        "alice@example.com,mallory@evil.example",
    ] {
        let (store, mailer) = doubles();
        let engine = engine_telling_requester(&store, &mailer, "r1");
        engine.handle_event(r1_pending()).await;
        plant(&store, "r1", &[("te_requester", &format!("v1:{planted}"))]);
        engine.handle_event(r1_approved()).await;
        let strays = mailed_where(&mailer, |to| to.contains("mallory"));
        assert!(strays.is_empty(), "mailed to a planted address: {strays:?}");
    }
}

/// MEDIUM. The requester's outcome takes its tag from the event, the reviewers' from the
/// data. An approval whose requester mail could not go out (mail server down past
/// `retry_timeout`) is followed, when the approved request is deleted, by "Your Role Request
/// … expired" to the requester, while the reviewers are told APPROVED.
#[tokio::test(start_paused = true)]
async fn review_req_a_deleted_approved_request_is_not_told_to_its_requester_as_expired() {
    let (store, mailer) = doubles();
    let engine = engine_telling_requester(&store, &mailer, "r1");
    engine.handle_event(r1_pending()).await;
    mailer.always(Some(Answer::Fail(connection_refused())));
    engine.handle_event(r1_approved()).await;
    mailer.always(None);
    engine.handle_event(delete("r1")).await;
    let reviewer = delivered_to(&mailer, "a@example.com");
    assert!(
        reviewer.last().unwrap().text.contains("APPROVED"),
        "the reviewers are told it was approved"
    );
    let mine = to_requester(&mailer);
    assert_eq!(mine.len(), 2);
    assert!(
        mine[1].subject.contains("was approved"),
        "the requester is told: {:?}",
        mine[1].subject
    );
}

/// LOW. The requester is taken out of the reviewers by exact string comparison: listed as
/// `alice@Example.com` in `role_to_recipients` (a domain's case means nothing), the SSO user
/// `alice@example.com` gets the reviewer's mail, review commands and all, beside their
/// confirmation.
#[tokio::test(start_paused = true)]
async fn review_req_a_requester_listed_in_another_case_is_not_mailed_as_a_reviewer() {
    let (store, mailer) = doubles();
    let engine = engine_telling_requester(&store, &mailer, "r1");
    mail_to(&engine, &["alice@Example.com", "b@example.com"]);
    engine.handle_event(r1_pending()).await;
    let as_reviewer = mailed_where(&mailer, |to| {
        to.eq_ignore_ascii_case(REQUESTER) && to != REQUESTER
    });
    assert!(
        as_reviewer.is_empty(),
        "the requester was also mailed as a reviewer: {as_reviewer:?}"
    );
}
