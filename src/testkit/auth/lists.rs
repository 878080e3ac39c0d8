//! The fake's Access Lists: storage, the paged listing and the owners (nested owner lists expanded
//! to their members), as Teleport Enterprise serves them, behind the permission it checks.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use tonic::{Code, Request, Response, Status};

use super::service::Service;
use super::state::status;
use crate::teleport::pb::teleport::accesslist::v1::access_list_service_server::AccessListService;
use crate::teleport::pb::teleport::accesslist::v1::{
    AccessList, AccessListAudit, AccessListOwner, AccessListSpec, GetAccessListOwnersRequest,
    GetAccessListOwnersResponse, ListAccessListsRequest, ListAccessListsResponse, MembershipKind,
    Notifications,
};
use crate::teleport::pb::teleport::header::v1::{Metadata, ResourceHeader};

/// Teleport's page size when none is asked for (and its largest).
const PAGE: usize = 100;

/// An Access List as a test sets it up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeList {
    pub name: String,
    pub title: String,
    /// Owners that are users.
    pub owners: Vec<String>,
    /// Owners that are other lists (their members own this one too).
    pub owner_lists: Vec<String>,
    /// Members (users), which make them owners of lists this one owns.
    pub members: Vec<String>,
    pub next_review: Option<SystemTime>,
    /// `notifications.start`; Teleport fills in two weeks when a list is created without it.
    pub notify_before: Option<Duration>,
    /// `""` (reviewed), `"static"` or `"scim"` (never reviewed).
    pub kind: String,
}

impl FakeList {
    fn to_wire(&self) -> AccessList {
        let owner = |name: &str, kind: MembershipKind| AccessListOwner {
            name: name.into(),
            membership_kind: kind as i32,
            ..Default::default()
        };
        let mut owners: Vec<AccessListOwner> = (self.owners.iter())
            .map(|o| owner(o, MembershipKind::User))
            .collect();
        owners.extend(
            self.owner_lists
                .iter()
                .map(|l| owner(l, MembershipKind::List)),
        );
        let timestamp = |t: SystemTime| {
            let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            prost_types::Timestamp {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: 0,
            }
        };
        let before = self
            .notify_before
            .unwrap_or(Duration::from_secs(14 * 24 * 3600));
        AccessList {
            header: Some(ResourceHeader {
                kind: "access_list".into(),
                version: "v1".into(),
                metadata: Some(Metadata {
                    name: self.name.clone(),
                    namespace: "default".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            spec: Some(AccessListSpec {
                title: self.title.clone(),
                owners,
                audit: Some(AccessListAudit {
                    next_audit_date: self.next_review.map(timestamp),
                    notifications: Some(Notifications {
                        start: Some(prost_types::Duration {
                            seconds: i64::try_from(before.as_secs()).unwrap_or(i64::MAX),
                            nanos: 0,
                        }),
                    }),
                }),
                r#type: self.kind.clone(),
                ..Default::default()
            }),
        }
    }
}

#[tonic::async_trait]
impl AccessListService for Service {
    async fn list_access_lists(
        &self,
        req: Request<ListAccessListsRequest>,
    ) -> Result<Response<ListAccessListsResponse>, Status> {
        self.shared.answering().await;
        self.require(&req, |p| p.read_access_lists, "list access_list")?;
        let r = req.into_inner();
        let size = match usize::try_from(r.page_size) {
            Ok(n) if n > 0 => n.min(PAGE),
            _ => PAGE,
        };
        let state = self.shared.lock();
        let mut names = state
            .access_lists
            .range::<String, _>(r.next_token.clone()..)
            .map(|(_, l)| l.to_wire());
        let page: Vec<AccessList> = names.by_ref().take(size).collect();
        let mut next_token = names
            .next()
            .and_then(|l| l.header?.metadata.map(|m| m.name))
            .unwrap_or_default();
        // (Review) As for Access Requests: a broken listing that goes back to the start of the
        // second page from every later page, so no token is returned twice in a row.
        if self.shared.options.list_in_a_circle && !r.next_token.is_empty() {
            let second = state
                .access_lists
                .keys()
                .nth(size)
                .cloned()
                .unwrap_or_default();
            if r.next_token != second {
                next_token = second;
            }
        }
        Ok(Response::new(ListAccessListsResponse {
            access_lists: page,
            next_token,
        }))
    }

    async fn get_access_list_owners(
        &self,
        req: Request<GetAccessListOwnersRequest>,
    ) -> Result<Response<GetAccessListOwnersResponse>, Status> {
        self.shared.answering().await;
        self.require(&req, |p| p.read_access_lists, "read access_list")?;
        let name = req.into_inner().access_list;
        let state = self.shared.lock();
        let Some(list) = state.access_lists.get(&name) else {
            return Err(status(
                Code::NotFound,
                format!("access_list {name:?} doesn't exist"),
            ));
        };
        // Teleport's expansion: user owners as they are, each owner list's members (nested member
        // lists flattened), every name once.
        let mut users: BTreeSet<String> = list.owners.iter().cloned().collect();
        let mut seen = BTreeSet::new();
        let mut lists: Vec<String> = list.owner_lists.clone();
        while let Some(l) = lists.pop() {
            if !seen.insert(l.clone()) {
                continue;
            }
            if let Some(nested) = state.access_lists.get(&l) {
                users.extend(nested.members.iter().cloned());
                lists.extend(nested.owner_lists.iter().cloned());
            }
        }
        let owners = users
            .into_iter()
            .map(|name| AccessListOwner {
                name,
                membership_kind: MembershipKind::User as i32,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(GetAccessListOwnersResponse { owners }))
    }
}
