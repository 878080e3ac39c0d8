//! Access Lists, for review reminders: the domain type, the paged listing, a list's owners (nested
//! owner lists included, as Teleport expands them) and the plugin data kept on a list.

use std::time::{Duration, SystemTime};

use super::client::{PluginData, TeleportClient, deadline};
use super::error::TeleportError;
use super::pb::teleport::accesslist::v1::AccessList as WireList;
use super::pb::teleport::accesslist::v1::access_list_service_client::AccessListServiceClient;
use super::pb::teleport::accesslist::v1::{
    AccessListOwner, GetAccessListOwnersRequest, ListAccessListsRequest, MembershipKind,
};
use super::types::time;

/// The resource kind of Access Lists (plugin data kind).
pub const ACCESS_LIST_KIND: &str = "access_list";

/// How long before a review is due its owners start hearing of it when the list does not say:
/// Teleport's own default (two weeks), which it fills in when a list is created.
pub const DEFAULT_NOTIFY_BEFORE: Duration = Duration::from_secs(14 * 24 * 3600);

/// An Access List, as much of it as review reminders need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessList {
    pub name: String,
    /// The list's title (plain text, set by whoever made the list); may be empty.
    pub title: String,
    /// When the next review is due; `None` when the list has none.
    pub next_review: Option<SystemTime>,
    /// How long before `next_review` the owners start being reminded.
    pub notify_before: Duration,
    /// The owners named on the list itself (users; nested owner lists are left out).
    pub owners: Vec<String>,
    /// Whether the list is reviewed at all: Teleport never reviews `static` (managed by IaC
    /// tools) and `scim` lists.
    pub reviewable: bool,
}

impl From<WireList> for AccessList {
    fn from(l: WireList) -> Self {
        let spec = l.spec.unwrap_or_default();
        let audit = spec.audit.unwrap_or_default();
        let notify_before = audit
            .notifications
            .and_then(|n| n.start)
            .and_then(|d| {
                let secs = u64::try_from(d.seconds).ok()?;
                let nanos = u32::try_from(d.nanos).ok()?;
                Some(Duration::new(secs, nanos.min(999_999_999)))
            })
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_NOTIFY_BEFORE);
        Self {
            name: l
                .header
                .and_then(|h| h.metadata)
                .map(|m| m.name)
                .unwrap_or_default(),
            title: spec.title,
            next_review: time(audit.next_audit_date),
            notify_before,
            owners: user_owners(spec.owners),
            // As Teleport's `IsReviewable`: regular lists ("") and v17.5's "dynamic" ones.
            reviewable: matches!(spec.r#type.as_str(), "" | "dynamic"),
        }
    }
}

/// The names of owners that are users (not nested lists), in order, without repeats.
fn user_owners(owners: Vec<AccessListOwner>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(owners.len());
    for o in owners {
        let is_list = o.membership_kind == MembershipKind::List as i32;
        if !is_list && !o.name.is_empty() && !out.contains(&o.name) {
            out.push(o.name);
        }
    }
    out
}

/// Lists asked for per page: the server's own default.
const LISTS_PAGE_SIZE: i32 = 0;

impl TeleportClient {
    /// One page of Access Lists from `token` (`""`: the first), and the next page's token (`""`:
    /// that was the last). A role without `list`/`read` on `access_list` gets
    /// [`TeleportError::AccessDenied`]; a server without Access Lists
    /// [`TeleportError::Unimplemented`].
    pub async fn access_list_page(
        &self,
        token: &str,
    ) -> Result<(Vec<AccessList>, String), TeleportError> {
        let mut grpc = AccessListServiceClient::new(self.channel());
        let call = grpc.list_access_lists(ListAccessListsRequest {
            page_size: LISTS_PAGE_SIZE,
            next_token: token.into(),
        });
        let page = deadline("ListAccessLists", call).await?.into_inner();
        let lists = page.access_lists.into_iter().map(AccessList::from);
        Ok((lists.collect(), page.next_token))
    }

