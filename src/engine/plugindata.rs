//! The per-request state kept in Teleport's plugin data, encoded exactly as the original plugin
//! encodes it (plugin name `email`, seven keys), so either can continue the other's threads.

use std::collections::BTreeMap;

/// The plugin name the data is stored under.
pub const PLUGIN_NAME: &str = "email";

/// The seven keys the original always writes.
pub(super) const KEYS: [&str; 7] = [
    "user",
    "roles",
    "request_reason",
    "reviews_count",
    "resolution",
    "resolve_reason",
    "email_threads",
];

/// How a request ended, as stored in `resolution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Approved,
    Denied,
    Expired,
    /// Ours: the original never writes it (it ignores promoted requests) and reads it as "resolved".
    Promoted,
}

impl Resolution {
    fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "APPROVED",
            Self::Denied => "DENIED",
            Self::Expired => "EXPIRED",
            Self::Promoted => "PROMOTED",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "APPROVED" => Some(Self::Approved),
            "DENIED" => Some(Self::Denied),
            "EXPIRED" => Some(Self::Expired),
            "PROMOTED" => Some(Self::Promoted),
            _ => None,
        }
    }
}

/// One recipient's mail thread: the address, when it started, and its first Message-ID (kept
/// exactly as stored, brackets and all, so re-encoding changes nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    pub email: String,
    pub timestamp: String,
    pub message_id: String,
}

/// Our own keys, beside the original's seven (which keep their meaning). Each value starts with
/// `v1:` so that "present but empty" survives Teleport's rule that an empty value deletes a key;
/// an absent key means "as the original's keys say".
pub(super) const KEY_RECIPIENTS: &str = "te_recipients";
pub(super) const KEY_REVIEWS_SENT: &str = "te_reviews_sent";
/// The `reviews_count` that `te_reviews_sent` was written with: when the original plugin has
/// since raised `reviews_count` (it announced more reviews itself), our per-recipient counts are
/// stale and the original's meaning applies.
pub(super) const KEY_REVIEWS_FOR: &str = "te_reviews_for";
pub(super) const KEY_RESOLUTION_SENT: &str = "te_resolution_sent";
pub(super) const KEY_FAILED: &str = "te_failed";
pub(super) const KEY_CLAIM: &str = "te_claim";
/// The requester's address when `delivery.notify_requester` was on as the data was created
/// (empty: the requester has none we can mail; [`REQUESTER_UNDECIDED`]: it could not be told
/// then); absent: the requester is not mailed.
pub(super) const KEY_REQUESTER: &str = "te_requester";
/// `te_requester` while the requester's address could not be read (a passing failure).
pub(super) const REQUESTER_UNDECIDED: &str = "?";
/// The requester's thread: `email/timestamp/message-id` of the confirmation.
pub(super) const KEY_REQUESTER_THREAD: &str = "te_requester_thread";
/// Present once the requester had the outcome.
pub(super) const KEY_REQUESTER_DONE: &str = "te_requester_done";
/// The reminder round under way or done (1, 2, …), `delivery.reminder_interval` apart.
pub(super) const KEY_REMINDERS: &str = "te_reminders";
/// Per recipient, the last reminder round they were sent: `email/n` items.
pub(super) const KEY_REMINDED: &str = "te_reminded";
const V1: &str = "v1:";

/// Every key we read: pinned in each compare-and-swap we make, absent ones as `""`. Teleport
/// compares only the keys it is given, so a key left out could be changed by another replica
/// (or the original plugin) between our read and our write without the write failing.
pub(super) const PINNED_KEYS: [&str; 20] = [
    "user",
    "roles",
    "request_reason",
    "reviews_count",
    "resolution",
    "resolve_reason",
    "email_threads",
    "email",
    "timestamp",
    KEY_RECIPIENTS,
    KEY_REVIEWS_SENT,
    KEY_REVIEWS_FOR,
    KEY_RESOLUTION_SENT,
    KEY_FAILED,
    KEY_CLAIM,
    KEY_REQUESTER,
    KEY_REQUESTER_THREAD,
    KEY_REQUESTER_DONE,
    KEY_REMINDERS,
    KEY_REMINDED,
];

/// Who is working on a request's mails, and until when (a lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub owner: String,
    /// Unix milliseconds.
    pub until_ms: u64,
}

