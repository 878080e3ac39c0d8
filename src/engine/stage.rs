//! The three stages of a request's mail thread and, for each, who still needs which mails.

use std::time::SystemTime;

use super::plugindata::{PluginData, RequesterThread, Resolution, Thread};
use crate::mail::render::{self, RenderedMail, RequestSummary, ReviewState, ReviewSummary};
use crate::mail::{MessageId, OutgoingMail};
use crate::teleport::{RequestState, Review};

/// A stage of the thread.
#[derive(Debug, Clone)]
pub(super) enum Stage {
    /// The first mail of each recipient's thread. Only addresses we would mail for the request
    /// today (`allowed`) get one: the list stored in the plugin data is not trusted blindly, since
    /// whoever may write plugin data could add an address to it. `settled`: today's routing was
    /// decided on all it needs (the requester's traits were read, or cannot be for good), so a
    /// request none of whose recorded recipients it names may be routed again by it.
    NewThreads { allowed: Vec<String>, settled: bool },
    /// One reply per review, in order.
    Reviews(Vec<Review>),
    /// The final mail: approved, denied, promoted or expired.
    Resolution {
        tag: Resolution,
        reason: String,
        access_list: Option<String>,
    },
    /// The requester's confirmation, naming who was asked. Sent only to the address stored when
    /// the data was created, and only if it is still the address found today (`address`).
    RequesterThread { address: Option<String> },
    /// Reminder round `round` of a pending request, in the reviewers' threads, to those who
    /// have not reviewed it (`reviewed_by`: the reviews' authors).
    Reminder {
        round: u32,
        limit: u32,
        reviewed_by: Vec<String>,
        /// How many reviews the reminder's copy of the request has: fewer than the data has
        /// counted means the copy is stale (someone may have reviewed since), and the round
        /// waits for the next look.
        reviews: usize,
    },
    /// The outcome, in the requester's thread.
    RequesterOutcome {
        tag: Resolution,
        reason: String,
        access_list: Option<String>,
    },
}