    /// Every owner of list `name` who is a user, owners inherited through nested owner lists
    /// included (Teleport expands them). An older server without the call answers
    /// [`TeleportError::Unimplemented`]; the caller then falls back to the list's own owners.
    pub async fn access_list_owners(&self, name: &str) -> Result<Vec<String>, TeleportError> {
        let mut grpc = AccessListServiceClient::new(self.channel());
        let call = grpc.get_access_list_owners(GetAccessListOwnersRequest {
            access_list: name.into(),
        });
        let owners = deadline("GetAccessListOwners", call).await?.into_inner();
        Ok(user_owners(owners.owners))
    }

    /// The `plugin`'s data on Access List `name`; `None` when there is none.
    pub async fn list_plugin_data(
        &self,
        name: &str,
        plugin: &str,
    ) -> Result<Option<PluginData>, TeleportError> {
        self.plugin_data_of(ACCESS_LIST_KIND, name, plugin).await
    }

    /// Compare-and-swap on the `plugin`'s data on Access List `name` (as
    /// [`Self::update_plugin_data`]). Teleport keeps such data two weeks after its last write.
    pub async fn update_list_plugin_data(
        &self,
        name: &str,
        plugin: &str,
        set: &PluginData,
        expect: &PluginData,
    ) -> Result<(), TeleportError> {
        self.update_plugin_data_of(ACCESS_LIST_KIND, name, plugin, set, expect)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teleport::pb::teleport::accesslist::v1::{
        AccessListAudit, AccessListSpec, Notifications,
    };
    use crate::teleport::pb::teleport::header::v1::{Metadata, ResourceHeader};

    fn owner(name: &str, kind: MembershipKind) -> AccessListOwner {
        AccessListOwner {
            name: name.into(),
            membership_kind: kind as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_wire_list_becomes_what_reminders_read() {
        let wire = WireList {
            header: Some(ResourceHeader {
                metadata: Some(Metadata {
                    name: "ops".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            spec: Some(AccessListSpec {
                title: "Ops".into(),
                owners: vec![
                    owner("alice", MembershipKind::User),
                    owner("nested-list", MembershipKind::List),
                    owner("bob", MembershipKind::Unspecified),
                    owner("alice", MembershipKind::User),
                    owner("", MembershipKind::User),
                ],
                audit: Some(AccessListAudit {
                    next_audit_date: Some(prost_types::Timestamp {
                        seconds: 1_800_000_000,
                        nanos: 0,
                    }),
                    notifications: Some(Notifications {
                        start: Some(prost_types::Duration {
                            seconds: 3 * 24 * 3600,
                            nanos: 0,
                        }),
                    }),
                }),
                ..Default::default()
            }),
        };
        let list = AccessList::from(wire);
        assert_eq!(list.name, "ops");
        assert_eq!(list.title, "Ops");
        assert_eq!(list.owners, ["alice", "bob"]);
        assert_eq!(
            list.next_review,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        );
        assert_eq!(list.notify_before, Duration::from_secs(3 * 24 * 3600));
        assert!(list.reviewable);
        let scim = WireList {
            spec: Some(AccessListSpec {
                r#type: "scim".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(!AccessList::from(scim).reviewable);
    }

    #[test]
    fn missing_or_hostile_schedule_fields_fall_back() {
        let wire = WireList {
            header: None,
            spec: Some(AccessListSpec {
                audit: Some(AccessListAudit {
                    next_audit_date: Some(prost_types::Timestamp {
                        seconds: i64::MIN,
                        nanos: 0,
                    }),
                    notifications: Some(Notifications {
                        start: Some(prost_types::Duration {
                            seconds: -5,
                            nanos: 0,
                        }),
                    }),
                }),
                ..Default::default()
            }),
        };
        let list = AccessList::from(wire);
        assert!(list.next_review.is_some(), "the clock holds it (no panic)");
        assert_eq!(list.notify_before, DEFAULT_NOTIFY_BEFORE);
        assert_eq!(AccessList::from(WireList::default()).next_review, None);
    }
}
