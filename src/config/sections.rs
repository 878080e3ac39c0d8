//! Reading each section of the file into its validated form.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use super::reader::{Findings, Section, string_list};
use super::*;
use crate::address;

const DEFAULT_ADDR: &str = "localhost:3025";
const DEFAULT_REFRESH: Duration = Duration::from_secs(60);
const DEFAULT_SMTP_PORT: u16 = 587;
const SMTPS_PORT: u16 = 465;
const KNOWN_SECTIONS: &[&str] = &[
    "teleport",
    "mailgun",
    "smtp",
    "delivery",
    "role_to_recipients",
    "log",
    "metrics",
];

/// Reads every section; the config is `None` only when something required could not be built.
pub(super) fn read(root: &Table) -> (Option<Config>, Findings) {
    let mut f = Findings::default();
    for (k, v) in root {
        if !KNOWN_SECTIONS.contains(&k.as_str()) {
            let what = if v.is_table() { "section" } else { "key" };
            f.warn(format!(
                "unknown {what} {k} is ignored (check its spelling)"
            ));
        }
    }
    let teleport_table = table(&mut f, root, "teleport");
    let teleport = read_teleport(&mut f, teleport_table);
    let mailer = read_mailer(&mut f, root);
    let delivery_table = table(&mut f, root, "delivery");
    let (sender, retry_timeout, legacy_recipients) = read_delivery(&mut f, delivery_table);
    let recipients = read_recipients(&mut f, root, legacy_recipients);
    let log_table = table(&mut f, root, "log");
    let log = read_log(&mut f, log_table);
    let metrics_table = table(&mut f, root, "metrics");
    let metrics = read_metrics(&mut f, metrics_table);
    let config = (|| {
        Some(Config {
            teleport: teleport?,
            mailer: mailer?,
            delivery: DeliveryConfig {
                sender,
                retry_timeout,
            },
            recipients: recipients?,
            log: log?,
            metrics,
        })
    })();
    (config, f)
}

static EMPTY: std::sync::LazyLock<Table> = std::sync::LazyLock::new(Table::new);

/// The table `[name]`, an empty one when absent, and an error when `name` is not a table.
fn table<'t>(f: &mut Findings, root: &'t Table, name: &str) -> &'t Table {
    match root.get(name) {
        None => &EMPTY,
        Some(Value::Table(t)) => t,
        Some(other) => {
            f.error(
                name,
                format!("expected a [{name}] section, found {}", other.type_str()),
            );
            &EMPTY
        }
    }
}

fn read_teleport(f: &mut Findings, t: &Table) -> Option<TeleportConfig> {
    let mut s = Section::new("teleport", t);
    let addr = s.non_empty(f, "addr", &[]);
    let auth_server = s.non_empty(f, "auth_server", &[]);
    let addr = match (addr, auth_server) {
        (Some(addr), _) => addr,
        (None, Some(legacy)) => {
            f.warn("teleport.auth_server is deprecated, consider teleport.addr");
            legacy
        }
        (None, None) => DEFAULT_ADDR.to_owned(),
    };
    let identity = s.non_empty(f, "identity", &[]).map(PathBuf::from);
    let refresh = s.bool(f, "refresh_identity").unwrap_or(false);
    let interval = s.duration(f, "refresh_identity_interval");
    if interval == Some(Duration::ZERO) {
        f.error(
            s.key("refresh_identity_interval"),
            "must be greater than zero",
        );
    }
    let cert = s.non_empty(f, "client_crt", &[]).map(PathBuf::from);
    let key = s.non_empty(f, "client_key", &[]).map(PathBuf::from);
    let cas = s.non_empty(f, "root_cas", &[]).map(PathBuf::from);
    s.finish(f);

    let trio_given: Vec<&str> = [
        ("client_crt", &cert),
        ("client_key", &key),
        ("root_cas", &cas),
    ]
    .iter()
    .filter(|(_, v)| v.is_some())
    .map(|(k, _)| *k)
    .collect();
    let credentials = if let Some(path) = identity {
        if !trio_given.is_empty() {
            f.warn(format!(
                "teleport.identity is set, so teleport.{} is ignored",
                trio_given.join(", teleport.")
            ));
        }
        Some(Credentials::IdentityFile {
            path,
            refresh: refresh.then(|| interval.unwrap_or(DEFAULT_REFRESH)),
        })
    } else {
        if refresh {
            f.warn("teleport.refresh_identity only applies to teleport.identity and is ignored");
        }
        match (cert, key, cas) {
            (Some(cert), Some(key), Some(root_cas)) => Some(Credentials::KeyPair {
                cert,
                key,
                root_cas,
            }),
            (None, None, None) => None,
            _ => {
                let missing: Vec<&str> = ["client_crt", "client_key", "root_cas"]
                    .into_iter()
                    .filter(|k| !trio_given.contains(k))
                    .collect();
                f.error(
                    "teleport",
                    format!(
                        "client_crt, client_key and root_cas go together: {} given, {} missing",
                        trio_given.join(", "),
                        missing.join(", ")
                    ),
                );
                None
            }
        }
    };
    Some(TeleportConfig { addr, credentials })
}

