//! The typed Teleport client: gRPC over our dialer, speaking domain types.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use super::credentials::CredentialStore;
use super::dial::{DialOptions, DialPath, Dialer};
use super::error::TeleportError;
use super::pb::proto::auth_service_client::AuthServiceClient;
use super::pb::proto::{ListAccessRequestsRequest, PingRequest, Watch};
use super::pb::types::{
    AccessRequestFilter, AccessRequestV3, PluginDataFilter, PluginDataUpdateParams, WatchKind,
};
use super::types::{AccessRequest, ClusterInfo, RequestState, WatchEvent};
use super::version::Version;

/// The kind of resource plugin data is attached to.
pub const ACCESS_REQUEST_KIND: &str = "access_request";
/// The oldest Teleport the plugin works with.
pub const MIN_SERVER_VERSION: &str = "6.1.0-beta.1";
/// Deadline for start-up calls, as the original.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of every unary call after start-up (and of each page of a listing). Teleport gives
/// its own network operations 30 s (`DefaultIOTimeout`); an answer later than that means a hung
/// Auth Service or a dead link, and waiting longer only holds a dispatcher slot (and the
/// request's lease) for nothing. The caller sees [`TeleportError::Timeout`], a connection problem.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests per page when listing.
const PAGE_SIZE: i32 = 500;
/// Pages a listing may run to (2,000,000 requests, twenty times the largest cluster we plan
/// for): a server whose listing does not end would otherwise hold a reconcile for ever.
const MAX_PAGES: usize = 4_000;

/// Plugin data: key → value, for one plugin and one request.
pub type PluginData = BTreeMap<String, String>;

/// A connection to the Auth Service (it reconnects by itself when the link breaks).
#[derive(Clone)]
pub struct TeleportClient {
    grpc: AuthServiceClient<Channel>,
    /// The same connection, for the services beside the Auth Service (see `rules.rs`).
    channel: Channel,
    dialer: Arc<Dialer>,
}

impl TeleportClient {
    /// Connects (every dial path at once, first ready wins) within `timeout`.
    pub async fn connect(
        options: DialOptions,
        credentials: Arc<CredentialStore>,
        timeout: Duration,
    ) -> Result<Self, TeleportError> {
        let dialer = Arc::new(Dialer::new(options, credentials));
        let connector_dialer = dialer.clone();
        let connector = tower::service_fn(move |_uri: http::Uri| {
            let dialer = connector_dialer.clone();
            async move {
                let (conn, path) = dialer.connect().await?;
                tracing::debug!(%path, "Connected to Teleport");
                Ok::<_, TeleportError>(TokioIo::new(conn))
            }
        });
        let endpoint = Endpoint::from_static("http://teleport.cluster.local")
            // Teleport closes connections that ping more often than every 60 s.
            .http2_keep_alive_interval(Duration::from_secs(60))
            .keep_alive_timeout(Duration::from_secs(180))
            .keep_alive_while_idle(true)
            .connect_timeout(timeout);
        let channel = tokio::time::timeout(timeout, endpoint.connect_with_connector(connector))
            .await
            .map_err(|_| {
                TeleportError::Timeout(format!(
                    "connecting to Teleport timed out after {timeout:?}"
                ))
            })?
            .map_err(connect_error)?;
        let grpc = AuthServiceClient::new(channel.clone())
            .max_decoding_message_size(4 * 1024 * 1024)
            .max_encoding_message_size(4 * 1024 * 1024);
        Ok(Self {
            grpc,
            channel,
            dialer,
        })
    }

    /// The Auth Service client, for calls made in sibling modules.
    pub(super) fn auth(&self) -> AuthServiceClient<Channel> {
        self.grpc.clone()
    }

    /// The gRPC channel, for the other services on the same connection.
    pub(super) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The path the connection took.
    pub fn dial_path(&self) -> Option<DialPath> {
        self.dialer.last_path()
    }

    /// Ping; refuses servers older than 6.1.0.
    pub async fn ping(&self) -> Result<ClusterInfo, TeleportError> {
        let resp = deadline("Ping", self.grpc.clone().ping(PingRequest {}))
            .await
            .map_err(|e| match e {
                TeleportError::Unimplemented(_) => TeleportError::ServerTooOld {
                    found: "unknown (no Ping)".into(),
                    required: MIN_SERVER_VERSION.into(),
                },
                other => other,
            })?;
        let info = ClusterInfo::from(resp.into_inner());
        let found = Version::parse(&info.server_version);
        let required = Version::parse(MIN_SERVER_VERSION);
        match (found, required) {
            (Some(found), Some(required)) if found >= required => Ok(info),
            _ => Err(TeleportError::ServerTooOld {
                found: info.server_version,
                required: MIN_SERVER_VERSION.into(),
            }),
        }
    }

