//! The fake's Access Monitoring Rules and users: rule storage with watch events, the filtered and
//! paged listing as Teleport serves it, and GetUser (both the Users service and the older Auth
//! Service call), each behind the permission Teleport checks.

use std::collections::BTreeMap;

use tonic::{Code, Request, Response, Status};

use super::service::Service;
use super::state::{State, status};
use crate::teleport::MonitoringRule;
use crate::teleport::pb::proto::{Event, Operation, event};
use crate::teleport::pb::teleport::accessmonitoringrules::v1::access_monitoring_rules_service_server::AccessMonitoringRulesService;
use crate::teleport::pb::teleport::accessmonitoringrules::v1::{
    AccessMonitoringRule, AccessMonitoringRuleSpec, ListAccessMonitoringRulesWithFilterRequest,
    ListAccessMonitoringRulesWithFilterResponse, Notification,
};
use crate::teleport::pb::teleport::header::v1::Metadata as HeaderMetadata;
use crate::teleport::pb::teleport::users::v1::users_service_server::UsersService;
use crate::teleport::pb::teleport::users::v1::{GetUserRequest, GetUserResponse};
use crate::teleport::pb::types::{Metadata, ResourceHeader, UserSpecV2, UserV2};
use crate::teleport::pb::wrappers::{LabelValues, StringValues};

const KIND: &str = "access_monitoring_rule";
/// The most rules Teleport returns per page, and its page size when none is asked for.
pub(super) const MAX_RULES_PAGE: usize = 1000;

/// The stored form of a rule, as `tctl create` leaves it.
pub(super) fn to_wire(rule: &MonitoringRule) -> AccessMonitoringRule {
    AccessMonitoringRule {
        metadata: Some(HeaderMetadata {
            name: rule.name.clone(),
            namespace: "default".into(),
            revision: super::state::new_uuid(),
            ..Default::default()
        }),
        kind: KIND.into(),
        sub_kind: String::new(),
        version: "v1".into(),
        spec: Some(AccessMonitoringRuleSpec {
            subjects: rule.subjects.clone(),
            states: rule.states.clone(),
            condition: rule.condition.clone(),
            notification: Some(Notification {
                name: rule.notification_name.clone(),
                recipients: rule.recipients.clone(),
            }),
            ..Default::default()
        }),
    }
}

/// Whether a rule passes the list filter, as Teleport matches it: each given field must match,
/// and every requested subject must be among the rule's.
fn matches(rule: &AccessMonitoringRule, req: &ListAccessMonitoringRulesWithFilterRequest) -> bool {
    let spec = rule.spec.clone().unwrap_or_default();
    let notification = spec.notification.unwrap_or_default().name;
    let review = spec.automatic_review.unwrap_or_default().integration;
    (req.notification_name.is_empty() || notification == req.notification_name)
        && (req.automatic_review_name.is_empty() || review == req.automatic_review_name)
        && req.subjects.iter().all(|s| spec.subjects.contains(s))
}

impl State {
    /// Creates or replaces a rule and announces it to the watchers of rules.
    pub(super) fn put_rule(&mut self, rule: AccessMonitoringRule) {
        let name = rule
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        self.rules.insert(name, rule.clone());
        let event = Event {
            r#type: Operation::Put as i32,
            resource: Some(event::Resource::AccessMonitoringRule(rule)),
        };
        self.broadcast(event, |w| w.watches(KIND));
    }

    /// Deletes a rule; watchers see a resource header of its kind and name.
    pub(super) fn delete_rule(&mut self, name: &str) -> Result<(), Status> {
        self.rules.remove(name).ok_or_else(|| {
            status(
                Code::NotFound,
                format!("access_monitoring_rule {name:?} doesn't exist"),
            )
        })?;
        let header = ResourceHeader {
            kind: KIND.into(),
            sub_kind: String::new(),
            version: "v1".into(),
            metadata: Some(Metadata {
                name: name.to_owned(),
                namespace: "default".into(),
                ..Default::default()
            }),
        };
        let event = Event {
            r#type: Operation::Delete as i32,
            resource: Some(event::Resource::ResourceHeader(header)),
        };
        self.broadcast(event, |w| w.watches(KIND));
        Ok(())
    }

    /// One page of the rules passing the filter, in name order; the token is the next match's name.
    pub(super) fn list_rules(
        &mut self,
        req: &ListAccessMonitoringRulesWithFilterRequest,
    ) -> ListAccessMonitoringRulesWithFilterResponse {
        self.rule_list_calls += 1;
        let size = usize::try_from(req.page_size)
            .ok()
            .filter(|n| (1..=MAX_RULES_PAGE).contains(n))
            .unwrap_or(MAX_RULES_PAGE);
        let mut rules: Vec<AccessMonitoringRule> = self
            .rules
            .range(req.page_token.clone()..)
            .map(|(_, r)| r)
            .filter(|r| matches(r, req))
            .take(size + 1)
            .cloned()
            .collect();
        let next_page_token = if rules.len() > size {
            rules
                .pop()
                .and_then(|r| r.metadata)
                .map(|m| m.name)
                .unwrap_or_default()
        } else {
            String::new()
        };
        ListAccessMonitoringRulesWithFilterResponse {
            rules,
            next_page_token,
        }
    }

