//! The domain types the rest of the daemon sees, and their conversion from the wire types
//! (Go's zero time means "unset"; unknown enum values are kept, not rejected).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::pb::proto::{Event, Operation, PingResponse, event};
use super::pb::types::{AccessRequestV3, AccessReview, RequestState as PbState};
use super::rules::{ACCESS_MONITORING_RULE_KIND, MonitoringRule};

/// Go's zero `time.Time` (0001-01-01) as protobuf seconds: Teleport's "unset".
pub(super) const GO_ZERO_SECONDS: i64 = -62_135_596_800;

/// What Ping told us about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    pub name: String,
    pub server_version: String,
    /// `AdvancedAccessWorkflows` (Enterprise): web links to requests work.
    pub advanced_workflows: bool,
    /// The first proxy's public address; may be empty.
    pub proxy_public_addr: String,
}

impl From<PingResponse> for ClusterInfo {
    fn from(p: PingResponse) -> Self {
        Self {
            name: p.cluster_name,
            server_version: p.server_version,
            advanced_workflows: p
                .server_features
                .is_some_and(|f| f.advanced_access_workflows),
            proxy_public_addr: p.proxy_public_addr,
        }
    }
}

/// The state of an Access Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    None,
    Pending,
    Approved,
    Denied,
    Promoted,
    /// A value this build does not know (a newer server).
    Unknown(i32),
}

impl RequestState {
    fn from_wire(v: i32) -> Self {
        match PbState::try_from(v) {
            Ok(PbState::None) => Self::None,
            Ok(PbState::Pending) => Self::Pending,
            Ok(PbState::Approved) => Self::Approved,
            Ok(PbState::Denied) => Self::Denied,
            Ok(PbState::Promoted) => Self::Promoted,
            Err(_) => Self::Unknown(v),
        }
    }

    /// The wire value.
    pub fn to_wire(self) -> i32 {
        match self {
            Self::None => PbState::None as i32,
            Self::Pending => PbState::Pending as i32,
            Self::Approved => PbState::Approved as i32,
            Self::Denied => PbState::Denied as i32,
            Self::Promoted => PbState::Promoted as i32,
            Self::Unknown(v) => v,
        }
    }
}

/// One review of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    pub author: String,
    pub proposed: RequestState,
    pub reason: String,
    pub created: Option<SystemTime>,
}

/// An Access Request, as much of it as notifications need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    pub id: String,
    pub user: String,
    pub roles: Vec<String>,
    pub state: RequestState,
    pub reason: String,
    pub resolve_reason: String,
    pub created: Option<SystemTime>,
    /// When the access (if granted) ends.
    pub expires: Option<SystemTime>,
    pub reviews: Vec<Review>,
    pub suggested_reviewers: Vec<String>,
    /// The Access List a promoted request was turned into (its title, else its name).
    pub promoted_to: Option<String>,
    /// Annotations the cluster's roles attach to the request (Access Monitoring Rules read them).
    pub system_annotations: BTreeMap<String, Vec<String>>,
    /// When the request itself expires (`spec.resource_expiry`, else `metadata.expires`), as
    /// Teleport's `Expiry()`; not when the access it grants would end (`expires`).
    pub request_expires: Option<SystemTime>,
}

#[cfg(test)]
impl AccessRequest {
    /// A pending request `id` by `alice` for `editor`, reason "please", nothing else set: the
    /// unit tests' starting point.
    pub(crate) fn sample(id: &str) -> Self {
        Self {
            id: id.into(),
            user: "alice".into(),
            roles: vec!["editor".into()],
            state: RequestState::Pending,
            reason: "please".into(),
            resolve_reason: String::new(),
            created: None,
            expires: None,
            reviews: vec![],
            suggested_reviewers: vec![],
            promoted_to: None,
            system_annotations: Default::default(),
            request_expires: None,
        }
    }
}

impl From<AccessRequestV3> for AccessRequest {
    fn from(r: AccessRequestV3) -> Self {
        let spec = r.spec.unwrap_or_default();
        let metadata = r.metadata.unwrap_or_default();
        let request_expires = time(spec.resource_expiry).or(time(metadata.expires));
        Self {
            id: metadata.name,
            user: spec.user,
            roles: spec.roles,
            state: RequestState::from_wire(spec.state),
            reason: spec.request_reason,
            resolve_reason: spec.resolve_reason,
            created: time(spec.created),
            expires: time(spec.expires),
            reviews: spec.reviews.into_iter().map(Review::from).collect(),
            suggested_reviewers: spec.suggested_reviewers,
            promoted_to: spec
                .access_list
                .map(|l| if l.title.is_empty() { l.name } else { l.title })
                .filter(|s| !s.is_empty()),
            system_annotations: spec
                .system_annotations
                .map(|a| a.values.into_iter().map(|(k, v)| (k, v.values)).collect())
                .unwrap_or_default(),
            request_expires,
        }
    }
}

