//! When an Access List's owners are owed a reminder, on the Slack plugin's schedule: nothing
//! before the notification start (`next_audit_date` less the list's `notifications.start`), then
//! one reminder per week counted from that start, then one per day once the review date has
//! passed. An owner is owed one when the current period began after their last reminder.

use std::time::{Duration, SystemTime};

use crate::teleport::AccessList;

const DAY: Duration = Duration::from_secs(24 * 3600);
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where a list's review stands now, when its owners hear of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The review date.
    pub by: SystemTime,
    /// The start of the current period: owners reminded before it are owed another reminder.
    pub period: SystemTime,
    /// Whole days since the review date, once it has passed.
    pub overdue_days: Option<u64>,
}

/// Where `list`'s review stands at `now`; `None` while its owners need not hear of it (before the
/// notification start, no review date, or a list that is never reviewed).
pub fn due(list: &AccessList, now: SystemTime) -> Option<Due> {
    if !list.reviewable {
        return None;
    }
    let by = list.next_review?;
    let start = by
        .checked_sub(list.notify_before)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let since_start = now.duration_since(start).ok()?;
    let overdue = now.duration_since(by).ok().filter(|d| !d.is_zero());
    let step = if overdue.is_some() { DAY } else { WEEK };
    let periods = since_start.as_secs() / step.as_secs();
    let period = start + Duration::from_secs(periods * step.as_secs());
    Some(Due {
        by,
        period,
        overdue_days: overdue.map(|d| d.as_secs() / DAY.as_secs()),
    })
}

impl Due {
    /// Whether an owner last reminded at `last` (`None`: never) is owed a reminder now.
    pub fn owed_after(&self, last: Option<SystemTime>) -> bool {
        last.is_none_or(|l| self.period > l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_672_531_200; // 2023-01-01T00:00:00Z

    fn at(days: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + days * 24 * 3600)
    }

    /// Reviews due 2023-03-01 (day 59), reminders from two weeks before (day 45).
    fn list() -> AccessList {
        AccessList {
            name: "ops".into(),
            title: "Ops".into(),
            next_review: Some(at(59)),
            notify_before: 2 * WEEK,
            owners: vec!["alice".into()],
            reviewable: true,
        }
    }

    /// The Slack plugin's own walk through time (its TestAccessListReminder_Singular): owed at two
    /// weeks, one week and zero days before the date, then after it daily, and never twice in a
    /// period.
    #[test]
    fn the_slack_plugins_schedule() {
        let l = list();
        assert_eq!(due(&l, at(44)), None, "before the notification start");
        let mut last = None;
        for (day, owed) in [
            (45, true),
            (46, false),
            (51, false),
            (52, true),
            (58, false),
            (59, true),
            (60, true),
            (60, false),
            (66, true),
        ] {
            let d = due(&l, at(day)).unwrap();
            assert_eq!(d.owed_after(last), owed, "day {day}");
            if owed {
                last = Some(at(day));
            }
        }
        assert_eq!(due(&l, at(59)).unwrap().overdue_days, None, "due that day");
        assert_eq!(due(&l, at(66)).unwrap().overdue_days, Some(7));
        assert_eq!(due(&l, at(66)).unwrap().by, at(59));
    }

    #[test]
    fn lists_without_reviews_are_never_due() {
        let mut l = list();
        l.reviewable = false;
        assert_eq!(due(&l, at(70)), None, "a static or SCIM list");
        let mut l = list();
        l.next_review = None;
        assert_eq!(due(&l, at(70)), None, "no review date");
    }

    #[test]
    fn a_notification_start_before_the_epoch_does_not_panic() {
        let mut l = list();
        l.notify_before = Duration::from_secs(u64::MAX / 4);
        let d = due(&l, at(10)).unwrap();
        assert!(d.period <= at(10));
        assert!(d.owed_after(None));
    }

    /// Kept as a regression test (passes): review dates and notification starts at the ends of
    /// what the wire carries (seconds up to i64::MAX) neither panic nor overflow.
    #[test]
    fn review_extreme_review_dates_and_starts() {
        let now = at(10);
        for (secs, before) in [
            (i64::MAX as u64, i64::MAX as u64),
            (i64::MAX as u64, 0),
            (1, i64::MAX as u64),
            (0, u64::MAX),
        ] {
            let mut l = list();
            l.next_review = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs));
            l.notify_before = Duration::from_secs(before);
            if let Some(d) = due(&l, now) {
                assert!(d.period <= now);
                let _ = d.owed_after(Some(SystemTime::UNIX_EPOCH));
            }
        }
        let mut l = list();
        l.next_review =
            SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(i64::MAX as u64 / 2));
        let d = due(&l, now).unwrap();
        assert!(d.overdue_days.unwrap() > 1_000_000);
    }
}
