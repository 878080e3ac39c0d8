//! The load: a burst of requests created as fast as the fake Auth Service takes them, then
//! requests at a fixed rate; each request is owed a new-thread mail to three recipients.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use teleport_email::testkit::auth::FakeAuth;

use crate::sink::{Sink, Tally};

/// `role_to_recipients."*"`.
pub const ALL: &str = "all@example.com";
/// The suggested reviewers of every request.
pub const REVIEWERS: [&str; 2] = ["reviewer1@example.com", "reviewer2@example.com"];
pub const RECIPIENTS: [&str; 3] = [ALL, REVIEWERS[0], REVIEWERS[1]];

/// How long the mails of a phase may take to arrive after its last request.
const DRAIN: Duration = Duration::from_secs(120);
/// How long we keep listening for duplicates once every mail is in.
const SETTLE: Duration = Duration::from_millis(1500);

/// Request id → when it was created.
pub type Created = HashMap<String, Instant>;

fn create(auth: &FakeAuth, i: usize, reason: &str) -> String {
    auth.create_request(
        &format!("user{i}@example.com"),
        &["editor"],
        reason,
        &REVIEWERS,
    )
}

/// A burst outcome: the tally and the time from the first request to the last mail.
#[derive(Clone)]
pub struct Burst {
    pub tally: Tally,
    pub elapsed: Option<Duration>,
}

impl Burst {
    pub fn from(tally: Tally, start: Instant) -> Self {
        let elapsed = tally.last.map(|last| last - start);
        Self { tally, elapsed }
    }

    pub fn mails_per_second(&self) -> Option<f64> {
        let secs = self.elapsed?.as_secs_f64();
        (secs > 0.0).then(|| self.tally.delivered() as f64 / secs)
    }
}

/// Creates `n` requests back to back and waits for their mails.
pub async fn burst(auth: &FakeAuth, sink: &Sink, n: usize) -> Burst {
    let before = sink.count();
    let start = Instant::now();
    let mut created = Created::new();
    for i in 0..n {
        let id = create(auth, i, "burst");
        created.insert(id, Instant::now());
    }
    // Every request counts from the start of the burst: the operator's question is how long
    // the whole burst takes to reach every mailbox.
    for at in created.values_mut() {
        *at = start;
    }
    finish(sink, before, &created).await;
    Burst::from(Tally::of(&sink.accepted(), &created, &RECIPIENTS), start)
}

/// Creates requests at `rate` per second for `seconds`, then waits for their mails.
pub async fn steady(auth: &FakeAuth, sink: &Sink, rate: f64, seconds: f64) -> Tally {
    let before = sink.count();
    let count = (rate * seconds).round() as usize;
    let start = tokio::time::Instant::now();
    let mut created = Created::new();
    for i in 0..count {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let at = Instant::now();
        let id = create(auth, 100_000 + i, "steady");
        created.insert(id, at);
    }
    finish(sink, before, &created).await;
    Tally::of(&sink.accepted(), &created, &RECIPIENTS)
}

async fn finish(sink: &Sink, before: usize, created: &Created) {
    let want = before + created.len() * RECIPIENTS.len();
    let _ = sink.wait_for(want, DRAIN).await;
    tokio::time::sleep(SETTLE).await;
}