impl From<AccessReview> for Review {
    fn from(r: AccessReview) -> Self {
        Self {
            author: r.author,
            proposed: RequestState::from_wire(r.proposed_state),
            reason: r.reason,
            created: time(r.created),
        }
    }
}

/// A Timestamp from the wire; absent and Go's zero time both mean "unset".
pub(super) fn time(t: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    let t = t?;
    if t.seconds == GO_ZERO_SECONDS && t.nanos == 0 {
        return None;
    }
    let nanos = Duration::from_nanos(u64::try_from(t.nanos).unwrap_or(0));
    let secs = Duration::from_secs(t.seconds.unsigned_abs());
    // Checked: a hostile or corrupt timestamp beyond what the clock can hold is "unset", not a
    // panic.
    let at = if t.seconds >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(secs)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(secs)
    };
    at?.checked_add(nanos)
}

/// One event of an access-request watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The stream is set up; later events are live.
    Init,
    /// A request was created or changed.
    Put(Box<AccessRequest>),
    /// A request was deleted (this is how expiry shows).
    Delete { id: String },
    /// An Access Monitoring Rule was created or changed (whether it applies is the caller's call).
    RulePut(Box<MonitoringRule>),
    /// An Access Monitoring Rule was deleted.
    RuleDelete { name: String },
    /// Something this build does not handle (another kind, an unknown variant).
    Other(String),
}

