//! Our daemon, and the original Go plugin beside it, on a real cluster: every dial path, the
//! switch from one plugin to the other (both ways) in the middle of a request's life, and an
//! identity file rotated under a running daemon.
//!
//! Each test has a cluster of its own (two plugins on one cluster would share the plugin data
//! and steal each other's requests), and the tests run one at a time ([`one_at_a_time`]): a
//! cluster and a plugin on 2 shared cores are enough load.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

use super::plugins::{
    ALL, Mailbox, PluginConfig, PluginProcess, SENDER, SMTP_USER, Which, original_bin,
};
use super::rbac::{REQUESTED_ROLE, REQUESTER, REVIEWER1, REVIEWER2, STRICT_REQUESTER};
use super::{IdentityFormat, L7Balancer, RealCluster, RequestState};
use crate::support::harness::{Mail, assert_threaded, sorted_to};

/// Serialises the tests of this module (and of `rules`).
pub(super) fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh cluster with the RBAC, a mailbox, and the plugin's identity file.
pub(super) struct Setup {
    pub cluster: RealCluster,
    pub mailbox: Mailbox,
    identity: std::path::PathBuf,
}

impl Setup {
    pub fn new(bins: super::Binaries) -> Self {
        let cluster = RealCluster::start_with(bins);
        cluster.create_rbac();
        let identity = cluster.scratch_dir().join("plugin-identity");
        cluster.sign_identity(super::rbac::PLUGIN_USER, &identity, IdentityFormat::File);
        Setup {
            cluster,
            mailbox: Mailbox::start(),
            identity,
        }
    }

    fn config(&self, addr: String) -> PluginConfig<'_> {
        PluginConfig {
            addr,
            identity: &self.identity,
            smtp_port: self.mailbox.port(),
            refresh_identity: None,
            delivery: "",
        }
    }

    pub fn start(&self, which: &Which, addr: String, envs: &[(&str, &str)]) -> PluginProcess {
        PluginProcess::start(which, self.cluster.scratch_dir(), &self.config(addr), envs)
    }
}

/// The `path` field of our daemon's `Connected to Teleport` line.
fn connected_path(plugin: &PluginProcess) -> String {
    let events = plugin.json_events("Connected to Teleport");
    let event: &Value = events
        .first()
        .unwrap_or_else(|| panic!("no `Connected to Teleport` line:\n{}", plugin.log_tail(30)));
    event["path"].as_str().unwrap_or_default().to_owned()
}

fn subject(id: &str) -> String {
    format!("{} Role Request {id}", super::cluster::CLUSTER_NAME)
}

/// Checks the new-thread mails of one request.
#[track_caller]
fn check_new_threads(mails: &[Mail], id: &str, user: &str, reason: &str, to: &[&str]) {
    let mut want: Vec<String> = to.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(sorted_to(mails), want, "{mails:#?}");
    for m in mails {
        assert_eq!(m.from, SENDER, "{m:#?}");
        assert_eq!(m.subject, subject(id), "{m:#?}");
        assert!(m.in_reply_to.is_none() && m.references.is_none(), "{m:#?}");
        let t = &m.text;
        assert!(t.starts_with("You have a new Role Request:"), "{t}");
        assert!(t.contains(&format!("User: {user}")), "{t}");
        assert!(t.contains(&format!("Role(s): {REQUESTED_ROLE}")), "{t}");
        assert!(t.contains(&format!("Reason: {reason}")), "{t}");
        assert!(t.contains("Status: ⏳ PENDING"), "{t}");
        // The Community Edition has no Advanced Access Workflows: no web link, the tsh commands.
        assert!(
            t.contains(&format!("Approve: tsh request review --approve {id}")),
            "{t}"
        );
    }
}

#[track_caller]
fn check_all_contain(mails: &[Mail], needles: &[&str]) {
    for m in mails {
        for n in needles {
            assert!(m.text.contains(n), "{n:?} not in {m:#?}");
        }
    }
}

