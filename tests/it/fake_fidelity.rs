//! The fakes checked against what the real Teleport does (see `real/FINDINGS.md`): one script
//! of calls, run by `real::wire` against a real cluster and here against the fake Auth Service,
//! must give the same transcript, the one pinned in [`REAL_TRANSCRIPT`]; and the fake Proxy
//! behind an "L7 balancer" answers ClientHellos as nginx does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use teleport_email::config::Credentials;
use teleport_email::teleport::{
    AccessRequest, CredentialStore, DialOptions, TeleportClient, TeleportError, UpgradeMode,
    WatchEvent,
};
use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions};
use teleport_email::testkit::pki::KeyKind;
use teleport_email::testkit::proxy::{FakeProxy, ProxyMode};
use tokio::sync::mpsc;

use crate::real::probe::{self, Trust};

/// The requester whose requests need two approvals (`editor-requester-2of2` on the real one).
pub const STRICT_REQUESTER: &str = "myuser-2of2";
pub const REVIEWER1: &str = "reviewer1@example.com";
pub const REVIEWER2: &str = "reviewer2@example.com";

/// What the script needs done outside the plugin's and the reviewers' own calls.
pub trait Driver: Sync {
    /// `user` asks for `editor`, needing two approvals or two denials, suggesting `reviewers`.
    fn create_two_of_two(&self, user: &str, reason: &str, reviewers: &[&str]) -> String;
    /// An administrator deletes the request (expiry looks the same to plugins).
    fn delete(&self, id: &str);
}

/// The transcript the real Teleport v18.0.0 gives (observed with `real::wire`).
pub const REAL_TRANSCRIPT: &[&str] = &[
    r#"ping: version 18.0.0 advanced workflows false proxy public addr set"#,
    r#"first event: Some(Ok(Init))"#,
    r#"event PUT Pending user=myuser-2of2 roles=["editor"] reason="wire facts" resolve_reason="" created set expires set suggested=["reviewer1@example.com"] reviews=[]"#,
    r#"get new request: None"#,
    r#"get missing request: None"#,
    r#"update missing request: error NotFound: not found: no access request matching "<MISSING>""#,
    r#"update expecting a value on no data: error CompareFailed: compare failed: expectations not met for field "user""#,
    r#"update expecting empty values: ok"#,
    r#"get: Some({"roles": "editor", "user": "u"})"#,
    r#"update expecting a wrong value: error CompareFailed: compare failed: expectations not met for field "user""#,
    r#"update deleting a key, expecting an absent one: ok"#,
    r#"get: Some({"roles": "editor"})"#,
    r#"update by a reviewer: error AccessDenied: access denied: access denied to perform action "update" on "access_plugin_data" (check the plugin user's role: it needs access_request list/read and access_plugin_data update)"#,
    r#"review by reviewer1@example.com: returns Pending user=myuser-2of2 roles=["editor"] reason="wire facts" resolve_reason="" created set expires set suggested=["reviewer1@example.com"] reviews=["reviewer1@example.com:Approved:\"first look\":created set"]"#,
    r#"event PUT Pending user=myuser-2of2 roles=["editor"] reason="wire facts" resolve_reason="" created set expires set suggested=["reviewer1@example.com"] reviews=["reviewer1@example.com:Approved:\"first look\":created set"]"#,
    r#"review by reviewer2@example.com: returns Approved user=myuser-2of2 roles=["editor"] reason="wire facts" resolve_reason="second look" created set expires set suggested=["reviewer1@example.com"] reviews=["reviewer1@example.com:Approved:\"first look\":created set", "reviewer2@example.com:Approved:\"second look\":created set"]"#,
    r#"event PUT Approved user=myuser-2of2 roles=["editor"] reason="wire facts" resolve_reason="second look" created set expires set suggested=["reviewer1@example.com"] reviews=["reviewer1@example.com:Approved:\"first look\":created set", "reviewer2@example.com:Approved:\"second look\":created set"]"#,
    r#"review by reviewer1@example.com: error AlreadyExists: Teleport returned AlreadyExists: user "reviewer1@example.com" has already reviewed this request"#,
    r#"event DELETE <ID>"#,
    r#"get after delete: Some({"roles": "editor"})"#,
    r#"update after delete: ok"#,
    r#"get after delete: Some({"resolution": "EXPIRED", "roles": "editor"})"#,
    r#"more events: false"#,
];

