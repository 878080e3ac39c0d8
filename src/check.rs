//! `teleport-email check`: everything `start` needs, tried once, with a ✓ or ✗ line each.

use std::path::Path;
use std::time::SystemTime;

use crate::calendar::rfc3339;
use crate::config::{self, Config, MailerConfig};
use crate::exit::Exit;
use crate::mail::{self, MessageId, OutgoingMail, RenderedMail};
use crate::rules::condition::Condition;
use crate::startup;
use crate::teleport::{ClusterInfo, TeleportClient, TeleportError};

/// One checked item.
struct Line {
    ok: bool,
    what: &'static str,
    detail: String,
}

struct Report(Vec<Line>);

impl Report {
    fn pass(&mut self, what: &'static str, detail: impl Into<String>) {
        self.0.push(Line {
            ok: true,
            what,
            detail: detail.into(),
        });
    }

    fn fail(&mut self, what: &'static str, detail: impl Into<String>) {
        self.0.push(Line {
            ok: false,
            what,
            detail: detail.into(),
        });
    }

    fn print(&self) -> Exit {
        for l in &self.0 {
            let mark = if l.ok { "✓" } else { "✗" };
            println!("{mark} {:<12} {}", l.what, l.detail);
        }
        if self.0.iter().all(|l| l.ok) {
            println!("All checks passed.");
            Exit::Success
        } else {
            Exit::Runtime
        }
    }
}

/// Runs every check; exit 0 only when all pass.
pub async fn run(config_path: &Path, send_test: Option<&str>) -> Exit {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut r = Report(Vec::new());
    let loaded = match config::load(config_path) {
        Ok(l) => l,
        Err(e) => {
            r.fail("config", e.to_string());
            r.print();
            return Exit::Config;
        }
    };
    r.pass(
        "config",
        format!(
            "{} is valid ({} warning(s){})",
            config_path.display(),
            loaded.warnings.len(),
            loaded
                .warnings
                .iter()
                .map(|w| format!("; {w}"))
                .collect::<String>()
        ),
    );
    let config = loaded.config;
    check_log(&config, &mut r);
    check_teleport(&config, &mut r).await;
    check_mailer(&config, send_test, &mut r).await;
    r.print()
}

/// `log.output` as `start` will use it: a file it cannot open stops the start.
fn check_log(config: &Config, r: &mut Report) {
    match crate::logging::try_output(&config.log.output) {
        Ok(true) => r.pass("log", "the log output can be written"),
        Ok(false) => r.pass(
            "log",
            "the local syslog cannot be reached now: the daemon logs to stderr until it can",
        ),
        Err(e) => r.fail("log", e.to_string()),
    }
}

async fn check_teleport(config: &Config, r: &mut Report) {
    if !check_connection(config, r).await {
        r.fail("list", "not checked: no connection to Teleport");
        r.fail("plugin data", "not checked: no connection to Teleport");
    }
}

/// Everything about Teleport; `false` when it stopped before the permission checks.
async fn check_connection(config: &Config, r: &mut Report) -> bool {
    let Some((client, user)) = connect(config, r).await else {
        return false;
    };
    check_list(&client, r).await;
    check_plugin_data(&client, r).await;
    check_monitoring(&client, &user, r).await;
    if config.delivery.access_list_reminders {
        check_access_lists(&client, r).await;
    }
    true
}

/// The credentials and the connection, a line each: the client and the user it acts as.
async fn connect(config: &Config, r: &mut Report) -> Option<(TeleportClient, String)> {
    let store = match startup::credentials(config) {
        Ok((_, store)) => store,
        Err(e) => {
            r.fail("credentials", e.to_string());
            return None;
        }
    };
    let info = store.current().info.clone();
    r.pass(
        "credentials",
        format!(
            "user {} (roles {}), cluster {}, valid until {}",
            info.user,
            info.roles.join(","),
            info.cluster,
            rfc3339(info.not_after)
        ),
    );
    let (client, cluster) = match startup::connect(config, store).await {
        Ok(connected) => connected,
        Err(e) => {
            r.fail("teleport", e.to_string());
            return None;
        }
    };
    r.pass("teleport", describe_cluster(&client, &cluster));
    Some((client, info.user))
}

/// The cluster as the `teleport` line shows it: name, version, how we reached it.
fn describe_cluster(client: &TeleportClient, c: &ClusterInfo) -> String {
    format!(
        "cluster {} (Teleport {}), {}; advanced workflows: {}{}",
        c.name,
        c.server_version,
        client
            .dial_path()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        if c.advanced_workflows { "yes" } else { "no" },
        if c.proxy_public_addr.is_empty() {
            String::new()
        } else {
            format!(", proxy {}", c.proxy_public_addr)
        }
    )
}

async fn check_list(client: &TeleportClient, r: &mut Report) {
    match client.list_access_requests(None).await {
        Ok(list) => r.pass(
            "list",
            format!("may list access requests ({} now)", list.len()),
        ),
        Err(e) => r.fail("list", e.to_string()),
    }
}

/// A write to a request that cannot exist: allowed roles get NotFound, others AccessDenied.
async fn check_plugin_data(client: &TeleportClient, r: &mut Report) {
    let probe = "00000000-0000-4000-8000-000000000000";
    let set = [("probe".to_owned(), "1".to_owned())].into();
    match client
        .update_plugin_data(probe, crate::engine::PLUGIN_NAME, &set, &Default::default())
        .await
    {
        Err(TeleportError::NotFound(_)) | Ok(()) => {
            r.pass("plugin data", "may update access_plugin_data")
        }
        Err(e) => r.fail("plugin data", e.to_string()),
    }
}

