//! One stage's delivery, in named steps: claim the request, send while renewing the claim,
//! record each recipient's outcome, then finish, wait for another instance, or retry.
//!
//! Exactly once rests on three rules. (1) Nothing is sent without a claim taken by a
//! compare-and-swap that pins every key we read. (2) The claim is a lease: renewed while we send,
//! and no further mail is handed over once it cannot be renewed or is someone else's (see
//! `round.rs`). (3) What was delivered is always recorded, idempotently (progress only grows),
//! and the write is retried until it lands; the claim itself is released or kept only while it
//! is ours.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::plugindata::{Claim, PluginData};
use super::round::{Interrupted, Round, Sent};
use super::stage::{Job, Stage};
use super::store::{FirstGuess, Written};
use super::{Engine, EngineError, now_ms};
use crate::backoff::{Backoff, Retry};
use crate::mail::MailError;

/// How far ahead of our clock another instance's claim may run out and still be believed: the
/// clocks of replicas are assumed to agree this closely (NTP).
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(5);

/// The plugin data to create with the stage's first claim when there is none.
pub(super) struct Fresh {
    pub data: PluginData,
    /// First try writing without reading, expecting no data (a request created moments ago).
    pub guess_absent: bool,
}

/// What claiming a stage came to.
enum Claimed {
    /// Nothing owed in this stage.
    Done,
    /// Another instance holds the request until then (Unix ms).
    Busy(u64),
    /// Ours; the mails owed, and when the claim's expiry was set (its lease runs from then).
    Ours(Vec<Job>, Instant),
}

/// Whose a stored claim is, as far as we are concerned now.
#[derive(Debug, PartialEq, Eq)]
pub enum Holder {
    Nobody,
    Us,
    /// Another live instance, until then (Unix ms).
    Other(u64),
}

/// Reads a stored claim. An expired claim is nobody's; so is one that runs out further ahead
/// than any instance could have written (a skewed clock or a hostile write), lest it park the
/// request for good.
pub fn holder(claim: Option<&Claim>, me: &str, now_ms: u64, lease: Duration) -> Holder {
    let horizon = now_ms.saturating_add((lease + CLOCK_TOLERANCE).as_millis() as u64);
    match claim {
        None => Holder::Nobody,
        Some(c) if c.owner == me => Holder::Us,
        Some(c) if c.until_ms <= now_ms || c.until_ms > horizon => Holder::Nobody,
        Some(c) => Holder::Other(c.until_ms),
    }
}

/// A stage's attempts so far: its retry deadline and backoff, and whether the operator has been
/// told that the mailer itself is refused.
struct Attempts {
    retry: Retry,
    told_operator: bool,
}

/// The failures of a round, sorted by what happens next.
#[derive(Default)]
struct Failures {
    /// The recipient's own, for good (refused address, refused message): recorded, not retried.
    permanent: Vec<(String, MailError)>,
    /// Passing failures, or the mailer's as a whole (credentials, TLS): retried.
    retry: Vec<(String, MailError)>,
}

impl Failures {
    fn sort(jobs: &[Job], sent: &[Sent]) -> Self {
        let mut f = Self::default();
        for (job, s) in jobs.iter().zip(sent) {
            let email = || job.email.clone();
            f.permanent
                .extend(s.refused.iter().map(|e| (email(), e.clone())));
            f.retry
                .extend(s.stopped.iter().map(|e| (email(), e.clone())));
        }
        f
    }

    /// The longest wait a server asked for.
    fn retry_after(&self) -> Option<Duration> {
        self.retry.iter().filter_map(|(_, e)| e.retry_after()).max()
    }

    fn mailer_wide(&self) -> Option<&MailError> {
        self.retry
            .iter()
            .map(|(_, e)| e)
            .find(|e| !e.is_transient())
    }

    fn into_result(self, stage: &'static str, gave_up: bool) -> Result<(), EngineError> {
        let failed = self.permanent.len() + if gave_up { self.retry.len() } else { 0 };
        match self.permanent.into_iter().chain(self.retry).next() {
            Some((_, first)) if failed > 0 => Err(EngineError::Mail {
                stage,
                failed,
                first,
            }),
            _ => Ok(()),
        }
    }
}

