//! The three stages of a request's mail thread and, for each, who still needs which mails.

use std::time::SystemTime;

use super::plugindata::{PluginData, Resolution, Thread};
use crate::mail::render::{self, RenderedMail, RequestSummary, ReviewState, ReviewSummary};
use crate::mail::{MessageId, OutgoingMail};
use crate::teleport::{RequestState, Review};

/// A stage of the thread.
#[derive(Debug, Clone)]
pub enum Stage {
    /// The first mail of each recipient's thread.
    NewThreads,
    /// One reply per review, in order.
    Reviews(Vec<Review>),
    /// The final mail: approved, denied, promoted or expired.
    Resolution {
        tag: Resolution,
        reason: String,
        access_list: Option<String>,
    },
}

impl Stage {
    /// The name used in logs and in the `te_failed` list.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::NewThreads => "new",
            Stage::Reviews(_) => "review",
            Stage::Resolution { .. } => "resolution",
        }
    }

    /// The log `kind`, as the original logs it.
    pub fn kind(&self) -> &'static str {
        match self {
            Stage::NewThreads => "new threads",
            Stage::Reviews(_) => "new review",
            Stage::Resolution { .. } => "request resolved",
        }
    }

    /// Marks the stage as started in the data (what the original records before sending), so the
    /// original plugin, should it take over, does not send it again. `None`: nothing to do.
    pub fn begin(&self, data: &PluginData) -> Option<PluginData> {
        let mut d = data.clone();
        match self {
            Stage::NewThreads => {}
            Stage::Reviews(reviews) => {
                if d.threads.is_empty() {
                    return None;
                }
                if d.reviews_count < reviews.len() {
                    if d.reviews_sent.is_none() {
                        let before = d.reviews_count;
                        d.reviews_sent = Some(
                            d.threads
                                .iter()
                                .map(|t| (t.email.clone(), before))
                                .collect(),
                        );
                    }
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
        }
        Some(d)
    }

    /// The mails still owed, per recipient, in sending order. Message-IDs are derived from the
    /// request, recipient and stage, under `id_host`, so a resend reuses them.
    pub fn work(&self, data: &PluginData, summary: &RequestSummary, id_host: &str) -> Vec<Job> {
        let id = |email: &str, part: &str| {
            MessageId::derived(&format!("{}/{email}/{part}", summary.id), id_host)
        };
        let stage = self.name();
        let open = |email: &str| !data.failed_at(email, stage);
        match self {
            Stage::NewThreads => {
                let Some(intended) = &data.intended else {
                    return Vec::new();
                };
                let rendered = render::new_request(summary, &render::Resolution::Pending);
                intended
                    .iter()
                    .filter(|e| open(e) && !data.threads.iter().any(|t| &t.email == *e))
                    .map(|e| Job {
                        email: e.clone(),
                        mails: vec![OutgoingMail::new(
                            e.clone(),
                            rendered.clone(),
                            id(e, "new"),
                            None,
                        )],
                    })
                    .collect()
            }
            Stage::Reviews(reviews) => {
                let upto = data.reviews_count.min(reviews.len());
                data.threads
                    .iter()
                    .filter(|t| open(&t.email))
                    .filter_map(|t| {
                        let from = data.reviews_sent_to(&t.email);
                        let mails: Vec<_> = reviews
                            .get(from..upto)?
                            .iter()
                            .enumerate()
                            .map(|(i, r)| {
                                let rendered = render::review(summary, &review_summary(r));
                                reply(t, rendered, id(&t.email, &format!("review{}", from + i)))
                            })
                            .collect();
                        (!mails.is_empty()).then(|| Job {
                            email: t.email.clone(),
                            mails,
                        })
                    })
                    .collect()
            }
            Stage::Resolution { access_list, .. } => {
                let (Some(tag), false) = (data.resolution, data.threads.is_empty()) else {
                    return Vec::new();
                };
                let reason = data.resolve_reason.clone();
                let status = match tag {
                    Resolution::Approved => render::Resolution::Approved(reason),
                    Resolution::Denied => render::Resolution::Denied(reason),
                    Resolution::Expired => render::Resolution::Expired,
                    Resolution::Promoted => render::Resolution::Promoted {
                        reason,
                        access_list: access_list.clone().unwrap_or_default(),
                    },
                };
                let rendered = render::resolved(summary, &status);
                data.threads
                    .iter()
                    .filter(|t| open(&t.email) && !data.resolution_sent_to(&t.email))
                    .map(|t| Job {
                        email: t.email.clone(),
                        mails: vec![reply(t, rendered.clone(), id(&t.email, "resolution"))],
                    })
                    .collect()
            }
        }
    }

    /// Records that `email` got the first `delivered` mails of its job (`first_id`: the Message-ID
    /// of the first one, which starts a thread in the new-thread stage).
    pub fn record(
        &self,
        data: &mut PluginData,
        email: &str,
        delivered: usize,
        first_id: Option<&MessageId>,
    ) {
        if delivered == 0 {
            return;
        }
        match self {
            Stage::NewThreads => {
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
                let before = data.reviews_sent_to(email);
                let count = data.reviews_count;
                let sent = data.reviews_sent.get_or_insert_with(Default::default);
                sent.insert(email.to_owned(), (before + delivered).min(count));
            }
            Stage::Resolution { .. } => {
                let sent = data.resolution_sent.get_or_insert_with(Vec::new);
                if !sent.iter().any(|e| e == email) {
                    sent.push(email.to_owned());
                }
            }
        }
    }
}

/// The mails one recipient is owed in one stage.
#[derive(Debug, Clone)]
pub struct Job {
    pub email: String,
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
