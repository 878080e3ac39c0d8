//! `delivery.notify_requester` end to end: the daemon on the fake Auth Service (mTLS, gRPC) and
//! a real SMTP receiver, across a restart.

use teleport_email::testkit::auth::FakeAuthOptions;

use crate::support::harness::{Backend, Harness, Mail};

const ON: &str = "notify_requester = true\n";

fn to<'m>(mails: &'m [Mail], who: &str) -> Vec<&'m Mail> {
    mails.iter().filter(|m| m.to.contains(who)).collect()
}

/// An SSO requester (their name is their address) gets the confirmation and, after a restart
/// of the daemon, the outcome in the same thread; nothing twice.
#[tokio::test]
async fn the_requester_hears_of_their_request_across_a_restart() {
    let mut h = Harness::start_with(Backend::Smtp, FakeAuthOptions::default(), ON).await;
    let id = h
        .auth
        .create_request("alice@example.com", &["editor"], "need it", &[]);
    let first = h.next_mails(2).await;
    let mine = to(&first, "alice@example.com");
    assert_eq!(mine.len(), 1, "{first:#?}");
    let confirmation = mine[0].clone();
    assert!(
        confirmation
            .subject
            .starts_with(&format!("Your Role Request {id} was submitted"))
    );
    assert!(
        confirmation
            .text
            .contains("Reviewers asked: all@example.com"),
        "{}",
        confirmation.text
    );

    h.restart_daemon().await;
    h.auth.resolve(&id, true, "ok");
    let second = h.next_mails(2).await;
    let mine = to(&second, "alice@example.com");
    assert_eq!(mine.len(), 1, "{second:#?}");
    assert!(
        mine[0].subject.contains("was approved"),
        "{}",
        mine[0].subject
    );
    assert_eq!(
        mine[0].in_reply_to.as_deref(),
        Some(confirmation.message_id.as_str())
    );
    h.assert_quiet().await;
    let data = h.auth.plugin_data(&id, "email").unwrap();
    assert_eq!(data["te_requester"], "v1:alice@example.com");
    assert_eq!(data["te_requester_done"], "v1:");
    h.shutdown().await;
}

/// A local user is mailed at their `email` trait; one without is not mailed, and the reviewers
/// are mailed as usual.
#[tokio::test]
async fn a_local_requester_is_mailed_at_their_email_trait_or_not_at_all() {
    let mut h = Harness::start_with(Backend::Smtp, FakeAuthOptions::default(), ON).await;
    h.auth
        .set_user_traits("bob", &[("email", &["bob@corp.example"])]);
    h.auth.create_request("bob", &["editor"], "", &[]);
    let mails = h.next_mails(2).await;
    assert_eq!(to(&mails, "bob@corp.example").len(), 1, "{mails:#?}");
    h.auth.create_request("carol", &["editor"], "", &[]);
    let mails = h.next_mails(1).await;
    assert_eq!(to(&mails, "all@example.com").len(), 1, "{mails:#?}");
    h.assert_quiet().await;
    h.shutdown().await;
}
