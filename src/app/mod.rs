//! The one place that wires concrete parts together and runs them until shutdown.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::calendar::rfc3339;
use crate::config::{self, Config, Credentials, MailerConfig};
use crate::engine::{DeliveryPolicy, Engine, PLUGIN_NAME, Routing, Survey};
use crate::exit::Exit;
use crate::logging::Logging;
use crate::mail::{MailError, Mailer, MessageId, OutgoingMail};
use crate::metrics::Metrics;
use crate::rules::RuleSet;
use crate::shutdown;
use crate::startup::{self, StartupError};
use crate::teleport::{AccessRequest, ClusterInfo, CredentialStore, TeleportClient, WatchEvent};
use crate::watcher::{self, BoxFuture, EventHandler, Links, Settled, SurveyFuture, WatcherConfig};

mod reload;
mod reminders;

use reload::{Current, reload_loop};
pub use reload::{DEFAULT_FILE_CHECK, FILE_CHECK_ENV, Reload, file_check_from_env};

/// `teleport-email start`: load the config, set up logging, run until stopped.
pub fn start(config_path: &Path, debug: bool) -> Exit {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let logging = Logging::init();
    match prepare(config_path, debug, logging.as_ref()) {
        Ok((config, runtime, file_check)) => {
            runtime.block_on(run_until_signalled(config, |signals| Reload {
                path: config_path.to_owned(),
                debug,
                logging,
                signals,
                file_check,
            }))
        }
        Err(exit) => exit,
    }
}

/// What `start` needs before it runs: the config (with logging set up as it says), the runtime,
/// and how often the files are re-read.
fn prepare(
    config_path: &Path,
    debug: bool,
    logging: Option<&Logging>,
) -> Result<(Config, tokio::runtime::Runtime, Option<Duration>), Exit> {
    let config = load_config(config_path, debug, logging)?;
    let runtime = build_runtime()?;
    let file_check = file_check_from_env().map_err(|e| {
        tracing::error!(error = %e, "Terminating with fatal error: invalid configuration");
        Exit::Config
    })?;
    Ok((config, runtime, file_check))
}

/// The config at `path`, with logging set up as it says and its warnings logged.
fn load_config(path: &Path, debug: bool, logging: Option<&Logging>) -> Result<Config, Exit> {
    let loaded = config::load(path).map_err(|e| {
        tracing::error!(error = %e, "Terminating with fatal error: invalid configuration");
        Exit::Config
    })?;
    if let Some(Err(e)) = logging.map(|l| l.apply(&loaded.config.log, debug)) {
        tracing::error!(error = %e, "Terminating with fatal error: cannot set up logging");
        return Err(Exit::Config);
    }
    tracing::debug!("DEBUG logging enabled");
    for warning in &loaded.warnings {
        tracing::warn!(config = %path.display(), "{warning}");
    }
    Ok(loaded.config)
}

/// One thread: a notifier waits on the network nearly all the time, and one core sends
/// thousands of mails a second; a single thread spends less CPU per mail than a pool
/// (no work stealing, no cross-thread wake-ups, one malloc arena). DNS lookups still run on
/// tokio's blocking threads.
fn build_runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            tracing::error!(error = %e, "Terminating with fatal error: cannot start the runtime");
            Exit::Runtime
        })
}

/// Runs until a signal stops it; exits at once when in-flight work outlasts the grace period.
/// `reload` makes the SIGHUP reload from the signal receiver.
async fn run_until_signalled(
    config: Config,
    reload: impl FnOnce(mpsc::Receiver<()>) -> Reload,
) -> Exit {
    let root = CancellationToken::new();
    let signals = match shutdown::install(root.clone()) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(error = %e, "Terminating with fatal error: cannot install signal handlers");
            return Exit::Runtime;
        }
    };
    let hooks = Hooks {
        reload: Some(reload(signals)),
        ..Hooks::default()
    };
    tokio::select! {
        exit = run_with(config, root.clone(), hooks) => exit,
        _ = shutdown::grace_expired(root, shutdown::GRACE_PERIOD) => {
            tracing::error!("In-flight work did not finish within the grace period; exiting");
            Exit::Forced
        }
    }
}

