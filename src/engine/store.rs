//! Where a request's plugin data is read and compare-and-swap written: the [`PluginDataStore`]
//! (Teleport's Auth Service in production) and the CAS loop the engine changes it through.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::EngineError;
use super::plugindata::{PINNED_KEYS, PLUGIN_NAME, PluginData};
use super::survey::Survey;
use crate::backoff::Backoff;
use crate::teleport::{TeleportClient, TeleportError};

/// Plugin data as stored: key → value.
pub type RawPluginData = BTreeMap<String, String>;

/// What [`PluginDataStore::scan`] hands each record to: `(request id, data)`.
pub type EachRecord<'a> = dyn FnMut(&str, RawPluginData) + Send + 'a;

/// Compare-and-swap attempts before giving up (the original tries 5 times; replicas contend more).
pub const MAX_CAS_TRIES: usize = 10;

/// Requests whose last write is remembered; the cache is simply emptied when full.
const WRITTEN_CACHE_MAX: usize = 4096;

/// Teleport's plugin-data calls for access requests, as the engine needs them.
#[async_trait::async_trait]
pub trait PluginDataStore: Send + Sync {
    /// The `email` plugin's data for request `id`; `None` when there is none.
    async fn get(&self, id: &str) -> Result<Option<RawPluginData>, TeleportError>;

    /// Writes `set` (`""` deletes a key) if every key of `expect` holds that value (absent counts
    /// as `""`); otherwise [`TeleportError::CompareFailed`].
    async fn update(
        &self,
        id: &str,
        set: &RawPluginData,
        expect: &RawPluginData,
    ) -> Result<(), TeleportError>;

    /// Every request's data, handed to `each` one at a time, in one call; returns how many
    /// records were read. Stores that cannot do it say [`TeleportError::Unimplemented`].
    async fn scan(&self, each: &mut EachRecord<'_>) -> Result<usize, TeleportError> {
        let _ = each;
        Err(TeleportError::Unimplemented(
            "reading every request's plugin data at once".into(),
        ))
    }
}

#[async_trait::async_trait]
impl PluginDataStore for TeleportClient {
    async fn get(&self, id: &str) -> Result<Option<RawPluginData>, TeleportError> {
        self.get_plugin_data(id, PLUGIN_NAME).await
    }

    async fn update(
        &self,
        id: &str,
        set: &RawPluginData,
        expect: &RawPluginData,
    ) -> Result<(), TeleportError> {
        self.update_plugin_data(id, PLUGIN_NAME, set, expect).await
    }

    async fn scan(&self, each: &mut EachRecord<'_>) -> Result<usize, TeleportError> {
        self.scan_plugin_data(PLUGIN_NAME, each).await
    }
}

/// A write that happened: the data before (`None`: there was none) and after.
#[derive(Debug)]
pub(super) struct Written {
    pub old: Option<PluginData>,
    pub new: PluginData,
}

/// Where the first compare-and-swap of a change takes the stored data from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FirstGuess {
    /// Our own last write, else a read.
    LastWrite,
    /// Our own last write, else "no data yet" (a request created moments ago): saves a read.
    LastWriteOrAbsent,
}

/// The plugin data of every request, changed only by compare-and-swap.
pub(super) struct PluginStore {
    backend: Arc<dyn PluginDataStore>,
    /// Request id → the plugin data as we last wrote it: saves a read before the next write.
    written: Mutex<HashMap<String, RawPluginData>>,
}

impl PluginStore {
    pub(super) fn new(backend: Arc<dyn PluginDataStore>) -> Self {
        Self {
            backend,
            written: Mutex::default(),
        }
    }

    /// Every request's plugin data in one call, boiled down to what a reconcile needs
    /// (counting the requester's mails when `requester` is on).
    pub(super) async fn survey(&self, requester: bool) -> Result<(Survey, usize), TeleportError> {
        let mut survey = Survey::new(requester);
        let read = (self.backend)
            .scan(&mut |id, raw| survey.note(id, &PluginData::decode(&raw)))
            .await?;
        Ok((survey, read))
    }