/// The four stories of the user guide on a running plugin: approved, denied, approved by two
/// reviews (threshold 2), deleted. Checks exactly the mails each request gets.
fn four_stories(cluster: &RealCluster, mailbox: &Mailbox) {
    let approved = cluster.create_request(REQUESTER, &[REQUESTED_ROLE], "to approve", &[REVIEWER1]);
    let denied = cluster.create_request(REQUESTER, &[REQUESTED_ROLE], "to deny", &[REVIEWER1]);
    let two = cluster.create_request(
        STRICT_REQUESTER,
        &[REQUESTED_ROLE],
        "two approvals",
        &[REVIEWER1, REVIEWER2],
    );
    let deleted = cluster.create_request(REQUESTER, &[REQUESTED_ROLE], "to expire", &[]);

    let first_approved = mailbox.wait_for(&approved, 2);
    check_new_threads(
        &first_approved,
        &approved,
        REQUESTER,
        "to approve",
        &[ALL, REVIEWER1],
    );
    let first_denied = mailbox.wait_for(&denied, 2);
    check_new_threads(
        &first_denied,
        &denied,
        REQUESTER,
        "to deny",
        &[ALL, REVIEWER1],
    );
    let first_two = mailbox.wait_for(&two, 3);
    check_new_threads(
        &first_two,
        &two,
        STRICT_REQUESTER,
        "two approvals",
        &[ALL, REVIEWER1, REVIEWER2],
    );
    let first_deleted = mailbox.wait_for(&deleted, 1);
    check_new_threads(&first_deleted, &deleted, REQUESTER, "to expire", &[ALL]);

    // The admin decides outright (tctl request approve/deny).
    cluster.approve_as_admin(&approved, "okay");
    cluster.deny_as_admin(&denied, "not okay");
    // Two reviewers, one after the other (tsh request review).
    cluster.review(REVIEWER1, &two, true, "first look");
    let after_one = mailbox.wait_for(&two, 6);
    assert_eq!(cluster.request_state(&two), RequestState::Pending);
    cluster.review(REVIEWER2, &two, true, "second look");
    // Expiry reaches plugins as a deletion.
    cluster.delete_request(&deleted);

    let all = mailbox.exactly(&approved, 4);
    let follow = &all[2..];
    check_all_contain(
        follow,
        &[
            "Role Request has been resolved:",
            "Status: ✅ APPROVED (okay)",
        ],
    );
    assert_threaded(&first_approved, follow);

    let all = mailbox.exactly(&denied, 4);
    let follow = &all[2..];
    check_all_contain(follow, &["Status: ❌ DENIED (not okay)"]);
    assert_threaded(&first_denied, follow);

    let all = mailbox.exactly(&two, 12);
    let review1 = &after_one[3..6];
    check_all_contain(
        review1,
        &[
            &format!("{REVIEWER1} reviewed the request at "),
            "Resolution: ✅ APPROVED.",
            "Reason: first look.",
        ],
    );
    let review2 = &all[6..9];
    check_all_contain(
        review2,
        &[
            &format!("{REVIEWER2} reviewed the request at "),
            "Reason: second look.",
        ],
    );
    // A request approved by reviews is resolved with the deciding review's reason.
    let resolved = &all[9..12];
    check_all_contain(resolved, &["Status: ✅ APPROVED (second look)"]);
    assert_threaded(&first_two, &all[3..]);

    let all = mailbox.exactly(&deleted, 2);
    check_all_contain(&all[1..], &["Status: ⌛ EXPIRED"]);
    assert_threaded(&first_deleted, &all[1..]);

    for id in [&approved, &denied, &two, &deleted] {
        assert!(
            mailbox
                .auth_users_for(id)
                .iter()
                .all(|u| u.as_deref() == Some(SMTP_USER)),
            "every mail is sent after SMTP AUTH"
        );
    }
}

#[test]
fn ours_direct_to_the_auth_service() {
    let bins = real_binaries_or_skip!();
    let _one = one_at_a_time();
    let setup = Setup::new(bins);
    let ours = setup.start(&Which::Ours, setup.cluster.auth_addr().to_string(), &[]);
    assert_eq!(connected_path(&ours), "direct to the Auth Service");
    four_stories(&setup.cluster, &setup.mailbox);
    ours.stop();
}

#[test]
fn ours_through_the_proxy_with_tls_routing() {
    let bins = real_binaries_or_skip!();
    let _one = one_at_a_time();
    let setup = Setup::new(bins);
    let ours = setup.start(&Which::Ours, setup.cluster.web_addr().to_string(), &[]);
    assert_eq!(connected_path(&ours), "through the Proxy (TLS routing)");
    four_stories(&setup.cluster, &setup.mailbox);
    ours.stop();
}

