//! What the fake Auth Service remembers (requests, plugin data, watchers) and the rules it applies,
//! following Teleport's server behaviour (teleport-wire.md sections 2–3).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use prost_types::Timestamp;
use tokio::sync::mpsc;
use tonic::{Code, Status};

use crate::teleport::pb::proto::{Event, Operation, event};
use crate::teleport::pb::teleport::accessmonitoringrules::v1::AccessMonitoringRule;
use crate::teleport::pb::types::{
    AccessRequestSpecV3, AccessRequestV3, AccessReview, AccessReviewThreshold, Metadata,
    RequestState, ResourceHeader,
};

/// Go's zero `time.Time` on the wire (0001-01-01T00:00:00Z).
pub const GO_ZERO_SECONDS: i64 = -62_135_596_800;

/// How long the access of a new request lasts, unless the test says otherwise.
pub(super) const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(3600);

pub(super) fn go_zero_time() -> Timestamp {
    Timestamp {
        seconds: GO_ZERO_SECONDS,
        nanos: 0,
    }
}

pub(super) fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// plugin → its data, for one resource.
pub(super) type PluginEntries = BTreeMap<String, BTreeMap<String, String>>;

/// One watch stream, the kinds the server confirmed for it, and its access-request filter.
pub(super) struct Watcher {
    pub tx: mpsc::Sender<Result<Event, Status>>,
    pub kinds: Vec<String>,
    pub filter: HashMap<String, String>,
}

impl Watcher {
    /// Whether the stream gets events of `kind`.
    pub(super) fn watches(&self, kind: &str) -> bool {
        self.kinds.iter().any(|k| k == kind)
    }
}

/// The whole state; lives across stop/restart of the server.
#[derive(Default)]
pub(super) struct State {
    pub requests: BTreeMap<String, AccessRequestV3>,
    /// Access Monitoring Rules by name (the backend's key order, which paging follows).
    pub rules: BTreeMap<String, AccessMonitoringRule>,
    /// Access Lists by name (the backend's key order, which paging follows).
    pub access_lists: BTreeMap<String, super::lists::FakeList>,
    /// Users by name, with their traits (requesters are added when they first ask).
    pub users: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// Users whose GetUser answers INVALID_ARGUMENT (a record Auth cannot decode).
    pub broken_users: std::collections::BTreeSet<String>,
    /// Number of ListAccessMonitoringRulesWithFilter calls (pages served).
    pub rule_list_calls: u64,
    /// (kind, resource) → plugin → data.
    pub plugin_data: BTreeMap<(String, String), BTreeMap<String, BTreeMap<String, String>>>,
    pub watchers: Vec<Watcher>,
    /// Number of UpdatePluginData calls, for tests that count round trips.
    pub plugin_data_writes: u64,
    /// Number of GetPluginData calls.
    pub plugin_data_reads: u64,
    /// Number of ListAccessRequests calls (pages).
    pub list_calls: u64,
    /// How many of the next UpdatePluginData calls fail with a compare error regardless.
    pub forced_compare_failures: u32,
}

pub(super) fn status(code: Code, msg: impl Into<String>) -> Status {
    Status::new(code, msg)
}

