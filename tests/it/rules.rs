//! Access Monitoring Rules and requester traits: the client against the fake Auth Service over
//! real mTLS sockets (listing with paging, rule watch events, partial success, GetUser).

use std::sync::Arc;
use std::time::Duration;

use teleport_email::config::Credentials;
use teleport_email::teleport::{
    ACCESS_MONITORING_RULE_KIND, CredentialStore, DialOptions, MonitoringRule, TeleportClient,
    TeleportError, Traits, UpgradeMode, WatchEvent,
};
use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions, Perms};
use teleport_email::testkit::pki::KeyKind;

use crate::support::next_event;

/// The v18 user guide's plugin role: requests and plugin data, nothing for rules or users.
const GUIDE_ROLE: Perms = Perms {
    read_requests: true,
    write_plugin_data: true,
    create_requests: false,
    review: false,
    admin: false,
    read_rules: false,
    read_users: false,
    read_access_lists: false,
};

async fn plugin_client(auth: &FakeAuth, dir: &tempfile::TempDir) -> TeleportClient {
    let path = auth.write_plugin_identity(&dir.path().join("id"), KeyKind::Ecdsa);
    let store = CredentialStore::load(&Credentials::IdentityFile {
        path,
        refresh: None,
    })
    .expect("credentials load");
    let opts = DialOptions {
        addr: auth.addr().to_string(),
        upgrade: UpgradeMode::Auto,
        web_roots: None,
        timeout: Duration::from_secs(5),
    };
    TeleportClient::connect(opts, Arc::clone(&store), Duration::from_secs(5))
        .await
        .expect("connects")
}

