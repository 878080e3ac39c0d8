//! The configuration file: the raw TOML read once into a validated [`Config`], every problem
//! reported together, each named by its key.
//!
//! It accepts everything the original plugin's `/etc/teleport-email.toml` accepts, with the same
//! defaults, aliases and deprecations, so operators can swap binaries without touching the file.

mod duration;
mod reader;
mod sections;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secret::Secret;

pub use duration::parse_go_duration;
pub use sections::permissions_warning;

/// The commented example printed by `teleport-email configure`.
pub const EXAMPLE_CONFIG: &str = include_str!("example.toml");

/// The path used when `start` gets no `--config`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/teleport-email.toml";

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub teleport: TeleportConfig,
    pub mailer: MailerConfig,
    pub delivery: DeliveryConfig,
    pub recipients: RecipientMap,
    pub log: LogConfig,
    /// `[metrics] listen`: where `/metrics`, `/healthz` and `/readyz` are served; off when `None`.
    pub metrics: Option<std::net::SocketAddr>,
}

/// `[teleport]`: where the cluster is and how we prove who we are.
#[derive(Debug, Clone, PartialEq)]
pub struct TeleportConfig {
    /// `host:port` of the Auth Service or the Proxy.
    pub addr: String,
    /// `None` when the file names no credentials; `start` refuses to run then.
    pub credentials: Option<Credentials>,
}

/// Where the client certificate and the cluster CA come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    /// An identity file from `tctl auth sign` or tbot; re-read every `refresh` when set.
    IdentityFile {
        path: PathBuf,
        refresh: Option<Duration>,
    },
    /// The `--format=tls` trio.
    KeyPair {
        cert: PathBuf,
        key: PathBuf,
        root_cas: PathBuf,
    },
}

/// The one mail backend in use.
#[derive(Debug, Clone, PartialEq)]
pub enum MailerConfig {
    Smtp(SmtpConfig),
    Mailgun(MailgunConfig),
}

/// `[smtp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    /// AUTH is used only when a username is set.
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub starttls: StartTlsPolicy,
    /// SMTPS: TLS from the first byte (port 465 or `implicit_tls = true`).
    pub implicit_tls: bool,
    /// `allow_plaintext_auth`: AUTH may send the password to a remote server without TLS.
    pub allow_plaintext_auth: bool,
}

/// `smtp.starttls_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTlsPolicy {
    /// TLS is required; a server without STARTTLS is an error.
    Mandatory,
    /// TLS when the server offers it.
    Opportunistic,
    /// Never TLS.
    Disabled,
}

/// `[mailgun]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MailgunConfig {
    pub domain: String,
    pub private_key: Secret,
    /// `https://api.mailgun.net/v3` unless set (EU: `https://api.eu.mailgun.net/v3`).
    pub api_base: String,
}

/// The default Mailgun API base.
pub const MAILGUN_DEFAULT_API_BASE: &str = "https://api.mailgun.net/v3";

/// `[delivery]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryConfig {
    /// The `From` of every mail; empty only when the file left it out (warned).
    pub sender: String,
    /// How long a mail that failed for a transient reason is retried before an ERROR.
    pub retry_timeout: Duration,
    /// `notify_requester` (ours): the requester gets a confirmation and the outcome.
    pub notify_requester: bool,
    /// `reminder_interval` and `reminder_limit` (ours): reviewers who have not reviewed a
    /// pending request are reminded in its thread; off when `None`.
    pub reminders: Option<Reminders>,
    /// `access_list_reminders` (ours): the owners of Access Lists whose review is coming due or
    /// overdue are reminded by mail, on the Slack plugin's schedule.
    pub access_list_reminders: bool,
}

/// Reminders of pending requests: one after `interval` from the request's creation, then one
/// every `interval`, at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reminders {
    pub interval: Duration,
    pub limit: u32,
}

/// The default of `delivery.reminder_limit`.
pub const DEFAULT_REMINDER_LIMIT: u32 = 3;

/// The default of `delivery.retry_timeout`.
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(600);

/// `[role_to_recipients]`: role name → addresses; always has a non-empty `"*"`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipientMap(BTreeMap<String, Vec<String>>);

impl RecipientMap {
    /// The wildcard role that catches roles without an entry of their own.
    pub const WILDCARD: &'static str = "*";

    /// Wraps a map that already passed validation.
    pub(crate) fn new(map: BTreeMap<String, Vec<String>>) -> Self {
        Self(map)
    }

    /// The addresses for `role`, or the wildcard's when the role has none.
    pub fn for_role(&self, role: &str) -> &[String] {
        match self.0.get(role) {
            Some(list) if !list.is_empty() => list,
            _ => self.fallback(),
        }
    }

    /// The `"*"` list: the fallback recipients.
    pub fn fallback(&self) -> &[String] {
        self.0.get(Self::WILDCARD).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The whole map, ordered by role.
    pub fn as_map(&self) -> &BTreeMap<String, Vec<String>> {
        &self.0
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub output: LogOutput,
    pub severity: LogSeverity,
    pub format: LogFormat,
}

/// `log.output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutput {
    Stderr,
    Stdout,
    /// A file, opened for appending (and reopened when log rotation moves it).
    File(PathBuf),
    /// The local syslog daemon (`/dev/log`).
    Syslog,
}

/// `log.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogSeverity {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A config together with the warnings found while reading it, to be logged once logging is up.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The text is not TOML. Only the position and the parser's message are kept, never the
    /// offending line: it may hold a password.
    #[error("config file {path} is not valid TOML: line {line}, column {column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("config file {path} has {} problem(s):\n{}", .problems.len(), bullet_list(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

fn bullet_list(items: &[String]) -> String {
    items
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut loaded = parse(&text, path)?;
    if let Some(warning) = sections::permissions_warning(path, "the config file") {
        loaded.warnings.insert(0, warning);
    }
    Ok(loaded)
}

/// Validates config text; `path` is only used in messages (and is where `*_file` paths are read from
/// when relative, as with the original: relative to the working directory).
pub fn parse(text: &str, path: &Path) -> Result<Loaded, ConfigError> {
    let root: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| syntax_error(text, path, &e))?;
    let (config, findings) = sections::read(&root);
    match config {
        Some(config) if findings.errors.is_empty() => Ok(Loaded {
            config,
            warnings: findings.warnings,
        }),
        _ => Err(ConfigError::Invalid {
            path: path.to_owned(),
            problems: findings.errors,
        }),
    }
}

/// A syntax error by position. `toml::de::Error`'s `Display` quotes the offending line, which
/// may be `password = "…"`, so only its bare message and span are used.
fn syntax_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let mut offset = e.span().map_or(0, |span| span.start.min(text.len()));
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    ConfigError::Syntax {
        path: path.to_owned(),
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod tests;