impl Stage {
    /// The name used in logs and in the `te_failed` list.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Stage::NewThreads { .. } => "new",
            Stage::Reviews(_) => "review",
            Stage::Resolution { .. } => "resolution",
            Stage::RequesterThread { .. } => "requester",
            Stage::Reminder { .. } => "reminder",
            Stage::RequesterOutcome { .. } => "requester-outcome",
        }
    }

    /// The log `kind`, as the original logs it.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Stage::NewThreads { .. } => "new threads",
            Stage::Reviews(_) => "new review",
            Stage::Resolution { .. } => "request resolved",
            Stage::RequesterThread { .. } => "requester confirmation",
            Stage::Reminder { .. } => "reminder",
            Stage::RequesterOutcome { .. } => "requester outcome",
        }
    }

    /// Marks the stage as started in the data (what the original records before sending), so the
    /// original plugin, should it take over, does not send it again. `None`: nothing to do.
    pub(super) fn begin(&self, id: &str, data: &PluginData) -> Option<PluginData> {
        let mut d = data.clone();
        match self {
            Stage::NewThreads { allowed, settled } => {
                if *settled {
                    reroute(id, &mut d, allowed);
                }
            }
            Stage::Reviews(reviews) => {
                if d.threads.is_empty() {
                    return None;
                }
                if d.reviews_count < reviews.len() {
                    d.reviews_sent_mut();
                    d.reviews_count = reviews.len();
                }
            }
            Stage::Resolution { tag, reason, .. } => {
                if d.threads.is_empty() {
                    return None;
                }
                if !d.is_resolved() {
                    d.resolution = Some(*tag);
                    d.resolve_reason = reason.clone();
                    d.resolution_sent = Some(Vec::new());
                }
            }
            Stage::RequesterThread { address } => settle_requester(&mut d, address.as_deref()),
            Stage::RequesterOutcome { .. } => {
                d.requester_thread.as_ref()?;
            }
            Stage::Reminder { round, reviews, .. } => {
                if d.threads.is_empty() || d.is_resolved() || d.reviews_count > *reviews {
                    return None;
                }
                d.reminders = d.reminders.max(*round);
            }
        }
        Some(d)
    }

    /// The mails still owed, per recipient, in sending order. Message-IDs are derived from the
    /// request, recipient and stage, under `id_host`, so a resend reuses them.
    pub(super) fn work(
        &self,
        data: &PluginData,
        summary: &RequestSummary,
        id_host: &str,
    ) -> Vec<Job> {
        let owed = Owed {
            data,
            summary,
            id_host,
            stage: self.name(),
        };
        match self {
            Stage::NewThreads { allowed, .. } => owed.new_threads(allowed),
            Stage::Reviews(reviews) => owed.reviews(reviews),
            Stage::Resolution { access_list, .. } => owed.resolution(access_list.as_deref()),
            Stage::RequesterThread { address } => owed.requester_thread(address.as_deref()),
            Stage::Reminder {
                limit, reviewed_by, ..
            } => owed.reminders(*limit, reviewed_by),
            Stage::RequesterOutcome {
                tag,
                reason,
                access_list,
            } => {
                // How the request really ended, as recorded, over what the event says (a
                // DELETE of an approved request is its expiry in the event's words only).
                let (tag, reason) = match data.resolution {
                    Some(recorded) => (recorded, data.resolve_reason.as_str()),
                    None => (*tag, reason.as_str()),
                };
                owed.requester_outcome(&outcome(tag, reason, access_list.as_deref()))
            }
        }
    }

    /// Records that `job`'s recipient is done with the first `handled` mails of the job
    /// (delivered, or refused for good on their own); `first_id` is the Message-ID of the first
    /// one when it was delivered, which starts a thread in the new-thread stage. Recording is
    /// idempotent: the same outcome written twice, or after another instance's, counts once.
    pub(super) fn record(
        &self,
        data: &mut PluginData,
        job: &Job,
        handled: usize,
        first_id: Option<&MessageId>,
    ) {
        if handled == 0 {
            return;
        }
        let email = job.email.as_str();
        match self {
            Stage::NewThreads { .. } => {
                if let Some(id) = first_id
                    && !data.threads.iter().any(|t| t.email == email)
                {
                    data.threads.push(Thread {
                        email: email.to_owned(),
                        timestamp: crate::calendar::rfc3339(SystemTime::now()),
                        message_id: id.as_str().to_owned(),
                    });
                }
            }
            Stage::Reviews(_) => {
                let done = job.start.saturating_add(handled);
                let upto = data
                    .reviews_sent_to(email)
                    .max(done)
                    .min(data.reviews_count);
                data.reviews_sent_mut().insert(email.to_owned(), upto);
            }
            Stage::Resolution { .. } => {
                let sent = data.resolution_sent.get_or_insert_with(Vec::new);
                if !sent.iter().any(|e| e == email) {
                    sent.push(email.to_owned());
                }
            }
            Stage::RequesterThread { .. } => {
                if let Some(id) = first_id
                    && data.requester_thread.is_none()
                {
                    data.requester_thread = Some(RequesterThread {
                        email: email.to_owned(),
                        timestamp: crate::calendar::rfc3339(SystemTime::now()),
                        message_id: id.as_str().to_owned(),
                    });
                }
            }
            Stage::RequesterOutcome { .. } => data.requester_done = true,
            Stage::Reminder { .. } => {
                // The round the job was for rides in `start`.
                let round = u32::try_from(job.start).unwrap_or(u32::MAX);
                let sent = data.reminded.entry(email.to_owned()).or_default();
                *sent = (*sent).max(round);
            }
        }
    }
}

/// Settles the requester's address in the data before the confirmation: an undecided one takes
/// `today`'s; a stored one the requester no longer has (their trait changed, the user is gone)
/// is recorded as failed for good, with one WARN, rather than tried at every event.
fn settle_requester(d: &mut PluginData, today: Option<&str>) {
    let Some(today) = today else {
        return;
    };
    if d.requester_undecided() {
        // Unknown as the request came, the requester may have got a reviewer's thread: then
        // that is how they hear of it, not twice.
        let reviewer = d
            .threads
            .iter()
            .any(|t| t.email.eq_ignore_ascii_case(today));
        d.requester = Some(if reviewer { "" } else { today }.to_owned());
        // Told as the requester from now on: not also as a reviewer, should today's routing
        // have named them when they were still unknown.
        if let (false, Some(list)) = (reviewer, d.intended.as_mut()) {
            list.retain(|e| !e.eq_ignore_ascii_case(today));
        }
        return;
    }
    let Some(stored) = d.requester_address().map(str::to_owned) else {
        return;
    };
    let owed = d.requester_thread.is_none() && !d.failed_at(&stored, "requester");
    if owed && !today.eq_ignore_ascii_case(&stored) {
        tracing::warn!(email = %stored, "The requester's address changed since the request was created; no confirmation is sent to the old one");
        d.fail(&stored, "requester");
    }
}

