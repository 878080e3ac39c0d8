//! Decorrelated-jitter backoff: each wait is random between the base and three times the last
//! wait, capped. Unlike the original, it can be reset after a healthy connection.

use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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
