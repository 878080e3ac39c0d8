//! Who is mailed about a request, and the Web UI link for it.

use crate::address;
use crate::config::RecipientMap;
use crate::teleport::AccessRequest;

/// For each requested role its recipients (or the `"*"` ones when it has none), then the suggested
/// reviewers that are plain addresses; duplicates removed, first occurrence kept.
pub fn recipients_for(map: &RecipientMap, req: &AccessRequest) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |s: &str| {
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    };
    if req.roles.is_empty() {
        map.fallback().iter().for_each(|s| push(s));
    }
    for role in &req.roles {
        map.for_role(role).iter().for_each(|s| push(s));
    }
    for reviewer in &req.suggested_reviewers {
        if address::is_bare_address(reviewer) && address::fits_thread_encoding(reviewer) {
            push(reviewer);
        } else {
            tracing::warn!(request_id = %req.id, reviewer = %reviewer.escape_debug(), "Skipping a suggested reviewer that is not an email address");
        }
    }
    out
}

/// `https://<proxy>/web/requests/<id>`: `https://` added when no scheme is given, `:443` dropped,
/// any path in the address replaced.
pub fn web_link(proxy_addr: &str, id: &str) -> Option<String> {
    let id: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    Some(format!("{}/web/requests/{id}", web_base(proxy_addr)?))
}

/// `https://<proxy>` of the Web UI: `https://` added when no scheme is given, `:443` dropped, any
/// path in the address left out; `None` when the address is empty.
pub fn web_base(proxy_addr: &str) -> Option<String> {
    let addr = proxy_addr.trim();
    if addr.is_empty() {
        return None;
    }
    let (scheme, rest) = match addr.split_once("://") {
        Some((s, r)) if s == "http" || s == "https" => (s, r),
        _ => ("https", addr),
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() {
        return None;
    }
    let host = match host.strip_suffix(":443") {
        Some(h) if scheme == "https" => h,
        _ => host,
    };
    Some(format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::teleport::RequestState;

    fn map(entries: &[(&str, &[&str])]) -> RecipientMap {
        let m: BTreeMap<String, Vec<String>> = entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect();
        RecipientMap::new(m)
    }

    fn req(roles: &[&str], reviewers: &[&str]) -> AccessRequest {
        AccessRequest {
            id: "r".into(),
            user: "u".into(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            state: RequestState::Pending,
            reason: String::new(),
            resolve_reason: String::new(),
            created: None,
            expires: None,
            reviews: vec![],
            suggested_reviewers: reviewers.iter().map(|s| s.to_string()).collect(),
            promoted_to: None,
            system_annotations: Default::default(),
            request_expires: None,
        }
    }

    #[test]
    fn exact_role_match_uses_only_that_role() {
        let m = map(&[("*", &["all@x.com"]), ("dev", &["dev@x.com"])]);
        assert_eq!(recipients_for(&m, &req(&["dev"], &[])), ["dev@x.com"]);
    }

    #[test]
    fn unmapped_roles_fall_back_per_role() {
        let m = map(&[("*", &["all@x.com"]), ("dev", &["dev@x.com"])]);
        assert_eq!(
            recipients_for(&m, &req(&["dev", "ops"], &[])),
            ["dev@x.com", "all@x.com"]
        );
    }

    #[test]
    fn duplicates_collapse_and_bad_reviewers_are_skipped() {
        let m = map(&[("*", &["all@x.com"])]);
        assert_eq!(
            recipients_for(
                &m,
                &req(
                    &["editor"],
                    &[
                        "all@x.com",
                        "r1@x.com",
                        "Bob <b@x.com>",
                        "a/b@x.com",
                        "r1@x.com"
                    ]
                )
            ),
            ["all@x.com", "r1@x.com"]
        );
    }

    #[test]
    fn links() {
        assert_eq!(
            web_link("teleport.example.com:443", "abc").as_deref(),
            Some("https://teleport.example.com/web/requests/abc")
        );
        assert_eq!(
            web_link("teleport.example.com:3080", "abc").as_deref(),
            Some("https://teleport.example.com:3080/web/requests/abc")
        );
        assert_eq!(
            web_link("https://t.example.com/some/path", "abc").as_deref(),
            Some("https://t.example.com/web/requests/abc")
        );
        assert_eq!(web_link("", "abc"), None);
    }
}
