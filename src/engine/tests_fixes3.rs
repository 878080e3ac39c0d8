//! Third reader's tests (review-fixes3) of 310e77a: `Stage::NewThreads { settled }`, the
//! requester left out of a rerouted request, and `traits_of`'s classification. Each fails on
//! a880b37.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::testing::{Answer, MemoryStore, ScriptedMailer};
use super::*;
use crate::config::RecipientMap;
use crate::mail::MailError;
use crate::teleport::{MonitoringRule, Traits};

const ALICE: &str = "alice@example.com";

/// The directory: user `alice` has `email=alice@example.com`; while `down`, reading her fails
/// with `error`.
struct Directory3 {
    down: AtomicBool,
    error: fn() -> TeleportError,
}

impl Directory3 {
    fn new(error: fn() -> TeleportError) -> Arc<Self> {
        Arc::new(Self {
            down: AtomicBool::new(false),
            error,
        })
    }
}

#[async_trait::async_trait]
impl Directory for Directory3 {
    async fn user_traits(&self, _user: &str) -> Result<Traits, TeleportError> {
        if self.down.load(Ordering::SeqCst) {
            return Err((self.error)());
        }
        Ok(Traits::from([("email".to_owned(), vec![ALICE.to_owned()])]))
    }
}

fn engine(
    store: &Arc<MemoryStore>,
    mailer: Arc<dyn Mailer>,
    role_to: &[&str],
    notify_requester: bool,
    rules: Arc<RuleSet>,
    directory: Arc<dyn Directory>,
) -> Engine {
    let map = BTreeMap::from([(
        "*".to_owned(),
        role_to.iter().map(|s| s.to_string()).collect(),
    )]);
    let policy = DeliveryPolicy {
        retry_for: Duration::from_secs(60),
        lease: Duration::from_secs(30),
        instance: "a".into(),
        id_host: "example.com".into(),
        ..DeliveryPolicy::default()
    };
    let cluster = ClusterInfo {
        name: "cluster".into(),
        server_version: "18.0.0".into(),
        advanced_workflows: false,
        proxy_public_addr: String::new(),
    };
    let routing = Routing {
        recipients: RecipientMap::new(map),
        mailer,
        notify_requester,
    };
    Engine::with_store(store.clone(), cluster, routing, policy).with_rules(rules, directory)
}

fn to(mailer: &ScriptedMailer) -> Vec<String> {
    let mut to: Vec<_> = mailer.delivered().iter().map(|m| m.to.clone()).collect();
    to.sort();
    to
}

fn refused() -> MailError {
    MailError::Connect {
        server: "mail:587".into(),
        reason: "refused".into(),
    }
}

/// engine/mod.rs `on_pending` + stage.rs `Owed::new_threads` (310e77a left this path as it
/// was): 310e77a leaves the requester recorded in the plugin data out of a *rerouted* request,
/// because "today's routing leaves them out only when it looked them up, which it does not once
/// they were told". The same holds for the request that is not rerouted. With
/// `delivery.notify_requester`, requester `alice` (her address is her `email` trait) is also in
/// `role_to_recipients`. The request comes while her record cannot be read (a passing failure)
/// and the mail server is down for the whole retry period: `intended` records her with b@,
/// the requester undecided. At the next pass her address is read: she is left out of today's
/// routing, b@ gets his thread, and she gets her requester's confirmation. At the pass after
/// (a review, a reconcile) she is no longer looked up, today's routing names her again, and
/// `new_threads` mails her a reviewer's thread beside her requester's one. The README: "a
/// requester who is also a recipient is mailed once, as the requester".
#[tokio::test(start_paused = true)]
async fn review_fixes3_a_told_requester_is_not_mailed_a_reviewer_thread_later() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let directory = Directory3::new(|| TeleportError::Unavailable("auth: connection reset".into()));
    let engine = engine(
        &store,
        mailer.clone(),
        &[ALICE, "b@example.com"],
        true,
        Arc::new(RuleSet::new(PLUGIN_NAME)),
        directory.clone(),
    );
    let request = AccessRequest {
        user: "alice".into(),
        ..AccessRequest::sample("r1")
    };
    let put = || WatchEvent::Put(Box::new(request.clone()));

    // Her record cannot be read, and the mail server is down for the whole retry period.
    directory.down.store(true, Ordering::SeqCst);
    mailer.always(Some(Answer::Fail(refused())));
    engine.handle_event(put()).await;
    assert!(mailer.delivered().is_empty());

    // Both are back: b@ gets his thread, alice her confirmation as the requester.
    tokio::time::sleep(Duration::from_secs(120)).await;
    directory.down.store(false, Ordering::SeqCst);
    mailer.always(None);
    engine.handle_event(put()).await;
    assert_eq!(to(&mailer), [ALICE, "b@example.com"]);

    // Any later event of the request.
    engine.handle_event(put()).await;
    let to_alice = mailer.delivered().iter().filter(|m| m.to == ALICE).count();
    assert_eq!(
        to_alice,
        1,
        "the requester was mailed as a reviewer too: {:?}",
        mailer.deliveries()
    );
}

/// monitoring.rs `traits_of` / `rule_recipients` (310e77a): any failure to read the requester
/// other than NotFound, BadParameter, Unimplemented or AccessDenied makes the routing "not
/// final", even when no rule's condition reads `user.traits` (`RuleSet::needs_user_traits`
/// says so), so the routing could not have come out otherwise. A rule routed the request to
/// oncall@, whose first mail could not go out within the retry period; the rule is then
/// replaced by one routing to sec@. While the requester's record answers with an error classed
/// as passing (here INTERNAL, as a record Auth cannot decode answers on every read), the
/// request is never routed again, on any number of passes: it reaches nobody. The routing
/// does not depend on the traits; it should reroute to sec@ as it does when the read works.
#[tokio::test(start_paused = true)]
async fn review_fixes3_a_routing_that_reads_no_traits_is_final_whatever_the_read_said() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let rules = Arc::new(RuleSet::new(PLUGIN_NAME));
    rules.replace_all(vec![MonitoringRule::for_email(
        "oncall",
        r#"access_request.spec.roles.contains("admin")"#,
        &["oncall@example.com"],
    )]);
    let directory = Directory3::new(|| TeleportError::Other {
        code: tonic::Code::Internal,
        message: "failed to unmarshal user".into(),
    });
    directory.down.store(true, Ordering::SeqCst);
    let engine = engine(
        &store,
        mailer.clone(),
        &["all@example.com"],
        false,
        rules.clone(),
        directory.clone(),
    );
    let request = AccessRequest {
        roles: vec!["admin".into()],
        ..AccessRequest::sample("r1")
    };
    let put = || WatchEvent::Put(Box::new(request.clone()));

    mailer.always(Some(Answer::Fail(refused())));
    engine.handle_event(put()).await;
    assert!(mailer.delivered().is_empty());

    // The rule is replaced; the mail server is back.
    rules.replace_all(vec![MonitoringRule::for_email(
        "security",
        r#"access_request.spec.roles.contains("admin")"#,
        &["sec@example.com"],
    )]);
    assert!(!rules.needs_user_traits());
    mailer.always(None);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(120)).await;
        engine.handle_event(put()).await;
    }
    assert_eq!(
        to(&mailer),
        ["sec@example.com"],
        "a request routed by rules that read no traits reached nobody while its requester's \
         record answered INTERNAL"
    );
}