/// Decoded plugin data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginData {
    pub user: String,
    pub roles: Vec<String>,
    pub request_reason: String,
    pub reviews_count: usize,
    pub resolution: Option<Resolution>,
    /// The raw `resolution` value when it is not one we know (kept, never overwritten blindly).
    pub resolution_other: String,
    pub resolve_reason: String,
    pub threads: Vec<Thread>,
    /// Everyone who should get a thread (ours; absent in the original's data: the threads are it).
    pub intended: Option<Vec<String>>,
    /// Per recipient, how many reviews they were sent (ours; absent: `reviews_count` each).
    pub reviews_sent: Option<BTreeMap<String, usize>>,
    /// Who got the resolution mail (ours; absent: everyone, once `resolution` is set).
    pub resolution_sent: Option<Vec<String>>,
    /// `email/stage` pairs that failed for good and are not retried.
    pub failed: Vec<String>,
    /// The current claim on this request's mails.
    pub claim: Option<Claim>,
    /// The requester's address (ours): `None` when the requester is not mailed, `Some("")` when
    /// they were to be but have no address we can mail.
    pub requester: Option<String>,
    /// The requester's thread (ours): when the confirmation went out, and its Message-ID.
    pub requester_thread: Option<RequesterThread>,
    /// Whether the requester had the outcome (ours).
    pub requester_done: bool,
    /// The reminder round under way or done (ours; 0: none yet).
    pub reminders: u32,
    /// Per recipient, the last reminder round they were sent (ours).
    pub reminded: BTreeMap<String, u32>,
}

/// The requester's thread: where and when its first mail went out, and its Message-ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequesterThread {
    pub email: String,
    pub timestamp: String,
    pub message_id: String,
}

impl PluginData {
    /// Whether a resolution (of any kind) is recorded.
    pub fn is_resolved(&self) -> bool {
        self.resolution.is_some() || !self.resolution_other.is_empty()
    }

    /// The seven keys, as the original writes them (empty strings where unset), and ours.
    pub fn encode(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("user".into(), self.user.clone());
        m.insert("roles".into(), self.roles.join(","));
        m.insert("request_reason".into(), self.request_reason.clone());
        let count = match self.reviews_count {
            0 => String::new(),
            n => n.to_string(),
        };
        m.insert("reviews_count".into(), count);
        let resolution = match self.resolution {
            Some(r) => r.as_str().to_owned(),
            None => self.resolution_other.clone(),
        };
        m.insert("resolution".into(), resolution);
        m.insert("resolve_reason".into(), self.resolve_reason.clone());
        m.insert("email_threads".into(), encode_threads(&self.threads));
        self.encode_ours(&mut m);
        m
    }

    /// Our `te_*` keys, each only when it says something.
    fn encode_ours(&self, m: &mut BTreeMap<String, String>) {
        let mut put = |key: &str, value: String| m.insert(key.into(), format!("{V1}{value}"));
        if let Some(list) = &self.intended {
            put(KEY_RECIPIENTS, list.join(","));
        }
        if let Some(sent) = &self.reviews_sent {
            let pairs: Vec<String> = sent.iter().map(|(e, n)| format!("{e}/{n}")).collect();
            put(KEY_REVIEWS_SENT, pairs.join(","));
            put(KEY_REVIEWS_FOR, self.reviews_count.to_string());
        }
        if let Some(list) = &self.resolution_sent {
            put(KEY_RESOLUTION_SENT, list.join(","));
        }
        if !self.failed.is_empty() {
            put(KEY_FAILED, self.failed.join(","));
        }
        if let Some(c) = &self.claim {
            put(KEY_CLAIM, format!("{}/{}", c.owner, c.until_ms));
        }
        if let Some(address) = &self.requester {
            put(KEY_REQUESTER, address.clone());
        }
        if let Some(t) = &self.requester_thread {
            put(
                KEY_REQUESTER_THREAD,
                format!("{}/{}/{}", t.email, t.timestamp, t.message_id),
            );
        }
        if self.requester_done {
            put(KEY_REQUESTER_DONE, String::new());
        }
        if self.reminders > 0 {
            put(KEY_REMINDERS, self.reminders.to_string());
        }
        if !self.reminded.is_empty() {
            let pairs: Vec<String> = (self.reminded.iter())
                .map(|(e, n)| format!("{e}/{n}"))
                .collect();
            put(KEY_REMINDED, pairs.join(","));
        }
    }

    /// Whether `email` is the requester's recorded address (they are told as the requester,
    /// never given a reviewer's thread).
    pub fn is_requester(&self, email: &str) -> bool {
        self.requester_address()
            .is_some_and(|a| a.eq_ignore_ascii_case(email))
    }

    /// The requester's address, when they are to be mailed and it is known.
    pub fn requester_address(&self) -> Option<&str> {
        (self.requester.as_deref()).filter(|a| !a.is_empty() && *a != REQUESTER_UNDECIDED)
    }

