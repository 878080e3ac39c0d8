//! A fake Teleport Auth Service over real mTLS and gRPC, faithful to the real one as far as the
//! plugin uses it: Ping, WatchEvents, plugin data compare-and-swap, access requests and reviews,
//! Access Monitoring Rules and users' traits.
//! It can drop its watch streams, hang, and stop and restart on the same port with its state kept.

mod lists;
mod rules;
mod service;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

pub use service::{Perms, default_roles};
pub use state::{GO_ZERO_SECONDS, new_uuid};

use super::pki::{ClusterPki, KeyKind};
use crate::teleport::MonitoringRule;
use crate::teleport::pb::proto::auth_service_server::AuthServiceServer;
use crate::teleport::pb::teleport::accesslist::v1::access_list_service_server::AccessListServiceServer;
use crate::teleport::pb::teleport::accessmonitoringrules::v1::access_monitoring_rules_service_server::AccessMonitoringRulesServiceServer;
use crate::teleport::pb::teleport::users::v1::users_service_server::UsersServiceServer;
use crate::teleport::pb::types::{
    AccessRequestSpecV3, AccessRequestV3, AccessReview, AccessReviewThreshold, Metadata,
    RequestState,
};
pub use lists::FakeList;
use service::{Service, Shared};
use state::State;

/// How the fake presents itself.
#[derive(Debug, Clone)]
pub struct FakeAuthOptions {
    pub cluster: String,
    pub server_version: String,
    /// `Features.AdvancedAccessWorkflows` (Enterprise): turns on web links in mails.
    pub advanced_workflows: bool,
    /// The first proxy's public address (empty for a cluster without a proxy).
    pub proxy_public_addr: String,
    /// ALPN the server offers; Teleport offers exactly `h2`.
    pub alpn: Vec<String>,
    /// Answer ListAccessRequests with UNIMPLEMENTED, as servers before it existed.
    pub list_unimplemented: bool,
    /// Serve users only through the older `/proto.AuthService/GetUser`, as servers before
    /// `teleport.users.v1.UsersService` existed (that service then answers UNIMPLEMENTED).
    pub legacy_users_only: bool,
    /// A broken or hostile listing: the third page's next key is the second page's start key,
    /// so ListAccessRequests goes round in a circle (A → B → A).
    pub list_in_a_circle: bool,
    /// A broken or hostile listing that never ends: every page is empty and names a next key
    /// never named before (past every request), so no key comes round again.
    pub list_without_end: bool,
    /// No Access List service, as Teleport Community Edition (calls answer UNIMPLEMENTED).
    pub community_edition: bool,
}

impl Default for FakeAuthOptions {
    fn default() -> Self {
        Self {
            cluster: "teleport.example.com".into(),
            server_version: "18.0.0".into(),
            advanced_workflows: false,
            // A cluster with a proxy reports its public address even without Advanced Access
            // Workflows (seen on a v18 Community Edition cluster).
            proxy_public_addr: "teleport.example.com:443".into(),
            alpn: vec!["h2".into()],
            list_unimplemented: false,
            legacy_users_only: false,
            list_in_a_circle: false,
            list_without_end: false,
            community_edition: false,
        }
    }
}

/// A running (or stopped) fake Auth Service.
pub struct FakeAuth {
    addr: SocketAddr,
    pki: Arc<ClusterPki>,
    shared: Arc<Shared>,
    server: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

impl FakeAuth {
    /// Starts on a free loopback port.
    pub async fn start(options: FakeAuthOptions) -> Arc<Self> {
        let pki = Arc::new(ClusterPki::new(&options.cluster));
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            options,
            roles: Mutex::new(default_roles()),
            callers: Mutex::new(Default::default()),
            hung: tokio::sync::watch::channel(false).0,
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let auth = Arc::new(Self {
            addr,
            pki,
            shared,
            server: Mutex::new(None),
        });
        auth.serve(listener);
        auth
    }

    /// Starts with default options.
    pub async fn start_default() -> Arc<Self> {
        Self::start(FakeAuthOptions::default()).await
    }