/// The status line of an outcome.
fn outcome(tag: Resolution, reason: &str, access_list: Option<&str>) -> render::Resolution {
    let reason = reason.to_owned();
    match tag {
        Resolution::Approved => render::Resolution::Approved(reason),
        Resolution::Denied => render::Resolution::Denied(reason),
        Resolution::Expired => render::Resolution::Expired,
        Resolution::Promoted => render::Resolution::Promoted {
            reason,
            access_list: access_list.unwrap_or_default().to_owned(),
        },
    }
}

/// What one stage owes, worked out from the plugin data.
struct Owed<'a> {
    data: &'a PluginData,
    summary: &'a RequestSummary,
    id_host: &'a str,
    stage: &'static str,
}

impl Owed<'_> {
    fn id(&self, email: &str, part: &str) -> MessageId {
        let key = format!("{}/{email}/{part}", self.summary.id);
        MessageId::derived(&key, self.id_host)
    }

    /// Not failed for good at this stage.
    fn open(&self, email: &str) -> bool {
        !self.data.failed_at(email, self.stage)
    }

    fn new_threads(&self, allowed: &[String]) -> Vec<Job> {
        let Some(intended) = &self.data.intended else {
            return Vec::new();
        };
        let rendered = render::new_request(self.summary, &render::Resolution::Pending);
        let has_thread = |e: &String| self.data.threads.iter().any(|t| &t.email == e);
        intended
            .iter()
            .filter(|e| self.open(e) && !has_thread(e) && !self.data.is_requester(e))
            .filter(|e| self.allowed(allowed, e))
            .map(|e| Job {
                email: e.clone(),
                start: 0,
                mails: vec![OutgoingMail::new(
                    e.clone(),
                    rendered.clone(),
                    self.id(e, "new"),
                    None,
                )],
            })
            .collect()
    }

    fn allowed(&self, allowed: &[String], email: &String) -> bool {
        let ours = allowed.contains(email);
        if !ours {
            tracing::warn!(request_id = %self.summary.id, email = %email, "The plugin data names a recipient this request would not be mailed to today; skipped");
        }
        ours
    }

    fn reviews(&self, reviews: &[Review]) -> Vec<Job> {
        let upto = self.data.reviews_count.min(reviews.len());
        let replies = |t: &Thread| -> Option<Job> {
            let from = self.data.reviews_sent_to(&t.email);
            let mails: Vec<_> = (reviews.get(from..upto)?.iter().enumerate())
                .map(|(i, r)| {
                    let rendered = render::review(self.summary, &review_summary(r));
                    let id = self.id(&t.email, &format!("review{}", from + i));
                    reply(t, rendered, id)
                })
                .collect();
            (!mails.is_empty()).then(|| Job {
                email: t.email.clone(),
                start: from,
                mails,
            })
        };
        let open = self.data.threads.iter().filter(|t| self.open(&t.email));
        open.filter_map(replies).collect()
    }

    fn resolution(&self, access_list: Option<&str>) -> Vec<Job> {
        let (Some(tag), false) = (self.data.resolution, self.data.threads.is_empty()) else {
            return Vec::new();
        };
        let reason = self.data.resolve_reason.clone();
        let status = match tag {
            Resolution::Approved => render::Resolution::Approved(reason),
            Resolution::Denied => render::Resolution::Denied(reason),
            Resolution::Expired => render::Resolution::Expired,
            Resolution::Promoted => render::Resolution::Promoted {
                reason,
                access_list: access_list.unwrap_or_default().to_owned(),
            },
        };
        let rendered = render::resolved(self.summary, &status);
        let owed = |t: &&Thread| self.open(&t.email) && !self.data.resolution_sent_to(&t.email);
        (self.data.threads.iter().filter(owed))
            .map(|t| Job {
                email: t.email.clone(),
                start: 0,
                mails: vec![reply(t, rendered.clone(), self.id(&t.email, "resolution"))],
            })
            .collect()
    }
}

