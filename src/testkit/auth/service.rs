//! The fake's gRPC methods: who is calling (from the client certificate), what they may do, and
//! the calls themselves.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::FakeAuthOptions;
use super::state::{State, Watcher, matches_filter, status};
use crate::teleport::identity::cert_info;
use crate::teleport::pb::proto::auth_service_server::AuthService;
use crate::teleport::pb::proto::{
    Event, Features, GetUserRequest as LegacyGetUserRequest, ListAccessRequestsRequest,
    ListAccessRequestsResponse, Operation, PingRequest, PingResponse, PluginDataSeq, RequestId,
    RequestStateSetter, Watch, event,
};
use crate::teleport::pb::types::{
    AccessRequestFilter, AccessRequestV3, AccessReviewSubmission, Metadata, PluginDataEntry,
    PluginDataFilter, PluginDataSpecV3, PluginDataUpdateParams, PluginDataV3, RequestState, UserV2,
    WatchKind, WatchStatusSpecV1, WatchStatusV1,
};

/// What a role lets its holder do in the fake (a small stand-in for Teleport's RBAC).
#[derive(Debug, Clone, Copy, Default)]
pub struct Perms {
    /// list/read access_request (also needed to watch them).
    pub read_requests: bool,
    /// update access_plugin_data.
    pub write_plugin_data: bool,
    /// create access requests (for themselves).
    pub create_requests: bool,
    /// submit reviews.
    pub review: bool,
    /// everything, including acting for others, set_state and delete.
    pub admin: bool,
    /// read and list access_monitoring_rule (needed to list the rules and to watch them).
    pub read_rules: bool,
    /// read user (needed for GetUser, and so for the requester's traits).
    pub read_users: bool,
    /// list and read access_list (needed to list Access Lists and their owners).
    pub read_access_lists: bool,
}

/// The built-in role table: the plugin's `access-plugin` role and the user guide's roles.
///
/// `access-plugin` may also list and watch Access Monitoring Rules and read users, as rule-based
/// routing needs; tests of a narrower role (the v18 user guide's) take those away with
/// [`super::FakeAuth::set_role`].
pub fn default_roles() -> HashMap<String, Perms> {
    let mut m = HashMap::new();
    let plugin = Perms {
        read_requests: true,
        write_plugin_data: true,
        read_rules: true,
        read_users: true,
        read_access_lists: true,
        ..Perms::default()
    };
    m.insert("access-plugin".into(), plugin);
    m.insert(
        "editor-requester".into(),
        Perms {
            create_requests: true,
            ..Perms::default()
        },
    );
    m.insert(
        "editor-reviewer".into(),
        Perms {
            read_requests: true,
            review: true,
            ..Perms::default()
        },
    );
    let admin = Perms {
        read_requests: true,
        write_plugin_data: true,
        create_requests: true,
        review: true,
        admin: true,
        read_rules: true,
        read_users: true,
        read_access_lists: true,
    };
    m.insert("admin".into(), admin);
    m
}

/// State shared by the server across restarts.
pub(super) struct Shared {
    pub state: Mutex<State>,
    pub options: FakeAuthOptions,
    pub roles: Mutex<HashMap<String, Perms>>,
    /// Every user that called, by client certificate.
    pub callers: Mutex<std::collections::BTreeSet<String>>,
    /// While `true`, calls wait without an answer (a hung Auth Service).
    pub hung: watch::Sender<bool>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once the service is not hung.
    pub(super) async fn answering(&self) {
        let _ = self.hung.subscribe().wait_for(|hung| !hung).await;
    }
}

/// The tonic service over the shared state.
#[derive(Clone)]
pub(super) struct Service {
    pub shared: Arc<Shared>,
}

pub(super) struct Caller {
    pub(super) user: String,
    pub(super) perms: Perms,
}

