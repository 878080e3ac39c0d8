//! Access List review reminders (`delivery.access_list_reminders`): every few hours, the owners of
//! each list whose review is coming due or overdue get one mail naming all their such lists.
//!
//! The facts follow the Slack plugin, which sends the same reminders to Slack: the check runs every
//! 3 hours (first shortly after start), owners include those inherited through nested owner lists,
//! reminders are weekly from the list's notification start and daily once the review date has
//! passed, and when each owner was last reminded is kept in the list's plugin data under
//! `user_notifications`. Unlike the Slack plugin, a reminder is *claimed* there before it is sent
//! (with a time limit, so a replica that stops mid-send leaves it to the next check) and the claim
//! is undone when the mail cannot be delivered, so the next check tries again: replicas and
//! restarts send each reminder once, and a mail server that is down loses none.

mod owners;
mod record;
mod schedule;
mod send;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::address::{email_trait, usable};
use crate::backoff::Retry;
use crate::calendar::rfc3339;
use crate::mail::render::{ListDue, list_reminder};
use crate::mail::{MailError, Mailer, MessageId, OutgoingMail};
use crate::metrics::Metrics;
use crate::teleport::{AccessList, TeleportClient, TeleportError};

use owners::Addresses;
use record::Record;
pub use schedule::{Due, due};

/// How often the lists are checked, as the Slack plugin (each wait shortened by up to a seventh,
/// at random, so replicas drift apart).
pub const CHECK_EVERY: Duration = Duration::from_secs(3 * 3600);

/// How soon after start the first check runs (at random within it).
pub const FIRST_CHECK_WITHIN: Duration = Duration::from_secs(10);

/// How soon a check that failed for a passing reason (Teleport unreachable) is tried again.
const RETRY_FAILED_CHECK: Duration = Duration::from_secs(60);

/// How long a claim holds: the same on every replica whatever its `retry_timeout`, so each can
/// tell a live claim of another from one no replica could have written (see [`CLOCK_TOLERANCE`]).
const LEASE: Duration = Duration::from_secs(30 * 60);

/// A claim's time limit beyond the time its mail is retried for (retries stop this long before
/// the claim runs out).
const LEASE_MARGIN: Duration = Duration::from_secs(300);

/// Compare-and-swap attempts on one list's record before the check gives up on it.
const CAS_ATTEMPTS: u32 = 8;

/// Pages of lists read in one check at most (100 lists a page: far beyond any cluster).
const MAX_PAGES: usize = 10_000;

/// Lists one mail names at most (the earliest due); the rest go in the next check's mail.
const MAX_LISTS_PER_MAIL: usize = 50;

/// How far a claim may run past our own lease before it is taken for a clock gone wrong (or a
/// hostile write) and ignored, as the request engine does.
const CLOCK_TOLERANCE: Duration = Duration::from_secs(60);

/// What the reminders need besides the client and the mailer.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The plugin's name in the plugin data (`email`).
    pub plugin: &'static str,
    /// The cluster's name, for the mail.
    pub cluster: String,
    /// `https://<proxy>` of the Web UI, for links; `None` when unknown.
    pub web_base: Option<String>,
    /// The right-hand side of Message-IDs.
    pub id_host: String,
    /// How long a mail that failed for a passing reason is retried.
    pub retry_for: Duration,
    /// How often the lists are checked ([`CHECK_EVERY`]).
    pub every: Duration,
    /// How soon the first check runs ([`FIRST_CHECK_WITHIN`]).
    pub first_within: Duration,
}

/// Where the mail goes: whatever mailer is in use when a reminder is sent (a reload may replace it).
pub type MailerSource = Arc<dyn Fn() -> Arc<dyn Mailer> + Send + Sync>;

/// The reminders' task.
pub struct ListReminders {
    client: TeleportClient,
    mailer: MailerSource,
    metrics: Arc<Metrics>,
    settings: Settings,
}

/// Why a check ended early.
#[derive(Debug, thiserror::Error)]
enum CheckError {
    /// The cluster has no Access Lists (the service is Teleport Enterprise's).
    #[error("{0}")]
    NotOffered(String),
    #[error(transparent)]
    Teleport(#[from] TeleportError),
    /// Stopped (shutdown) before the check was done.
    #[error("stopped")]
    Stopped,
    /// Some lists could not be read or claimed, an owner's address could not be read for a
    /// passing reason, or an owner had too many lists for one mail.
    #[error("{failed} Access List reminder(s) could not be handled now ({sent} mail(s) sent)")]
    Incomplete { failed: usize, sent: usize },
}

/// A list whose review is due now, and who owns it.
#[derive(Debug)]
struct DueList {
    list: AccessList,
    due: Due,
    /// Every owner (nested lists expanded), mailable or not.
    owners: BTreeSet<String>,
    /// What the mail says of it.
    item: ListDue,
}

/// What one address is owed: list name → the list and which of its owners (with that address)
/// are owed a reminder.
type Owed = BTreeMap<String, (Arc<DueList>, Vec<String>)>;

/// One owner's reminder about one list, claimed in that list's record.
#[derive(Debug, Clone)]
struct Claim {
    list: Arc<DueList>,
    user: String,
    /// What was written: the reminder time and the claim's limit, as stored.
    reminded_at: String,
    held_until: String,
    /// The owner's last reminder before the claim, put back if the mail cannot be sent.
    previous: Option<String>,
}

/// Whether `user` is owed a reminder for a list due as `due`, as its `record` stands at `now`:
/// `None` when not (reminded this period, or another replica is sending it now), else whether it
/// is owed because a claim ran out (its replica stopped mid-send).
/// A claim that runs beyond `horizon` (further than any lease of ours) is not believed.
fn owes(
    record: &Record,
    due: &Due,
    user: &str,
    now: SystemTime,
    horizon: SystemTime,
) -> Option<bool> {
    match record.held_until(user) {
        Some(until) if until > now && until <= horizon => None,
        Some(_) => Some(true),
        None => due.owed_after(record.last_reminded(user)).then_some(false),
    }
}

impl ListReminders {
    pub fn new(
        client: TeleportClient,
        mailer: MailerSource,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        Self {
            client,
            mailer,
            metrics,
            settings,
        }
    }

