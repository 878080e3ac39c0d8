//! Second reader, fourteenth round of fixes (61c0e6d, with bf0e84d, 7e911ff, 3a28242, 6e7f85a,
//! 18956ef).

use tokio::time::Instant;

use super::partition::Committing;
use super::*;

/// The shared store as replica A sees it: the Auth Service is unreachable (every call refused
/// at once) from `down.0` until `down.1`. Counts A's calls, with when they were made.
struct Outage {
    inner: Arc<MemoryStore>,
    down: (Instant, Instant),
    calls: Mutex<Vec<Instant>>,
}

impl Outage {
    fn over(inner: &Arc<MemoryStore>, from: Duration, to: Duration) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            inner: inner.clone(),
            down: (now + from, now + to),
            calls: Mutex::default(),
        })
    }

    /// Notes a call; `Err` while Auth is down.
    fn call(&self) -> Result<(), TeleportError> {
        let now = Instant::now();
        self.calls.lock().unwrap().push(now);
        match now >= self.down.0 && now < self.down.1 {
            true => Err(TeleportError::Unavailable("auth unreachable".into())),
            false => Ok(()),
        }
    }

    /// A's calls made between `from` and `to` after `t0`.
    fn calls_between(&self, t0: Instant, from: Duration, to: Duration) -> usize {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|c| **c > t0 + from && **c < t0 + to)
            .count()
    }
}

#[async_trait::async_trait]
impl PluginDataStore for Outage {
    async fn get(&self, id: &str) -> Result<Option<RawPluginData>, TeleportError> {
        self.call()?;
        self.inner.get(id).await
    }

    async fn update(
        &self,
        id: &str,
        set: &RawPluginData,
        expect: &RawPluginData,
    ) -> Result<(), TeleportError> {
        self.call()?;
        self.inner.update(id, set, expect).await
    }
}

/// round.rs:256 with round.rs:190-192 (61c0e6d): a failed renewal is tried again after a
/// fifteenth of a lease (2 s), and renewals now go on for as long as any mail is in flight,
/// past the hand-over margin and past `held_until`; each failure is a WARN (round.rs:267).
/// With the Auth Service down, one request whose mail is still being written logs "Cannot
/// renew the claim" every 2 s for the whole round: here 20 WARNs for one request in 40 s,
/// within both mailers' own deadlines (no hung mailer needed; a mailer that never answers
/// gives 70 before the 120 s wait ends it). A burst of N requests in flight when Auth goes
/// down is 20·N WARNs, and as many calls hammering an Auth Service that is coming back up.
/// Before 61c0e6d the same round said it twice (10 s and 20 s, then no more renewals).
///
/// A claims at 0 s (new-thread mails to a@ and b@); Auth is down from 9 s. b@'s mail goes at
/// once; a@'s waits in the SMTP queue until 29.5 s, is committed, and its message and reply
/// take 19 s (under the 10 s deadline each): the round lasts until 48.5 s.
#[tokio::test(start_paused = true)]
async fn review_fixes14_auth_down_during_a_round_is_not_a_renewal_warn_every_two_seconds() {
    let store = Arc::<MemoryStore>::default();
    resumed(&store, "r1", &[]);
    let delivered = Arc::<ScriptedMailer>::default();
    let mailer = Arc::new(Committing {
        delivered: delivered.clone(),
        timing: BTreeMap::from([(
            "a@example.com",
            (Duration::from_millis(29_500), Duration::from_secs(19)),
        )]),
    });
    let down = Outage::over(&store, Duration::from_secs(9), Duration::from_secs(3600));
    let a = engine_over(down, mailer, policy("a"));
    let warnings = Logged::warnings();
    let _w = warnings.capture();
    a.handle_event(put("r1")).await;
    assert_eq!(
        delivered.delivered().len(),
        2,
        "{:?}",
        delivered.deliveries()
    );
    let said = warnings.containing("Cannot renew the claim");
    assert!(
        said.len() <= 3,
        "{} WARNs that the claim cannot be renewed, for one request in one round: {said:?}",
        said.len()
    );
}

/// round.rs:200-204 with :190-192: a renewal that finds the claim taken is recorded with
/// `get_or_insert`, so a round that had already stopped handing mail over (ClaimUnconfirmed:
/// the hand-over margin passed, or `held_until`) keeps `interrupted = ClaimUnconfirmed`. Then
/// `renewing()` stays true: the round goes on renewing every 2 s a claim it knows is someone
/// else's (each renewal a read, and a write of our progress into the holder's data, for as
/// long as a mail is in flight, up to the 120 s wait), against the rule that renewals stop once
/// the claim is known taken. And settle (delivery.rs:207-221) takes the round for one whose
/// claim could not be confirmed: for the last reminder round it logs the ERROR that the
/// reminder is not sent "unless another replica sends it", though A knows the claim's holder
/// and that holder has sent it (a taken claim is the WARN of delivery.rs:207-209).
///
/// Last reminder round of r1 (a@ and b@). A claims at 0 s; Auth is down for A from 10 s to
/// 31 s. a@'s reminder is taken by A's SMTP worker at once and takes 45 s; b@'s waits in the
/// queue. At 30 s A's lease ends (b@'s withdrawn); B, waiting, claims and sends both. A's
/// renewal at 32 s finds the claim taken; a@'s mail is still being written until 45 s.
#[tokio::test(start_paused = true)]
async fn review_fixes14_a_round_that_finds_its_claim_taken_after_giving_up_stops_renewing() {
    let store = Arc::<MemoryStore>::default();
    let delivered = Arc::<ScriptedMailer>::default();
    engine(&store, &delivered, "setup")
        .handle_event(put("r1"))
        .await;
    assert_each_once(&delivered, 2);
    let t0 = Instant::now();
    let mailer = Arc::new(Committing {
        delivered: delivered.clone(),
        timing: BTreeMap::from([
            ("a@example.com", (Duration::ZERO, Duration::from_secs(45))),
            ("b@example.com", (Duration::from_secs(52), Duration::ZERO)),
        ]),
    });
    let down = Outage::over(&store, Duration::from_secs(10), Duration::from_secs(31));
    let a = engine_over(down.clone(), mailer, policy("a"));
    let b = engine(&store, &delivered, "b");
    let errors = Logged::errors();
    let _e = errors.capture();
    let req = aged("r1", 3 * HOUR + Duration::from_secs(60), &[]);
    let run_a = spawn_remind(&a, &req);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let run_b = spawn_remind(&b, &req);
    run_a.await.unwrap().unwrap();
    run_b.await.unwrap().unwrap();
    assert!(
        reminded(&delivered).contains(&"b@example.com".to_owned()),
        "B sent b@'s reminder: {:?}",
        delivered.deliveries()
    );
    // A learns at 32 s that the claim is B's; a@'s mail is in flight until 45 s.
    let after_taken =
        down.calls_between(t0, Duration::from_millis(32_500), Duration::from_secs(45));
    let said = errors.containing("Reminder not sent");
    assert!(
        after_taken == 0 && said.is_empty(),
        "A renewed a claim it knew was B's {after_taken} times, and said at ERROR that the \
         reminder B sent may not be sent: {said:?}"
    );
}
