//! The requester's address: read from the `email` trait when the user name is not one,
//! decided once, looked up again after a passing failure ("undecided"), never taken from
//! plugin data alone.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// Users' traits, scripted per call: counts the calls.
struct ScriptedUsers {
    calls: AtomicUsize,
    answer: fn(usize) -> Result<Traits, TeleportError>,
}

#[async_trait::async_trait]
impl Directory for ScriptedUsers {
    async fn user_traits(&self, _user: &str) -> Result<Traits, TeleportError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        (self.answer)(n)
    }
}

impl ScriptedUsers {
    fn answering(answer: fn(usize) -> Result<Traits, TeleportError>) -> Arc<Self> {
        let calls = AtomicUsize::new(0);
        Arc::new(Self { calls, answer })
    }

    /// Every user's traits cannot be read on the first call (Auth restarting), then are
    /// alice@corp.example's.
    fn failing_once() -> Arc<Self> {
        Self::answering(|n| match n {
            0 => Err(TeleportError::Unavailable("auth restarting".into())),
            _ => Ok(email_trait("alice@corp.example")),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A requester whose name is not an address is mailed at their `email` trait; one whose traits
/// may not be read is not mailed, and that is decided once, in the plugin data.
#[tokio::test(start_paused = true)]
async fn a_requester_named_otherwise_is_mailed_at_the_email_trait_or_not_at_all() {
    for (traits, expected) in [(Some("alice@corp.example"), 1), (None, 0)] {
        let (store, mailer) = doubles();
        let engine = engine_telling_requester(&store, &mailer, "r1");
        let engine = with_directory(engine, Arc::new(Emails(traits)));
        engine.handle_event(put("r1")).await; // user "alice"
        let mine = mailed_where(&mailer, |to| Some(to) == traits);
        assert_eq!(mine.len(), expected, "{:?}", mailer.deliveries());
        let stored = decoded(&store, "r1").requester;
        assert_eq!(stored.as_deref(), Some(traits.unwrap_or("")));
    }
}

// ---------------------------------------------------------------------------------------------
// Second readers (review-req, review-last, review 2).

/// MEDIUM. The requester's address is decided once, when the data is created; a passing
/// failure to read the user then (Auth restarting, a timeout) yields `None`, which is stored
/// as "the requester is not mailed" (`te_requester` absent) for good. The next event, with
/// the user readable again, still sends nothing: the confirmation and the outcome are lost.
#[tokio::test(start_paused = true)]
async fn review_req_a_passing_failure_to_read_the_requester_does_not_cost_them_every_mail() {
    let (store, mailer) = doubles();
    let directory = ScriptedUsers::failing_once();
    let engine = with_directory(engine_telling_requester(&store, &mailer, "r1"), directory);
    engine.handle_event(put("r1")).await; // user "alice": the read fails, for now
    engine.handle_event(put("r1")).await; // the same request again (a reconcile): it works
    engine
        .handle_event(put_in("r1", RequestState::Approved))
        .await;
    let mine = subjects_to(&mailer, "alice@corp.example");
    assert_eq!(
        mine.len(),
        2,
        "confirmation and outcome, once the user could be read; stored: {:?}",
        decoded(&store, "r1").requester
    );
}

/// Open finding (session 5): the requester's address could not be read while the request
/// was pending (a passing failure), and no later event came before it expired. The delete
/// carries no request to read the user from, and the outcome needs the confirmation's
/// thread: the requester never heard of their request at all.
#[tokio::test(start_paused = true)]
async fn an_undecided_requester_is_looked_up_and_told_when_the_request_expires() {
    let (store, mailer) = doubles();
    let directory = ScriptedUsers::failing_once();
    let engine = with_directory(engine_telling_requester(&store, &mailer, "r1"), directory);
    engine.handle_event(put("r1")).await; // user "alice": the read fails, for now
    assert_eq!(decoded(&store, "r1").requester.as_deref(), Some("?"));
    engine.handle_event(delete("r1")).await;
    let mine = subjects_to(&mailer, "alice@corp.example");
    assert_eq!(mine.len(), 2, "confirmation, then the outcome: {mine:?}");
    assert!(mine[1].contains("expired"), "{mine:?}");
    // Told once: the same delete again (a replica, a retry) sends nothing more.
    engine.handle_event(delete("r1")).await;
    let again = delivered_to(&mailer, "alice@corp.example").len();
    assert_eq!(again, 2);
}

/// LOW. "Read once per request, with a clear WARN": the user is read (and, refused, the WARN
/// logged) at every event and every reconcile of the request, because `requester_owed` trusts
/// only our cached last write, which a stage that owes nothing drops. A refusal is not
/// remembered by the traits cache either.
#[tokio::test(start_paused = true)]
async fn review_req_a_user_that_may_not_be_read_is_read_and_warned_about_once() {
    let warnings = Logged::warnings();
    let _guard = warnings.capture();
    let (store, mailer) = doubles();
    let directory =
        ScriptedUsers::answering(|_| Err(TeleportError::AccessDenied("read user".into())));
    let engine = with_directory(
        engine_telling_requester(&store, &mailer, "r1"),
        directory.clone(),
    );
    // Created; handed over again by two reconciles; approved.
    for _ in 0..3 {
        engine.handle_event(put("r1")).await;
    }
    engine
        .handle_event(put_in("r1", RequestState::Approved))
        .await;
    assert_eq!(decoded(&store, "r1").requester.as_deref(), Some(""));
    let warned = warnings.containing("may not read users");
    assert_eq!(
        (directory.calls(), warned.len()),
        (1, 1),
        "(GetUser calls, WARNs) for one request"
    );
}

/// LOW. A requester whose confirmation is owed but whose address today differs (trait
/// changed, user deleted, Auth briefly unreachable) gets a WARN suggesting tampered data at
/// every event and every reconcile, forever: nothing is recorded, so the survey never
/// settles the request (a deleted user also gets a second WARN per event, "Cannot read the
/// requester's `email` trait").
#[tokio::test(start_paused = true)]
async fn review_req_a_requester_gone_since_is_warned_about_once_not_at_every_reconcile() {
    let warnings = Logged::warnings();
    let _guard = warnings.capture();
    let (store, mailer) = doubles();
    let directory = ScriptedUsers::answering(|_| {
        Err(TeleportError::NotFound("user \"alice\" not found".into()))
    });
    let id = "00000000-0000-4000-8000-0000000a11ce";
    let data = PluginData {
        requester: Some("alice@corp.example".into()),
        ..both_threads("alice")
    };
    stored(&store, id, &data);
    let engine = with_directory(
        engine_telling_requester(&store, &mailer, "r1"),
        directory.clone(),
    );
    for _ in 0..3 {
        let survey = engine.survey().await.expect("the memory store scans");
        let req = request(id);
        if !survey.owes_nothing(&req) {
            engine.handle_event(put_of(req)).await;
        }
    }
    assert_eq!(mailer.attempts(), 0);
    let warned = warnings.containing("does not have today");
    assert!(
        warned.len() <= 1,
        "{} WARNs over three reconciles: {warned:?}",
        warned.len()
    );
}

/// Second reader (review-last), engine/mod.rs `on_pending`: with the requester undecided
/// (`?`, a passing GetUser failure at creation) nobody is taken out of the reviewers, so a
/// requester who is also a recipient gets the reviewer's mail ("review this request") and,
/// at the next event, the requester's confirmation too: mailed as both, which the README
/// rules out ("a requester who is also a recipient is mailed as the requester only").
#[tokio::test(start_paused = true)]
async fn review_last_an_undecided_requester_among_the_recipients_is_not_mailed_as_a_reviewer() {
    let (store, mailer) = doubles();
    let directory = ScriptedUsers::failing_once();
    let engine = with_directory(engine_telling_requester(&store, &mailer, "r1"), directory);
    mail_to(&engine, &["alice@corp.example", "b@example.com"]);
    engine.handle_event(put("r1")).await; // user "alice": the read fails, for now
    engine.handle_event(put("r1")).await; // a reconcile: it works
    let mine = subjects_to(&mailer, "alice@corp.example");
    // Decided (author's fix): whoever the requester is cannot be told while their address
    // cannot be read, so the reviewers' threads go out; once it can, a requester who already
    // has a reviewer's thread hears through it only — once, not twice.
    assert_eq!(
        mine.len(),
        1,
        "the requester is mailed as a reviewer and as the requester: {mine:?}"
    );
}

/// Second reader (review-last), engine/monitoring.rs `Users::traits`: the "fresh" flag is
/// spent by whichever caller reads first. With rules loaded, `rule_recipients` reads the
/// requester's traits first and logs the rules' WARN; `requester_address` then gets the
/// remembered refusal and logs nothing, so the operator is never told that the requester
/// (whose name is not an address) is not mailed and that `delivery.notify_requester` does
/// nothing for them.
#[tokio::test(start_paused = true)]
async fn review_last_a_refused_user_read_still_warns_that_the_requester_is_not_mailed() {
    let (store, mailer) = doubles();
    let set = rule_set(vec![crate::teleport::MonitoringRule::for_email(
        "all-requests",
        "true",
        &["rule@example.com"],
    )]);
    let engine = engine_telling_requester(&store, &mailer, "r1");
    let engine = Arc::into_inner(engine)
        .unwrap()
        .with_rules(set, Arc::new(Emails(None)));
    let warnings = Logged::warnings();
    let _guard = warnings.capture();
    engine.handle_event(put("r1")).await; // user "alice": not an address, may not be read
    assert_eq!(
        warnings.containing("Cannot mail the requester").len(),
        1,
        "no WARN says the requester is not mailed; WARNs: {:?}",
        warnings.all()
    );
}

/// Review 2, finding E1 (MEDIUM; src/engine/mod.rs:440-462 `confirm_undecided`). On a
/// delete the requester is looked up by the `user` field of the plugin data, a field anyone
/// who may write the `email` plugin's data can change (the request itself is gone, so it is
/// not checked against anything). Every other requester mail is addressed from the request's
/// own user, and the stored address is only trusted when it is still that user's today
/// (`review_req_the_outcome_goes_to_no_address_a_plugin_data_writer_planted`). Here the
/// stored `user` is changed to another person's address while the requester is undecided:
/// when the request expires that person is sent the "your request" confirmation and the
/// outcome, with the request's roles and reason.
#[tokio::test(start_paused = true)]
async fn review2_an_expiry_mails_no_requester_the_plugin_data_alone_names() {
    let (store, mailer) = doubles();
    let directory =
        ScriptedUsers::answering(|_| Err(TeleportError::Unavailable("auth restarting".into())));
    let engine = with_directory(engine_telling_requester(&store, &mailer, "r1"), directory);
    engine.handle_event(put("r1")).await; // user "alice": cannot be read for now
    assert!(decoded(&store, "r1").requester_undecided());
    // Another writer of the plugin's data names someone else as the request's user.
    plant(&store, "r1", &[("user", "victim@elsewhere.example")]);
    engine.handle_event(delete("r1")).await;
    let strays = mailed_where(&mailer, |to| to.contains("victim"));
    assert!(
        strays.is_empty(),
        "mailed as the requester of a request they never made: {strays:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Third reader (review-third) of 0328c7d: `Undecided`, the in-memory map of requesters not yet
// looked up. Each test failed on 0328c7d.

/// `alice`'s traits cannot be read on the first call (Auth restarting), then can; every
/// other user is named by their address and never looked up.
struct FlakyAlice(AtomicUsize);

#[async_trait::async_trait]
impl Directory for FlakyAlice {
    async fn user_traits(&self, user: &str) -> Result<Traits, TeleportError> {
        assert_eq!(user, "alice", "only alice is looked up");
        match self.0.fetch_add(1, Ordering::SeqCst) {
            0 => Err(TeleportError::Unavailable("auth restarting".into())),
            _ => Ok(email_trait("alice@corp.example")),
        }
    }
}

fn noted(engine: &Engine, id: &str) -> bool {
    engine.undecided.0.lock().unwrap().contains_key(id)
}

/// Finding 1 (LOW-MEDIUM; src/engine/mod.rs:352-361 `on_pending`). `requester` is `None`
/// both when the lookup failed and when it was not made at all because `requester_owed` says
/// nothing is owed (the confirmation went out). The second case is noted as "undecided" too:
/// every later event of a request whose requester was already told (a review, a reconcile,
/// the approval, which runs `on_pending` first) puts it in the map, where it stays until the
/// request's DELETE is seen (never, when it came during a watch gap). The map meant for the
/// rare undecided requester holds nearly every live request; see the next test for what that
/// costs.
#[tokio::test(start_paused = true)]
async fn review3_a_requester_already_told_is_not_kept_as_undecided() {
    let (store, mailer) = doubles();
    let engine = engine_telling_requester(&store, &mailer, "r1");
    engine.handle_event(r1_pending()).await;
    assert_eq!(to_requester(&mailer).len(), 1, "the confirmation");
    assert!(!noted(&engine, "r1"), "decided at the first event");
    // A later event of the same request (a reconcile's copy, a review, the approval).
    engine.handle_event(r1_pending()).await;
    engine.handle_event(r1_approved()).await;
    assert!(
        !noted(&engine, "r1"),
        "a request whose requester was told long ago is kept as 'undecided'"
    );
}

/// Finding 2 (LOW-MEDIUM; src/engine/mod.rs:155-161 `Undecided::note`, with finding 1). The
/// map is emptied when 10,000 entries are held. Because of finding 1 it fills with requests
/// that are not undecided at all (two events each), and the clear drops the one requester
/// who really is undecided: when their request expires, they are not told (a WARN), though
/// this process saw the request and the user can be read by then. 10,000 requests seen
/// during one process's life (resolved ones live until their access expires; a DELETE
/// missed in a watch gap is never taken out) is a large but not absurd cluster.
#[tokio::test(start_paused = true)]
async fn review3_an_undecided_requester_is_not_forgotten_for_requesters_already_told() {
    let (store, mailer) = doubles();
    let engine = engine_telling_requester(&store, &mailer, "r1");
    // Only the requester is mailed: keeps the 20,000 events cheap.
    let mut routing = (*engine.routing()).clone();
    routing.recipients = RecipientMap::new(BTreeMap::new());
    engine.set_routing(routing);
    let engine = with_directory(engine, Arc::new(FlakyAlice(AtomicUsize::new(0))));
    engine.handle_event(put("r1")).await; // alice: cannot be read for now
    assert!(decoded(&store, "r1").requester_undecided());
    assert!(noted(&engine, "r1"));
    for i in 0..UNDECIDED_MAX {
        let event = || {
            put_of(AccessRequest {
                user: format!("u{i}@example.com"),
                ..request(&format!("s{i}"))
            })
        };
        engine.handle_event(event()).await; // confirmation sent
        engine.handle_event(event()).await; // a later event of the same request
    }
    engine.handle_event(delete("r1")).await;
    let alice = subjects_to(&mailer, "alice@corp.example");
    assert_eq!(
        alice.len(),
        2,
        "the undecided requester was dropped from memory by requests already settled: {alice:?}"
    );
}