    /// Whether the requester is to be mailed but their address could not be read yet.
    pub fn requester_undecided(&self) -> bool {
        self.requester.as_deref() == Some(REQUESTER_UNDECIDED)
    }

    /// Reads stored data the way the original does: unknown `reviews_count` is 0, thread items
    /// that do not split into exactly three parts are skipped, and the legacy `email` +
    /// `timestamp` keys become a first thread without a Message-ID.
    pub fn decode(m: &BTreeMap<String, String>) -> Self {
        let get = |k: &str| m.get(k).cloned().unwrap_or_default();
        let resolution_raw = get("resolution");
        let resolution = Resolution::parse(&resolution_raw);
        let reviews_count = get("reviews_count").parse().unwrap_or(0);
        Self {
            user: get("user"),
            roles: split_list(&get("roles")),
            request_reason: get("request_reason"),
            reviews_count,
            resolution,
            resolution_other: match resolution {
                None => resolution_raw,
                Some(_) => String::new(),
            },
            resolve_reason: get("resolve_reason"),
            threads: decode_threads(m),
            intended: ours(m, KEY_RECIPIENTS).map(|v| split_unique(&v)),
            reviews_sent: decode_reviews_sent(m, reviews_count),
            resolution_sent: ours(m, KEY_RESOLUTION_SENT).map(|v| split_list(&v)),
            failed: ours(m, KEY_FAILED)
                .map(|v| split_list(&v))
                .unwrap_or_default(),
            claim: ours(m, KEY_CLAIM).and_then(|v| {
                let (owner, until) = v.rsplit_once('/')?;
                Some(Claim {
                    owner: owner.to_owned(),
                    until_ms: until.parse().ok()?,
                })
            }),
            // Anything but one plain address (a list, say) is no address we mail.
            requester: ours(m, KEY_REQUESTER).map(|a| match a.as_str() {
                REQUESTER_UNDECIDED => a,
                _ if crate::address::is_bare_address(&a) => a,
                _ => String::new(),
            }),
            requester_thread: ours(m, KEY_REQUESTER_THREAD).and_then(|v| {
                match v.split('/').collect::<Vec<_>>()[..] {
                    [email, timestamp, message_id] => Some(RequesterThread {
                        email: email.to_owned(),
                        timestamp: timestamp.to_owned(),
                        message_id: message_id.to_owned(),
                    }),
                    _ => None,
                }
            }),
            requester_done: ours(m, KEY_REQUESTER_DONE).is_some(),
            reminders: ours(m, KEY_REMINDERS)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            reminded: ours(m, KEY_REMINDED)
                .map(|v| {
                    (split_list(&v).iter())
                        .filter_map(|p| {
                            let (e, n) = p.rsplit_once('/')?;
                            Some((e.to_owned(), n.parse().ok()?))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Our per-recipient review counts, to be changed; when there are none (or they were stale:
    /// the original plugin has raised `reviews_count` since), made from what the original's keys
    /// say: every thread has had `reviews_count` reviews.
    pub(super) fn reviews_sent_mut(&mut self) -> &mut BTreeMap<String, usize> {
        let (threads, count) = (&self.threads, self.reviews_count);
        self.reviews_sent
            .get_or_insert_with(|| threads.iter().map(|t| (t.email.clone(), count)).collect())
    }

    /// How many reviews `email` has been sent.
    pub fn reviews_sent_to(&self, email: &str) -> usize {
        match &self.reviews_sent {
            Some(m) => m.get(email).copied().unwrap_or(0),
            None => self.reviews_count,
        }
    }

    /// Whether `email` has had the resolution mail.
    pub fn resolution_sent_to(&self, email: &str) -> bool {
        match &self.resolution_sent {
            Some(list) => list.iter().any(|e| e == email),
            None => self.is_resolved(),
        }
    }

    /// Whether `email` failed for good at `stage`.
    pub fn failed_at(&self, email: &str, stage: &str) -> bool {
        let key = format!("{email}/{stage}");
        self.failed.contains(&key)
    }

    /// Records that `email` failed for good at `stage` (once).
    pub fn fail(&mut self, email: &str, stage: &str) {
        if !self.failed_at(email, stage) {
            self.failed.push(format!("{email}/{stage}"));
        }
    }

    /// What the original sends as "expected" when there is no data yet: all seven keys empty.
    pub fn empty_encoding() -> BTreeMap<String, String> {
        KEYS.iter()
            .map(|k| (k.to_string(), String::new()))
            .collect()
    }
}

/// `email_threads`: `email/timestamp/message-id` items, comma-joined.
fn encode_threads(threads: &[Thread]) -> String {
    threads
        .iter()
        // A field holding a separator cannot be stored (the original would misread it).
        .filter(|t| {
            ![&t.email, &t.timestamp, &t.message_id]
                .iter()
                .any(|f| f.contains(['/', ',']))
        })
        .map(|t| format!("{}/{}/{}", t.email, t.timestamp, t.message_id))
        .collect::<Vec<_>>()
        .join(",")
}

/// The threads, the legacy `email` + `timestamp` pair first.
fn decode_threads(m: &BTreeMap<String, String>) -> Vec<Thread> {
    let get = |k: &str| m.get(k).map(String::as_str).unwrap_or_default();
    let mut threads = Vec::new();
    let (legacy_email, legacy_ts) = (get("email"), get("timestamp"));
    if !legacy_email.is_empty() && !legacy_ts.is_empty() {
        threads.push(Thread {
            email: legacy_email.to_owned(),
            timestamp: legacy_ts.to_owned(),
            message_id: String::new(),
        });
    }
    // Where each recipient's thread is in `threads`.
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    if let Some(t) = threads.first() {
        at.insert(t.email.clone(), 0);
    }
    for item in get("email_threads").split(',').filter(|s| !s.is_empty()) {
        let parts: Vec<&str> = item.split('/').collect();
        if let [email, timestamp, message_id] = parts[..] {
            let thread = Thread {
                email: email.into(),
                timestamp: timestamp.into(),
                message_id: message_id.into(),
            };
            // One thread a recipient, whatever the data says (else every reply went twice);
            // one that knows its Message-ID is the better.
            match at.get(&thread.email) {
                Some(&i) if threads[i].message_id.is_empty() => threads[i] = thread,
                Some(_) => {}
                None => {
                    at.insert(thread.email.clone(), threads.len());
                    threads.push(thread);
                }
            }
        }
    }
    threads
}

/// `te_reviews_sent`, unless it was written for another `reviews_count` (then stale).
fn decode_reviews_sent(
    m: &BTreeMap<String, String>,
    reviews_count: usize,
) -> Option<BTreeMap<String, usize>> {
    let written_for = ours(m, KEY_REVIEWS_FOR).and_then(|v| v.parse().ok());
    if written_for != Some(reviews_count) {
        return None;
    }
    let pairs = split_list(&ours(m, KEY_REVIEWS_SENT)?);
    let parse = |p: &String| {
        let (e, n) = p.rsplit_once('/')?;
        Some((e.to_owned(), n.parse().ok()?))
    };
    Some(pairs.iter().filter_map(parse).collect())
}

/// One of our `v1:` values, `None` when absent or not ours.
fn ours(m: &BTreeMap<String, String>, key: &str) -> Option<String> {
    m.get(key)?.strip_prefix(V1).map(str::to_owned)
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// [`split_list`], each item once, in order: a recipient written twice by someone else would
/// otherwise be mailed twice (a hash set: the data may be hostile and large).
fn split_unique(v: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    (v.split(',').filter(|s| !s.is_empty() && seen.insert(*s)))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review 15: a recipient written twice (by someone else, or a damaged key) is one
    /// recipient: one thread, listed once, so no mail goes to it twice in a round.
    #[test]
    fn recipients_and_threads_written_twice_are_read_once() {
        let m: BTreeMap<String, String> = [
            ("email_threads", "a@x/1/M1,b@x/2/M2,a@x/3/M3"),
            ("email", "c@x"),
            ("timestamp", "0"),
            ("te_recipients", "v1:a@x,b@x,a@x,,b@x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let d = PluginData::decode(&m);
        let threads: Vec<_> = (d.threads.iter())
            .map(|t| (t.email.as_str(), t.message_id.as_str()))
            .collect();
        assert_eq!(threads, [("c@x", ""), ("a@x", "M1"), ("b@x", "M2")]);
        assert_eq!(d.intended, Some(vec!["a@x".to_owned(), "b@x".to_owned()]));
    }

    /// Review 13: our per-recipient counts gone stale (the original plugin raised
    /// `reviews_count` mid-round) decode as absent; recording one recipient's progress then must
    /// start from the original's meaning (every thread had them all), not from nobody having
    /// any, or the other recipients get every review reply again.
    #[test]
    fn recording_over_stale_review_counts_keeps_the_other_recipients() {
        use super::super::stage::{Job, Stage};
        let mut d = sample();
        assert_eq!(d.reviews_sent, None);
        let job = Job {
            email: "E1".into(),
            start: 3,
            mails: vec![],
        };
        Stage::Reviews(vec![]).record(&mut d, &job, 1, None);
        assert_eq!(d.reviews_sent_to("E1"), 3);
        assert_eq!(d.reviews_sent_to("E2"), 3);
    }

    fn sample() -> PluginData {
        PluginData {
            user: "user-foo".into(),
            roles: vec!["role-foo".into(), "role-bar".into()],
            request_reason: "foo reason".into(),
            reviews_count: 3,
            resolution: Some(Resolution::Approved),
            resolution_other: String::new(),
            resolve_reason: "foo ok".into(),
            intended: None,
            reviews_sent: None,
            resolution_sent: None,
            failed: vec![],
            claim: None,
            requester: None,
            requester_thread: None,
            requester_done: false,
            reminders: 0,
            reminded: Default::default(),
            threads: vec![
                Thread {
                    email: "E1".into(),
                    timestamp: "0000001".into(),
                    message_id: "M1".into(),
                },
                Thread {
                    email: "E2".into(),
                    timestamp: "0000002".into(),
                    message_id: "M2".into(),
                },
            ],
        }
    }

    /// The original's TestEncodeDecodePluginData.
    #[test]
    fn encode_decode() {
        let m = sample().encode();
        assert_eq!(m.len(), 7);
        assert_eq!(m["roles"], "role-foo,role-bar");
        assert_eq!(m["reviews_count"], "3");
        assert_eq!(m["resolution"], "APPROVED");
        assert_eq!(m["resolve_reason"], "foo ok");
        assert_eq!(m["email_threads"], "E1/0000001/M1,E2/0000002/M2");
        assert_eq!(m["user"], "user-foo");
        assert_eq!(m["request_reason"], "foo reason");
        assert_eq!(PluginData::decode(&m), sample());
    }

    /// The original's TestEncodeEmptyPluginData and TestDecodeEmptyPluginData.
    #[test]
    fn empty() {
        let m = PluginData::default().encode();
        assert_eq!(m, PluginData::empty_encoding());
        assert_eq!(PluginData::decode(&BTreeMap::new()), PluginData::default());
    }

    #[test]
    fn our_keys_round_trip_and_absent_means_original_semantics() {
        let mut d = sample();
        assert_eq!(d.reviews_sent_to("E1"), 3);
        assert!(d.resolution_sent_to("E2"));
        d.intended = Some(vec!["E1".into(), "E2".into(), "E3".into()]);
        d.reviews_sent = Some([("E1".to_owned(), 3), ("E2".to_owned(), 1)].into());
        d.resolution_sent = Some(vec![]);
        d.failed = vec!["E3/new".into()];
        d.claim = Some(Claim {
            owner: "host-1.abc".into(),
            until_ms: 1_700_000_000_000,
        });
        let m = d.encode();
        assert_eq!(m[KEY_RESOLUTION_SENT], "v1:");
        assert_eq!(m[KEY_REVIEWS_SENT], "v1:E1/3,E2/1");
        assert_eq!(PluginData::decode(&m), d);
        assert_eq!(d.reviews_sent_to("E2"), 1);
        assert!(!d.resolution_sent_to("E1"));
        assert!(d.failed_at("E3", "new"));
    }

    #[test]
    fn our_review_counts_go_stale_when_the_original_announces_more() {
        let mut d = sample();
        d.reviews_sent = Some([("E1".to_owned(), 2), ("E2".to_owned(), 3)].into());
        let mut m = d.encode();
        assert_eq!(PluginData::decode(&m).reviews_sent_to("E1"), 2);
        // The original plugin announced a fourth review itself: it writes only its own keys.
        m.insert("reviews_count".into(), "4".into());
        let d = PluginData::decode(&m);
        assert_eq!(d.reviews_sent, None);
        assert_eq!(d.reviews_sent_to("E1"), 4);
    }

    #[test]
    fn legacy_keys_and_malformed_threads() {
        let m: BTreeMap<String, String> = [
            ("email", "old@example.com"),
            ("timestamp", "2020-01-01"),
            (
                "email_threads",
                "a@x/t1/<id1@mailgun>,broken,b@x/t2/id2,c/d/e/f",
            ),
            ("reviews_count", "many"),
            ("resolution", "SOMETHING_NEW"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let d = PluginData::decode(&m);
        let emails: Vec<_> = d.threads.iter().map(|t| t.email.as_str()).collect();
        assert_eq!(emails, ["old@example.com", "a@x", "b@x"]);
        assert_eq!(d.threads[0].message_id, "");
        assert_eq!(d.threads[1].message_id, "<id1@mailgun>");
        assert_eq!(d.reviews_count, 0);
        assert!(d.is_resolved());
        assert_eq!(d.encode()["resolution"], "SOMETHING_NEW");
    }
}
