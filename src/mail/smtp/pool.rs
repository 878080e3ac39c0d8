//! Idle SMTP connections kept for the next mail.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::dial::Connection;

/// A stack of idle connections: the most recently used is reused first, so the rest age out.
pub(super) struct Pool {
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

struct Idle {
    conn: Connection,
    since: Instant,
}

impl Pool {
    pub(super) fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The freshest idle connection not older than the idle timeout, and how long it was idle;
    /// older ones are dropped.
    pub(super) fn take(&self) -> Option<(Connection, Duration)> {
        let mut idle = self.lock();
        let timeout = self.idle_timeout;
        idle.retain(|i| i.since.elapsed() < timeout);
        idle.pop().map(|i| (i.conn, i.since.elapsed()))
    }

    /// Keeps `conn` for reuse unless it is broken or the pool is full.
    pub(super) fn put(&self, conn: Connection) {
        if conn.smtp.has_broken() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Every idle connection, leaving the pool empty.
    pub(super) fn drain(&self) -> Vec<Connection> {
        self.lock().drain(..).map(|i| i.conn).collect()
    }
}
