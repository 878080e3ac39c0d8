//! What one bulk read of every request's plugin data says before a reconcile: which of the
//! requests about to be listed owe no mail at all, so that they need no read, no claim and no
//! write of their own. On a cluster of 100,000 requests, nearly all resolved long ago, that is
//! the difference between one call and 100,000.
//!
//! It is safe to decide on data read before the listing because everything it looks at only
//! ever grows: threads, review counts, who got which mail, the resolution. Whatever a request
//! gained between the read and the listing (a review, its resolution) shows as still owed, and
//! the request is handed to the engine as usual.

use std::collections::HashMap;

use super::plugindata::PluginData;
use crate::teleport::{AccessRequest, RequestState};

/// The most requests a survey notes (about 80 MB): far beyond any cluster's, and a bound on
/// what a server could make it hold.
const MAX_NOTED: usize = 2_000_000;
/// The longest request name noted that is not a UUID (Teleport's are all UUIDs).
const MAX_OTHER_NAME: usize = 128;

/// Per request: how far its mails have gone, for the requests that owe no new thread.
#[derive(Default)]
pub struct Survey {
    /// Requests named by a UUID (all of Teleport's), kept in 16 bytes.
    by_uuid: HashMap<u128, Done>,
    others: HashMap<Box<str>, Done>,
    /// Whether the requester's mails count (`delivery.notify_requester` is on): when it is off,
    /// the engine sends them nothing, whatever the data says.
    requester: bool,
}

/// How far a request's mails have gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Done {
    /// Every recipient still mailed got this many review replies (`u32::MAX`: no thread, so no
    /// review is ever owed).
    reviews: u32,
    /// Every recipient still mailed got the resolution (or there is no thread to send it in),
    /// and so did the requester when they are mailed.
    resolution: bool,
}

impl Survey {
    pub(super) fn new(requester: bool) -> Self {
        Self {
            requester,
            ..Self::default()
        }
    }

    /// Notes one request's plugin data, as read. Past [`MAX_NOTED`] requests, or for a name
    /// that is neither a UUID nor short, nothing is noted: those requests are handed over as
    /// they would be without a survey (memory stays bounded whatever the server sends).
    pub(super) fn note(&mut self, id: &str, data: &PluginData) {
        if self.len() >= MAX_NOTED {
            return;
        }
        let Some(done) = done(data, self.requester) else {
            return;
        };
        match uuid(id) {
            Some(key) => {
                self.by_uuid.insert(key, done);
            }
            None if id.len() <= MAX_OTHER_NAME => {
                self.others.insert(id.into(), done);
            }
            None => {}
        }
    }

    /// How many requests are known to owe no new thread.
    pub fn len(&self) -> usize {
        self.by_uuid.len() + self.others.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `request`, as listed, owes no mail: the engine would send nothing for it, and
    /// write nothing but the removal of a claim left on finished data (a claim is not looked at:
    /// one past its lease is nobody's, and a live one's holder finishes its own work). `false`
    /// whenever in doubt.
    pub fn owes_nothing(&self, request: &AccessRequest) -> bool {
        let found = match uuid(&request.id) {
            Some(key) => self.by_uuid.get(&key),
            None => self.others.get(request.id.as_str()),
        };
        let Some(done) = found else {
            return false;
        };
        let reviews = u32::try_from(request.reviews.len()).unwrap_or(u32::MAX);
        let reviews_sent = reviews == 0 || done.reviews >= reviews;
        match request.state {
            RequestState::Pending => reviews_sent,
            RequestState::Approved | RequestState::Denied | RequestState::Promoted => {
                reviews_sent && done.resolution
            }
            _ => false,
        }
    }
}

/// How far `data`'s mails have gone; `None` when a new thread is still owed to someone.
fn done(data: &PluginData, requester_mailed: bool) -> Option<Done> {
    let has_thread = |e: &String| data.threads.iter().any(|t| &t.email == e);
    let intended = data.intended.as_deref().unwrap_or_default();
    let settled = |e: &String| has_thread(e) || data.failed_at(e, "new") || data.is_requester(e);
    if !intended.iter().all(settled) {
        return None;
    }
    let requester = data.requester_address().filter(|_| requester_mailed);
    let requester_open = |stage| requester.is_some_and(|a| !data.failed_at(a, stage));
    let undecided = requester_mailed && data.requester_undecided();
    if undecided || (requester_open("requester") && data.requester_thread.is_none()) {
        return None;
    }
    let requester_told = data.requester_thread.is_none()
        || data.requester_done
        || !requester_open("requester-outcome");
    if data.threads.is_empty() {
        return Some(Done {
            reviews: u32::MAX,
            resolution: requester_told,
        });
    }
    let open = |stage: &'static str| {
        (data.threads.iter()).filter(move |t| !data.failed_at(&t.email, stage))
    };
    let replies = (open("review").map(|t| data.reviews_sent_to(&t.email)))
        .fold(data.reviews_count, usize::min);
    let resolution = requester_told
        && data.is_resolved()
        && open("resolution").all(|t| data.resolution_sent_to(&t.email));
    Some(Done {
        reviews: u32::try_from(replies).unwrap_or(u32::MAX),
        resolution,
    })
}

/// A UUID's 128 bits (the 36-character lowercase form Teleport writes); `None` for anything else,
/// so that two ids never share a key.
fn uuid(id: &str) -> Option<u128> {
    let bytes = id.as_bytes();
    if bytes.len() != 36 || [8, 13, 18, 23].iter().any(|&i| bytes[i] != b'-') {
        return None;
    }
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teleport::AccessRequest;

    fn listed(id: &str) -> AccessRequest {
        AccessRequest::sample(id)
    }

    #[test]
    fn names_are_keyed_exactly_and_long_odd_ones_are_not_kept() {
        let mut survey = Survey::default();
        let lower = "0123abcd-0000-4000-8000-00000000cafe";
        let upper = "0123ABCD-0000-4000-8000-00000000CAFE";
        let long = "x".repeat(MAX_OTHER_NAME + 1);
        for id in [lower, "not-a-uuid", long.as_str()] {
            survey.note(id, &PluginData::default());
        }
        assert_eq!(survey.len(), 2);
        assert!(survey.owes_nothing(&listed(lower)));
        assert!(survey.owes_nothing(&listed("not-a-uuid")));
        assert!(!survey.owes_nothing(&listed(upper)), "a different name");
        assert!(
            !survey.owes_nothing(&listed(&long)),
            "handed over, not kept"
        );
    }
}
