//! Everything that knows Teleport's gRPC API: generated code, credentials, TLS, dialing, and a
//! typed client that speaks in domain types. Nothing outside this module sees protobuf types.

mod client;
mod credentials;
pub mod dial;
mod error;
pub mod identity;
mod lists;
pub(crate) mod pb;
mod rules;
mod scan;
mod types;
mod version;
pub mod websocket;

pub use client::{
    ACCESS_REQUEST_KIND, CALL_TIMEOUT, INIT_TIMEOUT, MIN_SERVER_VERSION, PluginData, RequestPages,
    TeleportClient, WatchStream,
};
pub use credentials::CredentialStore;
pub use dial::{DialError, DialOptions, DialPath, UpgradeMode};
pub use error::TeleportError;
pub use lists::{ACCESS_LIST_KIND, AccessList, DEFAULT_NOTIFY_BEFORE};
pub use rules::{ACCESS_MONITORING_RULE_KIND, MonitoringRule, RULES_PAGE_SIZE, Traits};
pub use scan::{HEADERS_TIMEOUT, SCAN_TIMEOUT};
pub use types::{AccessRequest, ClusterInfo, RequestState, Review, WatchEvent};
