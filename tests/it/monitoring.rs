//! Access Monitoring Rules route mail, end to end: the daemon (`app::run`) over the fake Auth
//! Service, which serves the rules, their watch events and the requester's traits.

use teleport_email::teleport::MonitoringRule;
use teleport_email::testkit::auth::{FakeAuthOptions, Perms, default_roles};

use crate::support::harness::{Backend, Harness, sorted_to};

const ALL: &str = "all@example.com";

/// The plugin's role in the fake, as it starts.
fn plugin_role() -> Perms {
    default_roles()["access-plugin"]
}

fn rule(name: &str, condition: &str, to: &[&str]) -> MonitoringRule {
    MonitoringRule::for_email(name, condition, to)
}

/// By role, by the requester's trait and by a system annotation; a rule for another plugin is
/// ignored; no match keeps `role_to_recipients`; rules changed and deleted while the daemon runs
/// take effect for the next request; rules created while it was stopped are listed at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_choose_the_recipients_as_they_change() {
    let mut h = Harness::start(Backend::Smtp, FakeAuthOptions::default()).await;
    h.auth.put_monitoring_rule(&rule(
        "dev",
        r#"access_request.spec.roles.contains("dev")"#,
        &["dev-leads@example.com", "sec@example.com"],
    ));
    h.auth.put_monitoring_rule(&rule(
        "payments-team",
        r#"contains_any(user.traits["team"], set("payments"))"#,
        &["pay-leads@example.com"],
    ));
    h.auth.put_monitoring_rule(&rule(
        "pager",
        r#"contains_any(access_request.spec.system_annotations["pagerduty"], set("on-call"))"#,
        &["oncall@example.com"],
    ));
    h.auth.put_monitoring_rule(&MonitoringRule {
        notification_name: "slack".into(),
        ..rule("slack-only", "true", &["slack@example.com"])
    });
    h.auth.set_user_traits("bob", &[("team", &["payments"])]);
    // The rules arrive as watch events; give them a moment before the first request.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    h.auth.create_request("alice", &["dev"], "by role", &[]);
    let to = sorted_to(&h.next_mails(2).await);
    assert_eq!(to, ["dev-leads@example.com", "sec@example.com"]);

    h.auth.create_request("bob", &["ops"], "by trait", &[]);
    assert_eq!(sorted_to(&h.next_mails(1).await), ["pay-leads@example.com"]);

    h.auth
        .create_annotated_request("carol", &["ops"], &[("pagerduty", &["on-call"])]);
    assert_eq!(sorted_to(&h.next_mails(1).await), ["oncall@example.com"]);

    h.auth
        .create_request("carol", &["ops"], "no rule matches", &[]);
    assert_eq!(sorted_to(&h.next_mails(1).await), [ALL]);

    // Changed, then deleted, while the daemon runs.
    h.auth.put_monitoring_rule(&rule(
        "dev",
        r#"access_request.spec.roles.contains("dev")"#,
        &["dev-leads@example.com"],
    ));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    h.auth
        .create_request("alice", &["dev"], "changed rule", &[]);
    assert_eq!(sorted_to(&h.next_mails(1).await), ["dev-leads@example.com"]);
    h.auth.delete_monitoring_rule("dev");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    h.auth
        .create_request("alice", &["dev"], "deleted rule", &[]);
    assert_eq!(sorted_to(&h.next_mails(1).await), [ALL]);

    // Created while the daemon was stopped: listed when it starts.
    h.shutdown_daemon_only().await;
    h.auth.put_monitoring_rule(&rule(
        "ops",
        r#"access_request.spec.roles.contains("ops") && access_request.spec.user == "dave""#,
        &["ops-leads@example.com"],
    ));
    h.restart_daemon().await;
    h.auth
        .create_request("dave", &["ops"], "listed at start", &[]);
    assert_eq!(sorted_to(&h.next_mails(1).await), ["ops-leads@example.com"]);
    h.assert_quiet().await;
    h.shutdown().await;
}

/// A role that may not read rules: the watch leaves the kind out (partial success) and mail is
/// routed by `role_to_recipients`, as with the original; a role that may read rules but not
/// users evaluates trait conditions without traits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_permission_routing_falls_back() {
    let options = FakeAuthOptions::default();
    let mut h = Harness::start(Backend::Smtp, options).await;
    h.auth
        .put_monitoring_rule(&rule("dev", "true", &["dev-leads@example.com"]));
    h.auth.put_monitoring_rule(&rule(
        "payments-team",
        r#"contains_any(user.traits["team"], set("payments"))"#,
        &["pay-leads@example.com"],
    ));
    h.auth.set_user_traits("bob", &[("team", &["payments"])]);
    let narrow = Perms {
        read_users: false,
        ..plugin_role()
    };
    h.auth.set_role("access-plugin", narrow);
    h.shutdown_daemon_only().await;
    h.restart_daemon().await;
    h.auth
        .create_request("bob", &["ops"], "traits unreadable", &[]);
    // Only the unconditional rule matches: bob's trait cannot be read.
    assert_eq!(sorted_to(&h.next_mails(1).await), ["dev-leads@example.com"]);

    let no_rules = Perms {
        read_rules: false,
        ..plugin_role()
    };
    h.auth.set_role("access-plugin", no_rules);
    h.shutdown_daemon_only().await;
    h.restart_daemon().await;
    h.auth
        .create_request("bob", &["ops"], "rules unreadable", &[]);
    assert_eq!(sorted_to(&h.next_mails(1).await), [ALL]);
    h.assert_quiet().await;
    h.shutdown().await;
}

/// A requester whose record cannot be read for a reason other than permission (here one Auth
/// cannot decode): v18.0's original WARNs and evaluates the rules without traits (its
/// `getUserTraits` returns no traits on any error), so a rule on the requested role still
/// routes the request and a trait rule does not match. Ours skipped every rule then, and mailed
/// `role_to_recipients` instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_requester_is_routed_without_traits_as_in_v18_0() {
    let mut h = Harness::start(Backend::Smtp, FakeAuthOptions::default()).await;
    h.auth.put_monitoring_rule(&rule(
        "dev",
        r#"access_request.spec.roles.contains("dev")"#,
        &["dev-leads@example.com"],
    ));
    h.auth.put_monitoring_rule(&rule(
        "payments-team",
        r#"contains_any(user.traits["team"], set("payments"))"#,
        &["pay-leads@example.com"],
    ));
    h.auth.set_user_traits("erin", &[("team", &["payments"])]);
    h.auth.break_user("erin");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    h.auth
        .create_request("erin", &["dev"], "record unreadable", &[]);
    assert_eq!(sorted_to(&h.next_mails(1).await), ["dev-leads@example.com"]);
    h.auth
        .create_request("erin", &["ops"], "no rule without traits", &[]);
    assert_eq!(sorted_to(&h.next_mails(1).await), [ALL]);
    h.assert_quiet().await;
    h.shutdown().await;
}