    fn serve(&self, listener: TcpListener) {
        let stop = CancellationToken::new();
        let acceptor = TlsAcceptor::from(
            self.pki.auth_server_tls(
                &self
                    .shared
                    .options
                    .alpn
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            ),
        );
        let (tx, rx) = mpsc::channel(64);
        let accept_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = accept_stop.cancelled() => return,
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                };
                // As Go (and so Teleport) does on every TCP connection: without it, small gRPC
                // replies wait for the client's delayed ACK (~40 ms on Linux).
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let conn_stop = accept_stop.clone();
                tokio::spawn(async move {
                    let tls = tokio::select! {
                        _ = conn_stop.cancelled() => return,
                        r = acceptor.accept(tcp) => match r { Ok(t) => t, Err(_) => return },
                    };
                    // Teleport hands a connection to gRPC only when `h2` was negotiated.
                    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                        return;
                    }
                    let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                });
            }
        });
        let service = Service {
            shared: self.shared.clone(),
        };
        let users = (!self.shared.options.legacy_users_only)
            .then(|| UsersServiceServer::new(service.clone()));
        let rules = AccessMonitoringRulesServiceServer::new(service.clone());
        // Access Lists are Teleport Enterprise's: Community Edition has no such service.
        let lists = (!self.shared.options.community_edition)
            .then(|| AccessListServiceServer::new(service.clone()));
        let service = AuthServiceServer::new(service);
        let server_stop = stop.clone();
        let handle = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .add_service(rules)
                .add_optional_service(users)
                .add_optional_service(lists)
                .serve_with_incoming_shutdown(
                    ReceiverStream::new(rx),
                    server_stop.cancelled_owned(),
                )
                .await;
        });
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some((stop, handle));
    }

    /// The `host:port` clients dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The cluster's CAs, for minting identities.
    pub fn pki(&self) -> &ClusterPki {
        &self.pki
    }

    /// The cluster name.
    pub fn cluster(&self) -> &str {
        &self.shared.options.cluster
    }

    /// Writes an identity file for the plugin user (`access-plugin` role).
    pub fn write_plugin_identity(&self, path: &Path, kind: KeyKind) -> PathBuf {
        self.pki
            .write_identity(path, "access-plugin", &["access-plugin"], kind)
    }

    /// Stops serving: closes the listener, every connection and watch stream. State is kept.
    pub async fn stop(&self) {
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.drop_watchers();
        if let Some((stop, handle)) = server {
            stop.cancel();
            let abort = handle.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), handle)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    /// Serves again on the same port, with the state it had.
    pub async fn restart(&self) {
        self.stop().await;
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Ends every open watch stream (clients see the stream close), as when Teleport's cache resets.
    pub fn drop_watchers(&self) {
        self.shared.lock().watchers.clear();
    }

    /// The number of open watch streams.
    pub fn watcher_count(&self) -> usize {
        let mut state = self.shared.lock();
        state.watchers.retain(|w| !w.tx.is_closed());
        state.watchers.len()
    }

    /// Gives a role a set of permissions (or takes them away with `Perms::default()`).
    pub fn set_role(&self, role: &str, perms: Perms) {
        self.shared
            .roles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(role.to_owned(), perms);
    }

    /// Creates a pending request as `user` would; returns its id.
    pub fn create_request(
        &self,
        user: &str,
        roles: &[&str],
        reason: &str,
        reviewers: &[&str],
    ) -> String {
        self.create_request_with_thresholds(user, roles, reason, reviewers, 1, 1)
    }

    /// Creates a pending request carrying `annotations` as its system annotations (on a real
    /// cluster the requester's roles put them there, `request.annotations`).
    pub fn create_annotated_request(
        &self,
        user: &str,
        roles: &[&str],
        annotations: &[(&str, &[&str])],
    ) -> String {
        let values = annotations
            .iter()
            .map(|(k, v)| {
                let values = v.iter().map(|s| s.to_string()).collect();
                (
                    k.to_string(),
                    crate::teleport::pb::wrappers::StringValues { values },
                )
            })
            .collect();
        let annotations = crate::teleport::pb::wrappers::LabelValues { values };
        self.create(user, roles, "", &[], (1, 1), Some(annotations))
    }

    /// Creates a pending request that needs `approve` approvals or `deny` denials.
    pub fn create_request_with_thresholds(
        &self,
        user: &str,
        roles: &[&str],
        reason: &str,
        reviewers: &[&str],
        approve: u32,
        deny: u32,
    ) -> String {
        self.create(user, roles, reason, reviewers, (approve, deny), None)
    }

    fn create(
        &self,
        user: &str,
        roles: &[&str],
        reason: &str,
        reviewers: &[&str],
        (approve, deny): (u32, u32),
        system_annotations: Option<crate::teleport::pb::wrappers::LabelValues>,
    ) -> String {
        let req = AccessRequestV3 {
            metadata: Some(Metadata::default()),
            spec: Some(AccessRequestSpecV3 {
                user: user.into(),
                roles: roles.iter().map(|s| s.to_string()).collect(),
                request_reason: reason.into(),
                suggested_reviewers: reviewers.iter().map(|s| s.to_string()).collect(),
                thresholds: vec![AccessReviewThreshold {
                    name: "default".into(),
                    filter: String::new(),
                    approve,
                    deny,
                }],
                system_annotations,
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .shared
            .lock()
            .create(req, SystemTime::now())
            .expect("a valid request");
        created.metadata.map(|m| m.name).unwrap_or_default()
    }

    /// Adds a review by `author`.
    pub fn review(&self, id: &str, author: &str, approve: bool, reason: &str) {
        let review = AccessReview {
            author: author.into(),
            proposed_state: if approve {
                RequestState::Approved
            } else {
                RequestState::Denied
            } as i32,
            reason: reason.into(),
            ..Default::default()
        };
        self.shared
            .lock()
            .review(id, review, SystemTime::now())
            .expect("the review is accepted");
    }

    /// Approves or denies directly, as an administrator (`tctl request approve/deny`).
    pub fn resolve(&self, id: &str, approve: bool, reason: &str) {
        let state = if approve {
            RequestState::Approved
        } else {
            RequestState::Denied
        };
        self.shared
            .lock()
            .set_state(id, state, reason)
            .expect("the state change is allowed");
    }

    /// Promotes a request to an Access List (Identity Governance).
    pub fn promote(&self, id: &str, reason: &str) {
        self.shared
            .lock()
            .set_state(id, RequestState::Promoted, reason)
            .expect("the state change is allowed");
    }

    /// Deletes a request (which is how expiry reaches plugins).
    pub fn delete_request(&self, id: &str) {
        self.shared.lock().delete(id).expect("the request exists");
    }

    /// The data `plugin` stored for request `id`.
    pub fn plugin_data(&self, id: &str, plugin: &str) -> Option<BTreeMap<String, String>> {
        self.shared
            .lock()
            .plugin_data
            .get(&("access_request".to_owned(), id.to_owned()))
            .and_then(|e| e.get(plugin).cloned())
    }

    /// Stores plugin data directly (e.g. as the original plugin left it).
    pub fn put_plugin_data(&self, id: &str, plugin: &str, data: &[(&str, &str)]) {
        let set: HashMap<String, String> = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.shared
            .lock()
            .update_plugin_data("access_request", id, plugin, &set, &HashMap::new())
            .expect("plugin data accepted");
    }

    /// Stores `count` requests at once without announcing them, as a (re)connecting plugin finds
    /// a cluster's history: request `i` is pending when `pending(i)`, approved otherwise, and
    /// gets `data(id, pending)` as its `email` plugin data (none when empty). Returns the ids.
    pub fn seed_requests(
        &self,
        count: usize,
        pending: impl Fn(usize) -> bool,
        data: impl Fn(&str, bool) -> BTreeMap<String, String>,
    ) -> Vec<String> {
        let now = SystemTime::now();
        let mut state = self.shared.lock();
        (0..count)
            .map(|i| {
                let pending = pending(i);
                let id = state.seed(i, pending, now);
                let data = data(&id, pending);
                if !data.is_empty() {
                    let entries = BTreeMap::from([("email".to_owned(), data)]);
                    state
                        .plugin_data
                        .insert(("access_request".to_owned(), id.clone()), entries);
                }
                id
            })
            .collect()
    }

    /// Moves a request's creation `age` into the past, unannounced (as if it had been filed
    /// that long ago).
    pub fn backdate(&self, id: &str, age: Duration) {
        let mut state = self.shared.lock();
        let req = state.requests.get_mut(id).expect("the request exists");
        if let Some(spec) = req.spec.as_mut() {
            spec.created = Some(state::timestamp(SystemTime::now() - age));
        }
    }

    /// Makes the next `n` plugin-data writes fail with a compare error.
    pub fn fail_next_plugin_data_writes(&self, n: u32) {
        self.shared.lock().forced_compare_failures = n;
    }

    /// How many UpdatePluginData calls were made.
    pub fn plugin_data_writes(&self) -> u64 {
        self.shared.lock().plugin_data_writes
    }

    /// How many GetPluginData calls were made.
    pub fn plugin_data_reads(&self) -> u64 {
        self.shared.lock().plugin_data_reads
    }

    /// How many ListAccessRequests calls (pages) were made.
    pub fn list_calls(&self) -> u64 {
        self.shared.lock().list_calls
    }

    /// Hangs (or, with `false`, revives) the service: while hung, Ping, WatchEvents, the plugin
    /// data calls and the listings wait without an answer; open watch streams stay open and
    /// carry nothing new from the calls that wait.
    pub fn hang(&self, hung: bool) {
        self.shared.hung.send_replace(hung);
    }

    /// The users (certificate CNs) that have called so far.
    pub fn callers(&self) -> Vec<String> {
        self.shared
            .callers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Creates or replaces an Access Monitoring Rule (as `tctl create -f`); watchers of rules
    /// see a put.
    pub fn put_monitoring_rule(&self, rule: &MonitoringRule) {
        self.shared.lock().put_rule(rules::to_wire(rule));
    }

    /// Deletes a rule (as `tctl rm access_monitoring_rule/<name>`); watchers of rules see a
    /// delete.
    pub fn delete_monitoring_rule(&self, name: &str) {
        self.shared
            .lock()
            .delete_rule(name)
            .expect("the rule exists");
    }

    /// How many pages of rules were served.
    pub fn rule_list_calls(&self) -> u64 {
        self.shared.lock().rule_list_calls
    }

    /// Creates or replaces an Access List.
    pub fn put_access_list(&self, list: FakeList) {
        let mut state = self.shared.lock();
        state.access_lists.insert(list.name.clone(), list);
    }

    /// The plugin's data on Access List `name`.
    pub fn list_plugin_data(&self, name: &str, plugin: &str) -> Option<BTreeMap<String, String>> {
        let state = self.shared.lock();
        let key = ("access_list".to_owned(), name.to_owned());
        state.plugin_data.get(&key)?.get(plugin).cloned()
    }

    /// Sets the plugin's data on Access List `name` as another writer (a replica, the Slack
    /// plugin under its own name, an older version) left it.
    pub fn put_list_plugin_data(&self, name: &str, plugin: &str, data: &[(&str, &str)]) {
        let mut state = self.shared.lock();
        let key = ("access_list".to_owned(), name.to_owned());
        let entry = state.plugin_data.entry(key).or_default();
        entry.insert(
            plugin.to_owned(),
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }

    /// Creates `user` (or replaces its traits) with `traits`.
    pub fn set_user_traits(&self, user: &str, traits: &[(&str, &[&str])]) {
        let traits = traits
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect();
        self.shared.lock().set_user_traits(user, traits);
    }

    /// Makes GetUser of `user` answer INVALID_ARGUMENT from now on (a user record Auth cannot
    /// decode: a failure for good, not a passing one).
    pub fn break_user(&self, user: &str) {
        self.shared.lock().broken_users.insert(user.to_owned());
    }

    /// The ids of the stored requests.
    pub fn request_ids(&self) -> Vec<String> {
        self.shared.lock().requests.keys().cloned().collect()
    }
}
