//! Backoff, the one kind used everywhere (watch reconnects, mail retries, compare-and-swap
//! conflicts): decorrelated jitter, each wait random between the base and three times the last
//! wait, capped. Unlike the original, it can be reset after a healthy connection. [`Retry`] adds a
//! deadline for work that is retried for a while and then given up.

use std::time::Duration;

use tokio::time::Instant;

/// The backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    last: Duration,
}

impl Backoff {
    /// A backoff from `base` up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            last: base,
        }
    }

    /// The watcher's reconnect backoff: 20 ms growing to 5 s.
    pub fn reconnect() -> Self {
        Self::new(Duration::from_millis(20), Duration::from_secs(5))
    }

    /// After a failed `accept` (out of file descriptors): 5 ms growing to 1 s.
    pub fn accept_errors() -> Self {
        Self::new(Duration::from_millis(5), Duration::from_secs(1))
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let upper = (self.last * 3).max(self.base);
        let span = upper.saturating_sub(self.base).as_nanos() as u64;
        let jitter = if span == 0 {
            0
        } else {
            rand::random_range(0..span)
        };
        self.last = (self.base + Duration::from_nanos(jitter)).min(self.cap);
        self.last
    }

    /// Back to the first, short waits.
    pub fn reset(&mut self) {
        self.last = self.base;
    }
}

/// Retries of one piece of work: backoff between attempts, until a deadline (tokio's clock, so
/// tests can pause time).
#[derive(Debug, Clone)]
pub struct Retry {
    backoff: Backoff,
    deadline: Instant,
}

impl Retry {
    /// Retries waiting `min` growing to `max`, for `retry_for` from now.
    pub fn new(min: Duration, max: Duration, retry_for: Duration) -> Self {
        Self {
            backoff: Backoff::new(min, max),
            deadline: Instant::now() + retry_for,
        }
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// How long to wait before the next attempt: the backoff's wait, or what the server `asked`
    /// for when that is longer, never more than `cap`. `None` when waiting that long would pass
    /// the deadline: time to give up.
    pub fn next_wait(&mut self, asked: Option<Duration>, cap: Duration) -> Option<Duration> {
        let wait = self
            .backoff
            .next_delay()
            .max(asked.unwrap_or_default())
            .min(cap);
        (Instant::now() + wait <= self.deadline).then_some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retry_waits_grow_honour_the_server_within_a_cap_and_stop_at_the_deadline() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(10));
        let mut retry = Retry::new(min, max, Duration::from_secs(60));
        let first = retry.next_wait(None, Duration::MAX).unwrap();
        assert!(first >= min && first <= 3 * min, "{first:?}");
        // A server asking for an hour is waited on only up to the cap.
        let capped = retry.next_wait(Some(Duration::from_secs(3600)), Duration::from_secs(15));
        assert_eq!(capped, Some(Duration::from_secs(15)));
        let mut waited = Duration::ZERO;
        while let Some(wait) = retry.next_wait(None, Duration::MAX) {
            assert!(wait <= max, "{wait:?}");
            tokio::time::sleep(wait).await;
            waited += wait;
        }
        assert!(waited <= Duration::from_secs(60), "{waited:?}");
        assert!(
            waited >= Duration::from_secs(50),
            "gave up early: {waited:?}"
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(retry.expired());
    }

    #[test]
    fn stays_within_base_and_cap_and_grows() {
        let mut b = Backoff::reconnect();
        let mut max_seen = Duration::ZERO;
        for _ in 0..200 {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(20) && d <= Duration::from_secs(5),
                "{d:?}"
            );
            max_seen = max_seen.max(d);
        }
        assert!(
            max_seen > Duration::from_secs(1),
            "never grew: {max_seen:?}"
        );
    }

    #[test]
    fn first_wait_is_at_most_three_times_the_base_and_reset_restarts() {
        let mut b = Backoff::reconnect();
        assert!(b.next_delay() <= Duration::from_millis(60));
        for _ in 0..100 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(60));
    }
}