/// What Access Monitoring Rule routing can see: the rules, and users' traits. Neither is needed
/// (without them mail is routed by `role_to_recipients`, as with the original), so each is a
/// pass that says what it means.
async fn check_monitoring(client: &TeleportClient, user: &str, r: &mut Report) {
    let rules = match client
        .list_monitoring_rules(crate::engine::PLUGIN_NAME)
        .await
    {
        Ok(rules) if rules.is_empty() => "none apply: mail is routed by role_to_recipients".into(),
        Ok(rules) => {
            // Names and errors come from whoever may write rules: escaped, cut short, and only
            // the first few named.
            let names: Vec<String> = rules.iter().map(|r| shown(&r.name)).collect();
            let listed = format!("{} apply ({})", rules.len(), first(&names, 10, ", "));
            // A condition that does not parse never matches (the daemon WARNs per request).
            let broken: Vec<String> = (rules.iter())
                .filter_map(|r| {
                    let e = Condition::parse(&r.condition).err()?;
                    Some(format!("{}: {}", shown(&r.name), shown(&e.to_string())))
                })
                .collect();
            if broken.is_empty() {
                listed
            } else {
                r.fail(
                    "monitoring rules",
                    format!(
                        "{listed}; {} never match, their condition does not parse here (v18.0's \
                         language): {}",
                        broken.len(),
                        first(&broken, 5, "; ")
                    ),
                );
                String::new()
            }
        }
        Err(TeleportError::AccessDenied(_)) => "cannot be read (the role needs `read` and `list` \
             on `access_monitoring_rule`): mail is routed by role_to_recipients"
            .into(),
        Err(TeleportError::Unimplemented(_)) => {
            "not offered by this cluster: mail is routed by role_to_recipients".into()
        }
        Err(e) => return r.fail("monitoring rules", e.to_string()),
    };
    if !rules.is_empty() {
        r.pass("monitoring rules", rules);
    }
    match client.user_traits(user).await {
        Ok(_) | Err(TeleportError::NotFound(_)) => r.pass("users", "may read users' traits"),
        Err(TeleportError::AccessDenied(_)) => r.pass(
            "users",
            "cannot read users (the role needs `read` on `user`): rule conditions on user.traits see none",
        ),
        Err(e) => r.fail("users", e.to_string()),
    }
}

/// How much of a rule's name or parse error `check` shows (the error may quote the whole
/// condition).
const MAX_SHOWN: usize = 200;

/// `text` from whoever may write rules, as `check` prints it: escaped, then cut short.
fn shown(text: &str) -> String {
    let escaped = text.escape_debug().to_string();
    let cut: String = escaped.chars().take(MAX_SHOWN).collect();
    let more = if cut.len() < escaped.len() { "…" } else { "" };
    format!("{cut}{more}")
}

/// The first `n` of `items`, joined by `sep`, and how many more there are.
fn first(items: &[String], n: usize, sep: &str) -> String {
    let shown = items[..items.len().min(n)].join(sep);
    match items.len().saturating_sub(n) {
        0 => shown,
        more => format!("{shown}{sep}and {more} more"),
    }
}

/// What `delivery.access_list_reminders` needs: Access Lists the role may list.
async fn check_access_lists(client: &TeleportClient, r: &mut Report) {
    match client.access_list_page("").await {
        Ok((lists, next)) => {
            let more = if next.is_empty() { "" } else { " or more" };
            r.pass(
                "access lists",
                format!("may list Access Lists ({}{more}) for review reminders", lists.len()),
            )
        }
        Err(TeleportError::Unimplemented(_)) => r.fail(
            "access lists",
            "not offered by this cluster (Access Lists are a Teleport Enterprise feature): \
             delivery.access_list_reminders sends nothing",
        ),
        Err(TeleportError::AccessDenied(e)) => r.fail(
            "access lists",
            format!("{e}: for delivery.access_list_reminders the role needs `list` and `read` on `access_list`"),
        ),
        Err(e) => r.fail("access lists", e.to_string()),
    }
}

async fn check_mailer(config: &Config, send_test: Option<&str>, r: &mut Report) {
    let what = match &config.mailer {
        MailerConfig::Smtp(s) => format!(
            "SMTP {}:{} ({}{})",
            s.host,
            s.port,
            if s.implicit_tls {
                "implicit TLS".to_owned()
            } else {
                format!("STARTTLS {:?}", s.starttls).to_lowercase()
            },
            if s.username.is_some() { ", AUTH" } else { "" }
        ),
        MailerConfig::Mailgun(m) => format!("Mailgun {} at {} (test mode)", m.domain, m.api_base),
    };
    let mailer = match startup::mailer(config).await {
        Ok(m) => m,
        Err(e) => return r.fail("mailer", format!("{what}: {e}")),
    };
    r.pass("mailer", what);
    let Some(to) = send_test else {
        return;
    };
    let text = format!(
        "This is a test mail from teleport-email, sent by `teleport-email check` at {}.\n\nIf you can read it, Access Request notifications will reach you.",
        rfc3339(SystemTime::now())
    );
    let rendered = RenderedMail {
        subject: "teleport-email test mail".into(),
        html: format!(
            "<p>{}</p>",
            mail::text::html_escape(&text).replace('\n', "<br>")
        ),
        text,
    };
    let mail = OutgoingMail::new(to, rendered, MessageId::generate(), None);
    match mailer.send(&mail).await {
        Ok(id) => r.pass("test mail", format!("sent to {to} (Message-ID <{id}>)")),
        Err(e) => r.fail("test mail", e.to_string()),
    }
}