/// A client of the Auth Service at `addr` with the identity file at `path`.
pub async fn client(addr: &str, path: &std::path::Path) -> TeleportClient {
    let store = CredentialStore::load(&Credentials::IdentityFile {
        path: path.to_owned(),
        refresh: None,
    })
    .expect("credentials load");
    let options = DialOptions {
        addr: addr.to_owned(),
        upgrade: UpgradeMode::Never,
        web_roots: None,
        timeout: Duration::from_secs(10),
    };
    TeleportClient::connect(options, store, Duration::from_secs(10))
        .await
        .expect("connect")
}

fn request_line(r: &AccessRequest) -> String {
    let set = |t: Option<std::time::SystemTime>| if t.is_some() { "set" } else { "unset" };
    let reviews: Vec<String> = r
        .reviews
        .iter()
        .map(|v| {
            format!(
                "{}:{:?}:{:?}:created {}",
                v.author,
                v.proposed,
                v.reason,
                set(v.created)
            )
        })
        .collect();
    format!(
        "{:?} user={} roles={:?} reason={:?} resolve_reason={:?} created {} expires {} suggested={:?} reviews={reviews:?}",
        r.state,
        r.user,
        r.roles,
        r.reason,
        r.resolve_reason,
        set(r.created),
        set(r.expires),
        r.suggested_reviewers,
    )
}