/// `[mailgun]` and `[smtp]`: both validated when both are present; SMTP wins, as upstream.
fn read_mailer(f: &mut Findings, root: &Table) -> Option<MailerConfig> {
    let mailgun = root.get("mailgun").map(|_| table(f, root, "mailgun"));
    let smtp = root.get("smtp").map(|_| table(f, root, "smtp"));
    let mailgun = mailgun.map(|t| read_mailgun(f, t));
    let smtp = smtp.map(|t| read_smtp(f, t));
    match (mailgun, smtp) {
        (None, None) => {
            f.error(
                "mailer",
                "provide either [mailgun] or [smtp] sections to work with plugin",
            );
            None
        }
        (Some(_), Some(smtp)) => {
            f.warn(
                "both [mailgun] and [smtp] are configured: using SMTP, as the original plugin does",
            );
            smtp.map(MailerConfig::Smtp)
        }
        (Some(mailgun), None) => mailgun.map(MailerConfig::Mailgun),
        (None, Some(smtp)) => smtp.map(MailerConfig::Smtp),
    }
}

fn read_mailgun(f: &mut Findings, t: &Table) -> Option<MailgunConfig> {
    let mut s = Section::new("mailgun", t);
    let domain = s.non_empty(f, "domain", &["Domain", "DOMAIN"]);
    let key = s.non_empty(f, "private_key", &[]);
    let key_file = s.non_empty(f, "private_key_file", &[]);
    let api_base = s
        .non_empty(f, "api_base", &[])
        .unwrap_or_else(|| MAILGUN_DEFAULT_API_BASE.to_owned());
    s.finish(f);

    if let Err(problem) = check_api_base(&api_base) {
        f.error("mailgun.api_base", problem);
    }
    let domain = match domain {
        None => {
            f.error("mailgun.domain", "provide mailgun.domain to use Mailgun");
            None
        }
        Some(d) if d.contains(|c: char| ":&'@(),!?#;%+=<>".contains(c) || c.is_whitespace()) => {
            f.error(
                "mailgun.domain",
                format!("{d:?} is not a domain name (it contains a forbidden character)"),
            );
            None
        }
        Some(d) => Some(d),
    };
    let private_key = secret(
        f,
        key,
        key_file,
        "mailgun.private_key",
        "mailgun.private_key_file",
        "specify mailgun.private_key or mailgun.private_key_file",
    );
    Some(MailgunConfig {
        domain: domain?,
        private_key: private_key?,
        api_base: api_base.trim_end_matches('/').to_owned(),
    })
}

/// `https://` anywhere; `http://` only to a loopback host, since the API key travels in every
/// request. The URL is parsed as reqwest will parse it, so both agree on the host.
fn check_api_base(api_base: &str) -> Result<(), String> {
    let not_a_url = || "is not an http(s) URL such as \"https://api.eu.mailgun.net/v3\"".to_owned();
    let url = url::Url::parse(api_base).map_err(|_| not_a_url())?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if url.host().is_some_and(|h| is_loopback(&h)) => Ok(()),
        "http" => Err(format!(
            "http:// would send the API key unencrypted to {}; use https:// (http:// is accepted only for a loopback host: 127.0.0.0/8, ::1 or localhost)",
            url.host_str().unwrap_or("an unnamed host")
        )),
        _ => Err(not_a_url()),
    }
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn read_smtp(f: &mut Findings, t: &Table) -> Option<SmtpConfig> {
    let mut s = Section::new("smtp", t);
    let host = s.non_empty(f, "host", &["Host", "HOST"]);
    let port = s.integer(f, "port", &["Port", "PORT"]);
    let username = s.non_empty(f, "username", &["Username", "USERNAME"]);
    let password = s.non_empty(f, "password", &["Password", "PASSWORD"]);
    let password_file = s.non_empty(f, "password_file", &[]);
    let policy = s.string(f, "starttls_policy", &[]).unwrap_or_default();
    let implicit_tls = s.bool(f, "implicit_tls");
    let allow_plaintext_auth = s.bool(f, "allow_plaintext_auth").unwrap_or(false);
    s.finish(f);

    let host = host.or_else(|| {
        f.error("smtp.host", "provide smtp.host to use SMTP");
        None
    });
    let port = match port {
        None | Some(0) => Some(DEFAULT_SMTP_PORT),
        Some(p) => u16::try_from(p).ok().or_else(|| {
            f.error("smtp.port", format!("{p} is not a TCP port (1-65535)"));
            None
        }),
    };
    let starttls = starttls_policy(f, &policy);
    let password = smtp_password(f, username.is_some(), password, password_file);
    let port = port?;
    let implicit_tls = implicit_tls.unwrap_or(port == SMTPS_PORT);
    if implicit_tls && starttls == Some(StartTlsPolicy::Disabled) {
        f.warn("smtp.implicit_tls is on (port 465), so smtp.starttls_policy = \"disabled\" has no effect");
    }
    if username.is_some() && starttls == Some(StartTlsPolicy::Disabled) && !implicit_tls {
        plaintext_auth(f, host.as_deref(), allow_plaintext_auth);
    }
    Some(SmtpConfig {
        host: host?,
        port,
        username,
        password,
        starttls: starttls?,
        implicit_tls,
        allow_plaintext_auth,
    })
}