impl State {
    /// Stores a new request as Teleport does on create, and announces it.
    pub(super) fn create(
        &mut self,
        mut req: AccessRequestV3,
        now: SystemTime,
    ) -> Result<AccessRequestV3, Status> {
        let meta = req.metadata.get_or_insert_with(Metadata::default);
        if meta.name.is_empty() {
            meta.name = new_uuid();
        }
        if self.requests.contains_key(&meta.name) {
            return Err(status(
                Code::AlreadyExists,
                format!("access request {:?} already exists", meta.name),
            ));
        }
        meta.namespace = "default".into();
        let spec = req.spec.get_or_insert_with(AccessRequestSpecV3::default);
        if spec.user.is_empty() {
            return Err(status(Code::InvalidArgument, "missing user name"));
        }
        if spec.roles.is_empty() && spec.requested_resource_i_ds.is_empty() {
            return Err(status(
                Code::InvalidArgument,
                "access request does not specify any roles or resources",
            ));
        }
        spec.roles.sort();
        spec.roles.dedup();
        // A requester is a user of the cluster (GetUser finds them).
        self.users.entry(spec.user.clone()).or_default();
        match RequestState::try_from(spec.state) {
            Ok(RequestState::None) | Ok(RequestState::Pending) => {
                spec.state = RequestState::Pending as i32
            }
            _ => {
                return Err(status(
                    Code::InvalidArgument,
                    "new access requests must be pending",
                ));
            }
        }
        if !spec.resolve_reason.is_empty() {
            return Err(status(
                Code::InvalidArgument,
                "pending requests cannot have a resolve reason",
            ));
        }
        if spec.thresholds.is_empty() {
            spec.thresholds.push(AccessReviewThreshold {
                name: "default".into(),
                filter: String::new(),
                approve: 1,
                deny: 1,
            });
        }
        spec.created = Some(timestamp(now));
        spec.expires = Some(timestamp(now + DEFAULT_ACCESS_TTL));
        // Go always emits its non-nullable times; unset ones as the zero time.
        spec.max_duration.get_or_insert_with(go_zero_time);
        spec.session_ttl.get_or_insert_with(go_zero_time);
        req.kind = "access_request".into();
        req.version = "v3".into();
        let id = meta.name.clone();
        self.requests.insert(id, req.clone());
        self.announce_put(&req);
        Ok(req)
    }

    /// Stores request number `i` of a seeded history (see `FakeAuth::seed_requests`), unannounced.
    pub(super) fn seed(&mut self, i: usize, pending: bool, now: SystemTime) -> String {
        let id = format!("{:08x}-0000-4000-8000-{:012x}", i >> 16, i);
        let state = match pending {
            true => RequestState::Pending,
            false => RequestState::Approved,
        };
        let req = AccessRequestV3 {
            kind: "access_request".into(),
            version: "v3".into(),
            metadata: Some(Metadata {
                name: id.clone(),
                namespace: "default".into(),
                ..Default::default()
            }),
            spec: Some(AccessRequestSpecV3 {
                user: format!("user{}", i % 100),
                roles: vec!["editor".into()],
                state: state as i32,
                request_reason: "seeded".into(),
                created: Some(timestamp(now)),
                expires: Some(timestamp(now + DEFAULT_ACCESS_TTL)),
                max_duration: Some(go_zero_time()),
                session_ttl: Some(go_zero_time()),
                ..Default::default()
            }),
            sub_kind: String::new(),
        };
        self.requests.insert(id.clone(), req);
        id
    }

    fn get_mut(&mut self, id: &str) -> Result<&mut AccessRequestV3, Status> {
        self.requests.get_mut(id).ok_or_else(|| not_found(id))
    }