    /// Changes a request's plugin data by compare-and-swap. `update` sees the current data
    /// (`None` when there is none) and returns the new data, or `None` to leave it alone; on a
    /// lost race it runs again on what is stored then. Every key we read is pinned in the
    /// comparison, absent ones as `""`, so no other writer's change slips between our read and
    /// our write. `Ok(None)`: `update` chose not to write (always decided on freshly read data).
    pub(super) async fn modify(
        &self,
        id: &str,
        first: FirstGuess,
        mut update: impl FnMut(Option<&PluginData>) -> Option<PluginData>,
    ) -> Result<Option<Written>, EngineError> {
        let mut guess = match (self.last_write(id), first) {
            (Some(raw), _) => Some(Some(raw)),
            (None, FirstGuess::LastWriteOrAbsent) => Some(None),
            (None, FirstGuess::LastWrite) => None,
        };
        let mut conflicts = Backoff::new(Duration::from_millis(1), Duration::from_millis(320));
        for _ in 0..MAX_CAS_TRIES {
            let from_guess = guess.is_some();
            let raw = match guess.take() {
                Some(raw) => raw,
                None => self.backend.get(id).await?,
            };
            let old = raw.as_ref().map(PluginData::decode);
            let Some(new) = update(old.as_ref()) else {
                if from_guess {
                    continue;
                }
                // What was just read is as good a first guess as our own last write.
                match raw {
                    Some(raw) => self.remember(id, raw),
                    None => self.forget(id),
                }
                return Ok(None);
            };
            let expect = pinned(raw.as_ref());
            let mut set = new.encode();
            // Keys we no longer write (a released claim, the legacy `email`/`timestamp`) are cleared.
            for (k, v) in &expect {
                if !v.is_empty() {
                    set.entry(k.clone()).or_default();
                }
            }
            match self.backend.update(id, &set, &expect).await {
                Ok(()) => {
                    set.retain(|_, v| !v.is_empty());
                    self.remember(id, set);
                    return Ok(Some(Written { old, new }));
                }
                Err(TeleportError::CompareFailed(_)) if from_guess => self.forget(id),
                Err(TeleportError::CompareFailed(_)) => {
                    tokio::time::sleep(conflicts.next_delay()).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::TooManyConflicts)
    }

    /// A request's plugin data as stored now (`None`: there is none).
    pub(super) async fn read(&self, id: &str) -> Result<Option<PluginData>, TeleportError> {
        let raw = self.backend.get(id).await?;
        Ok(raw.as_ref().map(PluginData::decode))
    }

    fn last_write(&self, id: &str) -> Option<RawPluginData> {
        self.cache().get(id).cloned()
    }

    /// Our own last write of `id`'s data, decoded (a hint: another writer may have changed it).
    pub(super) fn last_written(&self, id: &str) -> Option<PluginData> {
        self.last_write(id).map(|raw| PluginData::decode(&raw))
    }

    fn remember(&self, id: &str, raw: RawPluginData) {
        let mut cache = self.cache();
        if cache.len() >= WRITTEN_CACHE_MAX {
            cache.clear();
        }
        cache.insert(id.to_owned(), raw);
    }

    /// Drops what we remember of a request (it changed under us, or is done).
    pub(super) fn forget(&self, id: &str) {
        self.cache().remove(id);
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, RawPluginData>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The comparison for a write over `raw`: every stored key with its value, and every key we read
/// that is not stored as `""`.
fn pinned(raw: Option<&RawPluginData>) -> RawPluginData {
    let mut expect = raw.cloned().unwrap_or_default();
    for k in PINNED_KEYS {
        expect.entry(k.to_owned()).or_default();
    }
    expect
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::MemoryStore;

    fn claim_of(data: Option<&PluginData>) -> Option<PluginData> {
        let mut d = data.cloned().unwrap_or_default();
        d.claim = Some(super::super::Claim {
            owner: "me".into(),
            until_ms: 1,
        });
        Some(d)
    }

    /// Two writers that both add our `te_claim` key to data without one: only one may succeed
    /// (Teleport compares only the keys in `expect`; an absent key must be pinned as `""`).
    #[tokio::test]
    async fn a_key_absent_when_read_is_pinned_so_a_second_writer_loses() {
        let backend = Arc::new(MemoryStore::default());
        let base: RawPluginData = PluginData {
            user: "u".into(),
            ..Default::default()
        }
        .encode()
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        backend.put("r1", base.clone());
        let expect = pinned(Some(&base));
        let mut set = base.clone();
        set.insert("te_claim".into(), "v1:a/1".into());
        backend.update("r1", &set, &expect).await.unwrap();
        set.insert("te_claim".into(), "v1:b/1".into());
        let second = backend.update("r1", &set, &expect).await;
        assert!(
            matches!(second, Err(TeleportError::CompareFailed(_))),
            "{second:?}"
        );
        assert_eq!(backend.raw("r1").unwrap()["te_claim"], "v1:a/1");
    }

    #[tokio::test]
    async fn a_wrong_guess_costs_one_compare_failure_and_a_read() {
        let backend = Arc::new(MemoryStore::default());
        let store = PluginStore::new(backend.clone());
        backend.put("r1", [("user".to_owned(), "someone".to_owned())].into());
        let written = store
            .modify("r1", FirstGuess::LastWriteOrAbsent, claim_of)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(written.old.unwrap().user, "someone");
        assert_eq!(backend.reads(), 1);
        assert_eq!(backend.writes(), 2, "one failed guess, one write");
        // The next change starts from our own last write: no read.
        store
            .modify("r1", FirstGuess::LastWrite, claim_of)
            .await
            .unwrap();
        assert_eq!(backend.reads(), 1);
    }
}
