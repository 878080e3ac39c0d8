//! Second reader's tests (review-fixes2) of `stage::reroute` (0790283) and the traits change
//! (769a403). Each fails on 80539ba.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::testing::{Answer, MemoryStore, ScriptedMailer};
use super::*;
use crate::config::RecipientMap;
use crate::mail::{MailError, MessageId, OutgoingMail};
use crate::teleport::{MonitoringRule, Traits};

/// The requester's directory: `team=payments`, or (while `down`) a passing failure, as when
/// the Auth Service restarts or the call times out.
#[derive(Default)]
struct Flaky {
    down: AtomicBool,
}

#[async_trait::async_trait]
impl Directory for Flaky {
    async fn user_traits(&self, _user: &str) -> Result<Traits, TeleportError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(TeleportError::Unavailable("auth: connection reset".into()));
        }
        Ok(Traits::from([(
            "team".to_owned(),
            vec!["payments".to_owned()],
        )]))
    }
}

/// A mailer that cannot reach `blocked` (a passing failure: 4xx to RCPT, a full mailbox, its
/// domain's MX down) and delivers everything else through `inner`.
struct Blocking {
    inner: Arc<ScriptedMailer>,
    blocked: std::sync::Mutex<Option<String>>,
}

#[async_trait::async_trait]
impl Mailer for Blocking {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        if self.blocked.lock().unwrap().as_deref() == Some(mail.to.as_str()) {
            return Err(MailError::Connect {
                server: "mx.example.com:25".into(),
                reason: "refused".into(),
            });
        }
        self.inner.send(mail).await
    }

    async fn health_check(&self) -> Result<(), MailError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "blocking"
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

/// stage.rs `reroute` (0790283) trusts whatever routing this pass computed, including one
/// computed from a passing failure. A request routed by a trait rule to pay-leads@ whose first
/// mail could not be delivered within the retry period is handed over again (reload, restart,
/// reconnect, or simply its next event) at a moment when the requester's record cannot be read
/// (Auth restarting, a timeout). Since 769a403 the rules are then evaluated without traits, so
/// this pass's routing is `role_to_recipients`; `reroute` overwrites the recorded recipient
/// with it and mails all@ — people the rules say must not get this request — and when the read
/// works again pay-leads@, whom the rules still name, never gets it: the request has threads
/// now. Before 0790283 that pass skipped pay-leads@ with a WARN and the next one mailed them.
#[tokio::test(start_paused = true)]
async fn review_fixes2_a_passing_traits_failure_does_not_reroute_a_trait_routed_request() {
    let store = Arc::new(MemoryStore::default());
    let mailer = Arc::new(ScriptedMailer::default());
    let rules = Arc::new(RuleSet::new(PLUGIN_NAME));
    rules.replace_all(vec![MonitoringRule::for_email(
        "payments-team",
        r#"contains_any(user.traits["team"], set("payments"))"#,
        &["pay-leads@example.com"],
    )]);
    let directory = Arc::new(Flaky::default());
    let engine = engine(
        &store,
        mailer.clone(),
        &["all@example.com"],
        false,
        rules,
        directory.clone(),
    );
    let put = || WatchEvent::Put(Box::new(AccessRequest::sample("r1")));

    // pay-leads@ cannot be reached for the whole retry period.
    mailer.always(Some(Answer::Fail(MailError::Connect {
        server: "mail:587".into(),
        reason: "refused".into(),
    })));
    engine.handle_event(put()).await;
    assert!(mailer.delivered().is_empty());

    // Later (past the traits' minute in memory) the mail server is back, but this pass cannot
    // read the requester.
    tokio::time::sleep(Duration::from_secs(120)).await;
    mailer.always(None);
    directory.down.store(true, Ordering::SeqCst);
    engine.handle_event(put()).await;
    // The requester can be read again.
    directory.down.store(false, Ordering::SeqCst);
    engine.handle_event(put()).await;

    assert_eq!(
        to(&mailer),
        ["pay-leads@example.com"],
        "a passing failure to read the requester rerouted a trait-routed request for good"
    );
}

/// stage.rs `reroute` (0790283) with `delivery.notify_requester`: the requester alice@ (also in
/// `role_to_recipients`) had her confirmation, while the rule's recipient oncall@ could not be
/// reached within the retry period. The rule is then deleted and the request handed over again
/// in the same process. `on_pending` looks the requester up only while she is owed her
/// confirmation (`requester_owed`), so this time she is not taken out of the routing, and
/// `reroute` records `role_to_recipients` with her in it: she gets a reviewer's thread beside her
/// requester's thread, and later the outcome twice. The README: "a requester who is also a
/// recipient is mailed once, as the requester".
#[tokio::test(start_paused = true)]
async fn review_fixes2_a_rerouted_request_does_not_mail_its_requester_as_a_reviewer() {
    const ALICE: &str = "alice@example.com";
    let store = Arc::new(MemoryStore::default());
    let inner = Arc::new(ScriptedMailer::default());
    let mailer = Arc::new(Blocking {
        inner: inner.clone(),
        blocked: std::sync::Mutex::new(Some("oncall@example.com".into())),
    });
    let rules = Arc::new(RuleSet::new(PLUGIN_NAME));
    rules.replace_all(vec![MonitoringRule::for_email(
        "oncall",
        "true",
        &["oncall@example.com"],
    )]);
    let engine = engine(
        &store,
        mailer.clone(),
        &[ALICE, "b@example.com"],
        true,
        rules.clone(),
        Arc::new(Flaky::default()),
    );
    let request = AccessRequest {
        user: ALICE.into(),
        ..AccessRequest::sample("r1")
    };
    let put = || WatchEvent::Put(Box::new(request.clone()));

    engine.handle_event(put()).await;
    assert_eq!(to(&inner), [ALICE], "the requester's confirmation");

    rules.delete("oncall");
    *mailer.blocked.lock().unwrap() = None;
    engine.handle_event(put()).await;
    let to_alice = inner.delivered().iter().filter(|m| m.to == ALICE).count();
    assert_eq!(
        to_alice,
        1,
        "the requester was mailed as a reviewer too: {:?}",
        to(&inner)
    );
}
