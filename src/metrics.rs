//! Counters the daemon keeps about itself, and the small HTTP endpoint that serves them:
//! `/metrics` (Prometheus text), `/healthz` (the process is alive) and `/readyz` (the watch is
//! initialised and the mailer's last attempt succeeded).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

mod endpoint;

pub use endpoint::{Listener, ServeLimits, bind, serve, serve_with};

/// Everything counted, shared by the watcher, the engine and the endpoint.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    events: Mutex<BTreeMap<&'static str, u64>>,
    /// (backend, stage, outcome) → count.
    mails: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
    retries: AtomicU64,
    reconnects: AtomicU64,
    /// Milliseconds since `started` at the last event; 0 before the first.
    last_event_ms: AtomicU64,
    identity_expiry: AtomicU64,
    ready: AtomicBool,
    mailer_ok: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            events: Mutex::default(),
            mails: Mutex::default(),
            retries: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            last_event_ms: AtomicU64::new(0),
            identity_expiry: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            mailer_ok: AtomicBool::new(true),
        }
    }
}

impl Metrics {
    /// A watch event of `kind` (`init`, `put`, `delete`, `other`) arrived.
    pub fn event(&self, kind: &'static str) {
        *self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += 1;
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_event_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// A mail was sent (`ok`) or failed.
    pub fn mail(&self, backend: &'static str, stage: &'static str, ok: bool) {
        let outcome = if ok { "sent" } else { "failed" };
        *self
            .mails
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((backend, stage, outcome))
            .or_default() += 1;
        self.mailer_ok.store(ok, Ordering::Relaxed);
    }

    /// A failed delivery round will be retried.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// The watch had to be re-established.
    pub fn reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the watch is initialised.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// When the client certificate in use expires.
    pub fn set_identity_expiry(&self, at: SystemTime) {
        let secs = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.identity_expiry.store(secs, Ordering::Relaxed);
    }

    /// Ready to serve: watch initialised and the last mail attempt succeeded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.mailer_ok.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        self.render_events(&mut s);
        self.render_mails(&mut s);
        for (name, kind, text, value) in self.scalars() {
            help(&mut s, name, kind, text);
            let _ = writeln!(s, "{name} {value}");
        }
        s
    }

    fn render_events(&self, s: &mut String) {
        let events = self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        help(
            s,
            "teleport_email_events_total",
            "counter",
            "Watch events received, by kind.",
        );
        for (kind, n) in &events {
            let _ = writeln!(s, "teleport_email_events_total{{kind=\"{kind}\"}} {n}");
        }
    }

    /// One counter for sent mails and one for failed ones, each by backend and stage.
    fn render_mails(&self, s: &mut String) {
        let mails = self.mails.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (name, wanted, text) in [
            (
                "teleport_email_mails_sent_total",
                "sent",
                "Mails accepted by the mail server, by backend and stage.",
            ),
            (
                "teleport_email_mails_failed_total",
                "failed",
                "Mail attempts that failed, by backend and stage.",
            ),
        ] {
            help(s, name, "counter", text);
            for ((backend, stage, outcome), n) in &mails {
                if *outcome == wanted {
                    let _ = writeln!(s, "{name}{{backend=\"{backend}\",stage=\"{stage}\"}} {n}");
                }
            }
        }
    }

    /// The unlabelled metrics: (name, type, help, value).
    fn scalars(&self) -> [(&'static str, &'static str, &'static str, String); 5] {
        let last = self.last_event_ms.load(Ordering::Relaxed);
        let since = self.started.elapsed().as_secs_f64() - last as f64 / 1000.0;
        [
            (
                "teleport_email_retries_total",
                "counter",
                "Delivery rounds retried after a transient failure.",
                self.retries.load(Ordering::Relaxed).to_string(),
            ),
            (
                "teleport_email_watch_reconnects_total",
                "counter",
                "Times the watch on access requests was re-established.",
                self.reconnects.load(Ordering::Relaxed).to_string(),
            ),
            (
                "teleport_email_seconds_since_last_event",
                "gauge",
                "Seconds since the last watch event (since start before the first).",
                format!("{since:.3}"),
            ),
            (
                "teleport_email_identity_expiry_timestamp_seconds",
                "gauge",
                "When the client certificate in use expires (Unix time).",
                self.identity_expiry.load(Ordering::Relaxed).to_string(),
            ),
            (
                "teleport_email_ready",
                "gauge",
                "1 when the watch is initialised and the mailer is healthy.",
                u8::from(self.is_ready()).to_string(),
            ),
        ]
    }
}

fn help(s: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(s, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole exposition, line by line; the one clock-dependent value is masked.
    #[test]
    fn render_is_the_prometheus_text_in_a_fixed_order() {
        let m = Metrics::default();
        m.event("put");
        m.event("init");
        m.event("put");
        m.mail("smtp", "new", true);
        m.mail("mailgun", "resolved", false);
        m.mail("smtp", "new", true);
        m.retry();
        m.reconnect();
        m.reconnect();
        m.set_identity_expiry(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
        );
        m.set_ready(true);
        let text: Vec<String> = m
            .render()
            .lines()
            .map(|l| match l.split_once(' ') {
                Some(("teleport_email_seconds_since_last_event", _)) => {
                    "teleport_email_seconds_since_last_event <masked>".to_owned()
                }
                _ => l.to_owned(),
            })
            .collect();
        let expected = "\
# HELP teleport_email_events_total Watch events received, by kind.
# TYPE teleport_email_events_total counter
teleport_email_events_total{kind=\"init\"} 1
teleport_email_events_total{kind=\"put\"} 2
# HELP teleport_email_mails_sent_total Mails accepted by the mail server, by backend and stage.
# TYPE teleport_email_mails_sent_total counter
teleport_email_mails_sent_total{backend=\"smtp\",stage=\"new\"} 2
# HELP teleport_email_mails_failed_total Mail attempts that failed, by backend and stage.
# TYPE teleport_email_mails_failed_total counter
teleport_email_mails_failed_total{backend=\"mailgun\",stage=\"resolved\"} 1
# HELP teleport_email_retries_total Delivery rounds retried after a transient failure.
# TYPE teleport_email_retries_total counter
teleport_email_retries_total 1
# HELP teleport_email_watch_reconnects_total Times the watch on access requests was re-established.
# TYPE teleport_email_watch_reconnects_total counter
teleport_email_watch_reconnects_total 2
# HELP teleport_email_seconds_since_last_event Seconds since the last watch event (since start before the first).
# TYPE teleport_email_seconds_since_last_event gauge
teleport_email_seconds_since_last_event <masked>
# HELP teleport_email_identity_expiry_timestamp_seconds When the client certificate in use expires (Unix time).
# TYPE teleport_email_identity_expiry_timestamp_seconds gauge
teleport_email_identity_expiry_timestamp_seconds 1800000000
# HELP teleport_email_ready 1 when the watch is initialised and the mailer is healthy.
# TYPE teleport_email_ready gauge
teleport_email_ready 1";
        assert_eq!(text, expected.lines().collect::<Vec<_>>());
    }
}
