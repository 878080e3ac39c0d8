//! The two email plugins as processes on a real cluster — ours (the binary this crate builds)
//! and the original Go plugin (`ORIGINAL_EMAIL_BIN`) — and the mailbox they both deliver to.
//!
//! Ours runs as a subprocess rather than `app::run` in the test process so that it gets an
//! environment of its own: the L7 test gives it `SSL_CERT_FILE` (to trust the balancer's
//! certificate) without touching the environment of the other tests running in parallel. It
//! logs JSON lines, so a test can read the fields of `Connected to Teleport`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use teleport_email::testkit::smtp::SmtpReceiver;

use super::supervisor::{Supervised, tail};
use crate::support::harness::{Mail, from_smtp};

/// The `From` of every mail.
pub const SENDER: &str = "noreply@example.com";
/// `role_to_recipients."*"`: every request is mailed here.
pub const ALL: &str = "all@example.com";
/// SMTP AUTH credentials (the original cannot do without them).
pub const SMTP_USER: &str = "plugin";
pub const SMTP_PASSWORD: &str = "secret-password";

/// How long a mail may take to arrive.
pub const MAIL_WAIT: Duration = Duration::from_secs(30);

/// The path to the original plugin from `ORIGINAL_EMAIL_BIN`, if set.
pub fn original_bin() -> Option<PathBuf> {
    std::env::var_os("ORIGINAL_EMAIL_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// An SMTP receiver that requires AUTH (PLAIN or LOGIN, no TLS), on a runtime of its own so
/// that the blocking test code can poll it.
pub struct Mailbox {
    receiver: SmtpReceiver,
    _runtime: tokio::runtime::Runtime,
}

impl Mailbox {
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let receiver = runtime
            .block_on(
                SmtpReceiver::builder()
                    .auth(SMTP_USER, SMTP_PASSWORD)
                    .start(),
            )
            .expect("SMTP receiver");
        Mailbox {
            receiver,
            _runtime: runtime,
        }
    }

    pub fn port(&self) -> u16 {
        self.receiver.port()
    }

    /// Every mail about request `id`, in arrival order.
    pub fn mails_for(&self, id: &str) -> Vec<Mail> {
        self.receiver
            .messages()
            .iter()
            .map(|m| from_smtp(&m.data))
            .filter(|m| m.request_id() == id)
            .collect()
    }

    /// Every mail so far, in arrival order.
    pub fn all(&self) -> Vec<Mail> {
        let messages = self.receiver.messages();
        messages.iter().map(|m| from_smtp(&m.data)).collect()
    }

    /// Waits until `n` mails to `to` have arrived and returns them.
    #[track_caller]
    pub fn wait_to(&self, to: &str, n: usize, wait: Duration) -> Vec<Mail> {
        let deadline = Instant::now() + wait;
        loop {
            let mails: Vec<Mail> = self.all().into_iter().filter(|m| m.to == to).collect();
            if mails.len() >= n {
                return mails;
            }
            assert!(
                Instant::now() < deadline,
                "waited {wait:?} for {n} mail(s) to {to}, got {}: {mails:#?}",
                mails.len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The SMTP users that authenticated for the mails about `id`.
    pub fn auth_users_for(&self, id: &str) -> Vec<Option<String>> {
        self.receiver
            .messages()
            .iter()
            .filter(|m| from_smtp(&m.data).request_id() == id)
            .map(|m| m.auth_user.clone())
            .collect()
    }

    /// Waits until `n` mails about `id` have arrived and returns them.
    #[track_caller]
    pub fn wait_for(&self, id: &str, n: usize) -> Vec<Mail> {
        let deadline = Instant::now() + MAIL_WAIT;
        loop {
            let mails = self.mails_for(id);
            if mails.len() >= n {
                return mails;
            }
            assert!(
                Instant::now() < deadline,
                "request {id}: waited {MAIL_WAIT:?} for {n} mail(s), got {}: {mails:#?}",
                mails.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for `n` mails about `id`, then a moment more, and checks that exactly `n` came.
    #[track_caller]
    pub fn exactly(&self, id: &str, n: usize) -> Vec<Mail> {
        self.wait_for(id, n);
        std::thread::sleep(Duration::from_millis(1500));
        let mails = self.mails_for(id);
        assert_eq!(
            mails.len(),
            n,
            "request {id}: expected exactly {n} mails: {mails:#?}"
        );
        mails
    }
}

/// Which plugin a [`PluginProcess`] runs.
#[derive(Clone, Debug)]
pub enum Which {
    /// This crate's `teleport-email`.
    Ours,
    /// The Go plugin at this path.
    Original(PathBuf),
}

/// What goes into a plugin's TOML configuration.
pub struct PluginConfig<'a> {
    pub addr: String,
    pub identity: &'a Path,
    pub smtp_port: u16,
    /// `refresh_identity_interval` with `refresh_identity = true` (ours only).
    pub refresh_identity: Option<&'a str>,
    /// More `[delivery]` lines (ours only: the keys the original does not know).
    pub delivery: &'a str,
}

impl PluginConfig<'_> {
    fn toml(&self, which: &Which) -> String {
        let refresh = match self.refresh_identity {
            Some(every) => {
                format!("refresh_identity = true\nrefresh_identity_interval = \"{every}\"\n")
            }
            None => String::new(),
        };
        let log = match which {
            Which::Ours => "[log]\noutput = \"stderr\"\nseverity = \"debug\"\nformat = \"json\"\n",
            Which::Original(_) => "[log]\noutput = \"stderr\"\nseverity = \"debug\"\n",
        };
        format!(
            "[teleport]\naddr = \"{addr}\"\nidentity = \"{identity}\"\n{refresh}\
             [smtp]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"{SMTP_USER}\"\npassword = \"{SMTP_PASSWORD}\"\nstarttls_policy = \"disabled\"\n\
             [delivery]\nsender = \"{SENDER}\"\n{delivery}\
             [role_to_recipients]\n\"*\" = \"{ALL}\"\n{log}",
            addr = self.addr,
            identity = self.identity.display(),
            port = self.smtp_port,
            delivery = self.delivery,
        )
    }
}

/// A running plugin; dropping it stops it (SIGTERM).
pub struct PluginProcess {
    process: Supervised,
    log: PathBuf,
    name: String,
}

impl PluginProcess {
    /// Writes the config into `dir` and starts `which` with it and the extra `envs`; returns
    /// once the plugin logged `Plugin is ready`.
    pub fn start(
        which: &Which,
        dir: &Path,
        config: &PluginConfig<'_>,
        envs: &[(&str, &str)],
    ) -> Self {
        let name = match which {
            Which::Ours => "teleport-email (ours)",
            Which::Original(_) => "teleport-email (original)",
        };
        let stem = match which {
            Which::Ours => "ours",
            Which::Original(_) => "original",
        };
        let seq = rand::random::<u32>();
        let config_path = dir.join(format!("{stem}-{seq}.toml"));
        std::fs::write(&config_path, config.toml(which)).expect("write plugin config");
        let log = dir.join(format!("{stem}-{seq}.log"));
        let program = match which {
            Which::Ours => PathBuf::from(env!("CARGO_BIN_EXE_teleport-email")),
            Which::Original(path) => path.clone(),
        };
        let args = [
            "start".to_owned(),
            format!("--config={}", config_path.display()),
        ];
        let mut all_envs = vec![("TELEPORT_PLUGIN_FAIL_FAST", "false")];
        all_envs.extend_from_slice(envs);
        let process = Supervised::spawn(name, &program, &args, &all_envs, &log, None);
        let plugin = PluginProcess {
            process,
            log,
            name: name.to_owned(),
        };
        plugin.wait_log("Plugin is ready", Duration::from_secs(60));
        plugin
    }

    /// The plugin's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until a log line contains `needle` and returns that line.
    #[track_caller]
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log_text().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                self.process.is_running(),
                "{} exited before logging {needle:?}:\n{}",
                self.name,
                tail(&self.log, 40)
            );
            assert!(
                Instant::now() < deadline,
                "{} did not log {needle:?} within {timeout:?}:\n{}",
                self.name,
                tail(&self.log, 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Our daemon's JSON log lines whose message is `message`.
    pub fn json_events(&self, message: &str) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }

    /// The last lines of the plugin's output, for messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Stops the plugin (SIGTERM, then SIGKILL after 5 s) and waits for it.
    pub fn stop(self) {
        drop(self.process);
    }
}