impl From<Event> for WatchEvent {
    fn from(e: Event) -> Self {
        // A missing Type is INIT (the enum's zero); unknown values are reported, not fatal.
        match (Operation::try_from(e.r#type), e.resource) {
            (Ok(Operation::Init), _) => Self::Init,
            (Ok(Operation::Put), Some(event::Resource::AccessRequest(r))) => {
                Self::Put(Box::new(r.into()))
            }
            (Ok(Operation::Delete), Some(event::Resource::ResourceHeader(h)))
                if h.kind == "access_request" =>
            {
                Self::Delete {
                    id: h.metadata.map(|m| m.name).unwrap_or_default(),
                }
            }
            (Ok(Operation::Put), Some(event::Resource::AccessMonitoringRule(r))) => {
                Self::RulePut(Box::new(r.into()))
            }
            (Ok(Operation::Delete), Some(event::Resource::ResourceHeader(h)))
                if h.kind == ACCESS_MONITORING_RULE_KIND =>
            {
                Self::RuleDelete {
                    name: h.metadata.map(|m| m.name).unwrap_or_default(),
                }
            }
            (op, res) => Self::Other(format!(
                "operation {op:?} with {}",
                match res {
                    None => "no resource (or an unknown kind)".to_owned(),
                    Some(event::Resource::ResourceHeader(h)) => format!("a {} header", h.kind),
                    Some(other) => format!("{other:?}").chars().take(60).collect(),
                }
            )),
        }
    }
}

/// The kinds an INIT event's WatchStatus says the server accepted; `None` for any other event,
/// and for an INIT without a WatchStatus (very old servers), which confirms nothing either way.
pub(super) fn watch_status_kinds(e: &Event) -> Option<Vec<String>> {
    if Operation::try_from(e.r#type) != Ok(Operation::Init) {
        return None;
    }
    match &e.resource {
        Some(event::Resource::WatchStatus(s)) => Some(
            s.spec
                .as_ref()
                .map(|spec| spec.kinds.iter().map(|k| k.kind.clone()).collect())
                .unwrap_or_default(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::teleport::pb::types::{AccessRequestSpecV3, Metadata, ResourceHeader};

    #[test]
    fn go_zero_time_is_unset() {
        assert_eq!(
            time(Some(prost_types::Timestamp {
                seconds: GO_ZERO_SECONDS,
                nanos: 0
            })),
            None
        );
        assert_eq!(time(None), None);
        assert_eq!(
            time(Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0
            })),
            Some(SystemTime::UNIX_EPOCH)
        );
    }

    #[test]
    fn init_without_type_on_the_wire() {
        // An INIT event as Teleport sends it: no field 1 at all.
        let bytes = Event {
            r#type: 0,
            resource: None,
        }
        .encode_to_vec();
        assert!(bytes.is_empty());
        let decoded = Event::decode(bytes.as_slice()).unwrap();
        assert_eq!(WatchEvent::from(decoded), WatchEvent::Init);
    }

    #[test]
    fn unknown_fields_and_variants_are_tolerated() {
        // Field 80 (a oneof variant newer than us) and field 99 of the spec: both skipped.
        let mut bytes = Event {
            r#type: Operation::Put as i32,
            resource: None,
        }
        .encode_to_vec();
        bytes.extend_from_slice(&[0x82, 0x05, 0x02, 0x0a, 0x00]); // field 80, length 2
        let e = Event::decode(bytes.as_slice()).unwrap();
        assert!(matches!(WatchEvent::from(e), WatchEvent::Other(_)));

        let mut spec = AccessRequestSpecV3 {
            user: "alice".into(),
            state: 7,
            ..Default::default()
        }
        .encode_to_vec();
        spec.extend_from_slice(&[0x9a, 0x06, 0x01, 0x41]); // field 99, string "A"
        let spec = AccessRequestSpecV3::decode(spec.as_slice()).unwrap();
        let req = AccessRequest::from(AccessRequestV3 {
            metadata: Some(Metadata {
                name: "r1".into(),
                ..Default::default()
            }),
            spec: Some(spec),
            ..Default::default()
        });
        assert_eq!(req.user, "alice");
        assert_eq!(req.state, RequestState::Unknown(7));
    }

    #[test]
    fn delete_carries_the_request_id() {
        let e = Event {
            r#type: Operation::Delete as i32,
            resource: Some(event::Resource::ResourceHeader(ResourceHeader {
                kind: "access_request".into(),
                version: "v3".into(),
                metadata: Some(Metadata {
                    name: "abc".into(),
                    namespace: "default".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        assert_eq!(WatchEvent::from(e), WatchEvent::Delete { id: "abc".into() });
    }

    #[test]
    fn rule_put_and_delete_events() {
        use crate::teleport::pb::teleport::accessmonitoringrules::v1::{
            AccessMonitoringRule, AccessMonitoringRuleSpec, Notification,
        };
        use crate::teleport::pb::teleport::header::v1::Metadata as HeaderMetadata;

        let rule = AccessMonitoringRule {
            metadata: Some(HeaderMetadata {
                name: "devs".into(),
                ..Default::default()
            }),
            kind: "access_monitoring_rule".into(),
            version: "v1".into(),
            spec: Some(AccessMonitoringRuleSpec {
                subjects: vec!["access_request".into()],
                condition: "true".into(),
                notification: Some(Notification {
                    name: "email".into(),
                    recipients: vec!["a@example.com".into()],
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Variant 54 on the wire, decoded as a Teleport server sends it.
        let bytes = Event {
            r#type: Operation::Put as i32,
            resource: Some(event::Resource::AccessMonitoringRule(rule)),
        }
        .encode_to_vec();
        assert_eq!(&bytes[2..4], &[0xb2, 0x03], "field 54, length-delimited");
        match WatchEvent::from(Event::decode(bytes.as_slice()).unwrap()) {
            WatchEvent::RulePut(r) => {
                assert_eq!(r.name, "devs");
                assert_eq!(r.recipients, ["a@example.com"]);
            }
            other => panic!("expected a rule put, got {other:?}"),
        }
        let delete = Event {
            r#type: Operation::Delete as i32,
            resource: Some(event::Resource::ResourceHeader(ResourceHeader {
                kind: "access_monitoring_rule".into(),
                metadata: Some(Metadata {
                    name: "devs".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        assert_eq!(
            WatchEvent::from(delete),
            WatchEvent::RuleDelete {
                name: "devs".into()
            }
        );
    }

    #[test]
    fn init_watch_status_kinds() {
        use crate::teleport::pb::types::{WatchKind, WatchStatusSpecV1, WatchStatusV1};
        let init = Event {
            r#type: Operation::Init as i32,
            resource: Some(event::Resource::WatchStatus(WatchStatusV1 {
                spec: Some(WatchStatusSpecV1 {
                    kinds: vec![WatchKind {
                        kind: "access_request".into(),
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            })),
        };
        assert_eq!(
            watch_status_kinds(&init),
            Some(vec!["access_request".to_owned()])
        );
        assert_eq!(WatchEvent::from(init), WatchEvent::Init);
        // An INIT with no resource (very old servers) confirms nothing.
        let bare = Event {
            r#type: 0,
            resource: None,
        };
        assert_eq!(watch_status_kinds(&bare), None);
    }
}