    /// Checks the lists until `stop` is cancelled, or until the cluster shows it has none.
    pub async fn run(self, stop: CancellationToken) {
        let mut wait = random_within(self.settings.first_within);
        let mut refused = false;
        // Checks in a row that could not finish: each waits twice as long as the one before (a
        // minute, then two, …, up to the regular interval), so a failure that lasts does not
        // have every list read every minute.
        let mut unfinished: u32 = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = seventh_jitter(self.settings.every);
            let result = self.check(&stop).await;
            unfinished = match &result {
                Err(CheckError::Incomplete { .. } | CheckError::Teleport(_)) => {
                    unfinished.saturating_add(1)
                }
                _ => 0,
            };
            let soon = RETRY_FAILED_CHECK
                .saturating_mul(1 << unfinished.saturating_sub(1).min(16))
                .min(self.settings.every);
            match result {
                Ok(sent) => {
                    refused = false;
                    tracing::debug!(
                        reminders = sent,
                        "Checked the Access Lists for reviews coming due"
                    );
                }
                Err(CheckError::Stopped) => return,
                Err(CheckError::NotOffered(e)) => {
                    tracing::info!(error = %e, "This cluster does not offer Access Lists (a Teleport Enterprise feature): no Access List review reminders are sent");
                    return;
                }
                Err(CheckError::Teleport(TeleportError::AccessDenied(e))) => {
                    if !std::mem::replace(&mut refused, true) {
                        tracing::warn!(error = %e, "Cannot list Access Lists for review reminders: the plugin's role needs `list` and `read` on `access_list`; trying again at every check");
                    }
                }
                Err(e @ CheckError::Incomplete { .. }) => {
                    tracing::warn!(error = %e, retry_in = ?soon, "Access Lists checked in part; trying again");
                    wait = seventh_jitter(soon);
                }
                Err(CheckError::Teleport(e)) => {
                    tracing::warn!(error = %e, retry_in = ?soon, "Cannot check the Access Lists for reviews coming due; trying again");
                    wait = seventh_jitter(soon);
                }
            }
        }
    }

    /// How long a claim of ours holds.
    fn lease(&self) -> Duration {
        LEASE
    }

    /// One check now, as the task makes every few hours (tests run replicas' checks side by side).
    /// Returns how many mails were sent, or why the check could not be made.
    pub async fn check_once(&self, stop: &CancellationToken) -> Result<usize, String> {
        self.check(stop).await.map_err(|e| e.to_string())
    }

