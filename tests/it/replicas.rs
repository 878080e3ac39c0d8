//! Two engines (two replicas) against the fake Auth Service and a real SMTP receiver, started on
//! the same request at the same moment: each mail goes out once.

use std::sync::Arc;
use std::time::Duration;

use teleport_email::config::Credentials;
use teleport_email::engine::{DeliveryPolicy, Engine, Routing};
use teleport_email::teleport::{
    CredentialStore, DialOptions, TeleportClient, UpgradeMode, WatchEvent,
};
use teleport_email::testkit::auth::FakeAuth;
use teleport_email::testkit::pki::KeyKind;
use teleport_email::testkit::smtp::SmtpReceiver;

async fn replica(
    auth: &FakeAuth,
    dir: &std::path::Path,
    receiver: &SmtpReceiver,
    name: &str,
) -> (Arc<Engine>, TeleportClient) {
    let identity = auth.write_plugin_identity(&dir.join(name), KeyKind::Ecdsa);
    let store = CredentialStore::load(&Credentials::IdentityFile {
        path: identity.clone(),
        refresh: None,
    })
    .expect("credentials load");
    let opts = DialOptions {
        addr: auth.addr().to_string(),
        upgrade: UpgradeMode::Auto,
        web_roots: None,
        timeout: Duration::from_secs(5),
    };
    let client = TeleportClient::connect(opts, store, Duration::from_secs(5))
        .await
        .expect("connects");
    let cluster = client.ping().await.expect("ping");
    let text = format!(
        "[teleport]\naddr = \"{}\"\nidentity = \"{}\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\n\
         starttls_policy = \"disabled\"\n[delivery]\nsender = \"noreply@example.com\"\n\
         [role_to_recipients]\n\"*\" = [\"a@example.com\", \"b@example.com\"]\n",
        auth.addr(),
        identity.display(),
        receiver.port()
    );
    let config = teleport_email::config::parse(&text, std::path::Path::new("test.toml"))
        .expect("valid config")
        .config;
    let mailer = teleport_email::mail::from_config(
        &config.mailer,
        &config.delivery.sender,
        config.recipients.fallback(),
    )
    .expect("mailer");
    let policy = DeliveryPolicy {
        instance: name.into(),
        id_host: "example.com".into(),
        ..DeliveryPolicy::default()
    };
    let routing = Routing {
        recipients: config.recipients.clone(),
        mailer,
        notify_requester: false,
    };
    let engine = Engine::new(client.clone(), cluster, routing, policy);
    (Arc::new(engine), client)
}

/// Issue 17.1 against the fake Auth Service: a new-thread stage resumed from stored plugin data
/// (recipients stored, no thread, no claim: what a give-up leaves) changes none of the original's
/// seven keys, so only a pinned `te_claim` keeps the second replica from claiming it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_resuming_the_same_stage_send_each_mail_once() {
    let auth = FakeAuth::start_default().await;
    let receiver = SmtpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (a, client) = replica(&auth, dir.path(), &receiver, "replica-a").await;
    let (b, _) = replica(&auth, dir.path(), &receiver, "replica-b").await;
    for round in 0..5 {
        let id = auth.create_request("alice", &["editor"], "please", &[]);
        auth.put_plugin_data(
            &id,
            "email",
            &[
                ("user", "alice"),
                ("roles", "editor"),
                ("request_reason", "please"),
                ("te_recipients", "v1:a@example.com,b@example.com"),
            ],
        );
        let request = client
            .list_access_requests(None)
            .await
            .expect("lists")
            .into_iter()
            .find(|r| r.id == id)
            .expect("the request is listed");
        tokio::join!(
            a.handle_event(WatchEvent::Put(Box::new(request.clone()))),
            b.handle_event(WatchEvent::Put(Box::new(request))),
        );
        let mails: Vec<_> = receiver
            .messages()
            .into_iter()
            .filter(|m| m.data_text().contains(&id))
            .collect();
        assert_eq!(
            mails.len(),
            2,
            "round {round}: {} mails for 2 recipients",
            mails.len()
        );
    }
}
