//! Reloading the configuration in place: on SIGHUP, and when a periodic re-read finds that the
//! config or a secret file changed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{build_mailer, routing};
use crate::config::{self, Config};
use crate::engine::Engine;
use crate::logging::Logging;
use crate::mail::Mailer;

/// Where a SIGHUP reload gets its new config, and what it applies it to.
pub struct Reload {
    pub path: PathBuf,
    pub debug: bool,
    pub logging: Option<Logging>,
    /// One `()` per SIGHUP.
    pub signals: mpsc::Receiver<()>,
    /// How often the config and its `*_file` secrets are re-read to notice a change without a
    /// SIGHUP; never when `None`.
    pub file_check: Option<Duration>,
}

/// The config and mailer in force.
pub(super) struct Current {
    pub(super) config: Config,
    pub(super) mailer: Arc<dyn Mailer>,
}

/// Applies a new config on each SIGHUP, and when a periodic re-read finds that the config or a
/// `*_file` secret changed (a rotated Kubernetes Secret): log settings, recipients, mailer and its
/// secrets. A config that does not load, or a mailer that fails its health check, is rejected and
/// the old one stays; the periodic re-read tries a rejected config again only after five periods
/// (see [`retry_rejected`]).
/// After a reload the watcher reconciles, so mail held back by a mailer-wide failure (a password
/// now fixed) is picked up. Returns the mailer in force when `stop` is cancelled.
pub(super) async fn reload_loop(
    mut reload: Reload,
    mut current: Current,
    engine: Arc<Engine>,
    reconcile: mpsc::Sender<()>,
    stop: CancellationToken,
) -> Arc<dyn Mailer> {
    // What the periodic re-read last rejected (the config, or why it did not load), and when.
    let mut rejected: Option<(Result<Config, String>, Instant)> = None;
    // The settings only a restart applies stay as they were at start, whatever is reloaded.
    let in_force = current.config.clone();
    loop {
        let signalled = tokio::select! {
            _ = stop.cancelled() => return current.mailer,
            signal = reload.signals.recv() => if signal.is_none() { return current.mailer } else { true },
            _ = after(reload.file_check) => false,
        };
        if signalled {
            tracing::info!(config = %reload.path.display(), "SIGHUP: reloading the configuration");
        } else {
            let seen = match config::load(&reload.path) {
                Ok(l) if l.config == current.config => continue,
                Ok(l) => Ok(l.config),
                Err(e) => Err(e.to_string()),
            };
            if let Some((before, at)) = &rejected
                && *before == seen
                && !retry_rejected(&seen, *at, reload.file_check)
            {
                continue;
            }
            rejected = Some((seen, Instant::now()));
            tracing::info!(config = %reload.path.display(), "The configuration or a secret file changed: reloading");
        }
        match reloaded(&reload, &in_force).await {
            Ok(next) => {
                engine.set_routing(routing(&next.config, &next.mailer));
                current = next;
                rejected = None;
                tracing::info!("Configuration reloaded");
                // A full channel: a reconcile is already asked for.
                let _ = reconcile.try_send(());
            }
            Err(e) => {
                tracing::error!(error = %e, "Configuration reload rejected; the previous configuration stays in force");
            }
        }
    }
}

/// Whether a changed config the periodic re-read rejected is tried again: never one that does
/// not load (it is the same file), but one whose mailer failed its check after five periods —
/// the failure may have passed (a restarting server), while a password the server refuses is
/// not retried often enough to lock the account.
fn retry_rejected(seen: &Result<Config, String>, at: Instant, period: Option<Duration>) -> bool {
    seen.is_ok() && period.is_some_and(|p| at.elapsed() >= 5 * p)
}

/// Sleeps `period`, or forever when there is none.
async fn after(period: Option<Duration>) {
    match period {
        Some(period) => tokio::time::sleep(period).await,
        None => std::future::pending().await,
    }
}

/// The default of [`FILE_CHECK_ENV`]: about the kubelet's own sync period for Secret volumes.
pub const DEFAULT_FILE_CHECK: Duration = Duration::from_secs(60);

/// The environment variable that sets how often the config and secret files are re-read to
/// notice a change without a SIGHUP: a Go duration, `0` to turn it off.
pub const FILE_CHECK_ENV: &str = "TELEPORT_EMAIL_FILE_CHECK_INTERVAL";

/// [`FILE_CHECK_ENV`], or its default; an unreadable value is an error naming it.
pub fn file_check_from_env() -> Result<Option<Duration>, String> {
    match std::env::var(FILE_CHECK_ENV) {
        Err(_) => Ok(Some(DEFAULT_FILE_CHECK)),
        Ok(v) => match config::parse_go_duration(&v) {
            Ok(d) if d.is_zero() => Ok(None),
            Ok(d) => Ok(Some(d)),
            Err(e) => Err(format!("{FILE_CHECK_ENV}={v:?}: {e}")),
        },
    }
}

/// The config at `reload.path` with its mailer checked and its log settings applied; each
/// setting that differs from `in_force` (the config at start) but only applies at a restart is
/// named in a WARN.
async fn reloaded(reload: &Reload, in_force: &Config) -> Result<Current, String> {
    let loaded = config::load(&reload.path).map_err(|e| e.to_string())?;
    let config = loaded.config;
    let mailer = build_mailer(&config).await.map_err(|(_, e)| e)?;
    if let Some(Err(e)) = reload
        .logging
        .as_ref()
        .map(|l| l.apply(&config.log, reload.debug))
    {
        return Err(e.to_string());
    }
    for warning in &loaded.warnings {
        tracing::warn!(config = %reload.path.display(), "{warning}");
    }
    let id_host = |c: &Config| super::message_id_host(&c.delivery.sender);
    let restart_only = [
        (
            "The [teleport] section",
            config.teleport != in_force.teleport,
        ),
        (
            "delivery.retry_timeout",
            config.delivery.retry_timeout != in_force.delivery.retry_timeout,
        ),
        ("[metrics] listen", config.metrics != in_force.metrics),
        (
            "delivery.reminder_interval or reminder_limit",
            config.delivery.reminders != in_force.delivery.reminders,
        ),
        (
            "delivery.access_list_reminders",
            config.delivery.access_list_reminders != in_force.delivery.access_list_reminders,
        ),
        (
            "The domain of delivery.sender (the right-hand side of Message-IDs; the From changes at once)",
            id_host(&config) != id_host(in_force),
        ),
    ];
    for (what, _) in restart_only.iter().filter(|(_, changed)| *changed) {
        tracing::warn!("{what} changed: it takes effect at the next restart");
    }
    Ok(Current { config, mailer })
}
