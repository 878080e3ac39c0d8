//! Process signals: SIGTERM/SIGINT start a graceful stop (a second one exits at once), SIGHUP asks
//! for a config reload.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::exit::Exit;

/// How long in-flight work may take after a stop signal, as with the original (15 s).
pub const GRACE_PERIOD: Duration = Duration::from_secs(15);

/// Installs the signal handlers. The first SIGTERM or SIGINT cancels `root`; a second one ends the
/// process at once. Each SIGHUP asks for a reload on the returned channel; SIGHUPs that arrive
/// while one is pending are one reload.
pub fn install(root: CancellationToken) -> std::io::Result<mpsc::Receiver<()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (reload_tx, reload_rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => {
                    // A full channel means a reload is already pending: nothing is lost.
                    let _ = reload_tx.try_send(());
                    continue;
                }
            };
            if root.is_cancelled() {
                tracing::warn!(signal = name, "Second stop signal: exiting now");
                std::process::exit(Exit::Forced.code().into());
            }
            tracing::info!(signal = name, grace_period = ?GRACE_PERIOD, "Stopping gracefully");
            root.cancel();
        }
    });
    Ok(reload_rx)
}

/// Resolves `grace` after `root` is cancelled: the deadline for a graceful stop.
pub async fn grace_expired(root: CancellationToken, grace: Duration) {
    root.cancelled().await;
    tokio::time::sleep(grace).await;
}