    /// The user resource, with its traits, as GetUser returns it.
    pub(super) fn user(&self, name: &str) -> Result<UserV2, Status> {
        if self.broken_users.contains(name) {
            return Err(status(
                Code::InvalidArgument,
                format!("user {name:?}: cannot unmarshal the stored resource"),
            ));
        }
        let traits = self
            .users
            .get(name)
            .ok_or_else(|| status(Code::NotFound, format!("user {name:?} is not found")))?;
        Ok(UserV2 {
            kind: "user".into(),
            sub_kind: String::new(),
            version: "v2".into(),
            metadata: Some(Metadata {
                name: name.to_owned(),
                namespace: "default".into(),
                ..Default::default()
            }),
            spec: Some(UserSpecV2 {
                traits: Some(LabelValues {
                    values: traits
                        .iter()
                        .map(|(k, v)| (k.clone(), StringValues { values: v.clone() }))
                        .collect(),
                }),
            }),
        })
    }

    /// Creates the user or replaces its traits.
    pub(super) fn set_user_traits(&mut self, name: &str, traits: BTreeMap<String, Vec<String>>) {
        self.users.insert(name.to_owned(), traits);
    }
}

#[tonic::async_trait]
impl AccessMonitoringRulesService for Service {
    async fn list_access_monitoring_rules_with_filter(
        &self,
        req: Request<ListAccessMonitoringRulesWithFilterRequest>,
    ) -> Result<Response<ListAccessMonitoringRulesWithFilterResponse>, Status> {
        // Teleport checks read and list together; the fake's role models both as one permission.
        self.require(&req, |p| p.read_rules, "list access_monitoring_rule")?;
        let page = self.shared.lock().list_rules(req.get_ref());
        Ok(Response::new(page))
    }
}

#[tonic::async_trait]
impl UsersService for Service {
    async fn get_user(
        &self,
        req: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let caller = self.require(&req, |p| p.read_users, "read user")?;
        let r = req.into_inner();
        let name = if r.name.is_empty() && r.current_user {
            caller.user
        } else {
            r.name
        };
        if name.is_empty() {
            return Err(status(Code::InvalidArgument, "missing username"));
        }
        let user = self.shared.lock().user(&name)?;
        Ok(Response::new(GetUserResponse { user: Some(user) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, plugin: &str, subjects: &[&str]) -> AccessMonitoringRule {
        to_wire(&MonitoringRule {
            name: name.into(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            condition: "true".into(),
            notification_name: plugin.into(),
            recipients: vec![format!("{name}@example.com")],
            ..Default::default()
        })
    }

    fn names(r: &ListAccessMonitoringRulesWithFilterResponse) -> Vec<String> {
        r.rules
            .iter()
            .map(|r| r.metadata.clone().unwrap_or_default().name)
            .collect()
    }

    #[test]
    fn listing_filters_and_pages_as_teleport_does() {
        let mut state = State::default();
        state.put_rule(rule("a", "email", &["access_request"]));
        state.put_rule(rule("b", "slack", &["access_request"]));
        state.put_rule(rule("c", "email", &["access_list"]));
        state.put_rule(rule("d", "email", &["access_list", "access_request"]));
        state.put_rule(rule("e", "email", &["access_request"]));
        let mut req = ListAccessMonitoringRulesWithFilterRequest {
            page_size: 2,
            subjects: vec!["access_request".into()],
            notification_name: "email".into(),
            ..Default::default()
        };
        let first = state.list_rules(&req);
        assert_eq!(names(&first), ["a", "d"]);
        assert_eq!(first.next_page_token, "e");
        req.page_token = first.next_page_token;
        let second = state.list_rules(&req);
        assert_eq!(names(&second), ["e"]);
        assert_eq!(second.next_page_token, "");
        // No filter: everything; no page size: Teleport's maximum.
        let all = state.list_rules(&ListAccessMonitoringRulesWithFilterRequest::default());
        assert_eq!(names(&all), ["a", "b", "c", "d", "e"]);
        assert_eq!(state.rule_list_calls, 3);
    }

    #[test]
    fn users_and_deletes() {
        let mut state = State::default();
        assert_eq!(state.user("alice").unwrap_err().code(), Code::NotFound);
        state.set_user_traits("alice", BTreeMap::from([("team".into(), vec!["a".into()])]));
        let user = state.user("alice").unwrap();
        let traits = user.spec.unwrap().traits.unwrap().values;
        assert_eq!(traits["team"].values, ["a"]);
        assert_eq!(
            state.delete_rule("nope").unwrap_err().code(),
            Code::NotFound
        );
    }
}
