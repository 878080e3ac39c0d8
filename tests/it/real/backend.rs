//! Direct access to the cluster's SQLite backend (`<data_dir>/backend/sqlite.db`) through the
//! `sqlite3` CLI, for the two things no `tctl` command does:
//!
//! * writing a role that the Community Edition refuses to create (`allow.review_requests`,
//!   `allow.request.thresholds`: "only available in enterprise subscriptions"). The gate is in
//!   the role-creation API only; the review and threshold logic itself is in the open-source
//!   code, so a role put into the backend behaves as it would on Enterprise;
//! * reading the plugin data the plugin stored for an access request.
//!
//! A write goes into the `kv` table and, in the same transaction, into the `events` table,
//! exactly as Teleport's own `lite` backend does, so the running Auth Service's caches and
//! watchers see it within about a second.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::supervisor::{ensure_debian_package, run};

/// Teleport's backend operation code for a put (`types.OpPut`).
const OP_PUT: u8 = 1;

/// The SQLite file of one cluster.
pub struct Backend {
    db: PathBuf,
    scratch: PathBuf,
}

impl Backend {
    /// The backend under `data_dir`; `scratch` holds the command output files.
    pub fn new(data_dir: &Path, scratch: &Path) -> Self {
        ensure_debian_package("sqlite3", "sqlite3");
        Backend {
            db: data_dir.join("backend").join("sqlite.db"),
            scratch: scratch.to_owned(),
        }
    }

    /// Stores `value` (a resource as JSON) under `key` and emits the matching put event.
    pub fn put(&self, key: &str, value: &str) {
        let key = quote(key);
        let hex = hex(value.as_bytes());
        let revision = quote(&random_uuid());
        self.sql(&format!(
            "BEGIN IMMEDIATE;\
             INSERT OR REPLACE INTO kv(key, modified, expires, value, revision) \
               VALUES({key}, {now}, NULL, X'{hex}', {revision});\
             INSERT INTO events(type, created, kv_key, kv_modified, kv_expires, kv_value, kv_revision) \
               VALUES({OP_PUT}, strftime('%Y-%m-%d %H:%M:%f+00:00','now'), {key}, {now}, NULL, X'{hex}', {revision});\
             COMMIT;",
            now = now_nanos(),
        ));
    }

    /// The value stored under `key`, if any.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let out = self.sql(&format!(
            "SELECT hex(value) FROM kv WHERE key = {};",
            quote(key)
        ));
        let hex = out.trim();
        (!hex.is_empty()).then(|| unhex(hex))
    }

    fn sql(&self, sql: &str) -> String {
        let mut cmd = Command::new("sqlite3");
        cmd.arg("-bail")
            .arg("-cmd")
            .arg(".timeout 10000")
            .arg(&self.db)
            .arg(sql);
        run(cmd, &self.scratch, Duration::from_secs(30)).ok().stdout
    }
}

/// The backend key of an access request's plugin data.
pub fn plugin_data_key(request_id: &str) -> String {
    format!("/plugin_data/access_request/{request_id}/params")
}

/// The backend key of a role.
pub fn role_key(name: &str) -> String {
    format!("/roles/{name}/params")
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("sqlite3 printed hex"))
        .collect()
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

/// A random UUID-shaped revision, like the ones Teleport writes.
fn random_uuid() -> String {
    let mut b = [0u8; 16];
    rand::fill(&mut b);
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}