impl Owed<'_> {
    /// The current round's reminder to each recipient with an open thread who neither reviewed
    /// the request nor had this round's reminder.
    fn reminders(&self, limit: u32, reviewed_by: &[String]) -> Vec<Job> {
        let round = self.data.reminders;
        if round == 0 || self.data.is_resolved() {
            return Vec::new();
        }
        let requester = self.data.requester_address();
        let reviewed = |e: &str| {
            reviewed_by.iter().any(|a| a.eq_ignore_ascii_case(e))
                || requester.is_some_and(|r| r.eq_ignore_ascii_case(e))
        };
        let owed = |t: &&Thread| {
            self.open(&t.email)
                && !reviewed(&t.email)
                && self.data.reminded.get(&t.email).copied().unwrap_or(0) < round
        };
        let rendered = render::reminder(self.summary, round, limit);
        (self.data.threads.iter().filter(owed))
            .map(|t| Job {
                email: t.email.clone(),
                start: round as usize,
                mails: vec![reply(
                    t,
                    rendered.clone(),
                    self.id(&t.email, &format!("reminder{round}")),
                )],
            })
            .collect()
    }

    /// The confirmation, to the stored address if it is still the requester's today.
    fn requester_thread(&self, today: Option<&str>) -> Vec<Job> {
        let Some(address) = self.data.requester_address() else {
            return Vec::new();
        };
        if self.data.requester_thread.is_some() || !self.open(address) {
            return Vec::new();
        }
        if today.is_none_or(|t| !t.eq_ignore_ascii_case(address)) {
            // Not known today (a passing failure): left for a later event.
            return Vec::new();
        }
        let asked = self.data.intended.clone().unwrap_or_default();
        let rendered = render::requester_confirmation(self.summary, &asked);
        vec![Job {
            email: address.to_owned(),
            start: 0,
            mails: vec![OutgoingMail::new(
                address.to_owned(),
                rendered,
                self.id(address, "requester"),
                None,
            )],
        }]
    }

    /// The outcome, in the requester's thread.
    fn requester_outcome(&self, status: &render::Resolution) -> Vec<Job> {
        let (Some(address), Some(thread)) =
            (self.data.requester_address(), &self.data.requester_thread)
        else {
            return Vec::new();
        };
        // Only into the thread the confirmation started, to the address it went to.
        if thread.email != address || self.data.requester_done || !self.open(address) {
            return Vec::new();
        }
        let rendered = render::requester_outcome(self.summary, status);
        let parent = MessageId::parse(&thread.message_id).ok();
        let id = self.id(address, "requester-outcome");
        vec![Job {
            email: address.to_owned(),
            start: 0,
            mails: vec![OutgoingMail::new(address.to_owned(), rendered, id, parent)],
        }]
    }
}

/// The mails one recipient is owed in one stage.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub email: String,
    /// How many of the stage's mails the recipient had before this job (reviews; else 0).
    pub start: usize,
    pub mails: Vec<OutgoingMail>,
}

fn reply(thread: &Thread, rendered: RenderedMail, id: MessageId) -> OutgoingMail {
    let parent = MessageId::parse(&thread.message_id).ok();
    OutgoingMail::new(thread.email.clone(), rendered, id, parent)
}

fn review_summary(r: &Review) -> ReviewSummary {
    ReviewSummary {
        author: r.author.clone(),
        state: match r.proposed {
            RequestState::Approved => ReviewState::Approved,
            RequestState::Denied => ReviewState::Denied,
            RequestState::Promoted => ReviewState::Other("PROMOTED".into()),
            RequestState::Pending => ReviewState::Other("PENDING".into()),
            RequestState::None => ReviewState::Other("NONE".into()),
            RequestState::Unknown(v) => ReviewState::Other(v.to_string()),
        },
        reason: r.reason.clone(),
        created: r.created.unwrap_or_else(SystemTime::now),
    }
}
/// Routes a request again by today's routing (`allowed`) when none of its recorded recipients
/// would be mailed otherwise: no thread was started yet, and every recorded recipient still
/// owed one is one today's routing does not name (a rule that chose them was changed or
/// deleted while their mail could not be delivered, or this replica cannot see that rule).
/// A recorded address is never mailed unless today's routing names it (whoever may write
/// plugin data could add one), so without this the request would reach nobody.
fn reroute(id: &str, d: &mut PluginData, allowed: &[String]) {
    let Some(intended) = &d.intended else {
        return;
    };
    // The requester is told as the requester, never as a reviewer (today's routing leaves them
    // out only when it looked them up, which it does not once they were told).
    let allowed: Vec<String> = (allowed.iter())
        .filter(|a| !d.is_requester(a))
        .cloned()
        .collect();
    if !d.threads.is_empty() || allowed.is_empty() {
        return;
    }
    let open: Vec<&String> = (intended.iter())
        .filter(|e| !d.failed_at(e, "new"))
        .collect();
    if open.is_empty() || open.iter().any(|e| allowed.contains(e)) {
        return;
    }
    tracing::warn!(request_id = %id, recorded = ?intended, today = ?allowed, "None of the recipients recorded for this request is routed to today (the rules changed, or this instance cannot read them) and none was mailed yet; the request is routed again");
    d.intended = Some(allowed);
}
