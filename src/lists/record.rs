//! What the plugin keeps on an Access List (plugin data of kind `access_list`): when each owner
//! was last reminded, in the Slack plugin's format, and the reminders being sent now.
//!
//! - `user_notifications`: a JSON object, user name → RFC 3339 time of their last reminder (the
//!   key and format the Slack plugin writes under its own name, so the two read alike).
//! - `te_sending` (ours): user name → RFC 3339 time until which a replica holds that user's
//!   reminder while it sends it. A claim still standing after that time was left by a replica that
//!   stopped mid-send: the reminder is sent again.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::calendar::{parse_rfc3339, rfc3339};
use crate::teleport::PluginData;

pub(super) const NOTIFIED_KEY: &str = "user_notifications";
pub(super) const SENDING_KEY: &str = "te_sending";

/// The stored times cannot be read (not a JSON object of strings).
#[derive(Debug, thiserror::Error)]
#[error("{key} in the plugin data of Access List {list:?} is not a JSON object of times")]
pub(super) struct Unreadable {
    pub(super) key: &'static str,
    pub(super) list: String,
}

/// The record as read: each key's stored text (for the compare-and-swap) and its times by user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Record {
    raw: [String; 2],
    pub(super) notified: BTreeMap<String, String>,
    pub(super) sending: BTreeMap<String, String>,
}

impl Record {
    /// Reads `data` (`None`: no record yet) of list `list`. A key that cannot be read is taken as
    /// empty (its owners are owed a reminder, and the next write replaces it) and named in the
    /// error returned beside the record.
    pub(super) fn read(list: &str, data: Option<&PluginData>) -> (Self, Option<Unreadable>) {
        let get = |key: &str| data.and_then(|d| d.get(key)).cloned().unwrap_or_default();
        let raw = [get(NOTIFIED_KEY), get(SENDING_KEY)];
        let mut problem = None;
        let mut parse = |key: &'static str, text: &str| match text {
            "" => BTreeMap::new(),
            _ => serde_json::from_str::<BTreeMap<String, String>>(text).unwrap_or_else(|_| {
                problem = Some(Unreadable {
                    key,
                    list: list.to_owned(),
                });
                BTreeMap::new()
            }),
        };
        let notified = parse(NOTIFIED_KEY, &raw[0]);
        let sending = parse(SENDING_KEY, &raw[1]);
        let record = Self {
            raw,
            notified,
            sending,
        };
        (record, problem)
    }

    /// When `user` was last reminded; `None` when never, or the time cannot be read (Go's zero
    /// time, which the Slack plugin writes for "never", reads as a time long past).
    pub(super) fn last_reminded(&self, user: &str) -> Option<SystemTime> {
        self.notified.get(user).and_then(|t| parse_rfc3339(t).ok())
    }

    /// Until when another send of `user`'s reminder holds it; `None` when none does.
    pub(super) fn held_until(&self, user: &str) -> Option<SystemTime> {
        self.sending
            .get(user)
            .map(|t| parse_rfc3339(t).unwrap_or(SystemTime::UNIX_EPOCH))
    }

    /// Notes `user` reminded at `at`, their send held until `until`.
    pub(super) fn claim(&mut self, user: &str, at: SystemTime, until: SystemTime) {
        self.notified.insert(user.to_owned(), rfc3339(at));
        self.sending.insert(user.to_owned(), rfc3339(until));
    }

    /// The compare-and-swap that turns the stored record into this one: `(set, expect)`. The
    /// expectation always names both keys (a missing one as `""`), so it is never empty (which
    /// Teleport would take as "no condition") and two replicas creating the record race fairly.
    pub(super) fn swap(&self) -> (PluginData, PluginData) {
        let encode = |m: &BTreeMap<String, String>| match m.is_empty() {
            true => String::new(),
            // A map of strings always serializes.
            false => serde_json::to_string(m).unwrap_or_default(),
        };
        let set = PluginData::from([
            (NOTIFIED_KEY.to_owned(), encode(&self.notified)),
            (SENDING_KEY.to_owned(), encode(&self.sending)),
        ]);
        let expect = PluginData::from([
            (NOTIFIED_KEY.to_owned(), self.raw[0].clone()),
            (SENDING_KEY.to_owned(), self.raw[1].clone()),
        ]);
        (set, expect)
    }

    /// Whether this record differs from the one read.
    pub(super) fn changed(&self) -> bool {
        let (set, expect) = self.swap();
        set != expect
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn data(pairs: &[(&str, &str)]) -> PluginData {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_what_the_slack_plugin_writes() {
        let d = data(&[(
            NOTIFIED_KEY,
            r#"{"alice":"2023-02-15T00:00:00.123456789+01:00","bob":"0001-01-01T00:00:00Z"}"#,
        )]);
        let (r, problem) = Record::read("ops", Some(&d));
        assert!(problem.is_none());
        let alice = r.last_reminded("alice").unwrap();
        assert_eq!(
            alice,
            SystemTime::UNIX_EPOCH + Duration::new(1_676_415_600, 123_456_789)
        );
        assert!(r.last_reminded("bob").unwrap() < SystemTime::UNIX_EPOCH);
        assert_eq!(r.last_reminded("carol"), None);
        assert_eq!(r.held_until("alice"), None);
    }

    #[test]
    fn the_swap_expects_exactly_what_was_read_and_writes_slack_compatible_json() {
        let (mut r, _) = Record::read("ops", None);
        assert!(!r.changed());
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_676_419_200);
        r.claim("alice", at, at + Duration::from_secs(900));
        let (set, expect) = r.swap();
        assert_eq!(set[NOTIFIED_KEY], r#"{"alice":"2023-02-15T00:00:00Z"}"#);
        assert_eq!(set[SENDING_KEY], r#"{"alice":"2023-02-15T00:15:00Z"}"#);
        assert_eq!(expect, data(&[(NOTIFIED_KEY, ""), (SENDING_KEY, "")]));
        // Read back, then the send settled: the claim goes, and so does the key.
        let stored = set.clone();
        let (mut back, _) = Record::read("ops", Some(&stored));
        assert_eq!(back.last_reminded("alice"), Some(at));
        assert_eq!(
            back.held_until("alice"),
            Some(at + Duration::from_secs(900))
        );
        back.sending.remove("alice");
        let (set, expect) = back.swap();
        assert_eq!(set[SENDING_KEY], "");
        assert_eq!(expect, stored);
    }

    #[test]
    fn hostile_records_are_named_and_read_safely() {
        for bad in ["[1,2]", "{\"a\":1}", "not json", "{"] {
            let d = data(&[(NOTIFIED_KEY, bad)]);
            let (r, problem) = Record::read("ops", Some(&d));
            let e = problem.unwrap();
            assert!(e.to_string().contains("user_notifications"), "{e}");
            assert!(r.notified.is_empty());
            assert_eq!(
                r.swap().1[NOTIFIED_KEY],
                bad,
                "the swap expects what is stored"
            );
        }
        let d = data(&[
            (NOTIFIED_KEY, r#"{"alice":"yesterday"}"#),
            (SENDING_KEY, r#"{"alice":"soon"}"#),
        ]);
        let (r, _) = Record::read("ops", Some(&d));
        assert_eq!(r.last_reminded("alice"), None, "unreadable: owed");
        assert_eq!(
            r.held_until("alice"),
            Some(SystemTime::UNIX_EPOCH),
            "unreadable: lapsed"
        );
    }
}
