//! The survey a reconcile starts from: it skips only requests the engine would leave alone.

use super::*;

/// Plugin data in many states a request's mails can be in (complete, partial, failed, the
/// original's), for checking the survey against what the engine really does.
fn survey_states() -> Vec<PluginData> {
    let (a, b) = ("a@example.com".to_owned(), "b@example.com".to_owned());
    let mut out = Vec::new();
    let intendeds = [
        None,
        Some(vec![a.clone()]),
        Some(vec![a.clone(), b.clone()]),
    ];
    let threadss = [vec![], vec![thread(&a)], vec![thread(&a), thread(&b)]];
    let faileds: [&[&str]; 4] = [
        &[],
        &["b@example.com/new"],
        &["a@example.com/review"],
        &["b@example.com/resolution"],
    ];
    let sents = [
        None,
        Some(vec![]),
        Some(vec![a.clone()]),
        Some(vec![a.clone(), b.clone()]),
    ];
    let reviews_sents = [None, Some(BTreeMap::from([(a.clone(), 1), (b.clone(), 2)]))];
    for intended in &intendeds {
        for threads in &threadss {
            for failed in faileds {
                for reviews_count in 0..=2 {
                    for reviews_sent in &reviews_sents {
                        for (resolution, sent) in (sents.iter().map(|s| (None, s.clone()))).chain(
                            sents
                                .iter()
                                .map(|s| (Some(Resolution::Approved), s.clone())),
                        ) {
                            out.push(PluginData {
                                user: "alice".into(),
                                roles: vec!["editor".into()],
                                request_reason: "please".into(),
                                intended: intended.clone(),
                                threads: threads.clone(),
                                failed: failed.iter().map(|f| f.to_string()).collect(),
                                reviews_count,
                                reviews_sent: reviews_sent.clone(),
                                resolution,
                                resolution_sent: sent,
                                ..Default::default()
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// Finished and unfinished states of the requester's own thread, on reviewers' threads that
/// are complete or not.
fn requester_states() -> Vec<PluginData> {
    let me = REQUESTER;
    let bases = survey_states().into_iter().filter(|d| {
        d.failed.is_empty()
            && d.reviews_sent.is_none()
            && d.intended.as_ref().is_some_and(|i| i.len() == 2)
    });
    let mut out = Vec::new();
    for base in bases.step_by(3) {
        for requester in [Some(""), Some("?"), Some(me)] {
            for thread in [false, true] {
                for done in [false, true] {
                    for failed in [None, Some("requester"), Some("requester-outcome")] {
                        let mut d = base.clone();
                        d.requester = requester.map(str::to_owned);
                        d.requester_thread = thread.then(confirmation);
                        d.requester_done = done;
                        if let Some(stage) = failed {
                            d.fail(me, stage);
                        }
                        out.push(d);
                    }
                }
            }
        }
    }
    out
}

/// The requester's confirmation thread.
fn confirmation() -> RequesterThread {
    RequesterThread {
        email: REQUESTER.into(),
        timestamp: "2026-01-01T00:00:00Z".into(),
        message_id: "<alice.requester@example.com>".into(),
    }
}

/// What the survey said of a request, and what the engine then did with it.
struct Handled {
    owes_nothing: bool,
    sends: usize,
    writes: usize,
}

impl Handled {
    fn idle(&self) -> bool {
        self.sends == 0 && self.writes == 0
    }
}

/// Surveys the store, then hands `req` to `engine` (whose store and mailer these are, fresh).
async fn survey_then_handle(
    engine: &Engine,
    store: &MemoryStore,
    mailer: &ScriptedMailer,
    req: AccessRequest,
) -> Handled {
    let survey = engine.survey().await.expect("the memory store scans");
    let owes_nothing = survey.owes_nothing(&req);
    let (sends, writes) = (mailer.attempts(), store.writes());
    engine.handle_event(put_of(req)).await;
    Handled {
        owes_nothing,
        sends: mailer.attempts() - sends,
        writes: store.writes() - writes,
    }
}

/// Request `id` of [`REQUESTER`] in `state`, with `reviews` reviews.
fn with_reviews(id: &str, state: RequestState, reviews: usize) -> AccessRequest {
    let review = |i| Review {
        created: Some(SystemTime::UNIX_EPOCH),
        ..approval(&format!("bob{i}"))
    };
    AccessRequest {
        state,
        user: REQUESTER.into(),
        reviews: (0..reviews).map(review).collect(),
        ..request(id)
    }
}

/// The survey says "owes nothing" only where the engine, handed the request, neither sends nor
/// writes anything; and it does say so for the states a finished request is left in.
#[tokio::test(start_paused = true)]
async fn the_survey_skips_only_requests_the_engine_would_leave_alone() {
    let mut settled = 0;
    let mut idle_but_handed_over = 0;
    let states = survey_states().into_iter().chain(requester_states());
    for (n, data) in states.enumerate() {
        for state in [RequestState::Pending, RequestState::Approved] {
            for reviews in 0..=2 {
                let id = format!("00000000-0000-4000-8000-{n:012x}");
                let (store, mailer) = doubles();
                stored(&store, &id, &data);
                let engine = engine_telling_requester(&store, &mailer, "r1");
                let req = with_reviews(&id, state, reviews);
                let handled = survey_then_handle(&engine, &store, &mailer, req).await;
                let (skip, idle) = (handled.owes_nothing, handled.idle());
                assert!(
                    !skip || idle,
                    "skipped, but the engine acted ({} sends, {} writes) for {state:?} with {reviews} reviews on {data:?}",
                    handled.sends,
                    handled.writes
                );
                settled += usize::from(skip);
                idle_but_handed_over += usize::from(idle && !skip);
            }
        }
    }
    assert!(settled > 500, "only {settled} states were found settled");
    eprintln!("settled {settled}, idle but handed over {idle_but_handed_over}");
}

// ---------------------------------------------------------------------------------------------
// Second readers (review-scan, review-req).

/// A request whose mails are all out, with the claim of a replica that died (lease long over)
/// still stored: the survey skips it, though the engine, handed it, would drop the dead claim.
/// That is the survey's contract — it owes no *mail* — and the claim left behind is nobody's (a
/// claim past its lease is not believed). Found by the second reader, who held the survey to
/// "would change nothing".
#[tokio::test(start_paused = true)]
async fn review_scan_a_dead_claim_on_finished_data_is_skipped_and_owes_no_mail() {
    let finished = PluginData {
        resolution: Some(Resolution::Approved),
        resolution_sent: Some(vec!["a@example.com".into(), "b@example.com".into()]),
        claim: Some(Claim {
            owner: "replica-that-died".into(),
            until_ms: now_ms() - 60_000,
        }),
        ..both_threads("alice")
    };
    let id = "00000000-0000-4000-8000-00000000c1a1";
    let (store, mailer) = doubles();
    stored(&store, id, &finished);
    let engine = engine(&store, &mailer, "r1");
    let req = with_reviews(id, RequestState::Approved, 0);
    let handled = survey_then_handle(&engine, &store, &mailer, req).await;
    assert!(handled.owes_nothing, "the survey skips it");
    assert_eq!(handled.sends, 0, "no mail was owed");
    let after = decoded(&store, id);
    assert_eq!(
        PluginData {
            claim: None,
            ..after.clone()
        },
        PluginData {
            claim: None,
            ..finished
        },
        "the engine would change nothing but the dead claim ({} writes)",
        handled.writes
    );
}

/// LOW-MEDIUM. Turned off again, the feature leaves `te_requester` in the data of every
/// request it touched; the survey counts the requester's mails as owed whatever the config
/// says, so every such request (finished for the engine that is running) is handed over at
/// every reconcile, for as long as the request lives.
#[tokio::test(start_paused = true)]
async fn review_req_with_the_feature_off_the_survey_settles_what_the_engine_leaves_alone() {
    let base = PluginData {
        requester: Some(REQUESTER.into()),
        ..both_threads(REQUESTER)
    };
    let confirmed = Some(confirmation());
    let cases = [
        // Pending; the confirmation never went out (it gave up, or the feature went off).
        (RequestState::Pending, base.clone()),
        // Approved while the feature was off: the outcome will never be sent.
        (
            RequestState::Approved,
            PluginData {
                requester_thread: confirmed,
                resolution: Some(Resolution::Approved),
                resolution_sent: Some(vec!["a@example.com".into(), "b@example.com".into()]),
                ..base.clone()
            },
        ),
    ];
    let mut handed_over = Vec::new();
    for (n, (state, data)) in cases.into_iter().enumerate() {
        let id = format!("00000000-0000-4000-8000-00000000f0f{n}");
        let (store, mailer) = doubles();
        stored(&store, &id, &data);
        let engine = engine(&store, &mailer, "r1"); // notify_requester = false
        let req = with_reviews(&id, state, 0);
        let handled = survey_then_handle(&engine, &store, &mailer, req).await;
        assert!(handled.idle(), "the engine leaves it alone");
        if !handled.owes_nothing {
            handed_over.push(state);
        }
    }
    assert!(
        handed_over.is_empty(),
        "handed over at every reconcile while the feature is off: {handed_over:?}"
    );
}