/// What a caller may attach to a run.
#[derive(Default)]
pub struct Hooks {
    /// Reload the config on each signal (SIGHUP for `start`).
    pub reload: Option<Reload>,
    /// Set `true` while the watch is established, `false` while it is not.
    pub ready: Option<watch::Sender<bool>>,
    /// How often Access Lists are checked for reviews coming due (and how soon the first check
    /// runs), instead of every 3 hours; for tests.
    pub access_list_checks: Option<Duration>,
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
    serve_metrics(config.metrics, &metrics, &root).await?;
    let (client, cluster) = connect_teleport(&config, &metrics, &root).await?;
    let mailer = build_mailer(&config).await?;
    let rules = Arc::new(RuleSet::new(PLUGIN_NAME));
    // Cancelled by a signal (through `root`) or by a fatal watch error (by the watcher, before
    // it waits for the events in flight): the work under way stops as at shutdown, retries
    // handing their claims back. A fatal error does not cancel `root`, so no grace period cuts
    // the exit short and its cause is always logged.
    let ending = root.child_token();
    let engine = build_engine(
        &config, &client, cluster, &mailer, &metrics, &rules, &ending,
    );
    let hooks_checks = hooks.access_list_checks;
    let (reconcile_tx, reconcile_rx) = mpsc::channel(1);
    let reloads_stop = root.child_token();
    let reloads = hooks.reload.map(|reload| {
        let current = Current {
            config: config.clone(),
            mailer: mailer.clone(),
        };
        let stop = reloads_stop.clone();
        tokio::spawn(reload_loop(
            reload,
            current,
            engine.clone(),
            reconcile_tx,
            stop,
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
    // Stopped when the watch ends (a signal or a fatal error), then awaited: reminders being
    // sent are finished and recorded first.
    let reminders_stop = root.child_token();
    let (clock, reminding) = match config.delivery.reminders {
        Some(settings) => {
            let clock = Arc::new(reminders::ReminderClock::new(settings));
            let run = reminders::run(clock.clone(), engine.clone(), reminders_stop.clone());
            (Some(clock), Some(tokio::spawn(run)))
        }
        None => (None, None),
    };
    // Stopped after the watch, and awaited: a reminder being sent settles its claim first.
    let lists_stop = root.child_token();
    let lists = config.delivery.access_list_reminders.then(|| {
        let reminders = list_reminders(&config, &client, &engine, &links.metrics, &hooks_checks);
        tokio::spawn(reminders.run(lists_stop.clone()))
    });
    let handler = Arc::new(Handler { engine, clock });
    let watched = watcher::run(client, handler, watcher_config, links, ending).await;
    reloads_stop.cancel();
    lists_stop.cancel();
    reminders_stop.cancel();
    for task in [lists, reminding].into_iter().flatten() {
        let _ = task.await;
    }
    let mailer = match reloads {
        Some(task) => task.await.unwrap_or(mailer),
        None => mailer,
    };
    mailer.close().await;
    watched.map_err(|e| (Exit::Runtime, e.to_string()))
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listen` until `root` is cancelled.
async fn serve_metrics(
    listen: Option<std::net::SocketAddr>,
    metrics: &Arc<Metrics>,
    root: &CancellationToken,
) -> Result<(), Fatal> {
    let Some(addr) = listen else {
        return Ok(());
    };
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
    Ok(())
}

/// The engine, routing to `mailer` and stopping with `root`.
fn build_engine(
    config: &Config,
    client: &TeleportClient,
    cluster: ClusterInfo,
    mailer: &Arc<dyn Mailer>,
    metrics: &Arc<Metrics>,
    rules: &Arc<RuleSet>,
    root: &CancellationToken,
) -> Arc<Engine> {
    let policy = DeliveryPolicy {
        retry_for: config.delivery.retry_timeout,
        id_host: message_id_host(&config.delivery.sender),
        ..DeliveryPolicy::default()
    };
    let engine = Engine::new(client.clone(), cluster, routing(config, mailer), policy)
        .with_shutdown(root.clone())
        .with_metrics(metrics.clone())
        .with_rules(rules.clone(), Arc::new(client.clone()));
    Arc::new(engine)
}

/// The engine's routing: the config's recipients, and `mailer`, whose pooled connections are
/// closed once the engine has let go of it.
fn routing(config: &Config, mailer: &Arc<dyn Mailer>) -> Routing {
    Routing {
        recipients: config.recipients.clone(),
        mailer: Arc::new(CloseWhenDropped(mailer.clone())),
        notify_requester: config.delivery.notify_requester,
    }
}

/// The Access List review reminders (`delivery.access_list_reminders`), checking every `checks`
/// when given (tests), else every 3 hours.
fn list_reminders(
    config: &Config,
    client: &TeleportClient,
    engine: &Arc<Engine>,
    metrics: &Arc<Metrics>,
    checks: &Option<Duration>,
) -> crate::lists::ListReminders {
    let cluster = engine.cluster();
    let settings = crate::lists::Settings {
        plugin: PLUGIN_NAME,
        cluster: cluster.name.clone(),
        web_base: crate::engine::web_base(&cluster.proxy_public_addr),
        id_host: message_id_host(&config.delivery.sender),
        retry_for: config.delivery.retry_timeout,
        every: checks.unwrap_or(crate::lists::CHECK_EVERY),
        first_within: checks.unwrap_or(crate::lists::FIRST_CHECK_WITHIN),
    };
    let engine = engine.clone();
    let mailer: crate::lists::MailerSource = Arc::new(move || engine.mailer());
    crate::lists::ListReminders::new(client.clone(), mailer, metrics.clone(), settings)
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
/// What the watcher hands events to: the engine, and the reminders' clock when reminders are on
/// (it learns of pending requests from the events and the reconciles' listings).
struct Handler {
    engine: Arc<Engine>,
    clock: Option<Arc<reminders::ReminderClock>>,
}

impl EventHandler for Handler {
    fn handle(self: Arc<Self>, event: WatchEvent) -> BoxFuture {
        Box::pin(async move {
            if let Some(clock) = &self.clock {
                match &event {
                    WatchEvent::Put(req) => clock.track(req),
                    WatchEvent::Delete { id } => clock.forget(id),
                    _ => {}
                }
            }
            self.engine.handle_event(event).await
        })
    }

    fn survey(self: Arc<Self>) -> SurveyFuture {
        Box::pin(async move {
            let survey = self.engine.survey().await;
            if survey.is_none() && self.clock.is_none() {
                return None;
            }
            let listed = Listed {
                survey,
                clock: self.clock.clone(),
            };
            Some(Box::new(listed) as Box<dyn Settled>)
        })
    }
}

/// A reconcile's view of each listed request: the survey says which need nothing, and the
/// reminders' clock notes the pending ones (even those the survey spares).
struct Listed {
    survey: Option<Survey>,
    clock: Option<Arc<reminders::ReminderClock>>,
}

impl Settled for Listed {
    fn owes_nothing(&self, request: &AccessRequest) -> bool {
        if let Some(clock) = &self.clock {
            clock.track(request);
        }
        (self.survey.as_ref()).is_some_and(|s| s.owes_nothing(request))
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

    async fn send_unless_withdrawn(
        &self,
        mail: &OutgoingMail,
        withdraw: &CancellationToken,
    ) -> Option<Result<MessageId, MailError>> {
        self.0.send_unless_withdrawn(mail, withdraw).await
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
