//! `[mailgun]` and `[smtp]`: which mailer sends, and the secrets it needs.

use std::path::Path;

use toml::Table;

use super::table;
use crate::config::reader::{Findings, Section};
use crate::config::{
    MAILGUN_DEFAULT_API_BASE, MailerConfig, MailgunConfig, SmtpConfig, StartTlsPolicy,
};
use crate::secret::Secret;

const DEFAULT_SMTP_PORT: u16 = 587;
const SMTPS_PORT: u16 = 465;

/// `[mailgun]` and `[smtp]`: both validated when both are present; SMTP wins, as upstream.
pub(super) fn read_mailer(f: &mut Findings, root: &Table) -> Option<MailerConfig> {
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
