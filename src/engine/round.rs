//! One round of sending under a claim: every recipient's mails handed to the mailer while the
//! claim is renewed, and what each send came to.
//!
//! The rules this rests on:
//! - A mail handed to the mailer may go out even if we stop waiting for it (an SMTP worker has
//!   it), so once handed over it is waited for and its outcome recorded; what stops on a lost
//!   claim, a failed renewal or a shutdown is the *handing over* of further mails.
//! - A claim that cannot be renewed is given up a third of a lease before it runs out, so the
//!   mails still in flight can finish while it is still ours. When it may have run out, the
//!   mails the mailer has not started on are withdrawn (another instance may send them now);
//!   those it has started go out whatever we do, so they are still waited for and recorded.
//! - A renewal never blocks the sends: it runs beside them, with a deadline of its own.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
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
        let send = |(i, job)| async move { (i, send_job(mailer, job, tokens).await) };
        let mut sends: FuturesUnordered<_> = jobs.iter().enumerate().map(send).collect();
        let mut sent = vec![Sent::default(); jobs.len()];
        let mut lease = Lease::new(leased_at, self.policy.lease);
        let mut interrupted = None;
        if Instant::now() >= lease.next_renewal {
            // The claim was confirmed only when its first renewal was due (Auth answered a third
            // of a lease late): mail handed over now could still be going out when the lease
            // runs out, as the renewal would be judged failed a third later. Nothing is sent.
            tracing::warn!(request_id = %id, "The claim on the request was confirmed too late to send under it (the Auth Service answered slowly)");
            interrupted = Some(Interrupted::ClaimUnconfirmed);
            hand_over.cancel();
        }
        // Set once the mail not yet started is withdrawn: the end of the wait for the rest.
        let mut last_wait: Option<Instant> = None;
        let mut renewal: Option<(Instant, Renewal<'_>)> = None;
        // While stopping: the claim may run out (a write failed), so the wait for the mail in
        // flight ends when it does.
        let mut in_doubt = false;
        loop {
            tokio::select! {
                // A stop is seen before any mail is handed over.
                biased;
                _ = self.stopping.cancelled(), if interrupted.is_none() => {
                    interrupted = Some(Interrupted::Stopping);
                    hand_over.cancel();
                    // The claim goes on being renewed while a mail is in flight, however long the
                    // exit waits for it, so no other instance sends it meanwhile. That write may
                    // renew it too, but says not whether it was still ours: only a renewal
                    // moves the lease on. A failed write puts the claim in doubt, and so does one
                    // still unanswered when the last confirmed lease ends (no renewal runs
                    // meanwhile): the wait then ends with that lease.
                    let record = self.record_before_stop(id, stage, jobs, &sent);
                    if !matches!(timeout_at(lease.held_until, record).await, Ok(true)) {
                        in_doubt = true;
                    }
                    renewal = None;
                }
                next = sends.next() => match next {
                    Some((i, s)) => sent[i] = s,
                    None => break,
                },
                _ = sleep_until(lease.next_renewal), if renewal.is_none() && renewing(interrupted, in_doubt) => {
                    let every = lease.every;
                    let renew = async move { timeout(every, self.renew(id)).await.ok() };
                    renewal = Some((Instant::now(), Box::pin(renew)));
                }
                (started, outcome) = poll_renewal(&mut renewal) => {
                    renewal = None;
                    if let Some(why) = lease.renewed(id, started, outcome) {
                        // While stopping the round stays a stop (its claim is released, not
                        // kept for a retry); the wait for the mail in flight ends with the claim.
                        match interrupted {
                            Some(Interrupted::Stopping) => in_doubt = true,
                            _ => {
                                interrupted.get_or_insert(why);
                            }
                        }
                        hand_over.cancel();
                        if why == Interrupted::ClaimTaken {
                            // Its holder sends them now.
                            withdraw.cancel();
                            last_wait.get_or_insert(Instant::now() + STARTED_MAIL_WAIT);
                        }
                    }
                }
                _ = sleep_until(lease.held_until), if last_wait.is_none() => {
                    // No lease confirmed past this instant: the claim may be someone else's
                    // now. What the mailer has not started is withdrawn; what it has is
                    // waited for, to be recorded.
                    interrupted.get_or_insert(Interrupted::ClaimUnconfirmed);
                    hand_over.cancel();
                    withdraw.cancel();
                    last_wait = Some(Instant::now() + STARTED_MAIL_WAIT);
                }
                _ = sleep_until(last_wait.unwrap_or(lease.held_until)), if last_wait.is_some() => {
                    tracing::error!(request_id = %id, waited = ?STARTED_MAIL_WAIT, "The mailer has not finished the mails it was sending; they are not recorded and may be sent again");
                    break;
                }
            }
        }
        Round { sent, interrupted }
    }
}

/// Whether the claim is still renewed: while all is well, and while stopping with a mail in
/// flight as long as the claim is surely ours.
fn renewing(interrupted: Option<Interrupted>, in_doubt: bool) -> bool {
    interrupted.is_none_or(|i| i == Interrupted::Stopping) && !in_doubt
}

impl Engine {
    /// At a stop, records at once what was delivered so far, so a forced exit does not send it
    /// again. The claim stays ours until the mail in flight is done: released now, another
    /// instance could send that mail again.
    /// `false` when the write failed (the claim may then run out at its last lease).
    async fn record_before_stop(
        &self,
        id: &str,
        stage: &Stage,
        jobs: &[Job],
        sent: &[Sent],
    ) -> bool {
        let recorded = self.record(id, stage, jobs, sent, true).await;
        if let Err(e) = &recorded {
            tracing::warn!(request_id = %id, error = %e, "Cannot record the mails delivered before the stop");
        }
        recorded.is_ok()
    }
}

/// Our claim's lease during a round: until when it is ours for sure, and when to renew it.
struct Lease {
    length: Duration,
    every: Duration,
    held_until: Instant,
    next_renewal: Instant,
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
        self.next_renewal = Instant::now() + self.every;
        match outcome {
            // The lease runs from when the renewal was sent, not from when it was answered.
            Some(Ok(true)) => self.held_until = started + self.length,
            Some(Ok(false)) => return Some(Interrupted::ClaimTaken),
            failed => {
                let why = failed.and_then(Result::err).map(|e| e.to_string());
                tracing::warn!(request_id = %id, error = why.as_deref().unwrap_or("timed out"), "Cannot renew the claim on the request");
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

/// Sends one recipient's mails in order. A mail refused for good on its own is counted and the
/// next one goes; a failure worth retrying stops the job; no further mail is handed over once
/// `hand_over` is cancelled, and one the mailer has not started on is taken back once
/// `withdraw` is.
async fn send_job(
    mailer: &dyn Mailer,
    job: &Job,
    (hand_over, withdraw): (&CancellationToken, &CancellationToken),
) -> Sent {
    let mut sent = Sent::default();
    for mail in &job.mails {
        if hand_over.is_cancelled() {
            break;
        }
        let Some(outcome) = mailer.send_unless_withdrawn(mail, withdraw).await else {
            break;
        };
        match outcome {
            Ok(id) => {
                sent.first_id.get_or_insert(id);
                sent.handled.push(true);
            }
            Err(e) if !e.is_transient() && e.is_message_specific() => {
                sent.handled.push(false);
                sent.refused.push(e);
            }
            Err(e) => {
                sent.stopped = Some(e);
                break;
            }
        }
    }
    if sent.handled.first() != Some(&true) {
        sent.first_id = None;
    }
    sent
}