fn error_line(e: &TeleportError, ids: &[(&str, &str)]) -> String {
    let kind = match e {
        TeleportError::CompareFailed(_) => "CompareFailed",
        TeleportError::NotFound(_) => "NotFound",
        TeleportError::AccessDenied(_) => "AccessDenied",
        TeleportError::BadParameter(_) => "BadParameter",
        TeleportError::Other { code, .. } => return format!("error {code:?}: {e}"),
        _ => "other",
    };
    let mut text = e.to_string();
    for (id, name) in ids {
        text = text.replace(id, name);
    }
    format!("error {kind}: {text}")
}

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs the script: watch, create, plugin data reads and compare-and-swap writes (met and
/// unmet expectations, deletion by empty value, a missing request), two reviews reaching the
/// threshold, a review too many, the deletion, and plugin data after it.
pub async fn transcript(
    driver: &dyn Driver,
    plugin: &TeleportClient,
    reviewer1: &TeleportClient,
    reviewer2: &TeleportClient,
) -> Vec<String> {
    let mut out = Vec::new();
    let ping = plugin.ping().await.expect("ping");
    out.push(format!(
        "ping: version {} advanced workflows {} proxy public addr {}",
        ping.server_version,
        ping.advanced_workflows,
        if ping.proxy_public_addr.is_empty() {
            "empty"
        } else {
            "set"
        }
    ));
    let mut watch = plugin.watch_access_requests().await.expect("watch");
    let first = tokio::time::timeout(Duration::from_secs(15), watch.next())
        .await
        .expect("first event within 15 s");
    out.push(format!(
        "first event: {:?}",
        first.map(|r| r.map_err(|e| e.to_string()))
    ));
    let (tx, mut events) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(Ok(e)) = watch.next().await {
            if tx.send(e).is_err() {
                return;
            }
        }
    });

    let id = tokio::task::block_in_place(|| {
        driver.create_two_of_two(STRICT_REQUESTER, "wire facts", &[REVIEWER1])
    });
    const MISSING: &str = "0191a5e2-0000-7000-8000-000000000000";
    let names = [(id.as_str(), "<ID>"), (MISSING, "<MISSING>")];
    let mut next_event = async || -> String {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(15), events.recv())
                .await
                .expect("an event within 15 s")
                .expect("watch open");
            match e {
                WatchEvent::Put(r) if r.id == id => {
                    return format!("event PUT {}", request_line(&r));
                }
                WatchEvent::Delete { id: d } if d == id => return "event DELETE <ID>".to_owned(),
                // Other tests' requests on a shared cluster.
                WatchEvent::Put(_) | WatchEvent::Delete { .. } => continue,
                other => return format!("event {other:?}"),
            }
        }
    };
    out.push(next_event().await);

    let get = async |id: &str| match plugin.get_plugin_data(id, "email").await {
        Ok(d) => format!("{d:?}"),
        Err(e) => error_line(&e, &names),
    };
    let update = async |id: &str, set: &[(&str, &str)], expect: &[(&str, &str)]| match plugin
        .update_plugin_data(id, "email", &data(set), &data(expect))
        .await
    {
        Ok(()) => "ok".to_owned(),
        Err(e) => error_line(&e, &names),
    };
    out.push(format!("get new request: {}", get(&id).await));
    out.push(format!("get missing request: {}", get(MISSING).await));
    out.push(format!(
        "update missing request: {}",
        update(MISSING, &[("user", "u")], &[]).await
    ));
    out.push(format!(
        "update expecting a value on no data: {}",
        update(&id, &[("user", "u")], &[("user", "x")]).await
    ));
    out.push(format!(
        "update expecting empty values: {}",
        update(
            &id,
            &[("user", "u"), ("roles", "editor"), ("resolution", "")],
            &[("user", ""), ("roles", ""), ("resolution", "")]
        )
        .await
    ));
    out.push(format!("get: {}", get(&id).await));
    out.push(format!(
        "update expecting a wrong value: {}",
        update(&id, &[("user", "v")], &[("user", "x")]).await
    ));
    out.push(format!(
        "update deleting a key, expecting an absent one: {}",
        update(&id, &[("user", "")], &[("user", "u"), ("absent", "")]).await
    ));
    out.push(format!("get: {}", get(&id).await));
    out.push(format!(
        "update by a reviewer: {}",
        match reviewer1
            .update_plugin_data(&id, "email", &data(&[("user", "r")]), &data(&[]))
            .await
        {
            Ok(()) => "ok".to_owned(),
            Err(e) => error_line(&e, &names),
        }
    ));

    let review = async |c: &TeleportClient, author: &str, reason: &str| match c
        .submit_review(&id, author, true, reason)
        .await
    {
        Ok(r) => format!("review by {author}: returns {}", request_line(&r)),
        Err(e) => format!("review by {author}: {}", error_line(&e, &names)),
    };
    out.push(review(reviewer1, REVIEWER1, "first look").await);
    out.push(next_event().await);
    out.push(review(reviewer2, REVIEWER2, "second look").await);
    out.push(next_event().await);
    out.push(review(reviewer1, REVIEWER1, "again").await);

    tokio::task::block_in_place(|| driver.delete(&id));
    out.push(next_event().await);
    out.push(format!("get after delete: {}", get(&id).await));
    out.push(format!(
        "update after delete: {}",
        update(&id, &[("resolution", "EXPIRED")], &[("resolution", "")]).await
    ));
    out.push(format!("get after delete: {}", get(&id).await));

    // Nothing more about this request.
    let extra = tokio::time::timeout(Duration::from_secs(2), next_event()).await;
    out.push(format!("more events: {}", extra.is_ok()));
    reader.abort();
    out
}

/// The fake as a [`Driver`].
struct FakeDriver(Arc<FakeAuth>);