/// `smtp.starttls_policy`, upstream's values and wording.
fn starttls_policy(f: &mut Findings, policy: &str) -> Option<StartTlsPolicy> {
    match policy {
        "" | "mandatory" => Some(StartTlsPolicy::Mandatory),
        "opportunistic" => Some(StartTlsPolicy::Opportunistic),
        "disabled" => Some(StartTlsPolicy::Disabled),
        other => {
            f.error(
                "smtp.starttls_policy",
                format!(
                    "invalid smtp.starttls_policy: unsupported starttls_policy {other:?} - provide one of mandatory, opportunistic, disabled or leave empty to default to mandatory"
                ),
            );
            None
        }
    }
}

/// The AUTH password, required with a username and ignored (with a warning) without one.
fn smtp_password(
    f: &mut Findings,
    username: bool,
    password: Option<String>,
    password_file: Option<String>,
) -> Option<Secret> {
    if username {
        secret(
            f,
            password,
            password_file,
            "smtp.password",
            "smtp.password_file",
            "specify smtp.password or smtp.password_file (or remove smtp.username to send without AUTH)",
        )
    } else {
        if password.is_some() || password_file.is_some() {
            f.warn("smtp.password is set but smtp.username is not: sending without AUTH");
        }
        None
    }
}

/// `starttls_policy = "disabled"` with a username: the password goes in clear, which needs the
/// operator's explicit consent unless the server is on this machine.
fn plaintext_auth(f: &mut Findings, host: Option<&str>, allowed: bool) {
    if allowed {
        f.warn("smtp.starttls_policy is \"disabled\" and smtp.allow_plaintext_auth is on: the SMTP password will be sent without TLS");
    } else if !host.is_some_and(is_loopback_host) {
        f.error(
            "smtp.allow_plaintext_auth",
            "smtp.username with smtp.starttls_policy = \"disabled\" would send the SMTP password to a remote server in clear: set smtp.starttls_policy to \"mandatory\" or \"opportunistic\" (or smtp.implicit_tls = true), or set smtp.allow_plaintext_auth = true if the network to smtp.host is trusted",
        );
    }
}

/// Whether `host` names this machine: `localhost` or a loopback address.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// A secret given inline or in a file (read once, trimmed, required to be non-empty).
fn secret(
    f: &mut Findings,
    inline: Option<String>,
    file: Option<String>,
    inline_key: &str,
    file_key: &str,
    missing: &str,
) -> Option<Secret> {
    if let Some(value) = inline {
        return Some(Secret::new(value));
    }
    let Some(path) = file else {
        f.error(inline_key, missing);
        return None;
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().is_empty() => {
            f.error(file_key, format!("file {path} is empty"));
            None
        }
        Ok(text) => {
            if let Some(w) = permissions_warning(Path::new(&path), file_key) {
                f.warn(w);
            }
            Some(Secret::new(text.trim()))
        }
        Err(e) => {
            f.error(file_key, format!("cannot read {path}: {e}"));
            None
        }
    }
}

/// A warning when a file holding secrets can be read by group or others.
pub fn permissions_warning(path: &Path, what: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{what} {} is readable by group or others (mode {:o}); consider chmod 600",
            path.display(),
            mode & 0o777
        )
    })
}

fn read_delivery(f: &mut Findings, t: &Table) -> (String, Duration, Option<Vec<String>>) {
    let mut s = Section::new("delivery", t);
    let sender = s
        .string(f, "sender", &["Sender", "SENDER"])
        .unwrap_or_default();
    let retry_timeout = s
        .duration(f, "retry_timeout")
        .unwrap_or(DEFAULT_RETRY_TIMEOUT);
    let recipients = s
        .has("recipients", &["Recipients", "RECIPIENTS"])
        .then(|| s.strings(f, "recipients"))
        .flatten();
    s.finish(f);
    if sender.is_empty() {
        f.warn("delivery.sender is not set: mail servers will likely refuse mail without a sender");
    } else if !address::is_mailbox(&sender) {
        f.error(
            "delivery.sender",
            format!("{sender:?} is not an email address (use noreply@example.com or \"Name <noreply@example.com>\")"),
        );
    }
    (sender, retry_timeout, recipients)
}

