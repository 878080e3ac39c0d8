//! Doubles for the engine's unit tests: a plugin-data store in memory with Teleport's
//! compare-and-swap rules, and a mailer whose answers a test scripts.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::store::{EachRecord, PluginDataStore, RawPluginData};
use crate::mail::{MailError, Mailer, MessageId, OutgoingMail};
use crate::teleport::TeleportError;

/// The wall clock as tokio's (possibly paused) clock moves it, in Unix ms; `None` outside a
/// runtime.
pub(super) fn now_ms() -> Option<u64> {
    use std::cell::OnceCell;
    use std::time::{Instant, SystemTime};
    // Per thread: each `#[tokio::test]` runs its (paused) clock on a thread of its own.
    thread_local!(static START: OnceCell<(u64, Instant)> = const { OnceCell::new() });
    tokio::runtime::Handle::try_current().ok()?;
    let (wall, at) = START.with(|start| {
        *start.get_or_init(|| {
            let wall = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            (wall, tokio::time::Instant::now().into_std())
        })
    });
    let elapsed = tokio::time::Instant::now()
        .into_std()
        .saturating_duration_since(at);
    Some(wall + elapsed.as_millis() as u64)
}

/// Plugin data in memory, compared and written as Teleport's Auth Service does
/// (`api/types/plugin_data.go`): only the keys in `expect` are compared, absent counts as `""`,
/// and `""` in `set` deletes the key.
#[derive(Default)]
pub(crate) struct MemoryStore {
    data: Mutex<HashMap<String, RawPluginData>>,
    reads: AtomicUsize,
    writes: AtomicUsize,
    scans: AtomicUsize,
}

impl MemoryStore {
    pub(super) fn put(&self, id: &str, raw: RawPluginData) {
        self.data.lock().unwrap().insert(id.to_owned(), raw);
    }

    pub(crate) fn raw(&self, id: &str) -> Option<RawPluginData> {
        self.data.lock().unwrap().get(id).cloned()
    }

    pub(super) fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    /// Update calls, failed comparisons included.
    pub(super) fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl PluginDataStore for MemoryStore {
    async fn get(&self, id: &str) -> Result<Option<RawPluginData>, TeleportError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        Ok(self.raw(id))
    }

    async fn update(
        &self,
        id: &str,
        set: &RawPluginData,
        expect: &RawPluginData,
    ) -> Result<(), TeleportError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        let mut data = self.data.lock().unwrap();
        let stored = data.entry(id.to_owned()).or_default();
        for (k, want) in expect {
            let have = stored.get(k).map(String::as_str).unwrap_or("");
            if have != want {
                return Err(TeleportError::CompareFailed(format!(
                    "expectations not met for field {k:?}"
                )));
            }
        }
        for (k, v) in set {
            if v.is_empty() {
                stored.remove(k);
            } else {
                stored.insert(k.clone(), v.clone());
            }
        }
        Ok(())
    }

    async fn scan(&self, each: &mut EachRecord<'_>) -> Result<usize, TeleportError> {
        self.scans.fetch_add(1, Ordering::SeqCst);
        let data = self.data.lock().unwrap().clone();
        let stored = data.into_iter().filter(|(_, d)| !d.is_empty());
        Ok(stored.map(|(id, d)| each(&id, d)).count())
    }
}

/// What the scripted mailer does with one send.
#[derive(Debug, Clone)]
pub(super) enum Answer {
    Accept,
    Fail(MailError),
    /// Accept after this long (tokio time).
    Slow(Duration),
}

/// A mailer that records what it delivered and answers as scripted (then accepts).
#[derive(Default)]
pub(super) struct ScriptedMailer {
    script: Mutex<VecDeque<Answer>>,
    /// Answer every send with this until cleared (after the script).
    always: Mutex<Option<Answer>>,
    delivered: Mutex<Vec<OutgoingMail>>,
    attempts: AtomicUsize,
}

impl ScriptedMailer {
    pub(super) fn then(&self, answers: impl IntoIterator<Item = Answer>) {
        self.script.lock().unwrap().extend(answers);
    }

    pub(super) fn always(&self, answer: Option<Answer>) {
        *self.always.lock().unwrap() = answer;
    }

    pub(super) fn delivered(&self) -> Vec<OutgoingMail> {
        self.delivered.lock().unwrap().clone()
    }

    /// `(recipient, message id)` of every delivery.
    pub(super) fn deliveries(&self) -> Vec<(String, String)> {
        self.delivered()
            .iter()
            .map(|m| (m.to.clone(), m.message_id.as_str().to_owned()))
            .collect()
    }

    pub(super) fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Mailer for ScriptedMailer {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        let never = CancellationToken::new();
        let outcome = self.send_unless_withdrawn(mail, &never).await;
        outcome.expect("a send that cannot be withdrawn always ends")
    }

    /// A slow answer is a mail waiting in the mailer's queue: withdrawn meanwhile, it never
    /// goes out.
    async fn send_unless_withdrawn(
        &self,
        mail: &OutgoingMail,
        withdraw: &CancellationToken,
    ) -> Option<Result<MessageId, MailError>> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let answer = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .or_else(|| self.always.lock().unwrap().clone())
            .unwrap_or(Answer::Accept);
        match answer {
            Answer::Accept => {}
            Answer::Fail(e) => return Some(Err(e)),
            Answer::Slow(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = withdraw.cancelled() => return None,
                }
            }
        }
        self.delivered.lock().unwrap().push(mail.clone());
        Some(Ok(mail.message_id.clone()))
    }

    async fn health_check(&self) -> Result<(), MailError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "scripted"
    }
}