    /// Adds a review and resolves the request when a threshold is reached; the resolve reason is
    /// the deciding review's.
    pub(super) fn review(
        &mut self,
        id: &str,
        mut review: AccessReview,
        now: SystemTime,
    ) -> Result<AccessRequestV3, Status> {
        let req = self.get_mut(id)?;
        let spec = req.spec.get_or_insert_with(Default::default);
        // Teleport checks in this order (`ApplyAccessReview`): the proposal, a second review by
        // the same author (AlreadyExists, even on a resolved request), then the state.
        let proposed = RequestState::try_from(review.proposed_state).unwrap_or(RequestState::None);
        if !matches!(proposed, RequestState::Approved | RequestState::Denied) {
            return Err(status(
                Code::InvalidArgument,
                format!(
                    "invalid state proposal: {} (expected approval/denial)",
                    proposed.as_str_name()
                ),
            ));
        }
        if spec.reviews.iter().any(|r| r.author == review.author) {
            return Err(status(
                Code::AlreadyExists,
                format!("user {:?} has already reviewed this request", review.author),
            ));
        }
        let done = match RequestState::try_from(spec.state) {
            Ok(RequestState::Approved) => Some("approved"),
            Ok(RequestState::Denied) => Some("denied"),
            Ok(RequestState::Promoted) => Some("promoted"),
            _ => None,
        };
        if let Some(done) = done {
            return Err(status(
                Code::PermissionDenied,
                format!("the access request has been already {done}"),
            ));
        }
        let zero = review
            .created
            .as_ref()
            .is_none_or(|t| t.seconds == GO_ZERO_SECONDS);
        if zero {
            review.created = Some(timestamp(now));
        }
        let reason = review.reason.clone();
        spec.reviews.push(review);
        let count = |s: RequestState| {
            spec.reviews
                .iter()
                .filter(|r| r.proposed_state == s as i32)
                .count() as u32
        };
        let need = |f: fn(&AccessReviewThreshold) -> u32| {
            spec.thresholds
                .iter()
                .map(f)
                .filter(|n| *n > 0)
                .min()
                .unwrap_or(1)
        };
        if count(RequestState::Denied) >= need(|t| t.deny) {
            spec.state = RequestState::Denied as i32;
            spec.resolve_reason = reason;
        } else if count(RequestState::Approved) >= need(|t| t.approve) {
            spec.state = RequestState::Approved as i32;
            spec.resolve_reason = reason;
        }
        let req = req.clone();
        self.announce_put(&req);
        Ok(req)
    }

    /// Sets the state directly (an administrator's approve/deny), as `SetAccessRequestState`.
    pub(super) fn set_state(
        &mut self,
        id: &str,
        state: RequestState,
        reason: &str,
    ) -> Result<(), Status> {
        if !matches!(
            state,
            RequestState::Approved | RequestState::Denied | RequestState::Promoted
        ) {
            return Err(status(
                Code::InvalidArgument,
                "state must be APPROVED, DENIED or PROMOTED",
            ));
        }
        let req = self.requests.get_mut(id).ok_or_else(|| {
            status(
                Code::NotFound,
                format!("cannot set state of access request {id:?} (not found)"),
            )
        })?;
        let spec = req.spec.get_or_insert_with(Default::default);
        // Only a denial is final (`AccessRequestV3.SetState`): an approved request may still be
        // denied by an administrator, and that is announced like any change.
        if spec.state == RequestState::Denied as i32 && state != RequestState::Denied {
            return Err(status(
                Code::InvalidArgument,
                format!(
                    "cannot set request-state {:?} (already denied)",
                    state.as_str_name()
                ),
            ));
        }
        spec.state = state as i32;
        spec.resolve_reason = reason.to_owned();
        let req = req.clone();
        self.announce_put(&req);
        Ok(())
    }

    /// Removes a request; its plugin data stays (it outlives the request in Teleport).
    pub(super) fn delete(&mut self, id: &str) -> Result<(), Status> {
        self.requests.remove(id).ok_or_else(|| {
            status(
                Code::NotFound,
                format!("cannot delete access request {id:?} (not found)"),
            )
        })?;
        let header = ResourceHeader {
            kind: "access_request".into(),
            sub_kind: String::new(),
            version: "v3".into(),
            metadata: Some(Metadata {
                name: id.to_owned(),
                namespace: "default".into(),
                ..Default::default()
            }),
        };
        self.broadcast(
            Event {
                r#type: Operation::Delete as i32,
                resource: Some(event::Resource::ResourceHeader(header)),
            },
            |w| w.watches("access_request") && w.filter.get("id").is_none_or(|v| v == id),
        );
        Ok(())
    }

    fn announce_put(&mut self, req: &AccessRequestV3) {
        let event = Event {
            r#type: Operation::Put as i32,
            resource: Some(event::Resource::AccessRequest(req.clone())),
        };
        self.broadcast(event, |w| {
            w.watches("access_request") && matches_filter(req, &w.filter)
        });
    }

    /// Sends `event` to every watcher that `wants` it.
    pub(super) fn broadcast(&mut self, event: Event, wants: impl Fn(&Watcher) -> bool) {
        self.watchers.retain(|w| {
            if !wants(w) {
                return !w.tx.is_closed();
            }
            // A watcher that cannot keep up is cut off, as Teleport does with slow watchers.
            w.tx.try_send(Ok(event.clone())).is_ok()
        });
    }

