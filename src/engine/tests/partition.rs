//! Doubles for the review rounds on claims and leases: one replica's view of the shared store
//! when its path to the Auth Service is slow or cut, and mailers that, as SMTP workers and
//! Mailgun requests do, go on with a mail once they have started on it.

use std::collections::VecDeque;

use super::*;

/// What one write of the cut-off replica does.
#[derive(Clone, Copy)]
pub(super) enum Write {
    Pass,
    /// Refused at once (Auth unreachable): nothing is applied.
    Fail,
    /// Reaches Auth (and is applied) only after this long; dropped before, it never lands.
    Slow(Duration),
    /// Applied at once, but answered only after this long (the answer is slow, not the write).
    AnsweredLate(Duration),
    /// Never answered, never applied (a hung Auth Service).
    Hang,
}

/// The shared in-memory store as one replica sees it: its writes go as scripted, then as
/// `always` (if set), then pass; reads pass. Other replicas use the store directly.
#[derive(Default)]
pub(super) struct Partitioned {
    inner: Arc<MemoryStore>,
    writes: Mutex<VecDeque<Write>>,
    always: Mutex<Option<Write>>,
}

impl Partitioned {
    pub(super) fn over(inner: &Arc<MemoryStore>) -> Arc<Self> {
        Arc::new(Self {
            inner: inner.clone(),
            ..Self::default()
        })
    }

    /// Scripts the next writes, after those scripted already.
    pub(super) fn then(&self, writes: impl IntoIterator<Item = Write>) {
        self.writes.lock().unwrap().extend(writes);
    }

    /// Every write once the scripted ones are done.
    pub(super) fn always(&self, write: Write) {
        *self.always.lock().unwrap() = Some(write);
    }
}

/// [`Partitioned::over`] `inner`, with `writes` scripted.
pub(super) fn partitioned(
    inner: &Arc<MemoryStore>,
    writes: impl IntoIterator<Item = Write>,
) -> Arc<Partitioned> {
    let store = Partitioned::over(inner);
    store.then(writes);
    store
}

#[async_trait::async_trait]
impl PluginDataStore for Partitioned {
    async fn get(&self, id: &str) -> Result<Option<RawPluginData>, TeleportError> {
        self.inner.get(id).await
    }

    async fn update(
        &self,
        id: &str,
        set: &RawPluginData,
        expect: &RawPluginData,
    ) -> Result<(), TeleportError> {
        let next = self.writes.lock().unwrap().pop_front();
        let next = next.or(*self.always.lock().unwrap());
        match next.unwrap_or(Write::Pass) {
            Write::Pass => self.inner.update(id, set, expect).await,
            Write::Fail => Err(TeleportError::Unavailable("auth unreachable".into())),
            Write::Slow(d) => {
                tokio::time::sleep(d).await;
                self.inner.update(id, set, expect).await
            }
            Write::AnsweredLate(d) => {
                let applied = self.inner.update(id, set, expect).await;
                tokio::time::sleep(d).await;
                applied
            }
            Write::Hang => std::future::pending().await,
        }
    }
}

/// A mailer that cannot take a send back once handed it (an SMTP worker that has taken the
/// mail; Mailgun, whose request is out: the trait's default `send_unless_withdrawn`): it goes
/// on when the caller stops waiting.
pub(super) struct Started(pub Arc<ScriptedMailer>);

#[async_trait::async_trait]
impl Mailer for Started {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        let (m, mail) = (self.0.clone(), mail.clone());
        tokio::spawn(async move { m.send(&mail).await })
            .await
            .unwrap()
    }

    async fn health_check(&self) -> Result<(), MailError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "started"
    }
}

/// Like the SMTP queue: a mail waits in the queue (withdrawable) for `queued`, then a worker
/// commits it and writes it, which takes `writing` and goes on whatever the caller does. Per
/// recipient; others are accepted at once.
pub(super) struct Committing {
    pub delivered: Arc<ScriptedMailer>,
    pub timing: BTreeMap<&'static str, (Duration, Duration)>,
}

#[async_trait::async_trait]
impl Mailer for Committing {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        let never = CancellationToken::new();
        self.send_unless_withdrawn(mail, &never).await.unwrap()
    }

    async fn send_unless_withdrawn(
        &self,
        mail: &OutgoingMail,
        withdraw: &CancellationToken,
    ) -> Option<Result<MessageId, MailError>> {
        let (queued, writing) = (self.timing.get(mail.to.as_str()).copied())
            .unwrap_or((Duration::ZERO, Duration::ZERO));
        tokio::select! {
            _ = tokio::time::sleep(queued) => {}
            _ = withdraw.cancelled() => return None,
        }
        let (m, mail) = (self.delivered.clone(), mail.clone());
        let worker = tokio::spawn(async move {
            tokio::time::sleep(writing).await;
            m.send(&mail).await
        });
        Some(worker.await.unwrap())
    }

    async fn health_check(&self) -> Result<(), MailError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "smtp-like"
    }
}
