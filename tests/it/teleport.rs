//! The Teleport client against the fake Auth Service and fake Proxy, over real mTLS sockets.

use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, pem::PemObject};
use teleport_email::config::Credentials;
use teleport_email::teleport::identity::CredentialError;
use teleport_email::teleport::{
    CredentialStore, DialOptions, DialPath, PluginData, RequestState, TeleportClient,
    TeleportError, UpgradeMode, WatchEvent,
};
use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions, Perms};
use teleport_email::testkit::pki::{ClusterPki, KeyKind, Validity};
use teleport_email::testkit::proxy::{FakeProxy, ProxyMode};

use crate::support::{next_event, plugin_client};

fn options(addr: &str) -> DialOptions {
    DialOptions {
        addr: addr.to_owned(),
        upgrade: UpgradeMode::Auto,
        web_roots: None,
        timeout: Duration::from_secs(5),
    }
}

fn identity_store(path: &std::path::Path) -> Arc<CredentialStore> {
    CredentialStore::load(&Credentials::IdentityFile {
        path: path.to_owned(),
        refresh: None,
    })
    .expect("credentials load")
}

async fn connect(
    opts: DialOptions,
    store: Arc<CredentialStore>,
) -> Result<TeleportClient, TeleportError> {
    TeleportClient::connect(opts, store, Duration::from_secs(5)).await
}

async fn first_event(client: &TeleportClient) -> WatchEvent {
    let mut watch = client.watch_access_requests().await.expect("watch opens");
    next_event(&mut watch).await
}

#[tokio::test]
async fn direct_with_identity_files_rsa_and_ecdsa() {
    let auth = FakeAuth::start(FakeAuthOptions {
        advanced_workflows: true,
        proxy_public_addr: "teleport.example.com:443".into(),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    for kind in [KeyKind::Ecdsa, KeyKind::Rsa] {
        let path = auth.write_plugin_identity(&dir.path().join(format!("{kind:?}")), kind);
        let client = connect(options(&auth.addr().to_string()), identity_store(&path))
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        // The Auth port also accepts the routing ALPN; the path is still Direct.
        assert_eq!(client.dial_path(), Some(DialPath::Direct));
        let info = client.ping().await.expect("ping");
        assert_eq!(info.name, auth.cluster());
        assert_eq!(info.server_version, "18.0.0");
        assert!(info.advanced_workflows);
        assert_eq!(info.proxy_public_addr, "teleport.example.com:443");
        assert_eq!(first_event(&client).await, WatchEvent::Init, "{kind:?}");
    }
    assert_eq!(auth.callers(), vec!["access-plugin".to_owned()]);
}

#[tokio::test]
async fn direct_with_the_tls_trio() {
    let auth = FakeAuth::start_default().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, root_cas) = auth.pki().write_tls_trio(
        &dir.path().join("auth"),
        "access-plugin",
        &["access-plugin"],
    );
    let store = CredentialStore::load(&Credentials::KeyPair {
        cert,
        key,
        root_cas,
    })
    .unwrap();
    let client = connect(options(&auth.addr().to_string()), store)
        .await
        .unwrap();
    assert_eq!(client.ping().await.unwrap().name, auth.cluster());
    assert_eq!(first_event(&client).await, WatchEvent::Init);
}

#[tokio::test]
async fn through_the_proxy_with_tls_routing() {
    let auth = FakeAuth::start_default().await;
    let proxy = FakeProxy::start(auth.addr(), auth.cluster(), ProxyMode::Routing).await;
    let dir = tempfile::tempdir().unwrap();
    let path = auth.write_plugin_identity(&dir.path().join("id"), KeyKind::Ecdsa);
    let client = connect(options(&proxy.addr().to_string()), identity_store(&path))
        .await
        .expect("connects through the proxy");
    assert_eq!(client.dial_path(), Some(DialPath::TlsRouting));
    assert_eq!(client.ping().await.unwrap().name, auth.cluster());
    assert_eq!(first_event(&client).await, WatchEvent::Init);
    assert!(proxy.passthroughs() >= 1);
}

fn roots_from_pem(pem: &str) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(roots)
}

#[tokio::test]
async fn through_an_l7_load_balancer_with_the_connection_upgrade() {
    let auth = FakeAuth::start_default().await;
    let proxy = FakeProxy::start(auth.addr(), auth.cluster(), ProxyMode::BehindL7).await;
    let dir = tempfile::tempdir().unwrap();
    let path = auth.write_plugin_identity(&dir.path().join("id"), KeyKind::Rsa);
    let mut opts = options(&proxy.addr().to_string());
    opts.web_roots = Some(roots_from_pem(proxy.web_ca_pem()));
    let client = connect(opts, identity_store(&path))
        .await
        .expect("connects through the upgrade");
    assert_eq!(client.dial_path(), Some(DialPath::ConnUpgrade));
    assert_eq!(client.ping().await.unwrap().name, auth.cluster());
    assert_eq!(first_event(&client).await, WatchEvent::Init);
    // A few calls over the tunnel, past the server's WebSocket ping.
    for _ in 0..5 {
        client.ping().await.unwrap();
    }
    assert!(proxy.upgrades() >= 1);
}

