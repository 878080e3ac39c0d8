//! teleport-email: email notifications for Teleport Access Requests.
//!
//! Data flows one way: config + signals → Teleport client → watcher → engine → mailer.
//! `app` is the one place that wires the concrete parts together.
#![forbid(unsafe_code)]

pub mod address;
pub mod app;
pub mod backoff;
pub mod calendar;
pub mod check;
pub mod cli;
// Until their owners narrow them (`pub` → `pub(crate)`), as the rest of the crate is.
pub mod config;
pub mod engine;
pub mod exit;
pub mod lists;
pub mod logging;
pub mod mail;
pub mod metrics;
pub mod rules;
pub mod secret;
pub mod shutdown;
pub(crate) mod startup;
pub mod teleport;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod version;
pub mod watcher;