fn read_recipients(
    f: &mut Findings,
    root: &Table,
    legacy: Option<Vec<String>>,
) -> Option<RecipientMap> {
    let mut map = BTreeMap::new();
    if root.contains_key("role_to_recipients") {
        for (role, value) in table(f, root, "role_to_recipients") {
            let name = format!("role_to_recipients.{}", quote_key(role));
            if let Some(list) = string_list(f, &name, value).filter(|l| !l.is_empty()) {
                map.insert(role.clone(), list);
            }
        }
    }
    match legacy {
        Some(list) if !list.is_empty() => {
            if !map.is_empty() {
                f.error(
                    "delivery.recipients",
                    "provide either delivery.recipients or role_to_recipients, not both",
                );
                return None;
            }
            f.warn("delivery.recipients is deprecated, use role_to_recipients with a \"*\" entry");
            map.insert(RecipientMap::WILDCARD.to_owned(), list);
        }
        Some(_) => f.warn("delivery.recipients is deprecated and empty here; it is ignored"),
        None => {}
    }
    if map.is_empty() {
        f.error(
            "role_to_recipients",
            "missing required value role_to_recipients",
        );
        return None;
    }
    if !map.contains_key(RecipientMap::WILDCARD) {
        f.error(
            "role_to_recipients",
            "missing required value role_to_recipients[*]: the \"*\" entry lists who gets requests for roles without an entry of their own",
        );
    }
    let errors_before = f.errors.len();
    for (role, list) in &map {
        for addr in list {
            if !address::is_bare_address(addr) {
                f.error(
                    format!("role_to_recipients.{}", quote_key(role)),
                    format!("invalid email address {addr:?} (a bare address such as ops@example.com, without a display name)"),
                );
            } else if !address::fits_thread_encoding(addr) {
                f.error(
                    format!("role_to_recipients.{}", quote_key(role)),
                    format!(
                        "email address {addr:?} contains '/', which the plugin data cannot store"
                    ),
                );
            }
        }
    }
    (f.errors.len() == errors_before && map.contains_key(RecipientMap::WILDCARD))
        .then(|| RecipientMap::new(map))
}

fn quote_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        k.to_owned()
    } else {
        format!("{k:?}")
    }
}

fn read_log(f: &mut Findings, t: &Table) -> Option<LogConfig> {
    let mut s = Section::new("log", t);
    let output = s.string(f, "output", &[]).unwrap_or_default();
    let severity = s.string(f, "severity", &[]).unwrap_or_default();
    let format = s.string(f, "format", &[]).unwrap_or_default();
    s.finish(f);

    let output = match output.to_ascii_lowercase().as_str() {
        "" | "stderr" | "error" | "2" => LogOutput::Stderr,
        "stdout" | "out" | "1" => LogOutput::Stdout,
        "syslog" => {
            f.warn("log.output = \"syslog\" is not supported; logging to stderr (journald collects it under systemd)");
            LogOutput::Stderr
        }
        _ => LogOutput::File(PathBuf::from(output)),
    };
    let severity = match severity.to_ascii_lowercase().as_str() {
        "" | "info" => Some(LogSeverity::Info),
        "trace" => Some(LogSeverity::Trace),
        "debug" => Some(LogSeverity::Debug),
        "warn" | "warning" => Some(LogSeverity::Warn),
        "err" | "error" => Some(LogSeverity::Error),
        other => {
            f.error(
                "log.severity",
                format!(
                    "unsupported logger severity {other:?} (use trace, debug, info, warn or error)"
                ),
            );
            None
        }
    };
    let format = match format.to_ascii_lowercase().as_str() {
        "" | "text" => Some(LogFormat::Text),
        "json" => Some(LogFormat::Json),
        other => {
            f.error(
                "log.format",
                format!("unsupported log output format {other:?} (use text or json)"),
            );
            None
        }
    };
    Some(LogConfig {
        output,
        severity: severity?,
        format: format?,
    })
}

fn read_metrics(f: &mut Findings, t: &Table) -> Option<std::net::SocketAddr> {
    let mut s = Section::new("metrics", t);
    let listen = s.non_empty(f, "listen", &[]);
    s.finish(f);
    let listen = listen?;
    match listen.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            f.error(
                "metrics.listen",
                format!("{listen:?} is not an address such as \"127.0.0.1:9105\""),
            );
            None
        }
    }
}
