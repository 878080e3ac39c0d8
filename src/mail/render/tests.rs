use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::mail::text::TRUNCATION_NOTE;

fn request() -> RequestSummary {
    RequestSummary {
        id: "0a1b2c3d-req".to_owned(),
        cluster: "teleport.example.com".to_owned(),
        user: "requester-oss@example.com".to_owned(),
        roles: vec!["editor".to_owned(), "auditor".to_owned()],
        reason: "because of".to_owned(),
        link: None,
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn subject_names_cluster_and_request() {
    assert_eq!(
        subject(&request()),
        "teleport.example.com Role Request 0a1b2c3d-req"
    );
}

#[test]
fn new_request_without_link_offers_tsh_commands() {
    let mail = new_request(&request(), &Resolution::Pending);
    assert_eq!(
        mail.text,
        "You have a new Role Request:\n\
         \n\
         ID: 0a1b2c3d-req\n\
         Cluster: teleport.example.com\n\
         User: requester-oss@example.com\n\
         Role(s): editor,auditor\n\
         Reason: because of\n\
         Approve: tsh request review --approve 0a1b2c3d-req\n\
         Deny: tsh request review --deny 0a1b2c3d-req\n\
         \n\
         Status: ⏳ PENDING"
    );
    assert_eq!(
        mail.subject,
        "teleport.example.com Role Request 0a1b2c3d-req"
    );
}

#[test]
fn new_request_with_link_and_without_optional_fields() {
    let req = RequestSummary {
        user: String::new(),
        reason: String::new(),
        link: Some("https://proxy.example.com:3080/web/requests/0a1b2c3d-req".to_owned()),
        ..request()
    };
    let mail = new_request(&req, &Resolution::Pending);
    assert_eq!(
        mail.text,
        "You have a new Role Request:\n\
         \n\
         ID: 0a1b2c3d-req\n\
         Cluster: teleport.example.com\n\
         Role(s): editor,auditor\n\
         Link: https://proxy.example.com:3080/web/requests/0a1b2c3d-req\n\
         \n\
         Status: ⏳ PENDING"
    );
    assert!(
        mail.html
            .contains("<a href=\"https://proxy.example.com:3080/web/requests/0a1b2c3d-req\">")
    );
}

#[test]
fn resolved_bodies_carry_status_and_reason() {
    let cases = [
        (
            Resolution::Approved("okay".into()),
            "Status: ✅ APPROVED (okay)",
        ),
        (Resolution::Approved(String::new()), "Status: ✅ APPROVED"),
        (
            Resolution::Denied("not okay".into()),
            "Status: ❌ DENIED (not okay)",
        ),
        (Resolution::Denied(String::new()), "Status: ❌ DENIED"),
        (Resolution::Expired, "Status: ⌛ EXPIRED"),
        (
            Resolution::Approved("finally okay".into()),
            "Status: ✅ APPROVED (finally okay)",
        ),
        (
            Resolution::Promoted {
                reason: "long term".into(),
                access_list: "Editors".into(),
            },
            "Status: ✅ PROMOTED to Access List \"Editors\" (long term)",
        ),
    ];
    for (status, last_line) in cases {
        let mail = resolved(&request(), &status);
        // Resolved: no tsh commands even without a link.
        let expected = format!(
            "Role Request has been resolved:\n\
             \n\
             ID: 0a1b2c3d-req\n\
             Cluster: teleport.example.com\n\
             User: requester-oss@example.com\n\
             Role(s): editor,auditor\n\
             Reason: because of\n\
             \n\
             {last_line}"
        );
        assert_eq!(mail.text, expected);
    }
}

#[test]
fn review_reply_matches_the_original() {
    let review_by = |state, reason: &str| ReviewSummary {
        author: "reviewer1@example.com".to_owned(),
        state,
        reason: reason.to_owned(),
        created: at(1_709_647_629),
    };
    let mail = review(&request(), &review_by(ReviewState::Approved, "okay"));
    assert_eq!(
        mail.text,
        "reviewer1@example.com reviewed the request at 05 Mar 24 14:07 UTC.\n\
         Resolution: ✅ APPROVED.\n\
         Reason: okay."
    );
    assert_eq!(mail.subject, subject(&request()));

    let mail = review(&request(), &review_by(ReviewState::Denied, "not okay"));
    assert_eq!(
        mail.text,
        "reviewer1@example.com reviewed the request at 05 Mar 24 14:07 UTC.\n\
         Resolution: ❌ DENIED.\n\
         Reason: not okay."
    );

    // No reason: the Resolution line keeps its newline and nothing follows.
    let mail = review(
        &request(),
        &review_by(ReviewState::Other("PROMOTED".into()), ""),
    );
    assert_eq!(
        mail.text,
        "reviewer1@example.com reviewed the request at 05 Mar 24 14:07 UTC.\n\
         Resolution:  PROMOTED.\n"
    );
}

#[test]
fn rfc822_time_layout() {
    assert_eq!(rfc822_utc(at(0)), "01 Jan 70 00:00 UTC");
    assert_eq!(rfc822_utc(at(951_868_740)), "29 Feb 00 23:59 UTC");
    assert_eq!(rfc822_utc(at(1_709_647_629)), "05 Mar 24 14:07 UTC");
    assert_eq!(
        rfc822_utc(UNIX_EPOCH - Duration::from_secs(5)),
        "01 Jan 70 00:00 UTC"
    );
}

#[test]
fn html_part_escapes_user_text_and_mirrors_the_text() {
    let req = RequestSummary {
        user: "<script>alert(1)</script>".to_owned(),
        reason: "a & b \"quoted\"".to_owned(),
        roles: vec!["<b>".to_owned()],
        ..request()
    };
    let mail = new_request(&req, &Resolution::Pending);
    assert!(!mail.html.contains("<script>"), "{}", mail.html);
    assert!(!mail.html.contains("<b>"), "{}", mail.html);
    assert!(mail.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(mail.html.contains("a &amp; b &quot;quoted&quot;"));
    assert!(
        mail.html
            .contains("<code>tsh request review --approve 0a1b2c3d-req</code>")
    );
    assert!(mail.html.contains("Status: ⏳ PENDING"));
    assert!(mail.html.starts_with("<!DOCTYPE html>"));

    let review_mail = review(
        &req,
        &ReviewSummary {
            author: "<i>me</i>".to_owned(),
            state: ReviewState::Approved,
            reason: "<x>".to_owned(),
            created: at(0),
        },
    );
    assert!(
        review_mail
            .html
            .contains("&lt;i&gt;me&lt;/i&gt; reviewed the request")
    );
    assert!(review_mail.html.contains("Reason: &lt;x&gt;."));
}

#[test]
fn link_that_is_not_web_is_not_made_clickable() {
    let req = RequestSummary {
        link: Some("javascript:alert(1)".to_owned()),
        ..request()
    };
    let mail = new_request(&req, &Resolution::Pending);
    assert!(!mail.html.contains("href"), "{}", mail.html);
    assert!(mail.text.contains("Link: javascript:alert(1)\n"));
}

#[test]
fn injected_line_breaks_never_reach_the_subject() {
    let req = RequestSummary {
        id: "id\r\nBcc: evil@example.com".to_owned(),
        cluster: "c\nX-Evil: 1".to_owned(),
        ..request()
    };
    let s = subject(&req);
    assert!(!s.contains(['\r', '\n']), "{s:?}");
    assert_eq!(s, "c X-Evil: 1 Role Request id  Bcc: evil@example.com");
}

#[test]
fn long_reasons_are_truncated_with_a_note() {
    let req = RequestSummary {
        reason: "é".repeat(5000),
        ..request()
    };
    let mail = new_request(&req, &Resolution::Pending);
    let line = mail
        .text
        .lines()
        .find(|l| l.starts_with("Reason: "))
        .unwrap();
    assert!(line.ends_with(TRUNCATION_NOTE), "{line}");
    assert!(line.len() <= "Reason: ".len() + 4096 + TRUNCATION_NOTE.len());
    assert!(mail.text.len() < 6000);
}

#[test]
fn empty_roles_leave_the_roles_line_out() {
    let req = RequestSummary {
        roles: vec![],
        ..request()
    };
    assert!(
        !new_request(&req, &Resolution::Pending)
            .text
            .contains("Role(s)")
    );
}
