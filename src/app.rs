//! The one place that wires concrete parts together and runs them until shutdown.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::exit::Exit;
use crate::logging::Logging;
use crate::shutdown;

/// `teleport-email start`: load the config, set up logging, run until stopped.
pub fn start(config_path: &Path, debug: bool) -> Exit {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let logging = Logging::init();
    let loaded = match config::load(config_path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "Terminating with fatal error: invalid configuration");
            return Exit::Config;
        }
    };
    if let Some(Err(e)) = logging.as_ref().map(|l| l.apply(&loaded.config.log, debug)) {
        tracing::error!(error = %e, "Terminating with fatal error: cannot set up logging");
        return Exit::Config;
    }
    tracing::debug!("DEBUG logging enabled");
    for warning in &loaded.warnings {
        tracing::warn!(config = %config_path.display(), "{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "Terminating with fatal error: cannot start the runtime");
            return Exit::Runtime;
        }
    };
    runtime.block_on(async {
        let root = CancellationToken::new();
        let _reloads = match shutdown::install(root.clone()) {
            Ok(rx) => rx,
            Err(e) => {
                tracing::error!(error = %e, "Terminating with fatal error: cannot install signal handlers");
                return Exit::Runtime;
            }
        };
        tokio::select! {
            exit = run(loaded.config, root.clone()) => exit,
            _ = shutdown::grace_expired(root, shutdown::GRACE_PERIOD) => {
                tracing::error!("In-flight work did not finish within the grace period; exiting");
                Exit::Forced
            }
        }
    })
}

/// Runs the daemon with a validated config until `root` is cancelled or a fatal error.
pub async fn run(config: Config, root: CancellationToken) -> Exit {
    let _ = (config, root);
    tracing::error!(
        "Terminating with fatal error: connecting to Teleport is not implemented in this build yet"
    );
    Exit::Teleport
}
