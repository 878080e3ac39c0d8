//! Access Monitoring Rules and requester traits: the domain types, and the calls rule-based routing
//! needs (list the rules, watch them beside access requests, read a requester's traits).

use std::collections::BTreeMap;

use super::client::{ACCESS_REQUEST_KIND, CALL_TIMEOUT, TeleportClient, WatchStream, deadline};
use super::error::TeleportError;
use super::pb::proto::{GetUserRequest as LegacyGetUserRequest, Watch};
use super::pb::teleport::accessmonitoringrules::v1::access_monitoring_rules_service_client::AccessMonitoringRulesServiceClient;
use super::pb::teleport::accessmonitoringrules::v1::{
    AccessMonitoringRule, ListAccessMonitoringRulesWithFilterRequest,
};
use super::pb::teleport::users::v1::GetUserRequest;
use super::pb::teleport::users::v1::users_service_client::UsersServiceClient;
use super::pb::types::{UserV2, WatchKind};

/// The resource kind of Access Monitoring Rules (watch kind, delete-event header kind).
pub const ACCESS_MONITORING_RULE_KIND: &str = "access_monitoring_rule";
/// Rules asked for per page, as the original.
pub const RULES_PAGE_SIZE: i64 = 1000;

/// A user's traits: trait name → values.
pub type Traits = BTreeMap<String, Vec<String>>;

/// An Access Monitoring Rule, as much of it as notification routing needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonitoringRule {
    pub name: String,
    /// Resource kinds the rule is about (`access_request`).
    pub subjects: Vec<String>,
    pub states: Vec<String>,
    /// A predicate over the request (and the requester's traits).
    pub condition: String,
    /// The plugin the rule notifies through (`email` for us).
    pub notification_name: String,
    pub recipients: Vec<String>,
}

impl MonitoringRule {
    /// Whether the rule routes `plugin`'s access-request notifications: its notification names
    /// `plugin` and its subjects include `access_request`, which is the original's test (listing
    /// filters the same way, but a watched put must be checked here: a rule can stop applying).
    pub fn applies_to(&self, plugin: &str) -> bool {
        self.notification_name == plugin && self.subjects.iter().any(|s| s == ACCESS_REQUEST_KIND)
    }

    /// A rule that notifies the email plugin about access requests matching `condition` (for
    /// tests and the fakes).
    #[cfg(any(test, feature = "testkit"))]
    pub fn for_email(name: &str, condition: &str, recipients: &[&str]) -> Self {
        Self {
            name: name.into(),
            subjects: vec![ACCESS_REQUEST_KIND.into()],
            states: vec![],
            condition: condition.into(),
            notification_name: "email".into(),
            recipients: recipients.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl From<AccessMonitoringRule> for MonitoringRule {
    fn from(r: AccessMonitoringRule) -> Self {
        let spec = r.spec.unwrap_or_default();
        let notification = spec.notification.unwrap_or_default();
        Self {
            name: r.metadata.map(|m| m.name).unwrap_or_default(),
            subjects: spec.subjects,
            states: spec.states,
            condition: spec.condition,
            notification_name: notification.name,
            recipients: notification.recipients,
        }
    }
}

fn traits_of(user: UserV2) -> Traits {
    user.spec
        .and_then(|s| s.traits)
        .map(|t| t.values.into_iter().map(|(k, v)| (k, v.values)).collect())
        .unwrap_or_default()
}

impl TeleportClient {
    /// Every rule that routes `plugin`'s access-request notifications, page by page
    /// ([`RULES_PAGE_SIZE`]), filtered by the server and again here as the original does. A role
    /// without `read` and `list` on `access_monitoring_rule` gets [`TeleportError::AccessDenied`];
    /// a server without the rules service (before v16) [`TeleportError::Unimplemented`].
    pub async fn list_monitoring_rules(
        &self,
        plugin: &str,
    ) -> Result<Vec<MonitoringRule>, TeleportError> {
        let mut grpc = AccessMonitoringRulesServiceClient::new(self.channel());
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let call = grpc.list_access_monitoring_rules_with_filter(
                ListAccessMonitoringRulesWithFilterRequest {
                    page_size: RULES_PAGE_SIZE,
                    page_token: page_token.clone(),
                    subjects: vec![ACCESS_REQUEST_KIND.into()],
                    notification_name: plugin.into(),
                    ..Default::default()
                },
            );
            let page = deadline("ListAccessMonitoringRulesWithFilter", call)
                .await?
                .into_inner();
            out.extend(
                page.rules
                    .into_iter()
                    .map(MonitoringRule::from)
                    .filter(|r| r.applies_to(plugin)),
            );
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            if page.next_page_token == page_token {
                return Err(TeleportError::BadParameter(format!(
                    "listing access monitoring rules: the server returned page token {page_token:?} twice"
                )));
            }
            page_token = page.next_page_token;
        }
    }

    /// The traits of `user`, through `teleport.users.v1.UsersService/GetUser`, or the older
    /// `/proto.AuthService/GetUser` on servers without that service. Without `read` on `user` the
    /// error is [`TeleportError::AccessDenied`] (the original then evaluates rules without
    /// traits); a user that does not exist is [`TeleportError::NotFound`].
    pub async fn user_traits(&self, user: &str) -> Result<Traits, TeleportError> {
        if user.is_empty() {
            return Err(TeleportError::BadParameter(
                "reading user traits: missing user name".into(),
            ));
        }
        let mut users = UsersServiceClient::new(self.channel());
        let call = users.get_user(GetUserRequest {
            name: user.into(),
            ..Default::default()
        });
        let resp = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(resp) => resp,
            Err(_) => return Err(deadline_passed("GetUser")),
        };
        let found = match resp {
            Ok(r) => r.into_inner().user,
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                let mut auth = self.auth();
                let call = auth.get_user(LegacyGetUserRequest {
                    name: user.into(),
                    with_secrets: false,
                });
                let legacy = tokio::time::timeout(CALL_TIMEOUT, call)
                    .await
                    .map_err(|_| deadline_passed("GetUser"))?;
                Some(legacy.map_err(|s| user_error(user, s))?.into_inner())
            }
            Err(s) => return Err(user_error(user, s)),
        };
        Ok(found.map(traits_of).unwrap_or_default())
    }