fn rule(name: &str, plugin: &str, subjects: &[&str], recipients: &[&str]) -> MonitoringRule {
    MonitoringRule {
        name: name.into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        states: vec![],
        condition: r#"access_request.spec.roles.contains("editor")"#.into(),
        notification_name: plugin.into(),
        recipients: recipients.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test]
async fn listing_follows_every_page_and_keeps_only_the_rules_for_email() {
    let auth = FakeAuth::start_default().await;
    // More than two pages of the client's page size (1000) that apply, between ones that do not.
    for i in 0..2100 {
        auth.put_monitoring_rule(&rule(
            &format!("rule-{i:04}"),
            "email",
            &["access_request"],
            &["a@example.com"],
        ));
    }
    auth.put_monitoring_rule(&rule("other-plugin", "slack", &["access_request"], &["s"]));
    auth.put_monitoring_rule(&rule("other-subject", "email", &["access_list"], &["l"]));
    let dir = tempfile::tempdir().unwrap();
    let client = plugin_client(&auth, &dir).await;
    let rules = client.list_monitoring_rules("email").await.expect("listed");
    assert_eq!(rules.len(), 2100);
    assert_eq!(auth.rule_list_calls(), 3, "three pages of at most 1000");
    assert!(rules.iter().all(|r| r.applies_to("email")));
    assert_eq!(
        rules[0],
        rule(
            "rule-0000",
            "email",
            &["access_request"],
            &["a@example.com"]
        )
    );
    assert_eq!(rules[2099].name, "rule-2099");
    // Nothing is listed for a plugin without rules.
    assert!(
        client
            .list_monitoring_rules("msteams")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_watch_delivers_rule_puts_and_deletes_beside_requests() {
    let auth = FakeAuth::start_default().await;
    let dir = tempfile::tempdir().unwrap();
    let client = plugin_client(&auth, &dir).await;
    let mut watch = client
        .watch_requests_and_rules()
        .await
        .expect("watch opens");
    assert_eq!(
        watch.confirmed_kinds(),
        None,
        "nothing confirmed before INIT"
    );
    assert_eq!(next_event(&mut watch).await, WatchEvent::Init);
    assert_eq!(
        watch.confirmed_kinds(),
        Some(
            &[
                "access_request".to_owned(),
                ACCESS_MONITORING_RULE_KIND.to_owned()
            ][..]
        )
    );
    let devs = rule("devs", "email", &["access_request"], &["devs@example.com"]);
    auth.put_monitoring_rule(&devs);
    assert_eq!(
        next_event(&mut watch).await,
        WatchEvent::RulePut(Box::new(devs))
    );
    let id = auth.create_request("alice@example.com", &["editor"], "", &[]);
    match next_event(&mut watch).await {
        WatchEvent::Put(r) => assert_eq!(r.id, id),
        other => panic!("expected the request, got {other:?}"),
    }
    auth.delete_monitoring_rule("devs");
    assert_eq!(
        next_event(&mut watch).await,
        WatchEvent::RuleDelete {
            name: "devs".into()
        }
    );
    // The older opener asks for requests only: it never sees rules.
    let mut old = client.watch_access_requests().await.unwrap();
    assert_eq!(next_event(&mut old).await, WatchEvent::Init);
    assert_eq!(
        old.confirmed_kinds(),
        Some(&["access_request".to_owned()][..])
    );
    auth.put_monitoring_rule(&rule("x", "email", &["access_request"], &["x@example.com"]));
    let id2 = auth.create_request("bob@example.com", &["editor"], "", &[]);
    match next_event(&mut old).await {
        WatchEvent::Put(r) => assert_eq!(r.id, id2),
        other => panic!("expected the request, got {other:?}"),
    }
}

#[tokio::test]
async fn a_role_that_may_not_read_rules_loses_the_kind_silently() {
    let auth = FakeAuth::start_default().await;
    auth.set_role("access-plugin", GUIDE_ROLE);
    let dir = tempfile::tempdir().unwrap();
    let client = plugin_client(&auth, &dir).await;
    let mut watch = client
        .watch_requests_and_rules()
        .await
        .expect("partial success");
    assert_eq!(next_event(&mut watch).await, WatchEvent::Init);
    assert_eq!(
        watch.confirmed_kinds(),
        Some(&["access_request".to_owned()][..])
    );
    // A rule put is not sent to this stream: the next event is the request after it.
    auth.put_monitoring_rule(&rule(
        "devs",
        "email",
        &["access_request"],
        &["d@example.com"],
    ));
    let id = auth.create_request("alice@example.com", &["editor"], "", &[]);
    match next_event(&mut watch).await {
        WatchEvent::Put(r) => assert_eq!(r.id, id),
        other => panic!("expected the request, got {other:?}"),
    }
    let err = client.list_monitoring_rules("email").await.unwrap_err();
    assert!(matches!(err, TeleportError::AccessDenied(_)), "{err:?}");
    // A role that may watch nothing at all is refused, not handed an empty stream.
    auth.set_role("access-plugin", Perms::default());
    let err = client
        .watch_requests_and_rules()
        .await
        .err()
        .expect("denied");
    assert!(matches!(err, TeleportError::AccessDenied(_)), "{err:?}");
}

#[tokio::test]
async fn user_traits_and_what_a_role_without_user_read_gets() {
    let auth = FakeAuth::start_default().await;
    auth.set_user_traits(
        "alice@example.com",
        &[("team", &["dev", "ops"]), ("level", &["2"])],
    );
    let dir = tempfile::tempdir().unwrap();
    let client = plugin_client(&auth, &dir).await;
    let traits = client
        .user_traits("alice@example.com")
        .await
        .expect("traits");
    assert_eq!(
        traits,
        Traits::from([
            ("level".into(), vec!["2".into()]),
            ("team".into(), vec!["dev".into(), "ops".into()]),
        ])
    );
    // A requester is a user, with no traits until given some.
    auth.create_request("bob@example.com", &["editor"], "", &[]);
    assert!(
        client
            .user_traits("bob@example.com")
            .await
            .unwrap()
            .is_empty()
    );
    let err = client.user_traits("nobody@example.com").await.unwrap_err();
    assert!(matches!(err, TeleportError::NotFound(_)), "{err:?}");
    assert!(err.to_string().contains("nobody@example.com"), "{err}");

    auth.set_role("access-plugin", GUIDE_ROLE);
    let err = client.user_traits("alice@example.com").await.unwrap_err();
    assert!(matches!(err, TeleportError::AccessDenied(_)), "{err:?}");
    assert!(err.to_string().contains("`read` on `user`"), "{err}");
}

#[tokio::test]
async fn servers_without_the_users_service_are_asked_the_older_way() {
    let auth = FakeAuth::start(FakeAuthOptions {
        legacy_users_only: true,
        ..Default::default()
    })
    .await;
    auth.set_user_traits("alice@example.com", &[("team", &["dev"])]);
    let dir = tempfile::tempdir().unwrap();
    let client = plugin_client(&auth, &dir).await;
    let traits = client
        .user_traits("alice@example.com")
        .await
        .expect("traits");
    assert_eq!(traits, Traits::from([("team".into(), vec!["dev".into()])]));
    auth.set_role("access-plugin", GUIDE_ROLE);
    let err = client.user_traits("alice@example.com").await.unwrap_err();
    assert!(matches!(err, TeleportError::AccessDenied(_)), "{err:?}");
}