    /// Teleport's compare-and-swap on plugin data.
    pub(super) fn update_plugin_data(
        &mut self,
        kind: &str,
        resource: &str,
        plugin: &str,
        set: &HashMap<String, String>,
        expect: &HashMap<String, String>,
    ) -> Result<(), Status> {
        self.plugin_data_writes += 1;
        check_kind(kind)?;
        let key = (kind.to_owned(), resource.to_owned());
        // Teleport loads the request before creating its record; Access Lists are not looked up.
        let is_request = kind == "access_request";
        if is_request
            && !self.plugin_data.contains_key(&key)
            && !self.requests.contains_key(resource)
        {
            return Err(not_found(resource));
        }
        if self.forced_compare_failures > 0 {
            self.forced_compare_failures -= 1;
            return Err(status(
                Code::FailedPrecondition,
                "too many concurrent writes to plugin data",
            ));
        }
        let record = self.plugin_data.entry(key.clone()).or_default();
        let entry = record.get(plugin);
        for (k, want) in expect {
            let have = entry
                .and_then(|e| e.get(k))
                .map(String::as_str)
                .unwrap_or("");
            if have != want {
                return Err(status(
                    Code::FailedPrecondition,
                    format!("expectations not met for field {k:?}"),
                ));
            }
        }
        let entry = record.entry(plugin.to_owned()).or_default();
        for (k, v) in set {
            if v.is_empty() {
                entry.remove(k);
            } else {
                entry.insert(k.clone(), v.clone());
            }
        }
        if entry.is_empty() {
            record.remove(plugin);
        }
        if record.is_empty() {
            self.plugin_data.remove(&key);
        }
        Ok(())
    }

    /// GetPluginData: an empty list (not NotFound) when there is none.
    pub(super) fn get_plugin_data(
        &mut self,
        kind: &str,
        resource: &str,
        plugin: &str,
    ) -> Result<Vec<(String, PluginEntries)>, Status> {
        check_kind(kind)?;
        self.plugin_data_reads += 1;
        let key = (kind.to_owned(), resource.to_owned());
        // One resource: a lookup, not a scan (the benchmark holds thousands).
        let range = if resource.is_empty() {
            self.plugin_data.range(..)
        } else {
            self.plugin_data.range(key.clone()..=key)
        };
        Ok(range
            .filter(|((k, r), _)| k == kind && (resource.is_empty() || r == resource))
            .filter(|(_, entries)| plugin.is_empty() || entries.contains_key(plugin))
            // Like Teleport, a record that matches comes whole, other plugins' data included.
            .map(|((_, r), entries)| (r.clone(), entries.clone()))
            .collect())
    }
}

/// Teleport's NotFound for a request id (`services.GetAccessRequest`), as observed on v18.
fn not_found(id: &str) -> Status {
    status(Code::NotFound, format!("no access request matching {id:?}"))
}

fn check_kind(kind: &str) -> Result<(), Status> {
    match kind {
        "access_request" | "access_list" => Ok(()),
        other => Err(status(
            Code::InvalidArgument,
            format!("unsupported resource kind {other:?}"),
        )),
    }
}

/// Whether a request passes a watch filter (`id`, `user`, `state`).
pub(super) fn matches_filter(req: &AccessRequestV3, filter: &HashMap<String, String>) -> bool {
    let spec = req.spec.clone().unwrap_or_default();
    let id = req.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("");
    filter.iter().all(|(k, v)| match k.as_str() {
        "id" => v == id,
        "user" => *v == spec.user,
        "state" => RequestState::try_from(spec.state)
            .map(|s| s.as_str_name() == v)
            .unwrap_or(false),
        _ => false,
    })
}

/// A random version-4 UUID, as Teleport names requests.
pub fn new_uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        h(0..4),
        h(4..6),
        &h(6..8)[1..],
        8 | (b[8] & 0x3),
        &h(8..10)[1..],
        h(10..16)
    )
}
