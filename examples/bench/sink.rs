//! Where the mails land: the in-process SMTP receiver (with AUTH, which the original needs), the
//! Mailgun stand-in or Postfix's `smtp-sink`, and what was accepted there, reduced to (request,
//! recipient, when).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use teleport_email::testkit::mailgun::MailgunStandIn;
use teleport_email::testkit::postfix::SmtpSink;
use teleport_email::testkit::smtp::{ReceivedMail, SmtpReceiver};

pub const SMTP_USER: &str = "bench";
pub const SMTP_PASSWORD: &str = "bench-password";

/// One accepted mail.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub request: String,
    pub rcpt: String,
    pub at: Instant,
}

pub enum Sink {
    Smtp(SmtpReceiver),
    Mailgun(MailgunStandIn),
    /// Postfix's `smtp-sink`, dumping every message (no AUTH).
    Postfix(SmtpSink),
}

impl Sink {
    pub async fn smtp() -> anyhow::Result<Self> {
        let receiver = SmtpReceiver::builder()
            .auth(SMTP_USER, SMTP_PASSWORD)
            .start()
            .await?;
        Ok(Self::Smtp(receiver))
    }

    pub async fn mailgun() -> anyhow::Result<Self> {
        Ok(Self::Mailgun(MailgunStandIn::start().await?))
    }

    /// The receiver itself (our SMTP receiver only).
    pub fn receiver(&self) -> Option<&SmtpReceiver> {
        match self {
            Self::Smtp(r) => Some(r),
            Self::Mailgun(_) | Self::Postfix(_) => None,
        }
    }

    /// Mails accepted so far, counted without reading them.
    pub fn count(&self) -> usize {
        match self {
            Self::Smtp(r) => r.stats().messages,
            Self::Mailgun(m) => m.deliveries().len(),
            Self::Postfix(s) => s.completed().len(),
        }
    }

    /// Waits until `n` mails were accepted; false on timeout.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        match self {
            Self::Smtp(r) => r.wait_for(n, timeout).await.is_ok(),
            Self::Mailgun(m) => m.wait_for_deliveries(n, timeout).await.is_ok(),
            Self::Postfix(s) => s.wait_for(n, timeout).await,
        }
    }

    /// Every mail accepted so far. smtp-sink's times are the moments its counter grew, given to
    /// its mails in no particular order: right for a burst, whose figures (the last time, the
    /// quantiles from one common start) depend only on the set of times.
    pub fn accepted(&self) -> Vec<Accepted> {
        match self {
            Self::Smtp(r) => r
                .messages()
                .iter()
                .map(|m| Accepted {
                    request: request_id(&subject_of(m)),
                    rcpt: m.rcpt_to.join(","),
                    at: m.received_at,
                })
                .collect(),
            Self::Mailgun(m) => m
                .deliveries()
                .iter()
                .map(|d| Accepted {
                    request: request_id(d.field("subject").unwrap_or_default()),
                    rcpt: d.fields_named("to").join(","),
                    at: d.received_at,
                })
                .collect(),
            Self::Postfix(s) => {
                let mails = s.mails().unwrap_or_else(|e| {
                    eprintln!("bench: cannot read smtp-sink's dump: {e}");
                    Vec::new()
                });
                mails
                    .iter()
                    .zip(s.completed())
                    .map(|(m, at)| Accepted {
                        request: request_id(&subject(&m.data)),
                        rcpt: m.rcpt_to.join(","),
                        at,
                    })
                    .collect()
            }
        }
    }
}

pub fn subject_of(mail: &ReceivedMail) -> String {
    subject(&mail.data)
}

fn subject(data: &[u8]) -> String {
    mail_parser::MessageParser::default()
        .parse_headers(data)
        .and_then(|m| m.subject().map(str::to_owned))
        .unwrap_or_default()
}

/// The request id at the end of "<cluster> Role Request <id>".
pub fn request_id(subject: &str) -> String {
    subject
        .rsplit("Role Request ")
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// What one phase delivered, against what it should have.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub expected: usize,
    pub lost: usize,
    pub duplicates: usize,
    /// Mails to recipients nobody asked for.
    pub unexpected: usize,
    /// The last first-copy acceptance.
    pub last: Option<Instant>,
    /// Creation of the request → acceptance, one per (request, recipient), sorted.
    pub latencies: Vec<Duration>,
}

impl Tally {
    /// Counts `accepted` against `requests` (id → creation), each owed a mail to every one of
    /// `recipients`. Mails about other requests are ignored.
    pub fn of(
        accepted: &[Accepted],
        requests: &HashMap<String, Instant>,
        recipients: &[&str],
    ) -> Self {
        let mut seen = HashSet::new();
        let mut t = Tally {
            expected: requests.len() * recipients.len(),
            ..Self::default()
        };
        for a in accepted {
            let Some(created) = requests.get(&a.request) else {
                continue;
            };
            if !recipients.contains(&a.rcpt.as_str()) {
                t.unexpected += 1;
                continue;
            }
            if !seen.insert((a.request.clone(), a.rcpt.clone())) {
                t.duplicates += 1;
                continue;
            }
            t.last = t.last.max(Some(a.at));
            t.latencies.push(a.at.saturating_duration_since(*created));
        }
        t.lost = t.expected - seen.len();
        t.latencies.sort();
        t
    }

    pub fn delivered(&self) -> usize {
        self.latencies.len()
    }

    pub fn correct(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.unexpected == 0
    }

    /// The `q`-quantile (nearest rank) of the latencies.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let rank =
            ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        Some(self.latencies[rank - 1])
    }
}
