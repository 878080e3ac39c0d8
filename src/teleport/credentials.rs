//! The credentials in use, and their renewal: an identity file with `refresh_identity` is re-read
//! every interval, and new connections use what was read last.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::identity::{CredentialError, Identity, load_identity_file, load_key_pair};
use crate::calendar::rfc3339;
use crate::config::Credentials;

/// The current credentials, swapped atomically on reload.
pub struct CredentialStore {
    source: Credentials,
    current: RwLock<Arc<Identity>>,
}

impl CredentialStore {
    /// Loads the credentials once and refuses expired or not-yet-valid ones.
    pub fn load(source: &Credentials) -> Result<Arc<Self>, CredentialError> {
        let identity = read(source)?;
        identity.check_validity(SystemTime::now())?;
        Ok(Arc::new(Self {
            source: source.clone(),
            current: RwLock::new(Arc::new(identity)),
        }))
    }

    /// Wraps already-loaded credentials (tests, `check`).
    pub fn fixed(identity: Identity) -> Arc<Self> {
        Arc::new(Self {
            source: Credentials::KeyPair {
                cert: Default::default(),
                key: Default::default(),
                root_cas: Default::default(),
            },
            current: RwLock::new(Arc::new(identity)),
        })
    }

    /// The credentials new connections use.
    pub fn current(&self) -> Arc<Identity> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the source; the old credentials stay if the new ones cannot be used.
    /// Returns whether the certificate changed.
    pub fn reload(&self) -> Result<bool, CredentialError> {
        let fresh = read(&self.source)?;
        fresh.check_validity(SystemTime::now())?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let changed = current.cert != fresh.cert;
        if changed {
            *current = Arc::new(fresh);
        }
        Ok(changed)
    }

    /// Re-reads the identity file every `interval` until `stop`, as `refresh_identity` asks.
    pub fn spawn_refresh(self: &Arc<Self>, interval: Duration, stop: CancellationToken) {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match store.reload() {
                    Ok(true) => {
                        let info = &store.current().info;
                        tracing::info!(user = %info.user, expires = %rfc3339(info.not_after), "Reloaded the identity file: new certificate in use");
                    }
                    Ok(false) => tracing::debug!("Identity file unchanged"),
                    Err(e) => {
                        tracing::warn!(error = %e, "Failed to reload the identity file; keeping the current credentials")
                    }
                }
            }
        });
    }
}

fn read(source: &Credentials) -> Result<Identity, CredentialError> {
    match source {
        Credentials::IdentityFile { path, .. } => load_identity_file(path),
        Credentials::KeyPair {
            cert,
            key,
            root_cas,
        } => load_key_pair(cert, key, root_cas),
    }
}