    /// One check of every list: finds the reminders owed now, then for each owner's address in
    /// turn claims theirs, sends one mail and settles the claims (so a claim only ever waits for
    /// its own mail). Returns how many mails were sent.
    async fn check(&self, stop: &CancellationToken) -> Result<usize, CheckError> {
        let now = SystemTime::now();
        // Address (compared without regard to case) → the lists it is owed a reminder of.
        let mut owed: BTreeMap<String, (String, Owed)> = BTreeMap::new();
        let mut addresses = Addresses::default();
        let mut failed = 0;
        let mut token = String::new();
        let mut seen = HashSet::new();
        for _ in 0..MAX_PAGES {
            let page = tokio::select! {
                _ = stop.cancelled() => return Err(CheckError::Stopped),
                page = self.client.access_list_page(&token) => page,
            };
            let (lists, next) = match page {
                Err(TeleportError::Unimplemented(e)) => return Err(CheckError::NotOffered(e)),
                page => page?,
            };
            for list in lists {
                let Some(due) = due(&list, now) else {
                    continue;
                };
                let name = list.name.clone();
                let read = tokio::select! {
                    _ = stop.cancelled() => return Err(CheckError::Stopped),
                    read = self.owed(list, due, now, &mut addresses) => read,
                };
                match read {
                    Ok((list, users)) => {
                        for (user, address) in users {
                            let key = address.to_ascii_lowercase();
                            let (_, per_list) = owed.entry(key).or_insert((address, Owed::new()));
                            let entry = per_list
                                .entry(name.clone())
                                .or_insert_with(|| (list.clone(), Vec::new()));
                            entry.1.push(user);
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        tracing::warn!(access_list = %name.escape_debug(), error = %e, "Cannot read who owes a review reminder for an Access List; trying again shortly");
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            if !seen.insert(next.clone()) {
                tracing::warn!(token = %next.escape_debug(), "Teleport's listing of Access Lists came back to a page it had given already; the lists after it are checked next time");
                break;
            }
            token = next;
        }
        let mut sent = 0;
        for (address, lists) in owed.into_values() {
            if stop.is_cancelled() {
                break;
            }
            // The earliest due first; a mail names at most MAX_LISTS_PER_MAIL, the rest wait for
            // the next check (soon).
            let mut lists: Vec<_> = lists.into_values().collect();
            lists.sort_by(|a, b| (a.0.due.by, &a.0.list.name).cmp(&(b.0.due.by, &b.0.list.name)));
            if lists.len() > MAX_LISTS_PER_MAIL {
                failed += lists.len() - MAX_LISTS_PER_MAIL;
                lists.truncate(MAX_LISTS_PER_MAIL);
            }
            let mut claims = Vec::new();
            for (list, users) in &lists {
                // Claimed now, just before this address's mail: its claim waits for no other mail.
                match self.claim(list, users, SystemTime::now()).await {
                    Ok(claimed) => claims.extend(claimed),
                    Err(e) => {
                        failed += 1;
                        tracing::warn!(access_list = %list.list.name.escape_debug(), error = %e, "Cannot claim the review reminders of an Access List; trying again shortly");
                    }
                }
            }
            if claims.is_empty() {
                continue;
            }
            // A mail that failed was retried for `retry_timeout` (then an ERROR); it is owed
            // again at the next regular check, as a request's mail waits for the next restart.
            if self.send(&address, claims, stop).await.is_ok() {
                sent += 1;
            }
        }
        if stop.is_cancelled() {
            return Err(CheckError::Stopped);
        }
        failed += addresses.failed;
        match failed {
            0 => Ok(sent),
            failed => Err(CheckError::Incomplete { failed, sent }),
        }
    }

    /// The owners of `list` (due as `due`) owed a reminder now, with their addresses: read from
    /// its record, without writing.
    async fn owed(
        &self,
        list: AccessList,
        due: Due,
        now: SystemTime,
        addresses: &mut Addresses,
    ) -> Result<(Arc<DueList>, Vec<(String, String)>), TeleportError> {
        let owners = match self.client.access_list_owners(&list.name).await {
            Ok(owners) => owners,
            // Before nested lists the owners are the list's own.
            Err(TeleportError::Unimplemented(_)) => list.owners.clone(),
            Err(e) => return Err(e),
        };
        let mut mailable = Vec::new();
        for owner in &owners {
            if let Some(address) = addresses.of(&self.client, owner).await {
                mailable.push((owner.clone(), address));
            }
        }
        let item =
            ListDue {
                name: list.name.clone(),
                title: list.title.clone(),
                by: due.by,
                overdue_days: due.overdue_days,
                link: self.settings.web_base.as_ref().map(|base| {
                    format!("{base}/web/accesslists/{}#review", path_segment(&list.name))
                }),
            };
        let due_list = Arc::new(DueList {
            owners: owners.into_iter().collect(),
            list,
            due,
            item,
        });
        if mailable.is_empty() {
            tracing::debug!(access_list = %due_list.list.name.escape_debug(), "No owner of this Access List can be mailed");
            return Ok((due_list, mailable));
        }
        let name = &due_list.list.name;
        let data = self
            .client
            .list_plugin_data(name, self.settings.plugin)
            .await?;
        let (record, problem) = Record::read(name, data.as_ref());
        if let Some(problem) = problem {
            tracing::warn!(error = %problem, "Replacing plugin data that cannot be read; the list's owners are reminded again");
        }
        let horizon = now + self.lease() + CLOCK_TOLERANCE;
        mailable.retain(|(user, _)| owes(&record, &due_list.due, user, now, horizon).is_some());
        Ok((due_list, mailable))
    }
}

/// `name` for a URL path: unreserved characters as they are, the rest percent-encoded.
fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `d`, shortened by up to a seventh at random.
fn seventh_jitter(d: Duration) -> Duration {
    d - random_within(d / 7)
}

/// A random duration up to `d`.
fn random_within(d: Duration) -> Duration {
    let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_names_are_safe_in_a_link() {
        assert_eq!(path_segment("ops-team_1.x~"), "ops-team_1.x~");
        assert_eq!(path_segment("a/b c?#\"<"), "a%2Fb%20c%3F%23%22%3C");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn jitter_stays_within_a_seventh() {
        for _ in 0..100 {
            let d = seventh_jitter(CHECK_EVERY);
            assert!(
                d <= CHECK_EVERY && d >= CHECK_EVERY - CHECK_EVERY / 7,
                "{d:?}"
            );
        }
        assert_eq!(random_within(Duration::ZERO), Duration::ZERO);
    }
}