impl Service {
    fn caller<T>(&self, req: &Request<T>) -> Caller {
        let info = req
            .peer_certs()
            .and_then(|certs| certs.first().and_then(|c| cert_info(c).ok()));
        let Some(info) = info else {
            // No client certificate: Teleport's built-in Nop role, allowed nothing.
            return Caller {
                user: String::new(),
                perms: Perms::default(),
            };
        };
        self.shared
            .callers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(info.user.clone());
        let table = self.shared.roles.lock().unwrap_or_else(|e| e.into_inner());
        let perms =
            info.roles
                .iter()
                .filter_map(|r| table.get(r))
                .fold(Perms::default(), |a, p| Perms {
                    read_requests: a.read_requests || p.read_requests,
                    write_plugin_data: a.write_plugin_data || p.write_plugin_data,
                    create_requests: a.create_requests || p.create_requests,
                    review: a.review || p.review,
                    admin: a.admin || p.admin,
                    read_rules: a.read_rules || p.read_rules,
                    read_users: a.read_users || p.read_users,
                    read_access_lists: a.read_access_lists || p.read_access_lists,
                });
        Caller {
            user: info.user,
            perms,
        }
    }

    pub(super) fn require<T>(
        &self,
        req: &Request<T>,
        check: fn(&Perms) -> bool,
        what: &str,
    ) -> Result<Caller, Status> {
        let caller = self.caller(req);
        if check(&caller.perms) || caller.perms.admin {
            Ok(caller)
        } else {
            // Teleport's wording: access denied to perform action "update" on "access_plugin_data".
            let (verb, kind) = what.split_once(' ').unwrap_or((what, ""));
            Err(status(
                Code::PermissionDenied,
                format!("access denied to perform action {verb:?} on {kind:?}"),
            ))
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;
type RequestStream = Pin<Box<dyn Stream<Item = Result<AccessRequestV3, Status>> + Send>>;

#[tonic::async_trait]
impl AuthService for Service {
    async fn ping(&self, _req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        self.shared.answering().await;
        let o = &self.shared.options;
        Ok(Response::new(PingResponse {
            cluster_name: o.cluster.clone(),
            server_version: o.server_version.clone(),
            server_features: Some(Features {
                advanced_access_workflows: o.advanced_workflows,
                ..Default::default()
            }),
            proxy_public_addr: o.proxy_public_addr.clone(),
            ..Default::default()
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(&self, req: Request<Watch>) -> Result<Response<EventStream>, Status> {
        self.shared.answering().await;
        let caller = self.caller(&req);
        let watch = req.into_inner();
        let mut confirmed = Vec::new();
        let mut filter = HashMap::new();
        let mut denied = None;
        for kind in &watch.kinds {
            // Each kind needs read and list on it; under partial success a kind the role may not
            // watch is dropped silently (the INIT's WatchStatus lists what was kept).
            let allowed = caller.perms.admin
                || match kind.kind.as_str() {
                    "access_request" => caller.perms.read_requests,
                    "access_monitoring_rule" => caller.perms.read_rules,
                    _ => {
                        if watch.allow_partial_success {
                            continue;
                        }
                        return Err(status(
                            Code::InvalidArgument,
                            format!("watching {:?} is not supported", kind.kind),
                        ));
                    }
                };
            if !allowed {
                let err = status(
                    Code::PermissionDenied,
                    format!(
                        "access denied to perform action \"list\" on {:?}",
                        kind.kind
                    ),
                );
                if !watch.allow_partial_success {
                    return Err(err);
                }
                denied.get_or_insert(err);
                continue;
            }
            if kind.kind != "access_request" {
                confirmed.push(WatchKind {
                    kind: kind.kind.clone(),
                    ..Default::default()
                });
                continue;
            }
            for (k, v) in &kind.filter {
                if !matches!(k.as_str(), "id" | "user" | "state") {
                    return Err(status(
                        Code::InvalidArgument,
                        format!("unsupported access request filter key {k:?}"),
                    ));
                }
                filter.insert(k.clone(), v.clone());
            }
            confirmed.push(WatchKind {
                kind: kind.kind.clone(),
                ..Default::default()
            });
        }
        if confirmed.is_empty() {
            return Err(denied.unwrap_or_else(|| {
                status(
                    Code::InvalidArgument,
                    "none of the requested kinds can be watched",
                )
            }));
        }
        let kinds = confirmed.iter().map(|k| k.kind.clone()).collect();
        let (tx, rx) = mpsc::channel(1024);
        let init = Event {
            // INIT is the enum's zero: it is not on the wire at all, as with Teleport.
            r#type: Operation::Init as i32,
            resource: Some(event::Resource::WatchStatus(WatchStatusV1 {
                kind: "watch_status".into(),
                version: "v1".into(),
                metadata: Some(Metadata {
                    name: "watch_status".into(),
                    ..Default::default()
                }),
                spec: Some(WatchStatusSpecV1 { kinds: confirmed }),
                ..Default::default()
            })),
        };
        // The INIT goes first; registering under the lock keeps later events behind it.
        let mut state = self.shared.lock();
        tx.try_send(Ok(init))
            .map_err(|_| status(Code::Unavailable, "watcher closed"))?;
        state.watchers.push(Watcher { tx, kinds, filter });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_plugin_data(
        &self,
        req: Request<PluginDataFilter>,
    ) -> Result<Response<PluginDataSeq>, Status> {
        self.shared.answering().await;
        self.require(
            &req,
            |p| p.read_requests || p.write_plugin_data,
            "read access_plugin_data",
        )?;
        let f = req.into_inner();
        let found = self
            .shared
            .lock()
            .get_plugin_data(&f.kind, &f.resource, &f.plugin)?;
        let plugin_data = found
            .into_iter()
            .map(|(resource, entries)| PluginDataV3 {
                kind: "plugin_data".into(),
                sub_kind: f.kind.clone(),
                version: "v3".into(),
                metadata: Some(Metadata {
                    name: resource,
                    namespace: "default".into(),
                    ..Default::default()
                }),
                spec: Some(PluginDataSpecV3 {
                    entries: entries
                        .into_iter()
                        .map(|(p, d)| {
                            (
                                p,
                                PluginDataEntry {
                                    data: d.into_iter().collect(),
                                },
                            )
                        })
                        .collect(),
                }),
            })
            .collect();
        Ok(Response::new(PluginDataSeq { plugin_data }))
    }

    async fn update_plugin_data(
        &self,
        req: Request<PluginDataUpdateParams>,
    ) -> Result<Response<()>, Status> {
        self.shared.answering().await;
        self.require(&req, |p| p.write_plugin_data, "update access_plugin_data")?;
        let p = req.into_inner();
        self.shared.lock().update_plugin_data(
            &p.kind,
            &p.resource,
            &p.plugin,
            &p.set,
            &p.expect,
        )?;
        Ok(Response::new(()))
    }

    async fn create_access_request_v2(
        &self,
        req: Request<AccessRequestV3>,
    ) -> Result<Response<AccessRequestV3>, Status> {
        let caller = self.require(&req, |p| p.create_requests, "create access_request")?;
        let r = req.into_inner();
        let user = r.spec.as_ref().map(|s| s.user.clone()).unwrap_or_default();
        if !caller.perms.admin && user != caller.user {
            return Err(status(
                Code::PermissionDenied,
                "users may only request access for themselves",
            ));
        }
        let created = self.shared.lock().create(r, SystemTime::now())?;
        Ok(Response::new(created))
    }

    async fn submit_access_review(
        &self,
        req: Request<AccessReviewSubmission>,
    ) -> Result<Response<AccessRequestV3>, Status> {
        let caller = self.require(&req, |p| p.review, "review access_request")?;
        let sub = req.into_inner();
        let mut review = sub.review.unwrap_or_default();
        if review.author.is_empty() {
            review.author = caller.user.clone();
        }
        if review.author != caller.user && !caller.perms.admin {
            return Err(status(
                Code::PermissionDenied,
                "reviews must be submitted by their author",
            ));
        }
        let updated = self
            .shared
            .lock()
            .review(&sub.request_id, review, SystemTime::now())?;
        Ok(Response::new(updated))
    }

    async fn set_access_request_state(
        &self,
        req: Request<RequestStateSetter>,
    ) -> Result<Response<()>, Status> {
        self.require(&req, |p| p.admin, "update access_request")?;
        let s = req.into_inner();
        let state = RequestState::try_from(s.state).unwrap_or(RequestState::None);
        self.shared.lock().set_state(&s.id, state, &s.reason)?;
        Ok(Response::new(()))
    }

    async fn delete_access_request(&self, req: Request<RequestId>) -> Result<Response<()>, Status> {
        self.require(&req, |p| p.admin, "delete access_request")?;
        let id = req.into_inner().id;
        self.shared.lock().delete(&id)?;
        Ok(Response::new(()))
    }

    async fn list_access_requests(
        &self,
        req: Request<ListAccessRequestsRequest>,
    ) -> Result<Response<ListAccessRequestsResponse>, Status> {
        self.shared.answering().await;
        self.require(&req, |p| p.read_requests, "list access_request")?;
        if self.shared.options.list_unimplemented {
            return Err(status(
                Code::Unimplemented,
                "unknown method ListAccessRequests",
            ));
        }
        let r = req.into_inner();
        let filter = r.filter.unwrap_or_default();
        self.shared.lock().list_calls += 1;
        let limit = if r.limit > 0 { r.limit as usize } else { 1000 };
        let state = self.shared.lock();
        let mut page: Vec<AccessRequestV3> = state
            .requests
            .range(r.start_key.clone()..)
            .filter(|(_, req)| filter_matches(req, &filter))
            .map(|(_, req)| req.clone())
            .take(limit + 1)
            .collect();
        let mut next_key = if page.len() > limit {
            page.pop()
                .and_then(|r| r.metadata.map(|m| m.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        if self.shared.options.list_in_a_circle && !r.start_key.is_empty() {
            // Back to the start of the second page, whatever comes after this one.
            let second = state
                .requests
                .keys()
                .nth(limit)
                .cloned()
                .unwrap_or_default();
            if r.start_key != second {
                next_key = second;
            }
        }
        if self.shared.options.list_without_end {
            // Past every request name (UUIDs), and a new one each call.
            page.clear();
            next_key = format!("~endless-{:012}", state.list_calls);
        }
        Ok(Response::new(ListAccessRequestsResponse {
            access_requests: page,
            next_key,
        }))
    }

    async fn get_user(
        &self,
        req: Request<LegacyGetUserRequest>,
    ) -> Result<Response<UserV2>, Status> {
        self.require(&req, |p| p.read_users, "read user")?;
        let name = req.into_inner().name;
        Ok(Response::new(self.shared.lock().user(&name)?))
    }

    type GetAccessRequestsV2Stream = RequestStream;

    async fn get_access_requests_v2(
        &self,
        req: Request<AccessRequestFilter>,
    ) -> Result<Response<RequestStream>, Status> {
        self.shared.answering().await;
        self.require(&req, |p| p.read_requests, "list access_request")?;
        let filter = req.into_inner();
        let all: Vec<Result<AccessRequestV3, Status>> = self
            .shared
            .lock()
            .requests
            .values()
            .filter(|r| filter_matches(r, &filter))
            .map(|r| Ok(r.clone()))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(all))))
    }
}

fn filter_matches(req: &AccessRequestV3, f: &AccessRequestFilter) -> bool {
    let mut m = HashMap::new();
    if !f.id.is_empty() {
        m.insert("id".to_owned(), f.id.clone());
    }
    if !f.user.is_empty() {
        m.insert("user".to_owned(), f.user.clone());
    }
    if let Ok(s) = RequestState::try_from(f.state)
        && f.state != 0
    {
        m.insert("state".to_owned(), s.as_str_name().to_owned());
    }
    matches_filter(req, &m)
}
