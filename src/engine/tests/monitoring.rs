//! Review (AMR routing): where the recipients chosen by Access Monitoring Rules differ from the
//! original plugin's (`integrations/access/accessmonitoring/access_monitoring_rules.go`,
//! `lib/accessmonitoring/request_mapping.go`, `api/types/access_request.go`).

use super::*;
use crate::teleport::MonitoringRule;
use crate::teleport::pb::types::{AccessRequestSpecV3, AccessRequestV3, Metadata, ResourceId};

const FALLBACK: &str = "all@example.com";

/// A directory where every user exists and has no traits.
struct NoTraits;

#[async_trait::async_trait]
impl Directory for NoTraits {
    async fn user_traits(&self, _user: &str) -> Result<Traits, TeleportError> {
        Ok(Traits::default())
    }
}

fn rule(name: &str, condition: &str, to: &[&str]) -> MonitoringRule {
    MonitoringRule::for_email(name, condition, to)
}

fn engine_with(rules: Vec<MonitoringRule>) -> Engine {
    let (store, mailer) = doubles();
    let routing = routing(mailer, &[FALLBACK]);
    Engine::with_store(store, cluster(), routing, DeliveryPolicy::default())
        .with_rules(rule_set(rules), Arc::new(NoTraits))
}

fn ts(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: 0,
    }
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// v18.0's conditions know nothing of the requested resources (`has_labels` never shipped;
/// `resource_labels_union`/`_intersection` came in later 18.x releases): such a rule does not
/// parse, so neither a resource request nor a roles-only one is routed by it, and both go to
/// `role_to_recipients`, as with the original v18.0. Before, ours accepted `has_labels` and
/// it was vacuously true for a roles-only request (or a negated one for a resource request),
/// mailing the rule's recipients.
#[tokio::test]
async fn a_rule_on_requested_resources_routes_nothing_as_in_v18_0() {
    let engine = engine_with(vec![
        rule(
            "prod-nodes",
            r#"has_labels(access_request.spec.requested_resources, "env", "prod")"#,
            &["prod-oncall@example.com"],
        ),
        rule(
            "not-prod",
            r#"!has_labels(access_request.spec.requested_resources, "env", "prod")"#,
            &["dev-oncall@example.com"],
        ),
        rule(
            "union",
            r#"access_request.spec.resource_labels_union["env"].contains("dev")"#,
            &["union@example.com"],
        ),
    ]);
    for resources in [Vec::new(), vec!["dev-node-labelled-env-dev"]] {
        let wire = AccessRequestV3 {
            metadata: Some(Metadata {
                name: "r1".into(),
                ..Default::default()
            }),
            spec: Some(AccessRequestSpecV3 {
                user: "alice".into(),
                roles: vec!["access".into()],
                requested_resource_i_ds: resources
                    .iter()
                    .map(|name| ResourceId {
                        cluster_name: "cluster".into(),
                        kind: "node".into(),
                        name: (*name).into(),
                        sub_resource_name: String::new(),
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = AccessRequest::from(wire);
        let to = engine.recipients(&req).await;
        assert_eq!(
            to,
            vec![FALLBACK.to_owned()],
            "a rule on the requested resources routed a request naming {resources:?}"
        );
    }
}

/// Upstream `access_request.spec.expiry` is `req.Expiry()`: the request resource's expiry
/// (`spec.resource_expiry`, else `metadata.expires`), not the access expiry `spec.expires`
/// (`GetAccessExpiry()`), which ours binds (monitoring.rs `expiry: req.expires`).
#[tokio::test]
async fn spec_expiry_is_the_request_resource_expiry_as_upstream() {
    // Access would end at t=1000; the pending request itself expires at t=5000.
    let engine = engine_with(vec![rule(
        "long-lived-requests",
        r#"access_request.spec.expiry.after(time.RFC3339("1970-01-01T00:50:00Z"))"#,
        &["long@example.com"],
    )]);
    let wire = AccessRequestV3 {
        metadata: Some(Metadata {
            name: "r2".into(),
            expires: Some(ts(at(5000))),
            ..Default::default()
        }),
        spec: Some(AccessRequestSpecV3 {
            user: "alice".into(),
            roles: vec!["access".into()],
            expires: Some(ts(at(1000))),
            ..Default::default()
        }),
        ..Default::default()
    };
    let req = AccessRequest::from(wire.clone());
    assert_eq!(
        engine.recipients(&req).await,
        ["long@example.com"],
        "metadata.expires (t=5000) is after t=3000: the original matches"
    );
    // With resource_expiry set, that is what upstream's Expiry() returns.
    let mut wire = wire;
    if let Some(spec) = wire.spec.as_mut() {
        spec.resource_expiry = Some(ts(at(6000)));
    }
    let req = AccessRequest::from(wire);
    assert_eq!(engine.recipients(&req).await, ["long@example.com"]);
}

/// When a rule matches, the original mails its recipients and nobody else, even when none of
/// them is a valid address (`getRecipients` returns the non-empty rule set; the
/// FetchRecipientCallback does not validate). Ours drops the invalid ones and, left with none,
/// mails `role_to_recipients`: people the matching rule does not name.
#[tokio::test]
async fn a_matching_rule_with_only_bad_addresses_does_not_fall_back_to_role_to_recipients() {
    let engine = engine_with(vec![rule("dev", "true", &["dev-team", "bob"])]);
    let to = engine.recipients(&request("r3")).await;
    assert!(
        !to.contains(&FALLBACK.to_owned()),
        "a matching rule's (unmailable) recipients replaced by role_to_recipients: {to:?}"
    );
}

/// Upstream `getRecipients` falls back to `role_to_recipients` when the matching rules give an
/// empty recipient set (`recipientSet.Len() != 0` check); a rule with `notification.name:
/// email` and no recipients (e.g. one that exists for `automatic_review`) contributes nothing.
/// Ours returns `Some(vec![])` for any match (set.rs `out.get_or_insert_with`), so nobody is
/// mailed.
#[tokio::test]
async fn a_matching_rule_without_recipients_falls_back_to_role_to_recipients_as_upstream() {
    let engine = engine_with(vec![rule("no-recipients", "true", &[])]);
    let to = engine.recipients(&request("r5")).await;
    assert_eq!(
        to,
        [FALLBACK],
        "a matching rule with no recipients silenced routing"
    );
}

/// A directory where no user exists.
struct NoUsers;

#[async_trait::async_trait]
impl Directory for NoUsers {
    async fn user_traits(&self, user: &str) -> Result<Traits, TeleportError> {
        Err(TeleportError::NotFound(format!("user {user:?} not found")))
    }
}

/// v18.0's original reads the requester for every request (`getUserTraits`, PR #55101); on
/// any error (a deleted user, an expired SSO user, Auth unavailable) it WARNs and evaluates
/// the rules without traits, so a rule that does not need them still routes the request.
/// (Later 18.x releases, through `GetUserOrLoginState`, fall back to `role_to_recipients`
/// instead; an earlier review pinned that, before v18.0 was settled on as the target.)
#[tokio::test]
async fn a_requester_that_cannot_be_read_is_routed_without_traits_as_v18_0() {
    let set = rule_set(vec![
        rule("all-requests", "true", &["rule@example.com"]),
        rule(
            "team",
            r#"user.traits["team"].contains("x")"#,
            &["team@example.com"],
        ),
    ]);
    let engine = engine_with(vec![]).with_rules(set, Arc::new(NoUsers));
    let to = engine.recipients(&request("r4")).await;
    assert_eq!(
        to,
        ["rule@example.com"],
        "v18.0 evaluates without traits when GetUser fails"
    );
}