#[test]
fn ours_through_an_l7_balancer_with_the_connection_upgrade() {
    let bins = real_binaries_or_skip!();
    let _one = one_at_a_time();
    let setup = Setup::new(bins);
    let lb = L7Balancer::start(&setup.cluster);
    // The balancer's certificate comes from the harness CA: the daemon trusts it the way an
    // operator's would trust a private CA, through SSL_CERT_FILE (its own environment only).
    let ca = setup.cluster.web_ca_file().display().to_string();
    let ours = setup.start(
        &Which::Ours,
        format!("localhost:{}", lb.addr().port()),
        &[("SSL_CERT_FILE", &ca)],
    );
    let connected = std::time::Instant::now();
    assert_eq!(
        connected_path(&ours),
        "through the Proxy (ALPN connection upgrade)"
    );
    four_stories(&setup.cluster, &setup.mailbox);

    // Past Teleport's first WebSocket ping on the tunnel (every 30 s with `alpn-ping`), the
    // same connection still carries the watch: a new request is mailed, nothing reconnected.
    let ping = Duration::from_secs(35);
    if let Some(rest) = ping.checked_sub(connected.elapsed()) {
        std::thread::sleep(rest);
    }
    let id = setup
        .cluster
        .create_request(REQUESTER, &[REQUESTED_ROLE], "after a ping", &[]);
    setup.mailbox.exactly(&id, 1);
    assert!(
        ours.json_events("Connection problem with the watch; reconnecting")
            .is_empty(),
        "{}",
        ours.log_tail(30)
    );
    ours.stop();
}

/// The connection upgrade straight to the proxy (no balancer), forced as Teleport's clients
/// allow with `TELEPORT_TLS_ROUTING_CONN_UPGRADE`: Teleport's own WebSocket endpoint.
#[test]
fn ours_with_a_forced_connection_upgrade_to_the_proxy() {
    let bins = real_binaries_or_skip!();
    let _one = one_at_a_time();
    let setup = Setup::new(bins);
    let web = setup.cluster.web_addr();
    let ca = setup.cluster.web_ca_file().display().to_string();
    let ours = setup.start(
        &Which::Ours,
        format!("localhost:{}", web.port()),
        &[
            ("SSL_CERT_FILE", &ca),
            ("TELEPORT_TLS_ROUTING_CONN_UPGRADE", "true"),
        ],
    );
    assert_eq!(
        connected_path(&ours),
        "through the Proxy (ALPN connection upgrade)"
    );
    let id =
        setup
            .cluster
            .create_request(REQUESTER, &[REQUESTED_ROLE], "forced upgrade", &[REVIEWER1]);
    let first = setup.mailbox.wait_for(&id, 2);
    check_new_threads(&first, &id, REQUESTER, "forced upgrade", &[ALL, REVIEWER1]);
    setup.cluster.approve_as_admin(&id, "okay");
    let all = setup.mailbox.exactly(&id, 4);
    assert_threaded(&first, &all[2..]);
    ours.stop();
}

/// The plugin data of `id` (the `email` entry), as stored in the backend.
#[track_caller]
fn email_plugin_data(cluster: &RealCluster, id: &str) -> serde_json::Map<String, Value> {
    let record = cluster
        .get_plugin_data(id)
        .unwrap_or_else(|| panic!("no plugin data for {id}"));
    record["spec"]["entries"]["email"]["data"]
        .as_object()
        .cloned()
        .unwrap_or_else(|| panic!("no email entry: {record:#}"))
}

