//! Reading each section of the file into its validated form.

mod log;
mod mailer;
mod recipients;
mod teleport;

use toml::{Table, Value};

use std::time::Duration;

use super::reader::{Findings, Section};
use super::*;
use crate::address;
use log::read_log;
pub use mailer::permissions_warning;
use mailer::read_mailer;
use recipients::read_recipients;
use teleport::read_teleport;

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
    let (delivery, legacy_recipients) = read_delivery(&mut f, delivery_table);
    let recipients = read_recipients(&mut f, root, legacy_recipients);
    let log_table = table(&mut f, root, "log");
    let log = read_log(&mut f, log_table);
    let metrics_table = table(&mut f, root, "metrics");
    let metrics = read_metrics(&mut f, metrics_table);
    let config = (|| {
        Some(Config {
            teleport: teleport?,
            mailer: mailer?,
            delivery,
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

fn read_delivery(f: &mut Findings, t: &Table) -> (DeliveryConfig, Option<Vec<String>>) {
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
    let notify_requester = s.bool(f, "notify_requester").unwrap_or(false);
    let reminder_interval = s.duration(f, "reminder_interval");
    let reminder_limit = s.integer(f, "reminder_limit", &[]);
    let access_list_reminders = s.bool(f, "access_list_reminders").unwrap_or(false);
    s.finish(f);
    let reminders = read_reminders(f, reminder_interval, reminder_limit);
    if sender.is_empty() {
        f.warn("delivery.sender is not set: mail servers will likely refuse mail without a sender");
    } else if !address::is_mailbox(&sender) {
        f.error(
            "delivery.sender",
            format!("{sender:?} is not an email address (use noreply@example.com or \"Name <noreply@example.com>\")"),
        );
    }
    let delivery = DeliveryConfig {
        sender,
        retry_timeout,
        notify_requester,
        reminders,
        access_list_reminders,
    };
    (delivery, recipients)
}

/// `reminder_interval` and `reminder_limit`: off without an interval.
fn read_reminders(
    f: &mut Findings,
    interval: Option<Duration>,
    limit: Option<i64>,
) -> Option<Reminders> {
    let Some(interval) = interval else {
        if limit.is_some() {
            f.warn("delivery.reminder_limit is set without delivery.reminder_interval: no reminders are sent");
        }
        return None;
    };
    let (shortest, longest) = (
        Duration::from_secs(60),
        Duration::from_secs(366 * 24 * 3600),
    );
    if interval < shortest || interval > longest {
        f.error(
            "delivery.reminder_interval",
            format!("{interval:?} is out of range: between 1m and 8784h (a year)"),
        );
        return None;
    }
    let limit = match limit {
        None => DEFAULT_REMINDER_LIMIT,
        Some(n @ 1..=100) => n as u32,
        Some(n) => {
            f.error(
                "delivery.reminder_limit",
                format!("{n} is out of range: between 1 and 100 reminders per request"),
            );
            return None;
        }
    };
    Some(Reminders { interval, limit })
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
