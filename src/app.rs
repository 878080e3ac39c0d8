//! The one place that wires concrete parts together and runs them until shutdown.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, Credentials, MailerConfig};
use crate::engine::{Engine, Routing};
use crate::exit::Exit;
use crate::logging::Logging;
use crate::mail::{self, Mailer};
use crate::shutdown;
use crate::teleport::identity::rfc3339;
use crate::teleport::{CredentialStore, DialOptions, INIT_TIMEOUT, TeleportClient};
use crate::watcher::{self, WatcherConfig};

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
    match run_inner(config, root).await {
        Ok(()) => {
            tracing::info!("Successfully shut down");
            Exit::Success
        }
        Err((exit, message)) => {
            tracing::error!(error = %message, "Terminating with fatal error");
            exit
        }
    }
}

type Fatal = (Exit, String);

async fn run_inner(config: Config, root: CancellationToken) -> Result<(), Fatal> {
    let fail_fast = fail_fast_from_env().map_err(|e| (Exit::Config, e))?;
    let client = connect_teleport(&config, &root).await?;
    let cluster = tokio::time::timeout(INIT_TIMEOUT, client.ping())
        .await
        .map_err(|_| {
            (
                Exit::Teleport,
                "Ping to Teleport timed out after 10s".to_owned(),
            )
        })?
        .map_err(|e| (Exit::Teleport, format!("Ping to Teleport failed: {e}")))?;
    tracing::info!(
        cluster = %cluster.name,
        server_version = %cluster.server_version,
        path = %client.dial_path().map(|p| p.to_string()).unwrap_or_default(),
        "Connected to Teleport"
    );
    let mailer = build_mailer(&config).await?;
    let engine = Arc::new(Engine::new(
        client.clone(),
        mailer,
        cluster,
        Routing {
            recipients: config.recipients.clone(),
        },
    ));
    let (ready_tx, _ready_rx) = watch::channel(false);
    let watcher_config = WatcherConfig {
        fail_fast,
        ..WatcherConfig::default()
    };
    watcher::run(client, engine, watcher_config, ready_tx, root)
        .await
        .map_err(|e| (Exit::Runtime, e.to_string()))
}

async fn connect_teleport(
    config: &Config,
    root: &CancellationToken,
) -> Result<TeleportClient, Fatal> {
    let Some(credentials) = &config.teleport.credentials else {
        return Err((
            Exit::Config,
            "no Teleport credentials configured: set teleport.identity (or teleport.client_crt, client_key and root_cas)".to_owned(),
        ));
    };
    let store = CredentialStore::load(credentials).map_err(|e| (Exit::Teleport, e.to_string()))?;
    if let Credentials::IdentityFile {
        refresh: Some(every),
        ..
    } = credentials
    {
        store.spawn_refresh(*every, root.child_token());
    }
    let info = &store.current().info;
    tracing::info!(user = %info.user, cluster = %info.cluster, expires = %rfc3339(info.not_after), "Loaded Teleport credentials");
    TeleportClient::connect(DialOptions::new(&config.teleport.addr), store, INIT_TIMEOUT)
        .await
        .map_err(|e| (Exit::Teleport, e.to_string()))
}

async fn build_mailer(config: &Config) -> Result<Arc<dyn Mailer>, Fatal> {
    match &config.mailer {
        MailerConfig::Smtp(s) => tracing::info!(
            host = %s.host,
            port = s.port,
            username = %s.username.as_deref().unwrap_or(""),
            "Using SMTP as email transport"
        ),
        MailerConfig::Mailgun(m) => {
            tracing::info!(domain = %m.domain, api_base = %m.api_base, "Using Mailgun as email transport")
        }
    }
    let mailer = mail::from_config(
        &config.mailer,
        &config.delivery.sender,
        config.recipients.fallback(),
    )
    .map_err(|e| (Exit::Mailer, e.to_string()))?;
    tokio::time::timeout(INIT_TIMEOUT, mailer.health_check())
        .await
        .map_err(|_| {
            (
                Exit::Mailer,
                "mail server health check timed out after 10s".to_owned(),
            )
        })?
        .map_err(|e| {
            (
                Exit::Mailer,
                format!("mail server health check failed: {e}"),
            )
        })?;
    Ok(mailer)
}

/// `TELEPORT_PLUGIN_FAIL_FAST`, read with Go's boolean rules; any other value is an error.
pub fn fail_fast_from_env() -> Result<bool, String> {
    match std::env::var("TELEPORT_PLUGIN_FAIL_FAST") {
        Err(_) => Ok(false),
        Ok(v) => parse_go_bool(&v).ok_or_else(|| {
            format!("TELEPORT_PLUGIN_FAIL_FAST={v:?} is not a boolean (use true or false)")
        }),
    }
}

fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "" | "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}
