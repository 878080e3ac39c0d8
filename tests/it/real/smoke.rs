//! The harness end to end: start, RBAC, identities, a request's life.

use std::time::Duration;

use super::rbac::{PLUGIN_USER, REQUESTED_ROLE, REQUESTER, REVIEWER1, REVIEWER2};
use super::{IdentityFormat, RequestState, SignedIdentity};

#[test]
fn cluster_starts_and_signs_identities() {
    let cluster = real_cluster!();
    let rbac = cluster.create_rbac();
    eprintln!("RBAC: {rbac:?}");

    let out = cluster.scratch_dir().join("plugin");
    let SignedIdentity::File(file) = cluster.sign_identity(PLUGIN_USER, &out, IdentityFormat::File)
    else {
        panic!("format file gives one file");
    };
    let text = std::fs::read_to_string(&file).expect("identity file");
    assert!(
        text.contains("PRIVATE KEY-----") && text.contains("-----BEGIN CERTIFICATE-----"),
        "{text}"
    );
    let SignedIdentity::Tls { crt, key, cas } =
        cluster.sign_identity(PLUGIN_USER, &out, IdentityFormat::Tls)
    else {
        panic!("format tls gives three files");
    };
    for path in [crt, key, cas] {
        assert!(
            std::fs::metadata(&path).is_ok_and(|m| m.len() > 0),
            "{} missing or empty",
            path.display()
        );
    }

    let id = cluster.create_request(
        REQUESTER,
        &[REQUESTED_ROLE],
        "smoke test",
        &[REVIEWER1, REVIEWER2],
    );
    let request = cluster.get_request(&id).expect("the new request exists");
    assert_eq!(
        request["spec"]["suggested_reviewers"],
        serde_json::json!([REVIEWER1, REVIEWER2]),
        "{request:#}"
    );
    assert_eq!(cluster.request_state(&id), RequestState::Pending);
    cluster.review(REVIEWER1, &id, true, "looks fine");
    cluster.wait_for_state(&id, RequestState::Approved, Duration::from_secs(10));

    let doomed = cluster.create_request_as_admin(REQUESTER, &[REQUESTED_ROLE], "to be deleted");
    assert_eq!(cluster.request_state(&doomed), RequestState::Pending);
    cluster.delete_request(&doomed);
    assert!(
        cluster.get_request(&doomed).is_none(),
        "request {doomed} still exists after rm"
    );
}