/// Checks the encoding both plugins share: the keys, and one `email/timestamp/message-id`
/// thread per recipient whose Message-ID is the one its first mail carried.
#[track_caller]
fn check_plugin_data(
    data: &serde_json::Map<String, Value>,
    first: &[Mail],
    user: &str,
    reason: &str,
    resolution: &str,
) {
    let get = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or("");
    assert_eq!(get("user"), user, "{data:#?}");
    assert_eq!(get("roles"), REQUESTED_ROLE, "{data:#?}");
    assert_eq!(get("request_reason"), reason, "{data:#?}");
    assert_eq!(get("resolution"), resolution, "{data:#?}");
    // Empty values are not stored (an empty Set value deletes the key): the seven keys are
    // what is left of the seven the plugins always write.
    let known = [
        "user",
        "roles",
        "request_reason",
        "reviews_count",
        "resolution",
        "resolve_reason",
        "email_threads",
    ];
    // Ours also keeps its own progress keys (`te_*`, values starting `v1:`) beside the seven;
    // the original ignores them.
    for (k, v) in data.iter().filter(|(k, _)| k.starts_with("te_")) {
        assert!(
            v.as_str().is_some_and(|v| v.starts_with("v1:")),
            "{k}: {data:#?}"
        );
    }
    let stored: Vec<&str> = data
        .keys()
        .map(String::as_str)
        .filter(|k| !k.starts_with("te_"))
        .collect();
    let mut want: Vec<&str> = known
        .into_iter()
        .filter(|k| match *k {
            "resolution" | "resolve_reason" => !resolution.is_empty(),
            _ => true,
        })
        .collect();
    want.sort();
    assert_eq!(stored, want, "{data:#?}");
    let threads: Vec<&str> = get("email_threads").split(',').collect();
    assert_eq!(threads.len(), first.len(), "{data:#?}");
    for m in first {
        let thread = threads
            .iter()
            .find(|t| t.starts_with(&format!("{}/", m.to)))
            .unwrap_or_else(|| panic!("no thread for {}: {data:#?}", m.to));
        let parts: Vec<&str> = thread.split('/').collect();
        assert_eq!(parts.len(), 3, "{thread}");
        assert!(!parts[1].is_empty(), "{thread}");
        assert_eq!(
            format!("<{}>", parts[2].trim_matches(['<', '>'])),
            m.message_id,
            "{thread}"
        );
    }
}

