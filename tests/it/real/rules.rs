//! Access Monitoring Rules (issue 18) on a real cluster: a rule created with the real `tctl`
//! routes a request by its roles, in place of `role_to_recipients` and the suggested reviewers;
//! a change and a deletion while the daemon runs are followed; and the original plugin, on the
//! same rule, mails the same recipients.
//!
//! Written without a cluster to run them on (no Teleport binaries could be built where they were
//! written): what Community Edition does with `access_monitoring_rule` resources is unchecked.
//! If `tctl` refuses them, the tests fail and say so, rather than pass on nothing.

use std::time::Duration;

use serde_json::{Value, json};

use super::interop::{Setup, one_at_a_time};
use super::plugins::{PluginProcess, Which, original_bin};
use super::rbac::{REQUESTED_ROLE, REQUESTER, REVIEWER1};
use crate::support::harness::sorted_to;

const RULE: &str = "email-editor-requests";

/// A rule for the email plugin: requests for `role` go to `recipients`.
fn rule(role: &str, recipients: &[&str]) -> Value {
    let condition = format!("access_request.spec.roles.contains(\"{role}\")");
    rule_on(RULE, &condition, recipients)
}

/// A rule for the email plugin named `name`: requests meeting `condition` go to `recipients`.
fn rule_on(name: &str, condition: &str, recipients: &[&str]) -> Value {
    json!({
        "kind": "access_monitoring_rule",
        "version": "v1",
        "metadata": {"name": name},
        "spec": {
            "subjects": ["access_request"],
            "condition": condition,
            "notification": {"name": "email", "recipients": recipients},
        },
    })
}

/// Creates (or replaces) the rule with the real `tctl`; fails the test, saying why, when the
/// cluster will not take it.
fn put_rule(setup: &Setup, rule: &Value) {
    assert!(
        setup.cluster.create_resources(std::slice::from_ref(rule)),
        "this cluster refuses access_monitoring_rule resources (an Enterprise feature here?): \
         write them into the backend as the threshold roles are (tests/it/real/backend.rs)"
    );
}

/// The recipients of request `id`'s new-thread mails, sorted.
fn new_thread_recipients(setup: &Setup, id: &str, n: usize) -> Vec<String> {
    sorted_to(&setup.mailbox.exactly(id, n))
}

fn start_ours(setup: &Setup) -> PluginProcess {
    setup.start(&Which::Ours, setup.cluster.auth_addr().to_string(), &[])
}

/// A rule naming the requested role replaces `role_to_recipients` and the suggested reviewer;
/// its recipients change, and it goes, while the daemon runs.
#[test]
fn a_rule_routes_by_role_and_its_changes_are_followed() {
    let bins = real_binaries_or_skip!();
    let _one = one_at_a_time();
    let setup = Setup::new(bins);
    put_rule(&setup, &rule(REQUESTED_ROLE, &["rules@example.com"]));
    let ours = start_ours(&setup);
    ours.wait_log("Access monitoring rules loaded", Duration::from_secs(60));

    let id = (setup.cluster).create_request(REQUESTER, &[REQUESTED_ROLE], "by rule", &[REVIEWER1]);
    assert_eq!(new_thread_recipients(&setup, &id, 1), ["rules@example.com"]);

    put_rule(
        &setup,
        &rule(REQUESTED_ROLE, &["first@example.com", "second@example.com"]),
    );
    ours.wait_log(
        "Access monitoring rule created or changed",
        Duration::from_secs(60),
    );
    let id = (setup.cluster).create_request(REQUESTER, &[REQUESTED_ROLE], "changed", &[REVIEWER1]);
    assert_eq!(
        new_thread_recipients(&setup, &id, 2),
        ["first@example.com", "second@example.com"]
    );

    let name = format!("access_monitoring_rule/{RULE}");
    setup.cluster.tctl(&["rm", &name]).ok();
    ours.wait_log("Access monitoring rule deleted", Duration::from_secs(60));
    let id = (setup.cluster).create_request(REQUESTER, &[REQUESTED_ROLE], "no rule", &[REVIEWER1]);
    assert_eq!(
        new_thread_recipients(&setup, &id, 2),
        [super::plugins::ALL, REVIEWER1]
    );
    ours.stop();
}

/// The original plugin and ours, one after the other on the same cluster and rule, mail the
/// same recipients (a rule that matches, and one that does not).
#[test]
fn the_original_and_ours_mail_the_same_recipients_by_the_same_rule() {
    let bins = real_binaries_or_skip!();
    let Some(original) = original_bin() else {
        eprintln!(
            "SKIPPED real_cluster::{}: ORIGINAL_EMAIL_BIN is not set",
            test_name!()
        );
        return;
    };
    let _one = one_at_a_time();
    let setup = Setup::new(bins);
    put_rule(
        &setup,
        &rule(REQUESTED_ROLE, &["rules@example.com", "more@example.com"]),
    );
    let mut seen = Vec::new();
    // Each is started once it has logged `Plugin is ready` (its watch, and the rules, are up).
    for which in [Which::Original(original), Which::Ours] {
        let plugin = setup.start(&which, setup.cluster.auth_addr().to_string(), &[]);
        let id = (setup.cluster).create_request(REQUESTER, &[REQUESTED_ROLE], "same", &[REVIEWER1]);
        seen.push(new_thread_recipients(&setup, &id, 2));
        plugin.stop();
    }
    assert_eq!(seen[0], seen[1], "original, then ours");
    assert_eq!(seen[1], ["more@example.com", "rules@example.com"]);
}

/// A rule on the requester's traits (read with `GetUser` by the plugin's role) routes the
/// request of a user who has the trait, and not that of one who has not.
#[test]
fn a_rule_routes_by_the_requesters_traits() {
    let bins = real_binaries_or_skip!();
    let _one = one_at_a_time();
    let setup = Setup::new(bins);
    let with_trait = json!({"kind": "user", "version": "v2", "metadata": {"name": "payments-dev"},
        "spec": {"roles": [super::rbac::REQUESTER_ROLE], "traits": {"team": ["payments"]}}});
    assert!(setup.cluster.create_resources(&[with_trait]));
    let condition = r#"contains_any(user.traits["team"], set("payments"))"#;
    put_rule(
        &setup,
        &rule_on("payments", condition, &["payments@example.com"]),
    );
    let ours = start_ours(&setup);
    ours.wait_log("Access monitoring rules loaded", Duration::from_secs(60));

    let id =
        (setup.cluster).create_request("payments-dev", &[REQUESTED_ROLE], "team", &[REVIEWER1]);
    assert_eq!(
        new_thread_recipients(&setup, &id, 1),
        ["payments@example.com"]
    );
    let id = (setup.cluster).create_request(REQUESTER, &[REQUESTED_ROLE], "no team", &[REVIEWER1]);
    assert_eq!(
        new_thread_recipients(&setup, &id, 2),
        [super::plugins::ALL, REVIEWER1]
    );
    assert!(
        !ours
            .log_text()
            .contains("Missing permissions to read user.traits"),
        "{}",
        ours.log_tail(40)
    );
    ours.stop();
}