    /// Opens a watch on access requests and Access Monitoring Rules with partial success allowed,
    /// as the original: a role that may not watch rules still gets its requests, and
    /// [`WatchStream::confirmed_kinds`] says which kinds the server accepted.
    pub async fn watch_requests_and_rules(&self) -> Result<WatchStream, TeleportError> {
        let watch = Watch {
            kinds: [ACCESS_REQUEST_KIND, ACCESS_MONITORING_RULE_KIND]
                .into_iter()
                .map(|kind| WatchKind {
                    kind: kind.into(),
                    ..Default::default()
                })
                .collect(),
            allow_partial_success: true,
        };
        let mut auth = self.auth();
        let stream = deadline("WatchEvents", auth.watch_events(watch))
            .await?
            .into_inner();
        Ok(WatchStream::new(stream))
    }
}

/// The error of a call that got no answer within [`CALL_TIMEOUT`].
fn deadline_passed(method: &str) -> TeleportError {
    TeleportError::Timeout(format!(
        "{method}: no answer from Teleport within {}s",
        CALL_TIMEOUT.as_secs()
    ))
}

/// A GetUser failure, naming the user (the status text is Teleport's and holds no secret).
fn user_error(user: &str, s: tonic::Status) -> TeleportError {
    match TeleportError::from(s) {
        TeleportError::AccessDenied(m) => TeleportError::AccessDenied(format!(
            "reading the traits of user {user:?} needs `read` on `user`: {m}"
        )),
        TeleportError::NotFound(m) => TeleportError::NotFound(format!("user {user:?}: {m}")),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teleport::pb::teleport::accessmonitoringrules::v1::{
        AccessMonitoringRuleSpec, Notification,
    };
    use crate::teleport::pb::teleport::header::v1::Metadata;
    use crate::teleport::pb::types::UserSpecV2;
    use crate::teleport::pb::wrappers::{LabelValues, StringValues};

    fn rule(notification: &str, subjects: &[&str]) -> MonitoringRule {
        MonitoringRule {
            name: "r".into(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            notification_name: notification.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_rule_applies_when_it_notifies_the_plugin_about_access_requests() {
        assert!(rule("email", &["access_request"]).applies_to("email"));
        assert!(rule("email", &["access_list", "access_request"]).applies_to("email"));
        assert!(!rule("slack", &["access_request"]).applies_to("email"));
        assert!(!rule("email", &["access_list"]).applies_to("email"));
        assert!(!rule("", &["access_request"]).applies_to("email"));
    }

    #[test]
    fn wire_rule_to_domain() {
        let wire = AccessMonitoringRule {
            metadata: Some(Metadata {
                name: "devs".into(),
                ..Default::default()
            }),
            kind: ACCESS_MONITORING_RULE_KIND.into(),
            version: "v1".into(),
            spec: Some(AccessMonitoringRuleSpec {
                subjects: vec!["access_request".into()],
                states: vec!["approved".into()],
                condition: r#"contains_any(access_request.spec.roles, set("dev"))"#.into(),
                notification: Some(Notification {
                    name: "email".into(),
                    recipients: vec!["devs@example.com".into()],
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = MonitoringRule::from(wire);
        assert_eq!(r.name, "devs");
        assert_eq!(r.subjects, ["access_request"]);
        assert_eq!(r.states, ["approved"]);
        assert!(r.condition.starts_with("contains_any("));
        assert_eq!(r.notification_name, "email");
        assert_eq!(r.recipients, ["devs@example.com"]);
        // Missing parts are empty, not a panic.
        assert_eq!(
            MonitoringRule::from(AccessMonitoringRule::default()),
            MonitoringRule::default()
        );
    }

    #[test]
    fn traits_from_a_user() {
        let user = UserV2 {
            spec: Some(UserSpecV2 {
                traits: Some(LabelValues {
                    values: [(
                        "team".to_owned(),
                        StringValues {
                            values: vec!["a".into(), "b".into()],
                        },
                    )]
                    .into_iter()
                    .collect(),
                }),
            }),
            ..Default::default()
        };
        assert_eq!(
            traits_of(user),
            Traits::from([("team".into(), vec!["a".into(), "b".into()])])
        );
        assert!(traits_of(UserV2::default()).is_empty());
    }
}