#[tokio::test]
async fn forced_connection_upgrade_and_disabled_upgrade() {
    let auth = FakeAuth::start_default().await;
    let proxy = FakeProxy::start(auth.addr(), auth.cluster(), ProxyMode::BehindL7).await;
    let dir = tempfile::tempdir().unwrap();
    let path = auth.write_plugin_identity(&dir.path().join("id"), KeyKind::Ecdsa);
    let mut opts = options(&proxy.addr().to_string());
    opts.web_roots = Some(roots_from_pem(proxy.web_ca_pem()));
    opts.upgrade = UpgradeMode::Never;
    let err = connect(opts.clone(), identity_store(&path))
        .await
        .err()
        .expect("no path works");
    let text = err.to_string();
    assert!(
        text.contains("TELEPORT_TLS_ROUTING_CONN_UPGRADE is false"),
        "{text}"
    );
    opts.upgrade = UpgradeMode::Always;
    let client = connect(opts, identity_store(&path)).await.unwrap();
    assert_eq!(client.dial_path(), Some(DialPath::ConnUpgrade));

    // Forced, the upgrade is used even where plain TLS routing would work (as Go's client).
    let routing = FakeProxy::start(auth.addr(), auth.cluster(), ProxyMode::Routing).await;
    let mut opts = options(&routing.addr().to_string());
    opts.web_roots = Some(roots_from_pem(routing.web_ca_pem()));
    opts.upgrade = UpgradeMode::Always;
    let client = connect(opts, identity_store(&path)).await.unwrap();
    assert_eq!(client.dial_path(), Some(DialPath::ConnUpgrade));
    assert_eq!(routing.passthroughs(), 0);
    assert_eq!(routing.upgrades(), 1);
}

#[tokio::test]
async fn a_wrong_ca_is_a_clear_error() {
    let auth = FakeAuth::start_default().await;
    let other = ClusterPki::new("other.example.com");
    let dir = tempfile::tempdir().unwrap();
    let path = other.write_identity(
        &dir.path().join("id"),
        "access-plugin",
        &["access-plugin"],
        KeyKind::Ecdsa,
    );
    let err = connect(options(&auth.addr().to_string()), identity_store(&path))
        .await
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(matches!(err, TeleportError::Dial(_)), "{text}");
    assert!(
        text.contains("not trusted by the cluster's Host CA"),
        "{text}"
    );
    assert!(text.contains(&auth.addr().to_string()), "{text}");
}

