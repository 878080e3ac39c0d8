//! The one place that wires concrete parts together and runs them until shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, Credentials, MailerConfig};
use crate::engine::{DeliveryPolicy, Engine, Routing};
use crate::exit::Exit;
use crate::logging::Logging;
use crate::mail::{self, Mailer};
use crate::metrics::Metrics;
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
    // One thread: a notifier waits on the network nearly all the time, and one core sends
    // thousands of mails a second; a single thread spends less CPU per mail than a pool
    // (no work stealing, no cross-thread wake-ups, one malloc arena). DNS lookups still run on
    // tokio's blocking threads.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "Terminating with fatal error: cannot start the runtime");
            return Exit::Runtime;
        }
    };
    let file_check = match file_check_from_env() {
        Ok(period) => period,
        Err(e) => {
            tracing::error!(error = %e, "Terminating with fatal error: invalid configuration");
            return Exit::Config;
        }
    };
    runtime.block_on(async {
        let root = CancellationToken::new();
        let reloads = match shutdown::install(root.clone()) {
            Ok(rx) => rx,
            Err(e) => {
                tracing::error!(error = %e, "Terminating with fatal error: cannot install signal handlers");
                return Exit::Runtime;
            }
        };
        tokio::select! {
            exit = run_with_reload(loaded.config, root.clone(), Some(Reload {
                path: config_path.to_owned(),
                debug,
                logging,
                signals: reloads,
                file_check,
            })) => exit,
            _ = shutdown::grace_expired(root, shutdown::GRACE_PERIOD) => {
                tracing::error!("In-flight work did not finish within the grace period; exiting");
                Exit::Forced
            }
        }
    })
}

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

/// Runs the daemon with a validated config until `root` is cancelled or a fatal error.
pub async fn run(config: Config, root: CancellationToken) -> Exit {
    run_with_reload(config, root, None).await
}

/// [`run`], reloading the config from `reload` on each signal.
pub async fn run_with_reload(
    config: Config,
    root: CancellationToken,
    reload: Option<Reload>,
) -> Exit {
    match run_inner(config, root, reload).await {
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

async fn run_inner(
    config: Config,
    root: CancellationToken,
    reload: Option<Reload>,
) -> Result<(), Fatal> {
    let fail_fast = fail_fast_from_env().map_err(|e| (Exit::Config, e))?;
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = config.metrics {
        let listener = crate::metrics::bind(addr).await.map_err(|e| {
            (
                Exit::Config,
                format!("metrics.listen: cannot listen on {addr}: {e}"),
            )
        })?;
        tracing::info!(%addr, "Serving /metrics, /healthz and /readyz");
        tokio::spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
            root.child_token(),
        ));
    }
    let (client, credentials) = connect_teleport(&config, &root).await?;
    spawn_expiry_gauge(credentials, metrics.clone(), root.child_token());
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
    let engine = Arc::new(
        Engine::new(
            client.clone(),
            cluster,
            Routing {
                recipients: config.recipients.clone(),
                mailer,
            },
            DeliveryPolicy {
                retry_for: config.delivery.retry_timeout,
                id_host: message_id_host(&config.delivery.sender),
                ..DeliveryPolicy::default()
            },
        )
        .with_shutdown(root.clone())
        .with_metrics(metrics.clone()),
    );
    if let Some(reload) = reload {
        tokio::spawn(reload_loop(
            reload,
            config.clone(),
            engine.clone(),
            root.clone(),
        ));
    }
    let (ready_tx, _ready_rx) = watch::channel(false);
    let watcher_config = WatcherConfig {
        fail_fast,
        ..WatcherConfig::default()
    };
    watcher::run(client, engine, watcher_config, ready_tx, metrics, root)
        .await
        .map_err(|e| (Exit::Runtime, e.to_string()))
}

