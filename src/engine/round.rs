//! One round of sending under a claim: every recipient's mails handed to the mailer while the
//! claim is renewed, and what each send came to.
//!
//! The rules this rests on:
//! - A mail handed to the mailer may go out even if we stop waiting for it (an SMTP worker has
//!   it), so once handed over it is waited for and its outcome recorded; what stops on a lost
//!   claim, a failed renewal or a shutdown is the *handing over* of further mails.
//! - No mail is handed over in the last third of a lease that no renewal has confirmed (nor
//!   under a claim confirmed that late), so the mails in flight can finish while the claim is
//!   still ours. When it may have run out, or is found taken, the mails the mailer has not
//!   started on are withdrawn (another instance may send them now); those it has started go
//!   out whatever we do, so they are still waited for and recorded.
//! - A renewal never blocks the sends: it runs beside them, with a deadline of its own, and
//!   records what was delivered so far, so losing Auth later costs at most what was sent since.
//!   At a stop one goes at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use super::stage::{Job, Stage};
use super::{Engine, EngineError};
use crate::mail::{MailError, Mailer, MessageId};

/// What one recipient's job came to.
#[derive(Debug, Default, Clone)]
pub(super) struct Sent {
    /// The mails done with, in order: `true` delivered, `false` refused for good on its own.
    pub handled: Vec<bool>,
    /// The Message-ID of the job's first mail, when it was delivered (it starts a thread).
    pub first_id: Option<MessageId>,
    /// Refusals that belong to one message (recorded, not retried).
    pub refused: Vec<MailError>,
    /// What stopped the job before its end: a failure worth another attempt.
    pub stopped: Option<MailError>,
}

/// Why a round stopped handing mails over before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Interrupted {
    /// Another instance holds the claim now.
    ClaimTaken,
    /// The claim could not be renewed (Auth unreachable or slow): it may run out.
    ClaimUnconfirmed,
    /// Shutdown.
    Stopping,
}

/// A round's outcome: per job (in order) what it came to, and why it was cut short if it was.
pub(super) struct Round {
    pub sent: Vec<Sent>,
    pub interrupted: Option<Interrupted>,
}

/// How long mails already started are waited for once the claim may be lost, for a mailer that
/// would never answer: both have deadlines of their own far shorter (SMTP: the message and its
/// reply, 10 s each; Mailgun: 10 s the request). Given up, such a mail may be sent again.
const STARTED_MAIL_WAIT: Duration = Duration::from_secs(120);

type Renewal<'a> = Pin<Box<dyn Future<Output = Option<Result<bool, EngineError>>> + Send + 'a>>;