impl Engine {
    /// Delivers everything `stage` still owes: claim the request, send, record each recipient's
    /// progress, release. Failures that may pass are retried with backoff for `retry_for`.
    pub(super) async fn run_stage(
        &self,
        id: &str,
        stage: Stage,
        mut fresh: Option<Fresh>,
    ) -> Result<(), EngineError> {
        let p = &self.policy;
        // A reminder is tried once: the next round is its retry, and one held back could arrive
        // after the request was resolved (or hold up the other reminders due).
        let window = match stage {
            Stage::Reminder { .. } => Duration::ZERO,
            _ => p.retry_for,
        };
        let mut attempts = Attempts {
            retry: Retry::new(p.min_backoff, p.max_backoff, window),
            told_operator: false,
        };
        // Another holder is waited for as long as mail is retried, a reminder's too (waiting
        // sends nothing; a reminder whose copy of the request turns out stale is dropped then).
        let waiting = p.retry_for;
        let holder_deadline = Retry::new(p.min_backoff, p.max_backoff, waiting);
        let mut routing_changed = self.routing_changed.subscribe();
        let mut busy = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            if self.stopping.is_cancelled() {
                // Stopping: nothing new is claimed; the next start (or a replica) carries on.
                return Ok(());
            }
            let (jobs, leased_at) = match self.claim(id, &stage, fresh.take()).await? {
                Claimed::Done => return Ok(()),
                Claimed::Busy(until) => {
                    if !self
                        .wait_for_holder(id, until, &mut busy, &holder_deadline)
                        .await
                    {
                        return Ok(());
                    }
                    continue;
                }
                Claimed::Ours(jobs, leased_at) => (jobs, leased_at),
            };
            let mailer = Arc::clone(&self.routing().mailer);
            let round = (self.send_round(id, &stage, mailer.as_ref(), (&jobs, leased_at))).await;
            self.count_and_log(id, &stage, mailer.backend(), &jobs, &round.sent);
            let failures = Failures::sort(&jobs, &round.sent);
            let outcome = (&jobs[..], &round, &failures);
            let Some(wait) = self.settle(id, &stage, outcome, &mut attempts).await? else {
                return failures.into_result(stage.name(), true);
            };
            self.metrics.retry();
            if !self.pause(id, &stage, wait, &mut routing_changed).await {
                return Ok(());
            }
        }
    }

    /// Records a round's outcome and says how long to wait before the next attempt; `None`: no
    /// next attempt (all done, given up, or the rest left to the claim's holder or the next start).
    async fn settle(
        &self,
        id: &str,
        stage: &Stage,
        (jobs, round, failures): (&[Job], &Round, &Failures),
        attempts: &mut Attempts,
    ) -> Result<Option<Duration>, EngineError> {
        let interrupted = round.interrupted;
        let settled = matches!(
            interrupted,
            Some(Interrupted::ClaimTaken | Interrupted::Stopping)
        );
        // More is owed after a failure worth retrying, or a round cut short by a claim we could
        // not confirm. A wait beyond half a lease would let the claim run out.
        let owed = !failures.retry.is_empty() || interrupted.is_some();
        let wait = (owed && !settled)
            .then(|| (attempts.retry).next_wait(failures.retry_after(), self.policy.lease / 2))
            .flatten();
        // A claim we could not confirm is released, not kept for our retry: another replica,
        // whose Auth answers in time, may send meanwhile.
        let keep = wait.is_some() && interrupted != Some(Interrupted::ClaimUnconfirmed);
        self.record_until_landed(id, stage, jobs, &round.sent, keep)
            .await?;
        self.log_failures(id, stage, failures, wait, &mut attempts.told_operator);
        let unsent = (jobs.iter().zip(&round.sent)).any(|(j, s)| s.handled.len() < j.mails.len());
        if let Some(why) = interrupted.filter(|_| settled && unsent) {
            tracing::warn!(request_id = %id, stage = stage.name(), reason = ?why, "Sending stopped early; what was delivered is recorded, the rest is left to the claim's holder or the next start");
        }
        // Mail never handed over (or taken back) for want of a confirmed claim, and not tried
        // again now: said as a failure of its own would be (those are logged above).
        let untried = (jobs.iter().zip(&round.sent))
            .any(|(j, s)| s.stopped.is_none() && s.handled.len() < j.mails.len());
        let stopping = self.stopping.is_cancelled();
        if interrupted.is_some() && !settled && wait.is_none() && untried && !stopping {
            if let Stage::Reminder { round, limit, .. } = stage
                && round >= limit
            {
                // The last round: there is no next one to send it.
                tracing::error!(request_id = %id, stage = stage.name(), "Reminder not sent, and this was the last round: the claim on the request could not be confirmed in time; unless another replica sends it, it is not sent");
            } else if matches!(stage, Stage::Reminder { .. }) {
                // Retried: at the next round, or now by another replica.
                tracing::warn!(request_id = %id, stage = stage.name(), "Reminder not sent: the claim on the request could not be confirmed in time; another replica or the next round sends it");
            } else {
                tracing::error!(request_id = %id, stage = stage.name(), retried_for = ?self.policy.retry_for, "Mail not sent: the claim on the request could not be confirmed in time; giving up until the next reload, restart or reconnect");
            }
        }
        Ok(wait.filter(|_| !settled))
    }

    /// Takes the request for `stage`, unless nothing is owed or another live instance holds it.
    async fn claim(
        &self,
        id: &str,
        stage: &Stage,
        fresh: Option<Fresh>,
    ) -> Result<Claimed, EngineError> {
        let mut outcome = Claimed::Done;
        let first = match &fresh {
            Some(f) if f.guess_absent => FirstGuess::LastWriteOrAbsent,
            _ => FirstGuess::LastWrite,
        };
        let fresh = fresh.map(|f| f.data);
        let written = self
            .store
            .modify(id, first, |old| {
                outcome = Claimed::Done;
                let creating = old.is_none();
                let data = old.or(fresh.as_ref())?;
                let me = &self.policy.instance;
                if let Holder::Other(until) =
                    holder(data.claim.as_ref(), me, now_ms(), self.policy.lease)
                {
                    outcome = Claimed::Busy(until);
                    return None;
                }
                let mut d = stage.begin(id, data)?;
                let jobs = stage.work(&d, &self.summary(id, &d), &self.policy.id_host);
                if jobs.is_empty() {
                    // Nothing owed: still write the stage's start marks (and drop a stale claim).
                    d.claim = None;
                    return (creating || d != *data).then_some(d);
                }
                let leased_at = Instant::now();
                d.claim = Some(self.lease());
                outcome = Claimed::Ours(jobs, leased_at);
                Some(d)
            })
            .await?;
        if let Some(Written { old: None, new }) = &written
            && new.intended.as_ref().is_some_and(|r| r.is_empty())
        {
            tracing::warn!(request_id = %id, "No recipients to send");
        }
        Ok(outcome)
    }

    /// Waits a little for the instance holding the request, polling less and less often.
    /// `false`: stop waiting (shutdown, or the retry deadline passed: the holder owns the work).
    async fn wait_for_holder(
        &self,
        id: &str,
        until_ms: u64,
        busy: &mut Backoff,
        retry: &Retry,
    ) -> bool {
        if self.stopping.is_cancelled() {
            return false;
        }
        if retry.expired() {
            tracing::warn!(request_id = %id, "Another instance has held the request's claim for the whole retry period; leaving the request to it");
            return false;
        }
        // The holder usually finishes long before its lease runs out.
        let left = Duration::from_millis(until_ms.saturating_sub(now_ms()));
        let wait = busy.next_delay().min(left.max(Duration::from_millis(50)));
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.stopping.cancelled() => false,
        }
    }

    /// Extends our claim, recording what the round has delivered so far (so a round cut off
    /// from Auth later does not have it sent again); `false` when the claim is no longer ours.
    pub(super) async fn renew(
        &self,
        id: &str,
        stage: &Stage,
        jobs: &[Job],
        sent: &[Sent],
    ) -> Result<bool, EngineError> {
        self.record(id, stage, jobs, sent, true).await
    }

    /// Drops our claim on the request, if we hold it.
    pub(super) async fn release(&self, id: &str) -> Result<(), EngineError> {
        self.set_own_claim(id, None).await.map(drop)
    }

    /// Replaces our claim with `claim` if it is still ours; `false` when it is not.
    async fn set_own_claim(&self, id: &str, claim: Option<Claim>) -> Result<bool, EngineError> {
        let me = &self.policy.instance;
        let written = self
            .store
            .modify(id, FirstGuess::LastWrite, |old| {
                let d = old?;
                if d.claim.as_ref().is_some_and(|c| &c.owner == me) {
                    let mut d = d.clone();
                    d.claim = claim.clone();
                    Some(d)
                } else {
                    None
                }
            })
            .await?;
        Ok(written.is_some())
    }

    /// [`Self::record`], retried while the Auth Service cannot be reached: what was delivered
    /// must be written, or it would be sent again.
    async fn record_until_landed(
        &self,
        id: &str,
        stage: &Stage,
        jobs: &[Job],
        sent: &[Sent],
        keep: bool,
    ) -> Result<(), EngineError> {
        let p = &self.policy;
        let mut retry = Retry::new(p.min_backoff, p.max_backoff, p.retry_for);
        loop {
            let error = match self.record(id, stage, jobs, sent, keep).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let wait = retry.next_wait(None, p.max_backoff);
            let Some(wait) = wait.filter(|_| !self.stopping.is_cancelled()) else {
                tracing::error!(request_id = %id, stage = stage.name(), error = %error, "Cannot record the mails just delivered; they may be sent again");
                return Err(error);
            };
            tracing::warn!(request_id = %id, stage = stage.name(), error = %error, retry_in = ?wait, "Cannot record the mails just delivered; retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stopping.cancelled() => {}
            }
        }
    }

    /// Writes what the round handled (idempotently: recording twice counts once) and the
    /// recipients' own refusals, and keeps (`keep`: a fresh lease) or releases the claim — the
    /// claim only if it is still ours. `true`: it was ours.
    pub(super) async fn record(
        &self,
        id: &str,
        stage: &Stage,
        jobs: &[Job],
        sent: &[Sent],
        keep: bool,
    ) -> Result<bool, EngineError> {
        let me = &self.policy.instance;
        let mut ours = false;
        self.store
            .modify(id, FirstGuess::LastWrite, |old| {
                ours = false;
                let mut d = old?.clone();
                for (job, s) in jobs.iter().zip(sent) {
                    stage.record(&mut d, job, s.handled.len(), s.first_id.as_ref());
                    // A refused review is counted as handled above; later reviews still go.
                    if !s.refused.is_empty() && !matches!(stage, Stage::Reviews(_)) {
                        d.fail(&job.email, stage.name());
                    }
                }
                if d.claim.as_ref().is_some_and(|c| &c.owner == me) {
                    ours = true;
                    d.claim = keep.then(|| self.lease());
                }
                (Some(&d) != old).then_some(d)
            })
            .await?;
        Ok(ours)
    }

    /// Waits `wait` before the next attempt; a new mailer (config reload) cuts the wait short.
    /// `false`: stopping, the claim is released and the rest left to the next start.
    async fn pause(
        &self,
        id: &str,
        stage: &Stage,
        wait: Duration,
        routing_changed: &mut tokio::sync::watch::Receiver<u64>,
    ) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = routing_changed.changed() => true,
            _ = self.stopping.cancelled() => {
                if let Err(e) = self.release(id).await {
                    tracing::warn!(request_id = %id, error = %e, "Cannot release the claim on the request");
                }
                tracing::warn!(request_id = %id, stage = stage.name(), "Stopping: undelivered mail is left for the next start");
                false
            }
        }
    }

    pub(super) fn lease(&self) -> Claim {
        Claim {
            owner: self.policy.instance.clone(),
            until_ms: now_ms() + self.policy.lease.as_millis() as u64,
        }
    }

    fn count_and_log(
        &self,
        id: &str,
        stage: &Stage,
        backend: &'static str,
        jobs: &[Job],
        sent: &[Sent],
    ) {
        for (job, s) in jobs.iter().zip(sent) {
            for (mail, delivered) in job.mails.iter().zip(&s.handled) {
                self.metrics.mail(backend, stage.name(), *delivered);
                if *delivered {
                    tracing::info!(request_id = %id, email = %job.email, message_id = %mail.message_id, kind = stage.kind(), "Successfully sent");
                }
            }
            if s.stopped.is_some() {
                self.metrics.mail(backend, stage.name(), false);
            }
        }
    }

    fn log_failures(
        &self,
        id: &str,
        stage: &Stage,
        failures: &Failures,
        wait: Option<Duration>,
        told_operator: &mut bool,
    ) {
        let stage = stage.name();
        for (email, e) in &failures.permanent {
            tracing::error!(request_id = %id, email = %email, stage, error = %e, "Mail could not be delivered and will not be retried (permanent failure)");
        }
        let Some(wait) = wait else {
            for (email, e) in &failures.retry {
                if stage == "reminder" {
                    tracing::error!(request_id = %id, email = %email, stage, error = %e, "Reminder could not be delivered; the next round (or a restart) tries again");
                } else {
                    tracing::error!(request_id = %id, email = %email, stage, error = %e, retried_for = ?self.policy.retry_for, "Mail could not be delivered; giving up until the next reload, restart or reconnect");
                }
            }
            return;
        };
        if let Some(e) = failures.mailer_wide().filter(|_| !*told_operator) {
            *told_operator = true;
            tracing::error!(request_id = %id, stage, error = %e, retry_in = ?wait, "The mail server refuses the mailer itself (credentials, TLS or sender): fix the configuration and reload it (SIGHUP); the mail is retried meanwhile");
        }
        for (email, e) in &failures.retry {
            tracing::warn!(request_id = %id, email = %email, stage, error = %e, retry_in = ?wait, "Mail delivery failed; will retry");
        }
    }
}