/// Applies a new config on each SIGHUP, and when a periodic re-read finds that the config or a
/// `*_file` secret changed (a rotated Kubernetes Secret): log settings, recipients, mailer and its
/// secrets. A config that does not load, or a mailer that fails its health check, is rejected and
/// the old one stays; the periodic re-read does not retry (nor log again) what it already rejected.
async fn reload_loop(
    mut reload: Reload,
    mut current: Config,
    engine: Arc<Engine>,
    root: CancellationToken,
) {
    // What the periodic re-read last rejected: the config, or why it did not load.
    let mut rejected: Option<Result<Config, String>> = None;
    loop {
        let signalled = tokio::select! {
            _ = root.cancelled() => return,
            signal = reload.signals.recv() => if signal.is_none() { return } else { true },
            _ = after(reload.file_check) => false,
        };
        let loaded = if signalled {
            tracing::info!(config = %reload.path.display(), "SIGHUP: reloading the configuration");
            config::load(&reload.path)
        } else {
            let loaded = config::load(&reload.path);
            let seen = match &loaded {
                Ok(l) if l.config == current => continue,
                Ok(l) => Ok(l.config.clone()),
                Err(e) => Err(e.to_string()),
            };
            if rejected.as_ref() == Some(&seen) {
                continue;
            }
            rejected = Some(seen);
            tracing::info!(config = %reload.path.display(), "The configuration or a secret file changed: reloading");
            loaded
        };
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "Configuration reload rejected; the previous configuration stays in force");
                continue;
            }
        };
        let new = loaded.config;
        let mailer = match build_mailer(&new).await {
            Ok(m) => m,
            Err((_, e)) => {
                tracing::error!(error = %e, "Configuration reload rejected; the previous configuration stays in force");
                continue;
            }
        };
        if let Some(Err(e)) = reload
            .logging
            .as_ref()
            .map(|l| l.apply(&new.log, reload.debug))
        {
            tracing::error!(error = %e, "Configuration reload rejected; the previous configuration stays in force");
            continue;
        }
        for warning in &loaded.warnings {
            tracing::warn!(config = %reload.path.display(), "{warning}");
        }
        if new.teleport != current.teleport {
            tracing::warn!("The [teleport] section changed: it takes effect at the next restart");
        }
        engine.set_routing(Routing {
            recipients: new.recipients.clone(),
            mailer,
        });
        tracing::info!("Configuration reloaded");
        current = new;
        rejected = None;
    }
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

/// Keeps the identity-expiry gauge current (the identity file may be renewed under us).
fn spawn_expiry_gauge(
    credentials: Arc<CredentialStore>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            metrics.set_identity_expiry(credentials.current().info.not_after);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
            }
        }
    });
}

async fn connect_teleport(
    config: &Config,
    root: &CancellationToken,
) -> Result<(TeleportClient, Arc<CredentialStore>), Fatal> {
    let Some(credentials) = &config.teleport.credentials else {
        return Err((
            Exit::Config,
            "no Teleport credentials configured: set teleport.identity (or teleport.client_crt, client_key and root_cas)".to_owned(),
        ));
    };
    let secret_file = match credentials {
        Credentials::IdentityFile { path, .. } => path,
        Credentials::KeyPair { key, .. } => key,
    };
    if let Some(warning) = config::permissions_warning(secret_file, "the Teleport key file") {
        tracing::warn!("{warning}");
    }
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
    let client = TeleportClient::connect(
        DialOptions::new(&config.teleport.addr),
        store.clone(),
        INIT_TIMEOUT,
    )
    .await
    .map_err(|e| (Exit::Teleport, e.to_string()))?;
    Ok((client, store))
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

/// The domain of the sender's address (the same on every replica), or this host's name.
fn message_id_host(sender: &str) -> String {
    sender
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('>').to_owned())
        .filter(|d| !d.is_empty())
        .or_else(|| hostname::get().ok().and_then(|h| h.into_string().ok()))
        .unwrap_or_else(|| "localhost".into())
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