impl Engine {
    /// Sends every job while renewing the claim (see the module's rules). On shutdown, what was
    /// delivered so far is recorded at once, so a forced exit does not send it again.
    pub(super) async fn send_round(
        &self,
        id: &str,
        stage: &Stage,
        mailer: &dyn Mailer,
        (jobs, leased_at): (&[Job], Instant),
    ) -> Round {
        let (hand_over, withdraw) = (CancellationToken::new(), CancellationToken::new());
        let tokens = (&hand_over, &withdraw);
        let mut watch = Watch::new(id, Lease::new(leased_at, self.policy.lease), tokens);
        // Each job's outcome so far, mail by mail: a renewal records it as it stands.
        let progress = Progress(Mutex::new(vec![Sent::default(); jobs.len()]));
        let progress = &progress;
        let send = |(i, job)| async move { send_job(mailer, job, tokens, (progress, i)).await };
        let mut sends: FuturesUnordered<_> = jobs.iter().enumerate().map(send).collect();
        let mut renewal: Option<(Instant, Renewal<'_>)> = None;
        loop {
            let lease = &watch.lease;
            tokio::select! {
                // A stop is seen before any mail is handed over.
                biased;
                _ = self.stopping.cancelled(), if watch.interrupted != Some(Interrupted::Stopping) => {
                    // A renewal goes now, in place of one under way.
                    renewal = None;
                    watch.stop();
                }
                next = sends.next() => if next.is_none() {
                    break;
                },
                _ = sleep_until(watch.renewal_due()), if renewal.is_none() && watch.renewing() => {
                    watch.record_now = false;
                    let (every, sent) = (lease.every, progress.now());
                    let renew = async move {
                        timeout(every, self.renew(id, stage, jobs, &sent)).await.ok()
                    };
                    renewal = Some((Instant::now(), Box::pin(renew)));
                }
                (started, outcome) = poll_renewal(&mut renewal) => {
                    renewal = None;
                    watch.renewed(id, started, outcome);
                }
                _ = sleep_until(lease.held_until - lease.every), if !hand_over.is_cancelled() => {
                    tracing::warn!(request_id = %id, "The claim on the request was not renewed in time; no further mail is handed over under it");
                    watch.give_up(false);
                }
                _ = sleep_until(lease.held_until), if watch.last_wait.is_none() => watch.give_up(true),
                _ = sleep_until(watch.last_wait.unwrap_or(lease.held_until)), if watch.last_wait.is_some() => {
                    tracing::error!(request_id = %id, waited = ?STARTED_MAIL_WAIT, "The mailer has not finished the mails it was sending; they are not recorded and may be sent again");
                    break;
                }
            }
        }
        drop(sends);
        Round {
            sent: progress.now(),
            interrupted: watch.interrupted,
        }
    }
}

/// What a round knows of its claim, and what it has decided from it.
struct Watch {
    lease: Lease,
    interrupted: Option<Interrupted>,
    /// Cancelled: no further mail is handed over.
    hand_over: CancellationToken,
    /// Cancelled: mail the mailer has not started on is taken back.
    withdraw: CancellationToken,
    /// Set once mail is withdrawn: the end of the wait for the mail already started.
    last_wait: Option<Instant>,
    /// Stopping: the next renewal goes at once, recording what was delivered so far.
    record_now: bool,
    /// While stopping: a renewal failed, so the claim may run out; no more are tried.
    in_doubt: bool,
}

impl Watch {
    fn new(id: &str, lease: Lease, tokens: (&CancellationToken, &CancellationToken)) -> Self {
        let (hand_over, withdraw) = tokens;
        let mut interrupted = None;
        if Instant::now() >= lease.next_renewal {
            // The claim was confirmed only when its first renewal was due (Auth answered a third
            // of a lease late): mail handed over now could still be going out when the lease
            // runs out, as the renewal would be judged failed a third later. Nothing is sent.
            tracing::warn!(request_id = %id, "The claim on the request was confirmed too late to send under it (the Auth Service answered slowly)");
            interrupted = Some(Interrupted::ClaimUnconfirmed);
            hand_over.cancel();
        }
        Self {
            lease,
            interrupted,
            hand_over: hand_over.clone(),
            withdraw: withdraw.clone(),
            last_wait: None,
            record_now: false,
            in_doubt: false,
        }
    }

    /// The claim goes on being renewed while a mail is in flight, however long the exit waits
    /// for it, so no other instance sends it meanwhile; the first renewal records what was
    /// delivered, so that a forced exit does not send it again.
    fn stop(&mut self) {
        self.interrupted = Some(Interrupted::Stopping);
        self.hand_over.cancel();
        self.record_now = true;
    }

    fn renewal_due(&self) -> Instant {
        match self.record_now {
            true => Instant::now(),
            false => self.lease.next_renewal,
        }
    }

    /// Whether the claim is still renewed: as long as a mail may be in flight, unless it is
    /// known to be someone else's or, while stopping, a renewal failed. A round that stopped
    /// handing mail over (the claim was not confirmed in time) goes on renewing, so the mail
    /// it has in flight stays under a claim once Auth answers again.
    fn renewing(&self) -> bool {
        self.interrupted != Some(Interrupted::ClaimTaken) && !self.in_doubt
    }

    fn renewed(&mut self, id: &str, started: Instant, outcome: Option<Result<bool, EngineError>>) {
        let Some(why) = self.lease.renewed(id, started, outcome) else {
            return;
        };
        // While stopping the round stays a stop (its claim is released, not kept for a retry);
        // the wait for the mail in flight ends with the claim.
        match self.interrupted {
            Some(Interrupted::Stopping) => self.in_doubt = true,
            // Known taken outweighs not confirmed in time: no more renewals, and settle tells
            // it as another's claim.
            _ if why == Interrupted::ClaimTaken => self.interrupted = Some(why),
            _ => {
                self.interrupted.get_or_insert(why);
            }
        }
        self.hand_over.cancel();
        if why == Interrupted::ClaimTaken {
            // Its holder sends them now.
            self.give_up(true);
        }
    }

