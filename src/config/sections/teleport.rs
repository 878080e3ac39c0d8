//! `[teleport]`: the cluster address and the credentials that prove who we are.

use std::path::PathBuf;
use std::time::Duration;

use toml::Table;

use crate::config::reader::{Findings, Section};
use crate::config::{Credentials, TeleportConfig};

const DEFAULT_ADDR: &str = "localhost:3025";
const DEFAULT_REFRESH: Duration = Duration::from_secs(60);
const TRIO_KEYS: [&str; 3] = ["client_crt", "client_key", "root_cas"];

pub(super) fn read_teleport(f: &mut Findings, t: &Table) -> Option<TeleportConfig> {
    let mut s = Section::new("teleport", t);
    let addr = read_addr(f, &mut s);
    let identity = s.non_empty(f, "identity", &[]).map(PathBuf::from);
    let refresh = read_refresh(f, &mut s);
    let trio = Trio::read(f, &mut s);
    s.finish(f);

    let credentials = match identity {
        Some(path) => Some(identity_file(f, path, refresh, &trio)),
        None => key_pair(f, refresh.is_some(), trio),
    };
    Some(TeleportConfig { addr, credentials })
}

/// `addr`, or the deprecated `auth_server`, or the default.
fn read_addr(f: &mut Findings, s: &mut Section<'_>) -> String {
    let addr = s.non_empty(f, "addr", &[]);
    let auth_server = s.non_empty(f, "auth_server", &[]);
    match (addr, auth_server) {
        (Some(addr), _) => addr,
        (None, Some(legacy)) => {
            f.warn("teleport.auth_server is deprecated, consider teleport.addr");
            legacy
        }
        (None, None) => DEFAULT_ADDR.to_owned(),
    }
}

/// How often the identity file is re-read: `Some` exactly when `refresh_identity` is on.
fn read_refresh(f: &mut Findings, s: &mut Section<'_>) -> Option<Duration> {
    let refresh = s.bool(f, "refresh_identity").unwrap_or(false);
    let interval = s.duration(f, "refresh_identity_interval");
    if interval == Some(Duration::ZERO) {
        f.error(
            s.key("refresh_identity_interval"),
            "must be greater than zero",
        );
    }
    refresh.then(|| interval.unwrap_or(DEFAULT_REFRESH))
}

/// The `--format=tls` paths, each of which may be missing.
struct Trio {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    cas: Option<PathBuf>,
}

impl Trio {
    fn read(f: &mut Findings, s: &mut Section<'_>) -> Self {
        let mut path = |key| s.non_empty(f, key, &[]).map(PathBuf::from);
        Self {
            cert: path("client_crt"),
            key: path("client_key"),
            cas: path("root_cas"),
        }
    }

    /// The keys that were given, in the order client_crt, client_key, root_cas.
    fn given(&self) -> Vec<&'static str> {
        [&self.cert, &self.key, &self.cas]
            .into_iter()
            .zip(TRIO_KEYS)
            .filter(|(v, _)| v.is_some())
            .map(|(_, k)| k)
            .collect()
    }
}

/// `identity` wins over the trio, which is then ignored with a warning.
fn identity_file(
    f: &mut Findings,
    path: PathBuf,
    refresh: Option<Duration>,
    trio: &Trio,
) -> Credentials {
    let given = trio.given();
    if !given.is_empty() {
        f.warn(format!(
            "teleport.identity is set, so teleport.{} is ignored",
            given.join(", teleport.")
        ));
    }
    Credentials::IdentityFile { path, refresh }
}

/// The trio, all three or none; `refresh_identity` has nothing to refresh here.
fn key_pair(f: &mut Findings, refresh: bool, trio: Trio) -> Option<Credentials> {
    if refresh {
        f.warn("teleport.refresh_identity only applies to teleport.identity and is ignored");
    }
    let given = trio.given();
    match (trio.cert, trio.key, trio.cas) {
        (Some(cert), Some(key), Some(root_cas)) => Some(Credentials::KeyPair {
            cert,
            key,
            root_cas,
        }),
        (None, None, None) => None,
        _ => {
            let missing: Vec<&str> = TRIO_KEYS
                .into_iter()
                .filter(|k| !given.contains(k))
                .collect();
            f.error(
                "teleport",
                format!(
                    "client_crt, client_key and root_cas go together: {} given, {} missing",
                    given.join(", "),
                    missing.join(", ")
                ),
            );
            None
        }
    }
}