/// A mail's text with the request id and the review time taken out, to compare the two
/// plugins' mails about different requests.
fn normalised(m: &Mail, id: &str) -> String {
    m.text
        .replace(id, "<ID>")
        .lines()
        .map(|l| match l.find(" reviewed the request at ") {
            Some(i) => format!("{} reviewed the request at <TIME>", &l[..i]),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One plugin creates the threads of a request needing two approvals and takes the first
/// review; it is stopped; the other takes the second review and the resolution.
fn switch(setup: &Setup, first: &Which, second: &Which, reason: &str) -> (String, Vec<Mail>) {
    let cluster = &setup.cluster;
    let addr = cluster.auth_addr().to_string();
    let plugin = setup.start(first, addr.clone(), &[]);
    let id = cluster.create_request(
        STRICT_REQUESTER,
        &[REQUESTED_ROLE],
        reason,
        &[REVIEWER1, REVIEWER2],
    );
    let threads = setup.mailbox.wait_for(&id, 3);
    check_new_threads(
        &threads,
        &id,
        STRICT_REQUESTER,
        reason,
        &[ALL, REVIEWER1, REVIEWER2],
    );
    cluster.review(REVIEWER1, &id, true, "first look");
    setup.mailbox.wait_for(&id, 6);
    plugin.stop();

    let data = email_plugin_data(cluster, &id);
    eprintln!("plugin data after {first:?}: {data:#?}");
    check_plugin_data(&data, &threads, STRICT_REQUESTER, reason, "");
    assert_eq!(data.get("reviews_count").and_then(Value::as_str), Some("1"));

    let plugin = setup.start(second, addr, &[]);
    // The second plugin reconciles the pending request: its threads exist, nothing to send.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        setup.mailbox.mails_for(&id).len(),
        6,
        "a second new-thread mail?"
    );
    cluster.review(REVIEWER2, &id, true, "second look");
    let all = setup.mailbox.exactly(&id, 12);
    plugin.stop();
    assert_threaded(&threads, &all[3..]);
    check_all_contain(
        &all[6..9],
        &[&format!("{REVIEWER2} reviewed the request at ")],
    );
    check_all_contain(&all[9..12], &["Status: ✅ APPROVED (second look)"]);

    let data = email_plugin_data(cluster, &id);
    eprintln!("plugin data after {second:?}: {data:#?}");
    check_plugin_data(&data, &threads, STRICT_REQUESTER, reason, "APPROVED");
    assert_eq!(data.get("reviews_count").and_then(Value::as_str), Some("2"));
    assert_eq!(
        data.get("resolve_reason").and_then(Value::as_str),
        Some("second look")
    );
    (id, all)
}

#[test]
fn switching_between_the_original_and_ours_both_ways() {
    let bins = real_binaries_or_skip!();
    let Some(original) = original_bin() else {
        super::print_skipped(test_name!(), &["ORIGINAL_EMAIL_BIN"]);
        return;
    };
    let _one = one_at_a_time();
    let setup = Setup::new(bins);
    let original = Which::Original(original);

    // The same reason both ways, so that the two requests' mails can be compared.
    let reason = "switching plugins";
    let (a, original_then_ours) = switch(&setup, &original, &Which::Ours, reason);
    let (b, ours_then_original) = switch(&setup, &Which::Ours, &original, reason);

    // The original authenticates with PLAIN over plain text to 127.0.0.1 (Go allows that for
    // loopback only) and so do we.
    for id in [&a, &b] {
        assert!(
            setup
                .mailbox
                .auth_users_for(id)
                .iter()
                .all(|u| u.as_deref() == Some(SMTP_USER))
        );
    }
    // Same stages, same texts: each mail of one plugin equals the other's for the same stage
    // (request id and review time aside), whichever plugin sent which stage.
    let key = |m: &Mail, id: &str| (m.to.clone(), normalised(m, id));
    let mut one: Vec<_> = original_then_ours.iter().map(|m| key(m, &a)).collect();
    let mut two: Vec<_> = ours_then_original.iter().map(|m| key(m, &b)).collect();
    one.sort();
    two.sort();
    assert_eq!(one, two, "the two plugins' mails differ");
}

#[test]
fn a_rotated_identity_is_picked_up_without_a_restart() {
    let bins = real_binaries_or_skip!();
    let _one = one_at_a_time();
    let mut setup = Setup::new(bins);
    // The first identity is short-lived: once it has expired, only the rotated one can connect.
    let short = Duration::from_secs(60);
    let signed_at = std::time::Instant::now();
    setup.cluster.sign_identity_with_ttl(
        super::rbac::PLUGIN_USER,
        &setup.identity,
        IdentityFormat::File,
        short,
    );
    let before = std::fs::read(&setup.identity).expect("identity");
    let not_after = |path: &std::path::Path| {
        teleport_email::teleport::identity::load_identity_file(path)
            .expect("identity file")
            .info
            .not_after
    };
    let first_ends = not_after(&setup.identity);
    assert!(
        first_ends < std::time::SystemTime::now() + short + Duration::from_secs(5),
        "tctl did not sign a short-lived identity"
    );
    let mut config = setup.config(setup.cluster.auth_addr().to_string());
    config.refresh_identity = Some("1s");
    let ours = PluginProcess::start(&Which::Ours, setup.cluster.scratch_dir(), &config, &[]);

    let id = setup
        .cluster
        .create_request(REQUESTER, &[REQUESTED_ROLE], "before", &[]);
    setup.mailbox.exactly(&id, 1);

    setup.cluster.sign_identity(
        super::rbac::PLUGIN_USER,
        &setup.identity,
        IdentityFormat::File,
    );
    assert_ne!(std::fs::read(&setup.identity).expect("identity"), before);
    assert!(not_after(&setup.identity) > first_ends + Duration::from_secs(3600));
    ours.wait_log("Reloaded the identity file", Duration::from_secs(30));

    // Past the first certificate's end, every new connection needs the rotated one.
    let expired = short + Duration::from_secs(5);
    if let Some(rest) = expired.checked_sub(signed_at.elapsed()) {
        std::thread::sleep(rest);
    }
    setup.cluster.restart();
    ours.wait_log("Watch re-established", Duration::from_secs(60));

    let id = setup
        .cluster
        .create_request(REQUESTER, &[REQUESTED_ROLE], "after", &[REVIEWER1]);
    let mails = setup.mailbox.exactly(&id, 2);
    check_new_threads(&mails, &id, REQUESTER, "after", &[ALL, REVIEWER1]);
    assert!(ours.json_events("Terminating with fatal error").is_empty());
    ours.stop();
}

/// Ours with `[delivery]` extras (the keys the original does not know).
fn start_ours_with(setup: &Setup, delivery: &str) -> PluginProcess {
    let config = PluginConfig {
        delivery,
        ..setup.config(setup.cluster.auth_addr().to_string())
    };
    PluginProcess::start(&Which::Ours, setup.cluster.scratch_dir(), &config, &[])
}

/// `delivery.notify_requester` with the real `tsh` and `tctl`: a requester whose user name is an
/// address gets a confirmation naming who was asked, then the outcome in the same thread; the
/// reviewers' threads are as without it.
#[test]
fn ours_tells_the_requester_in_a_thread_of_their_own() {
    let bins = real_binaries_or_skip!();
    let _one = one_at_a_time();
    let setup = Setup::new(bins);
    let requester = "requester@example.com";
    let user = serde_json::json!({"kind": "user", "version": "v2", "metadata": {"name": requester},
        "spec": {"roles": [super::rbac::REQUESTER_ROLE]}});
    assert!(setup.cluster.create_resources(&[user]));
    let plugin = start_ours_with(&setup, "notify_requester = true\n");
    let id = setup.cluster.create_request(
        requester,
        &[REQUESTED_ROLE],
        "for the requester",
        &[REVIEWER1],
    );
    let threads = setup.mailbox.wait_for(&id, 2);
    check_new_threads(
        &threads,
        &id,
        requester,
        "for the requester",
        &[ALL, REVIEWER1],
    );
    let mine = setup.mailbox.wait_to(requester, 1, Duration::from_secs(30));
    let cluster = super::cluster::CLUSTER_NAME;
    assert_eq!(
        mine[0].subject,
        format!("Your Role Request {id} was submitted ({cluster})")
    );
    assert!(
        mine[0].text.contains("Reviewers asked: "),
        "{}",
        mine[0].text
    );
    setup.cluster.approve_as_admin(&id, "fine by me");
    let mine = setup.mailbox.wait_to(requester, 2, Duration::from_secs(30));
    assert_eq!(
        mine[1].subject,
        format!("Your Role Request {id} was approved ({cluster})")
    );
    assert!(
        mine[1].text.contains("Status: ✅ APPROVED (fine by me)"),
        "{}",
        mine[1].text
    );
    assert_eq!(
        mine[1].in_reply_to.as_deref(),
        Some(mine[0].message_id.as_str())
    );
    setup.mailbox.exactly(&id, 4);
    plugin.stop();
}

/// `delivery.reminder_interval` with the real cluster: a request nobody reviews gets one reminder
/// per recipient in its thread after the interval (1 minute, the shortest allowed), and no more.
#[test]
fn ours_reminds_an_unreviewed_request_after_its_interval() {
    let bins = real_binaries_or_skip!();
    let _one = one_at_a_time();
    let setup = Setup::new(bins);
    let plugin = start_ours_with(&setup, "reminder_interval = \"1m\"\nreminder_limit = 1\n");
    let id = setup
        .cluster
        .create_request(REQUESTER, &[REQUESTED_ROLE], "remind me", &[REVIEWER1]);
    let first = setup.mailbox.wait_for(&id, 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    while setup.mailbox.mails_for(&id).len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "no reminders: {:#?}",
            setup.mailbox.mails_for(&id)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let all = setup.mailbox.exactly(&id, 4);
    let reminders = &all[2..];
    check_all_contain(reminders, &["Reminder 1 of 1"]);
    assert_threaded(&first, reminders);
    plugin.stop();
}

/// `delivery.access_list_reminders` on Community Edition, which serves no Access Lists: one INFO
/// line says so, and access requests are mailed as ever.
#[test]
fn access_list_reminders_on_community_edition_say_so_once() {
    let bins = real_binaries_or_skip!();
    let _one = one_at_a_time();
    let setup = Setup::new(bins);
    let plugin = start_ours_with(&setup, "access_list_reminders = true\n");
    plugin.wait_log("does not offer Access Lists", Duration::from_secs(60));
    let id = setup
        .cluster
        .create_request(REQUESTER, &[REQUESTED_ROLE], "lists or not", &[]);
    setup.mailbox.exactly(&id, 1);
    assert_eq!(
        plugin
            .log_text()
            .matches("does not offer Access Lists")
            .count(),
        1
    );
    plugin.stop();
}