#[tokio::test]
async fn expired_and_future_certificates_are_refused_at_load() {
    let pki = ClusterPki::new("c.example.com");
    let dir = tempfile::tempdir().unwrap();
    for (validity, want) in [
        (Validity::ExpiredAgo(Duration::from_secs(3600)), "expired"),
        (
            Validity::StartsIn(Duration::from_secs(3600)),
            "not valid before",
        ),
    ] {
        let creds = pki.client(
            "access-plugin",
            &["access-plugin"],
            KeyKind::Ecdsa,
            validity,
        );
        let path = dir.path().join(want.replace(' ', "-"));
        std::fs::write(&path, pki.identity_file(&creds)).unwrap();
        let err = CredentialStore::load(&Credentials::IdentityFile {
            path,
            refresh: None,
        })
        .err()
        .expect("refused");
        assert!(
            matches!(
                err,
                CredentialError::Expired { .. } | CredentialError::NotYetValid { .. }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(want), "{err}");
        assert!(err.to_string().contains("access-plugin"), "{err}");
    }
}

#[tokio::test]
async fn broken_identity_files_name_the_part() {
    let dir = tempfile::tempdir().unwrap();
    let load = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        CredentialStore::load(&Credentials::IdentityFile {
            path,
            refresh: None,
        })
        .err()
        .expect("refused")
        .to_string()
    };
    let e = load("empty", "");
    assert!(
        e.contains("private key") && e.contains("no PEM blocks"),
        "{e}"
    );
    let e = load(
        "badkey",
        "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END RSA PRIVATE KEY-----\n",
    );
    assert!(e.contains("private key (first PEM block)"), "{e}");
    assert!(
        !e.contains("c2VjcmV0") && !e.contains("secret-key-material"),
        "key material echoed: {e}"
    );
    let pki = ClusterPki::new("c");
    let creds = pki.client(
        "u",
        &["r"],
        KeyKind::Ecdsa,
        Validity::For(Duration::from_secs(60)),
    );
    let e = load("nocert", &creds.key_pem);
    assert!(
        e.contains("TLS certificate") && e.contains("missing"),
        "{e}"
    );
    let e = load("missing-file-for-sure", "x");
    let _ = e;
    let err = CredentialStore::load(&Credentials::IdentityFile {
        path: dir.path().join("does-not-exist"),
        refresh: None,
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("cannot read identity file") && err.contains("does-not-exist"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_address_lists_every_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::new("c.example.com");
    let path = pki.write_identity(
        &dir.path().join("id"),
        "access-plugin",
        &["access-plugin"],
        KeyKind::Ecdsa,
    );
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = connect(options(&format!("127.0.0.1:{port}")), identity_store(&path))
        .await
        .err()
        .expect("unreachable");
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    for path in [
        "direct to the Auth Service",
        "TLS routing",
        "connection upgrade",
    ] {
        assert!(text.contains(path), "{path} missing from {text}");
    }
    assert!(text.contains("TCP connection failed"), "{text}");
}

#[tokio::test]
async fn a_server_without_h2_is_refused() {
    // One server refuses our ALPN outright, the other ignores it (no ALPN at all).
    for alpn in [vec!["http/1.1".to_owned()], vec![]] {
        let auth = FakeAuth::start(FakeAuthOptions {
            alpn: alpn.clone(),
            ..Default::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let path = auth.write_plugin_identity(&dir.path().join("id"), KeyKind::Ecdsa);
        let err = connect(options(&auth.addr().to_string()), identity_store(&path))
            .await
            .err()
            .expect("refused");
        let text = err.to_string();
        assert!(
            text.contains("HTTP/2") && text.contains("not a Teleport Auth Service gRPC endpoint"),
            "{alpn:?}: {text}"
        );
    }
}

#[tokio::test]
async fn compare_and_swap_conflicts_are_typed() {
    let auth = FakeAuth::start_default().await;
    let (client, _dir) = plugin_client(&auth).await;
    let id = auth.create_request("alice@example.com", &["editor"], "because", &[]);
    let data = |pairs: &[(&str, &str)]| -> PluginData {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(client.get_plugin_data(&id, "email").await.unwrap(), None);
    client
        .update_plugin_data(
            &id,
            "email",
            &data(&[("user", "alice")]),
            &data(&[("user", "")]),
        )
        .await
        .unwrap();
    let err = client
        .update_plugin_data(
            &id,
            "email",
            &data(&[("user", "bob")]),
            &data(&[("user", "")]),
        )
        .await
        .expect_err("conflict");
    assert!(matches!(err, TeleportError::CompareFailed(_)), "{err:?}");
    assert_eq!(
        client.get_plugin_data(&id, "email").await.unwrap(),
        Some(data(&[("user", "alice")]))
    );
    let missing = client
        .update_plugin_data(
            "no-such-request",
            "email",
            &data(&[("user", "x")]),
            &PluginData::new(),
        )
        .await
        .expect_err("no such request");
    assert!(matches!(missing, TeleportError::NotFound(_)), "{missing:?}");
}

#[tokio::test]
async fn a_role_without_permission_is_access_denied() {
    let auth = FakeAuth::start_default().await;
    auth.set_role("access-plugin", Perms::default());
    let (client, _dir) = plugin_client(&auth).await;
    let err = client.watch_access_requests().await.err().expect("denied");
    assert!(matches!(err, TeleportError::AccessDenied(_)), "{err:?}");
}

#[tokio::test]
async fn watch_delivers_puts_and_deletes_in_order() {
    let auth = FakeAuth::start_default().await;
    let (client, _dir) = plugin_client(&auth).await;
    let mut watch = client.watch_access_requests().await.unwrap();
    assert_eq!(next_event(&mut watch).await, WatchEvent::Init);
    let id = auth.create_request(
        "alice@example.com",
        &["editor"],
        "because of",
        &["reviewer1@example.com"],
    );
    match next_event(&mut watch).await {
        WatchEvent::Put(r) => {
            assert_eq!(r.id, id);
            assert_eq!(r.state, RequestState::Pending);
            assert_eq!(r.user, "alice@example.com");
            assert_eq!(r.reason, "because of");
            assert_eq!(r.suggested_reviewers, vec!["reviewer1@example.com"]);
            assert!(r.created.is_some());
        }
        other => panic!("{other:?}"),
    }
    auth.review(&id, "reviewer1@example.com", true, "okay");
    match next_event(&mut watch).await {
        WatchEvent::Put(r) => {
            assert_eq!(r.state, RequestState::Approved);
            assert_eq!(r.resolve_reason, "okay");
            assert_eq!(r.reviews.len(), 1);
            assert_eq!(r.reviews[0].author, "reviewer1@example.com");
            assert!(r.reviews[0].created.is_some());
        }
        other => panic!("{other:?}"),
    }
    auth.delete_request(&id);
    assert_eq!(
        next_event(&mut watch).await,
        WatchEvent::Delete { id: id.clone() }
    );
    // Listing, after the delete, finds nothing; before it, the request.
    let id2 = auth.create_request("bob@example.com", &["editor"], "", &[]);
    let listed = client
        .list_access_requests(Some(RequestState::Pending))
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![id2]
    );
}

#[tokio::test]
async fn listing_falls_back_to_the_streaming_call() {
    let auth = FakeAuth::start(FakeAuthOptions {
        list_unimplemented: true,
        ..Default::default()
    })
    .await;
    let (client, _dir) = plugin_client(&auth).await;
    let a = auth.create_request("alice@example.com", &["editor"], "", &[]);
    let listed = client.list_access_requests(None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, a);
}

#[tokio::test]
async fn rotated_identity_is_used_for_new_connections() {
    let auth = FakeAuth::start_default().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity");
    auth.pki()
        .write_identity(&path, "plugin-v1", &["access-plugin"], KeyKind::Ecdsa);
    let store = CredentialStore::load(&Credentials::IdentityFile {
        path: path.clone(),
        refresh: Some(Duration::from_millis(100)),
    })
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    store.spawn_refresh(Duration::from_millis(100), stop.clone());
    let client = connect(options(&auth.addr().to_string()), store.clone())
        .await
        .unwrap();
    client.list_access_requests(None).await.unwrap();
    assert_eq!(auth.callers(), vec!["plugin-v1".to_owned()]);

    // tbot writes a renewed identity; the daemon keeps running.
    auth.pki()
        .write_identity(&path, "plugin-v2", &["access-plugin"], KeyKind::Rsa);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.current().info.user != "plugin-v2" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new identity was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The server drops connections; the client reconnects with the new certificate.
    auth.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if client.list_access_requests(None).await.is_ok()
            && auth.callers().contains(&"plugin-v2".to_owned())
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no call with the new identity"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken file is not taken: the old credentials stay.
    std::fs::write(&path, "garbage").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.current().info.user, "plugin-v2");
    stop.cancel();
}

#[tokio::test]
async fn the_fake_keeps_state_across_restart() {
    let auth = FakeAuth::start_default().await;
    let id = auth.create_request("alice@example.com", &["editor"], "r", &[]);
    auth.put_plugin_data(&id, "email", &[("user", "alice@example.com")]);
    let addr = auth.addr();
    auth.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening after stop"
    );
    auth.restart().await;
    assert_eq!(auth.addr(), addr);
    let (client, _dir) = plugin_client(&auth).await;
    let data = client.get_plugin_data(&id, "email").await.unwrap().unwrap();
    assert_eq!(
        data.get("user").map(String::as_str),
        Some("alice@example.com")
    );
}

/// A listing whose page keys come round again (A → B → A) ends with an error naming the
/// problem, instead of being read for ever (a reconcile that never ends holds half the slots).
#[tokio::test]
async fn a_listing_that_goes_round_in_a_circle_is_an_error() {
    let auth = FakeAuth::start(FakeAuthOptions {
        list_in_a_circle: true,
        ..Default::default()
    })
    .await;
    auth.seed_requests(1600, |_| true, |_, _| Default::default());
    let (client, _dir) = plugin_client(&auth).await;
    let err = tokio::time::timeout(Duration::from_secs(20), client.list_access_requests(None))
        .await
        .expect("the listing ends")
        .unwrap_err();
    assert!(err.to_string().contains("circle"), "{err}");
    assert!(auth.list_calls() <= 4, "{} pages read", auth.list_calls());
}

/// Second reader (review-class), client.rs `RequestPages::listed`: `keys_seen` catches a key
/// that comes round again, but a listing whose keys never repeat is read for ever (no cap on
/// pages or time), and `keys_seen` now grows by one key per page while it does. The reconcile
/// that reads it never ends: the daemon is never ready again after a reconnect (readiness
/// waits for the reconcile), and the reconcile a reload asks for (to pick up mail held back by
/// a mailer-wide failure) waits behind it for ever.
#[tokio::test]
async fn review_class_a_listing_that_never_ends_is_an_error() {
    let auth = FakeAuth::start(FakeAuthOptions {
        list_without_end: true,
        ..Default::default()
    })
    .await;
    let (client, _dir) = plugin_client(&auth).await;
    let listed =
        tokio::time::timeout(Duration::from_secs(120), client.list_access_requests(None)).await;
    assert!(
        matches!(listed, Ok(Err(_))),
        "after 120 s and {} pages, each with a key never seen before, the listing goes on",
        auth.list_calls()
    );
}