    /// Opens a watch on access requests.
    pub async fn watch_access_requests(&self) -> Result<WatchStream, TeleportError> {
        let watch = Watch {
            kinds: vec![WatchKind {
                kind: ACCESS_REQUEST_KIND.into(),
                ..Default::default()
            }],
            allow_partial_success: false,
        };
        let stream = deadline("WatchEvents", self.grpc.clone().watch_events(watch))
            .await?
            .into_inner();
        Ok(WatchStream::new(stream))
    }

    /// The `plugin`'s data for request `id`; `None` when there is none.
    pub async fn get_plugin_data(
        &self,
        id: &str,
        plugin: &str,
    ) -> Result<Option<PluginData>, TeleportError> {
        self.plugin_data_of(ACCESS_REQUEST_KIND, id, plugin).await
    }

    /// The `plugin`'s data on the resource of `kind` named `name`; `None` when there is none.
    pub(super) async fn plugin_data_of(
        &self,
        kind: &str,
        name: &str,
        plugin: &str,
    ) -> Result<Option<PluginData>, TeleportError> {
        let resp = deadline(
            "GetPluginData",
            self.grpc.clone().get_plugin_data(PluginDataFilter {
                kind: kind.into(),
                resource: name.into(),
                plugin: plugin.into(),
            }),
        )
        .await;
        let seq = match resp {
            Ok(r) => r.into_inner(),
            Err(TeleportError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(seq
            .plugin_data
            .into_iter()
            .filter(|d| d.metadata.as_ref().is_some_and(|m| m.name == name))
            .find_map(|d| d.spec?.entries.remove(plugin))
            .map(|e| e.data.into_iter().collect()))
    }

    /// Compare-and-swap: writes `set` if the stored data equals `expect` (keys missing count as
    /// `""`; an empty `expect` means no condition). A lost race is [`TeleportError::CompareFailed`].
    pub async fn update_plugin_data(
        &self,
        id: &str,
        plugin: &str,
        set: &PluginData,
        expect: &PluginData,
    ) -> Result<(), TeleportError> {
        self.update_plugin_data_of(ACCESS_REQUEST_KIND, id, plugin, set, expect)
            .await
    }

    /// [`Self::update_plugin_data`] on the resource of `kind` named `name`.
    pub(super) async fn update_plugin_data_of(
        &self,
        kind: &str,
        name: &str,
        plugin: &str,
        set: &PluginData,
        expect: &PluginData,
    ) -> Result<(), TeleportError> {
        deadline(
            "UpdatePluginData",
            self.grpc
                .clone()
                .update_plugin_data(PluginDataUpdateParams {
                    kind: kind.into(),
                    resource: name.into(),
                    plugin: plugin.into(),
                    set: to_hash(set),
                    expect: to_hash(expect),
                }),
        )
        .await?;
        Ok(())
    }

    /// Every access request in `state` (all when `None`), in one `Vec`: for small listings.
    /// [`Self::access_request_pages`] reads a large one a page at a time.
    pub async fn list_access_requests(
        &self,
        state: Option<RequestState>,
    ) -> Result<Vec<AccessRequest>, TeleportError> {
        let mut pages = self.access_request_pages(state);
        let mut out = Vec::new();
        while let Some(page) = pages.next_page().await? {
            out.extend(page);
        }
        Ok(out)
    }

    /// The access requests in `state` (all when `None`), fetched a page at a time as they are
    /// asked for; servers without ListAccessRequests are read through the older streaming call.
    pub fn access_request_pages(&self, state: Option<RequestState>) -> RequestPages {
        RequestPages {
            client: self.clone(),
            filter: AccessRequestFilter {
                state: state.map(RequestState::to_wire).unwrap_or(0),
                ..Default::default()
            },
            next: Pager::Key(String::new()),
            keys_seen: Default::default(),
            streamed_pages: 0,
        }
    }
}

/// Calls only a test driver makes (a requester, a reviewer, an administrator).
#[cfg(feature = "testkit")]
mod driver;

/// `call` within [`CALL_TIMEOUT`]; `method` names it in the error.
pub(super) async fn deadline<T>(
    method: &str,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, TeleportError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map_err(TeleportError::from),
        Err(_) => Err(TeleportError::Timeout(format!(
            "{method}: no answer from Teleport within {}s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

/// The access requests of one listing, a page at a time.
pub struct RequestPages {
    client: TeleportClient,
    filter: AccessRequestFilter,
    next: Pager,
    /// The page keys read so far (one per page): a key coming round again ends the listing.
    keys_seen: std::collections::HashSet<String>,
    /// Pages read from the older streaming call.
    streamed_pages: usize,
}

enum Pager {
    /// ListAccessRequests from this key (empty: the first page).
    Key(String),
    /// The older GetAccessRequestsV2 stream (servers without ListAccessRequests).
    Stream(Box<tonic::Streaming<AccessRequestV3>>),
    Done,
}

impl RequestPages {
    /// The next page; `None` after the last one.
    pub async fn next_page(&mut self) -> Result<Option<Vec<AccessRequest>>, TeleportError> {
        match std::mem::replace(&mut self.next, Pager::Done) {
            Pager::Done => Ok(None),
            Pager::Key(start_key) => self.listed(start_key).await,
            Pager::Stream(stream) => self.streamed(*stream).await,
        }
    }

    async fn listed(
        &mut self,
        start_key: String,
    ) -> Result<Option<Vec<AccessRequest>>, TeleportError> {
        let mut grpc = self.client.grpc.clone();
        let call = grpc.list_access_requests(ListAccessRequestsRequest {
            filter: Some(self.filter.clone()),
            limit: PAGE_SIZE,
            start_key: start_key.clone(),
            ..Default::default()
        });
        let page = match deadline("ListAccessRequests", call).await {
            Ok(r) => r.into_inner(),
            Err(TeleportError::Unimplemented(_)) => {
                let stream = deadline(
                    "GetAccessRequestsV2",
                    self.client
                        .grpc
                        .clone()
                        .get_access_requests_v2(self.filter.clone()),
                )
                .await?
                .into_inner();
                return self.streamed(stream).await;
            }
            Err(e) => return Err(e),
        };
        if !page.next_key.is_empty() {
            if self.keys_seen.len() >= MAX_PAGES {
                return Err(TeleportError::Unavailable(format!(
                    "ListAccessRequests goes on past {MAX_PAGES} pages ({} requests): the listing does not end",
                    MAX_PAGES * PAGE_SIZE as usize
                )));
            }
            self.keys_seen.insert(start_key);
            if self.keys_seen.contains(&page.next_key) {
                // A listing that does not move on would be read for ever.
                return Err(TeleportError::Unavailable(format!(
                    "ListAccessRequests returned a page key it had already returned ({:?}): the listing goes round in a circle",
                    page.next_key
                )));
            }
            self.next = Pager::Key(page.next_key);
        }
        let requests = page.access_requests.into_iter().map(AccessRequest::from);
        Ok(Some(requests.collect()))
    }

    /// Up to a page's worth of the stream, each message within [`CALL_TIMEOUT`].
    async fn streamed(
        &mut self,
        mut stream: tonic::Streaming<AccessRequestV3>,
    ) -> Result<Option<Vec<AccessRequest>>, TeleportError> {
        let mut page = Vec::new();
        while page.len() < PAGE_SIZE as usize {
            match deadline("GetAccessRequestsV2", stream.message()).await? {
                Some(r) => page.push(AccessRequest::from(r)),
                None => return Ok((!page.is_empty()).then_some(page)),
            }
        }
        // The same bound as a paged listing: one that does not end is an error.
        self.streamed_pages += 1;
        if self.streamed_pages > MAX_PAGES {
            return Err(TeleportError::Unavailable(format!(
                "GetAccessRequestsV2 goes on past {} requests: the listing does not end",
                MAX_PAGES * PAGE_SIZE as usize
            )));
        }
        self.next = Pager::Stream(Box::new(stream));
        Ok(Some(page))
    }
}

fn to_hash(m: &PluginData) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A transport error from the first connection, with the dial attempts when there were some.
fn connect_error(e: tonic::transport::Error) -> TeleportError {
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    while let Some(err) = source {
        if let Some(t) = err.downcast_ref::<TeleportError>() {
            if let TeleportError::Dial(d) = t {
                return TeleportError::Dial(super::dial::DialError {
                    addr: d.addr.clone(),
                    attempts: d.attempts.clone(),
                });
            }
            return TeleportError::Unavailable(t.to_string());
        }
        source = err.source();
    }
    TeleportError::Unavailable(e.to_string())
}

/// The events of one watch stream.
pub struct WatchStream {
    inner: tonic::Streaming<super::pb::proto::Event>,
    confirmed: Option<Vec<String>>,
}

impl WatchStream {
    pub(super) fn new(inner: tonic::Streaming<super::pb::proto::Event>) -> Self {
        Self {
            inner,
            confirmed: None,
        }
    }

    /// The kinds the server's INIT confirmed it will send (with partial success, the ones the
    /// role may watch); `None` before INIT, or when the server's INIT did not say.
    pub fn confirmed_kinds(&self) -> Option<&[String]> {
        self.confirmed.as_deref()
    }

    /// The next event; `None` when the server ended the stream cleanly.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, TeleportError>> {
        match self.inner.message().await {
            Ok(Some(e)) => {
                if let Some(kinds) = super::types::watch_status_kinds(&e) {
                    self.confirmed = Some(kinds);
                }
                Some(Ok(WatchEvent::from(e)))
            }
            Ok(None) => None,
            Err(s) => Some(Err(s.into())),
        }
    }
}