    /// No renewal has confirmed the lease beyond the margin kept for the mail in flight: no
    /// more is handed over. `withdraw`: the claim may be someone else's now, so what the
    /// mailer has not started is taken back; what it has is waited for, to be recorded.
    fn give_up(&mut self, withdraw: bool) {
        self.interrupted
            .get_or_insert(Interrupted::ClaimUnconfirmed);
        self.hand_over.cancel();
        if withdraw {
            self.withdraw.cancel();
            (self.last_wait).get_or_insert(Instant::now() + STARTED_MAIL_WAIT);
        }
    }
}

/// Our claim's lease during a round: until when it is ours for sure, and when to renew it.
struct Lease {
    length: Duration,
    every: Duration,
    held_until: Instant,
    next_renewal: Instant,
    /// The last renewal failed (its WARN said so).
    failing: bool,
}

impl Lease {
    /// A lease of `length` written as of `since` (when its expiry was set, not when the write
    /// was answered: the stored claim runs out at `since + length`), renewed every third of it.
    fn new(since: Instant, length: Duration) -> Self {
        Self {
            length,
            every: length / 3,
            held_until: since + length,
            next_renewal: since + length / 3,
            failing: false,
        }
    }

    /// Takes a renewal's outcome (`None`: it timed out); says why to stop handing mail over,
    /// if it is time to: the claim is someone else's, or could not be confirmed in time.
    fn renewed(
        &mut self,
        id: &str,
        started: Instant,
        outcome: Option<Result<bool, EngineError>>,
    ) -> Option<Interrupted> {
        // A failure is tried again soon: the next renewal must land before the margin.
        self.next_renewal = Instant::now() + self.every / 5;
        match outcome {
            // The lease runs from when the renewal was sent, not from when it was answered, and
            // so does the next renewal (one answered late must not push it past the margin).
            Some(Ok(true)) => {
                self.held_until = started + self.length;
                self.next_renewal = started + self.every;
                self.failing = false;
            }
            Some(Ok(false)) => return Some(Interrupted::ClaimTaken),
            failed => {
                let why = failed.and_then(Result::err).map(|e| e.to_string());
                let why = why.as_deref().unwrap_or("timed out");
                // Said once until a renewal lands again (retries come every few seconds).
                match std::mem::replace(&mut self.failing, true) {
                    false => {
                        tracing::warn!(request_id = %id, error = why, "Cannot renew the claim on the request; trying again")
                    }
                    true => {
                        tracing::debug!(request_id = %id, error = why, "Cannot renew the claim on the request")
                    }
                }
                if Instant::now() + self.every >= self.held_until {
                    return Some(Interrupted::ClaimUnconfirmed);
                }
            }
        }
        None
    }
}

/// Waits for the renewal in flight, or forever when there is none.
async fn poll_renewal(
    renewal: &mut Option<(Instant, Renewal<'_>)>,
) -> (Instant, Option<Result<bool, EngineError>>) {
    match renewal {
        Some((started, future)) => (*started, future.await),
        None => std::future::pending().await,
    }
}

/// What each job of a round has come to so far, updated mail by mail.
struct Progress(Mutex<Vec<Sent>>);

impl Progress {
    fn now(&self) -> Vec<Sent> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, i: usize, f: impl FnOnce(&mut Sent)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner())[i]);
    }
}

/// Sends one recipient's mails in order, noting each outcome in `progress` (at `i`). A mail
/// refused for good on its own is counted and the next one goes; a failure worth retrying
/// stops the job; no further mail is handed over once `hand_over` is cancelled, and one the
/// mailer has not started on is taken back once `withdraw` is.
async fn send_job(
    mailer: &dyn Mailer,
    job: &Job,
    (hand_over, withdraw): (&CancellationToken, &CancellationToken),
    (progress, i): (&Progress, usize),
) {
    for mail in &job.mails {
        if hand_over.is_cancelled() {
            break;
        }
        let Some(outcome) = mailer.send_unless_withdrawn(mail, withdraw).await else {
            break;
        };
        let stop = outcome
            .as_ref()
            .is_err_and(|e| e.is_transient() || !e.is_message_specific());
        progress.update(i, |sent| match outcome {
            Ok(id) => {
                // The job's first mail starts its thread; only if it was delivered.
                if sent.handled.is_empty() {
                    sent.first_id = Some(id);
                }
                sent.handled.push(true);
            }
            Err(e) if !stop => {
                sent.handled.push(false);
                sent.refused.push(e);
            }
            Err(e) => sent.stopped = Some(e),
        });
        if stop {
            break;
        }
    }
}
