//! The peers the built binary runs against in the process tests: the fake Auth Service, an SMTP
//! receiver, and a directory for the identity file, configs and logs.

use std::path::PathBuf;
use std::sync::Arc;

use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions};
use teleport_email::testkit::pki::KeyKind;
use teleport_email::testkit::smtp::SmtpReceiver;

use super::RECIPIENT;

pub struct Peers {
    pub auth: Arc<FakeAuth>,
    pub smtp: SmtpReceiver,
    pub dir: tempfile::TempDir,
}

impl Peers {
    /// The peers, with the plugin's identity file written and no config yet.
    pub async fn start() -> Self {
        Self::start_with(FakeAuthOptions::default()).await
    }

    pub async fn start_with(options: FakeAuthOptions) -> Self {
        let auth = FakeAuth::start(options).await;
        let smtp = SmtpReceiver::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        auth.write_plugin_identity(&dir.path().join("identity"), KeyKind::Ecdsa);
        Self { auth, smtp, dir }
    }

    /// The peers and [`Peers::config`], mailing [`RECIPIENT`] for every role.
    pub async fn with_config() -> Self {
        let p = Self::start().await;
        p.write_config("config.toml", &format!("\"*\" = \"{RECIPIENT}\"\n"), "");
        p
    }

    /// Writes config `name` for these peers: `recipients` are the lines of
    /// `[role_to_recipients]`, `log` those of a `[log]` section (none when empty).
    pub fn write_config(&self, name: &str, recipients: &str, log: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let mut text = format!(
            "[teleport]\naddr = \"{}\"\nidentity = \"{}\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\nstarttls_policy = \"disabled\"\n[delivery]\nsender = \"noreply@example.com\"\n[role_to_recipients]\n{recipients}",
            self.auth.addr(),
            self.dir.path().join("identity").display(),
            self.smtp.port()
        );
        if !log.is_empty() {
            text += &format!("[log]\n{log}\n");
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The config [`Peers::with_config`] writes.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }
}
