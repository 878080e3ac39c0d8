//! Calls only a test driver makes (a requester, a reviewer, an administrator).

use super::super::pb::proto::{RequestId, RequestStateSetter};
use super::super::pb::types::{
    AccessRequestSpecV3, AccessRequestV3, AccessReview, AccessReviewSubmission, Metadata,
};
use super::{
    ACCESS_REQUEST_KIND, AccessRequest, RequestState, TeleportClient, TeleportError, deadline,
};

impl TeleportClient {
    /// Creates an access request (a test driver's call); returns its id.
    pub async fn create_access_request(
        &self,
        user: &str,
        roles: &[&str],
        reason: &str,
        reviewers: &[&str],
    ) -> Result<String, TeleportError> {
        let created = deadline(
            "CreateAccessRequestV2",
            self.grpc.clone().create_access_request_v2(AccessRequestV3 {
                kind: ACCESS_REQUEST_KIND.into(),
                version: "v3".into(),
                metadata: Some(Metadata::default()),
                spec: Some(AccessRequestSpecV3 {
                    user: user.into(),
                    roles: roles.iter().map(|s| s.to_string()).collect(),
                    request_reason: reason.into(),
                    suggested_reviewers: reviewers.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
        .await?
        .into_inner();
        Ok(created.metadata.map(|m| m.name).unwrap_or_default())
    }

    /// Submits a review as the caller (or as `author` for an administrator).
    pub async fn submit_review(
        &self,
        id: &str,
        author: &str,
        approve: bool,
        reason: &str,
    ) -> Result<AccessRequest, TeleportError> {
        let state = if approve {
            RequestState::Approved
        } else {
            RequestState::Denied
        };
        let updated = deadline(
            "SubmitAccessReview",
            self.grpc
                .clone()
                .submit_access_review(AccessReviewSubmission {
                    request_id: id.into(),
                    review: Some(AccessReview {
                        author: author.into(),
                        proposed_state: state.to_wire(),
                        reason: reason.into(),
                        ..Default::default()
                    }),
                }),
        )
        .await?
        .into_inner();
        Ok(updated.into())
    }

    /// Approves or denies directly (administrators).
    pub async fn set_state(
        &self,
        id: &str,
        state: RequestState,
        reason: &str,
    ) -> Result<(), TeleportError> {
        deadline(
            "SetAccessRequestState",
            self.grpc
                .clone()
                .set_access_request_state(RequestStateSetter {
                    id: id.into(),
                    state: state.to_wire(),
                    reason: reason.into(),
                    ..Default::default()
                }),
        )
        .await?;
        Ok(())
    }

    /// Deletes a request (administrators).
    pub async fn delete_access_request(&self, id: &str) -> Result<(), TeleportError> {
        deadline(
            "DeleteAccessRequest",
            self.grpc
                .clone()
                .delete_access_request(RequestId { id: id.into() }),
        )
        .await?;
        Ok(())
    }
}