impl Driver for FakeDriver {
    fn create_two_of_two(&self, user: &str, reason: &str, reviewers: &[&str]) -> String {
        self.0
            .create_request_with_thresholds(user, &["editor"], reason, reviewers, 2, 2)
    }
    fn delete(&self, id: &str) {
        self.0.delete_request(id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_auth_service_gives_the_real_transcript() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = auth.addr().to_string();
    let plugin = client(
        &addr,
        &auth.write_plugin_identity(&dir.path().join("plugin"), KeyKind::Ecdsa),
    )
    .await;
    let reviewer = |name: &str| {
        auth.pki().write_identity(
            &dir.path().join(name),
            name,
            &["editor-reviewer"],
            KeyKind::Ecdsa,
        )
    };
    let r1 = client(&addr, &reviewer(REVIEWER1)).await;
    let r2 = client(&addr, &reviewer(REVIEWER2)).await;
    let got = transcript(&FakeDriver(auth.clone()), &plugin, &r1, &r2).await;
    assert_eq!(got, REAL_TRANSCRIPT, "\n{}", got.join("\n"));
}

/// nginx in front of the proxy (FINDINGS.md, "Through the L7 balancer"): `http/1.1` when
/// offered, nothing without ALPN, and a fatal `no_application_protocol` alert for anything
/// else — which is what tells Teleport clients to use the connection upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_l7_balancer_answers_alpn_as_nginx() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let proxy = FakeProxy::start(auth.addr(), auth.cluster(), ProxyMode::BehindL7).await;
    let addr = proxy.addr();
    let ca = proxy.web_ca_pem().to_owned();
    tokio::task::spawn_blocking(move || {
        let ca = Trust::Ca(&ca);
        let hs = probe::handshake(addr, "localhost", &["h2", "http/1.1"], ca).expect("h2,http/1.1");
        assert_eq!(hs.alpn.as_deref(), Some("http/1.1"));
        let hs = probe::handshake(addr, "localhost", &[], ca).expect("no ALPN");
        assert_eq!(hs.alpn, None);
        for alpn in ["teleport-reversetunnel", "h2"] {
            let err = probe::handshake(addr, "localhost", &[alpn], ca)
                .expect_err("nginx refuses unknown ALPN");
            assert!(err.contains("NoApplicationProtocol"), "[{alpn}]: {err}");
        }
    })
    .await
    .unwrap();
}

/// The shape of `/webapi/find` from a v18 Proxy in multiplex mode (FINDINGS.md), checked on
/// the real one by `real::facts` and on the fake here.
#[track_caller]
pub fn check_find_shape(find: &serde_json::Value, web: std::net::SocketAddr, cluster: &str) {
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        k.sort();
        k
    };
    assert_eq!(
        keys(find),
        [
            "auth",
            "auto_update",
            "automatic_upgrades",
            "cluster_name",
            "edition",
            "fips",
            "min_client_version",
            "proxy",
            "server_version"
        ],
        "{find:#}"
    );
    assert_eq!(find["cluster_name"], cluster, "{find:#}");
    assert_eq!(find["edition"], "oss", "{find:#}");
    assert_eq!(find["min_client_version"], "17.0.0-aa", "{find:#}");
    assert_eq!(find["server_version"], "18.0.0", "{find:#}");
    assert_eq!(
        find["auth"]["signature_algorithm_suite"], "balanced-v1",
        "{find:#}"
    );
    assert_eq!(find["proxy"]["tls_routing_enabled"], true, "{find:#}");
    let ssh = &find["proxy"]["ssh"];
    assert_eq!(
        keys(ssh),
        [
            "dial_timeout",
            "listen_addr",
            "public_addr",
            "tunnel_listen_addr",
            "web_listen_addr"
        ],
        "{find:#}"
    );
    for k in [
        "listen_addr",
        "public_addr",
        "tunnel_listen_addr",
        "web_listen_addr",
    ] {
        assert_eq!(ssh[k], web.to_string(), "proxy.ssh.{k}: {find:#}");
    }
    assert_eq!(ssh["dial_timeout"], 30_000_000_000_u64, "{find:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_proxy_answers_webapi_find_as_the_real_one() {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let proxy = FakeProxy::start(auth.addr(), auth.cluster(), ProxyMode::Routing).await;
    let addr = proxy.addr();
    let ca = proxy.web_ca_pem().to_owned();
    let cluster = auth.cluster().to_owned();
    tokio::task::spawn_blocking(move || {
        let find = probe::get_json(addr, Trust::Ca(&ca), "/webapi/find").expect("find");
        check_find_shape(&find, addr, &cluster);
    })
    .await
    .unwrap();
}
