//! The one place that wires concrete parts together and runs them until shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::calendar::rfc3339;
use crate::config::{self, Config, Credentials, MailerConfig};
use crate::engine::{DeliveryPolicy, Engine, PLUGIN_NAME, Routing};
use crate::exit::Exit;
use crate::logging::Logging;
use crate::mail::{MailError, Mailer, MessageId, OutgoingMail};
use crate::metrics::Metrics;
use crate::rules::RuleSet;
use crate::shutdown;
use crate::startup::{self, StartupError};
use crate::teleport::{ClusterInfo, CredentialStore, TeleportClient, WatchEvent};
use crate::watcher::{self, BoxFuture, EventHandler, Links, WatcherConfig};

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
        let hooks = Hooks {
            reload: Some(Reload {
                path: config_path.to_owned(),
                debug,
                logging,
                signals: reloads,
                file_check,
            }),
            ready: None,
        };
        tokio::select! {
            exit = run_with(loaded.config, root.clone(), hooks) => exit,
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

/// What a caller may attach to a run.
#[derive(Default)]
pub struct Hooks {
    /// Reload the config on each signal (SIGHUP for `start`).
    pub reload: Option<Reload>,
    /// Set `true` while the watch is established, `false` while it is not.
    pub ready: Option<watch::Sender<bool>>,
}

/// Runs the daemon with a validated config until `root` is cancelled or a fatal error.
pub async fn run(config: Config, root: CancellationToken) -> Exit {
    run_with(config, root, Hooks::default()).await
}

/// [`run`], with `hooks` attached.
pub async fn run_with(config: Config, root: CancellationToken, hooks: Hooks) -> Exit {
    match run_inner(config, root, hooks).await {
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

fn fatal(e: StartupError) -> Fatal {
    (e.exit(), e.to_string())
}

async fn run_inner(config: Config, root: CancellationToken, hooks: Hooks) -> Result<(), Fatal> {
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
    let (client, cluster) = connect_teleport(&config, &metrics, &root).await?;
    let mailer = build_mailer(&config).await?;
    let rules = Arc::new(RuleSet::new(PLUGIN_NAME));
    let engine = Arc::new(
        Engine::new(
            client.clone(),
            cluster,
            routing(&config, &mailer),
            DeliveryPolicy {
                retry_for: config.delivery.retry_timeout,
                id_host: message_id_host(&config.delivery.sender),
                ..DeliveryPolicy::default()
            },
        )
        .with_shutdown(root.clone())
        .with_metrics(metrics.clone())
        .with_rules(rules.clone(), Arc::new(client.clone())),
    );
    let (reconcile_tx, reconcile_rx) = mpsc::channel(1);
    let reloads_stop = root.child_token();
    let reloads = hooks.reload.map(|reload| {
        tokio::spawn(reload_loop(
            reload,
            Current {
                config: config.clone(),
                mailer: mailer.clone(),
            },
            engine.clone(),
            reconcile_tx,
            reloads_stop.clone(),
        ))
    });
    let links = Links {
        ready: hooks.ready.unwrap_or_else(|| watch::channel(false).0),
        reconcile: reconcile_rx,
        metrics,
        rules: Some(rules),
        plugin: PLUGIN_NAME,
    };
    let watcher_config = WatcherConfig {
        fail_fast,
        ..WatcherConfig::default()
    };
    let watched = watcher::run(client, engine, watcher_config, links, root).await;
    reloads_stop.cancel();
    let mailer = match reloads {
        Some(task) => task.await.unwrap_or(mailer),
        None => mailer,
    };
    mailer.close().await;
    watched.map_err(|e| (Exit::Runtime, e.to_string()))
}

/// The config and mailer in force.
struct Current {
    config: Config,
    mailer: Arc<dyn Mailer>,
}

/// The engine's routing: the config's recipients, and `mailer`, whose pooled connections are
/// closed once the engine has let go of it.
fn routing(config: &Config, mailer: &Arc<dyn Mailer>) -> Routing {
    Routing {
        recipients: config.recipients.clone(),
        mailer: Arc::new(CloseWhenDropped(mailer.clone())),
    }
}

/// Applies a new config on each SIGHUP, and when a periodic re-read finds that the config or a
/// `*_file` secret changed (a rotated Kubernetes Secret): log settings, recipients, mailer and its
/// secrets. A config that does not load, or a mailer that fails its health check, is rejected and
/// the old one stays; the periodic re-read tries a rejected config again only after five periods
/// (see [`retry_rejected`]).
/// After a reload the watcher reconciles, so mail held back by a mailer-wide failure (a password
/// now fixed) is picked up. Returns the mailer in force when `stop` is cancelled.
async fn reload_loop(
    mut reload: Reload,
    mut current: Current,
    engine: Arc<Engine>,
    reconcile: mpsc::Sender<()>,
    stop: CancellationToken,
) -> Arc<dyn Mailer> {
    // What the periodic re-read last rejected (the config, or why it did not load), and when.
    let mut rejected: Option<(Result<Config, String>, Instant)> = None;
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
        match reloaded(&reload, &current.config).await {
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

/// The config at `reload.path` with its mailer checked and its log settings applied.
async fn reloaded(reload: &Reload, current: &Config) -> Result<Current, String> {
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
    if config.teleport != current.teleport {
        tracing::warn!("The [teleport] section changed: it takes effect at the next restart");
    }
    Ok(Current { config, mailer })
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

/// Loads the credentials (keeping them fresh), connects and pings.
async fn connect_teleport(
    config: &Config,
    metrics: &Arc<Metrics>,
    root: &CancellationToken,
) -> Result<(TeleportClient, ClusterInfo), Fatal> {
    let (source, store) = startup::credentials(config).map_err(fatal)?;
    let secret_file = match source {
        Credentials::IdentityFile { path, .. } => path,
        Credentials::KeyPair { key, .. } => key,
    };
    if let Some(warning) = config::permissions_warning(secret_file, "the Teleport key file") {
        tracing::warn!("{warning}");
    }
    if let Credentials::IdentityFile {
        refresh: Some(every),
        ..
    } = source
    {
        store.spawn_refresh(*every, root.child_token());
    }
    let info = &store.current().info;
    tracing::info!(user = %info.user, cluster = %info.cluster, expires = %rfc3339(info.not_after), "Loaded Teleport credentials");
    spawn_expiry_gauge(store.clone(), metrics.clone(), root.child_token());
    let (client, cluster) = startup::connect(config, store).await.map_err(fatal)?;
    tracing::info!(
        cluster = %cluster.name,
        server_version = %cluster.server_version,
        path = %client.dial_path().map(|p| p.to_string()).unwrap_or_default(),
        "Connected to Teleport"
    );
    Ok((client, cluster))
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
    startup::mailer(config).await.map_err(fatal)
}

/// The watcher hands each event to the engine.
impl EventHandler for Engine {
    fn handle(self: Arc<Self>, event: WatchEvent) -> BoxFuture {
        Box::pin(async move { self.handle_event(event).await })
    }
}

/// The mailer as the engine holds it: when the last copy goes (a reload replaced it and the sends
/// under way are done), its pooled connections are closed politely (`QUIT`).
struct CloseWhenDropped(Arc<dyn Mailer>);

impl Drop for CloseWhenDropped {
    fn drop(&mut self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let mailer = self.0.clone();
            runtime.spawn(async move { mailer.close().await });
        }
    }
}

#[async_trait::async_trait]
impl Mailer for CloseWhenDropped {
    async fn send(&self, mail: &OutgoingMail) -> Result<MessageId, MailError> {
        self.0.send(mail).await
    }

    async fn health_check(&self) -> Result<(), MailError> {
        self.0.health_check().await
    }

    fn backend(&self) -> &'static str {
        self.0.backend()
    }

    async fn close(&self) {
        self.0.close().await
    }
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
