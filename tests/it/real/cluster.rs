//! A one-node Teleport cluster on loopback: Auth Service and Proxy Service in one
//! `teleport start`, driven with the real `tctl` and `tsh`.
//!
//! * The proxy serves everything on ONE web port (`proxy_listener_mode: multiplex`, TLS routing)
//!   with a certificate from the harness's own [`WebPki`], so clients can verify it.
//! * The Auth Service listens on its own loopback port, for the direct path.
//! * `tctl --config <our teleport.yaml>` acts as the cluster admin: with the auth service
//!   enabled in that file it uses the local admin identity in the data dir, no login needed.
//! * `tsh` runs with an identity file signed by `tctl auth sign` (`-i`) and a private
//!   `TELEPORT_HOME`, so nothing touches `~/.tsh`. It verifies the web certificate for real:
//!   `SSL_CERT_FILE` points at the harness CA (teleport itself needs that too: it refuses to
//!   serve a web certificate whose chain it cannot verify).

use std::collections::HashMap;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::backend::Backend;
use super::certs::WebPki;
use super::probe::{self, Trust};
use super::rbac::Rbac;
use super::supervisor::{Run, Supervised, run, tail};

/// The name of every test cluster.
pub const CLUSTER_NAME: &str = "teleport-email-test";

/// How long `teleport start` may take to serve `/webapi/ping` and answer `tctl status`.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long one `tctl`/`tsh` command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Validity of identities signed by [`RealCluster::sign_identity`].
pub const DEFAULT_IDENTITY_TTL: Duration = Duration::from_secs(4 * 3600);

/// Paths of the real Teleport binaries, from `TELEPORT_BIN`, `TCTL_BIN` and `TSH_BIN`.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub teleport: PathBuf,
    pub tctl: PathBuf,
    pub tsh: PathBuf,
}

impl Binaries {
    /// The binaries named by the environment, or the names of the variables that are unset.
    pub fn from_env() -> Result<Self, Vec<&'static str>> {
        let get = |name: &'static str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .ok_or(name)
        };
        match (get("TELEPORT_BIN"), get("TCTL_BIN"), get("TSH_BIN")) {
            (Ok(teleport), Ok(tctl), Ok(tsh)) => Ok(Binaries {
                teleport,
                tctl,
                tsh,
            }),
            (a, b, c) => Err([a.err(), b.err(), c.err()].into_iter().flatten().collect()),
        }
    }
}

/// The format of `tctl auth sign --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityFormat {
    /// One identity file: key, SSH cert, TLS cert, SSH CA lines, TLS CA certs.
    File,
    /// Three files `<out>.crt`, `<out>.key`, `<out>.cas`.
    Tls,
}

/// The files `tctl auth sign` wrote.
#[derive(Clone, Debug)]
pub enum SignedIdentity {
    File(PathBuf),
    Tls {
        crt: PathBuf,
        key: PathBuf,
        cas: PathBuf,
    },
}

/// A running cluster; dropping it stops `teleport` and deletes its directory.
pub struct RealCluster {
    // Declared first so that it is dropped first: teleport stops before its directory goes.
    // `None` only for a moment during `restart`.
    teleport: Option<Supervised>,
    bins: Binaries,
    config: PathBuf,
    data_dir: PathBuf,
    scratch: PathBuf,
    tsh_home: PathBuf,
    web_ca_file: PathBuf,
    web_addr: SocketAddr,
    auth_addr: SocketAddr,
    pki: WebPki,
    backend: Backend,
    /// Identity files of users, signed on first use, for `tsh`.
    identities: Mutex<HashMap<String, PathBuf>>,
    /// Set by `create_rbac`.
    pub(super) rbac: OnceLock<Rbac>,
    dir: TempDir,
}

impl RealCluster {
    /// Starts a cluster with the binaries named by the environment and waits until it serves.
    ///
    /// Panics if the variables are unset (tests check first with `real_cluster!`), or if the
    /// cluster does not come up in time, showing the tail of teleport's log.
    pub fn start() -> Self {
        let bins =
            Binaries::from_env().unwrap_or_else(|missing| panic!("{} not set", missing.join("/")));
        Self::start_with(bins)
    }

    /// Starts a cluster with these binaries and waits until it serves.
    pub fn start_with(bins: Binaries) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("teleport-email-real-")
            .tempdir()
            .expect("temp dir");
        let data_dir = dir.path().join("data");
        let scratch = dir.path().join("scratch");
        let tsh_home = dir.path().join("tsh-home");
        for d in [&data_dir, &scratch, &tsh_home] {
            fs::create_dir_all(d).expect("create dir");
        }
        let (web_addr, auth_addr) = two_free_ports();
        let pki = WebPki::new(CLUSTER_NAME);
        let web_cert = pki.issue_loopback(dir.path(), "web");
        let web_ca = dir.path().join("web-ca.pem");
        fs::write(&web_ca, pki.ca_pem()).expect("write web-ca.pem");
        let config = dir.path().join("teleport.yaml");
        fs::write(
            &config,
            teleport_yaml(
                &data_dir,
                &dir.path().join("teleport.log"),
                web_addr,
                auth_addr,
                &web_cert,
            ),
        )
        .expect("write teleport.yaml");

        let started = Instant::now();
        let teleport = spawn_teleport(&bins, &config, &web_ca, dir.path());
        let backend = Backend::new(&data_dir, &scratch);
        let cluster = RealCluster {
            teleport: Some(teleport),
            bins,
            config,
            data_dir,
            scratch,
            tsh_home,
            web_ca_file: web_ca,
            web_addr,
            auth_addr,
            pki,
            backend,
            identities: Mutex::new(HashMap::new()),
            rbac: OnceLock::new(),
            dir,
        };
        cluster.wait_ready(started);
        eprintln!(
            "real cluster {CLUSTER_NAME} up in {:.1?}: web {web_addr}, auth {auth_addr}, dir {}",
            started.elapsed(),
            cluster.dir.path().display()
        );
        cluster
    }

    fn wait_ready(&self, started: Instant) {
        let deadline = started + START_TIMEOUT;
        let mut last = String::new();
        let mut web_up = false;
        while Instant::now() < deadline {
            if !self.is_running() {
                self.fail(&format!(
                    "teleport exited during start-up (last check: {last})"
                ));
            }
            if !web_up {
                match probe::get_json(self.web_addr, Trust::Ca(self.pki.ca_pem()), "/webapi/ping") {
                    Ok(_) => web_up = true,
                    Err(e) => last = e,
                }
            }
            if web_up {
                let status = self.tctl(&["status"]);
                if status.success() {
                    return;
                }
                last = status.to_string();
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        self.fail(&format!(
            "not ready after {START_TIMEOUT:?}; last check: {last}"
        ));
    }

    #[track_caller]
    fn fail(&self, what: &str) -> ! {
        let output = self
            .teleport
            .as_ref()
            .map(|t| t.log_tail(15))
            .unwrap_or_default();
        let hint = if output.contains("without web assets") {
            "\nhint: this teleport was built from source without the web UI, and the proxy will not start \
             without it. Rebuild with `-tags webassets_embed` and a stub `webassets/teleport/index.html` \
             (see README \"Real-cluster tests\"), or use a release binary."
        } else {
            ""
        };
        panic!(
            "real cluster: {what}\n--- tail of teleport.log\n{}\n--- tail of teleport's stdout/stderr\n{output}{hint}",
            tail(&self.dir.path().join("teleport.log"), 40),
        )
    }

    /// The proxy's web address (TLS routing: web UI/API, ALPN-routed protocols, upgrades).
    pub fn web_addr(&self) -> SocketAddr {
        self.web_addr
    }

    /// The Auth Service's own address (gRPC over TLS with ALPN `h2`).
    pub fn auth_addr(&self) -> SocketAddr {
        self.auth_addr
    }

    /// The cluster name.
    pub fn cluster_name(&self) -> &str {
        CLUSTER_NAME
    }

    /// The CA (PEM) that signed the proxy's web certificate.
    pub fn web_ca_pem(&self) -> &str {
        self.pki.ca_pem()
    }

    /// The web PKI, to issue more loopback certificates (e.g. for a load balancer).
    pub fn web_pki(&self) -> &WebPki {
        &self.pki
    }

    /// The `teleport.yaml` the cluster runs with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The teleport data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A scratch directory inside the cluster's directory, for files a test writes.
    pub fn scratch_dir(&self) -> &Path {
        &self.scratch
    }

    /// The cluster's SQLite backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Whether the teleport process is still running.
    pub fn is_running(&self) -> bool {
        self.teleport.as_ref().is_some_and(Supervised::is_running)
    }

    /// Stops teleport and starts it again on the same ports and data (every client connection
    /// is cut), then waits until it serves.
    pub fn restart(&mut self) {
        if let Some(old) = self.teleport.take() {
            old.stop_keeping_files();
        }
        let started = Instant::now();
        self.teleport = Some(spawn_teleport(
            &self.bins,
            &self.config,
            &self.web_ca_file,
            self.dir.path(),
        ));
        self.wait_ready(started);
        eprintln!(
            "real cluster {CLUSTER_NAME} restarted in {:.1?}",
            started.elapsed()
        );
    }

    /// The file holding [`web_ca_pem`](Self::web_ca_pem), e.g. for a client's `SSL_CERT_FILE`.
    pub fn web_ca_file(&self) -> &Path {
        &self.web_ca_file
    }

    /// Runs `tctl --config <teleport.yaml> args…` as the cluster admin.
    pub fn tctl(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(&self.bins.tctl);
        cmd.arg(format!("--config={}", self.config.display()))
            .args(args);
        self.client_env(&mut cmd);
        run(cmd, &self.scratch, COMMAND_TIMEOUT)
    }

    /// Runs `tsh -i <identity> --proxy=<web> args…`.
    pub fn tsh(&self, identity: &Path, args: &[&str]) -> Run {
        let mut cmd = Command::new(&self.bins.tsh);
        cmd.arg(format!("--identity={}", identity.display()))
            .arg(format!("--proxy={}", self.web_addr))
            .args(args);
        self.client_env(&mut cmd);
        run(cmd, &self.scratch, COMMAND_TIMEOUT)
    }

    fn client_env(&self, cmd: &mut Command) {
        cmd.env("TELEPORT_HOME", &self.tsh_home)
            .env("SSL_CERT_FILE", &self.web_ca_file)
            .env_remove("TELEPORT_CONFIG_FILE")
            .env_remove("TELEPORT_PROXY");
    }

    /// `tctl auth sign --user=<user> --out=<out> --format=<format> --ttl=4h`.
    pub fn sign_identity(&self, user: &str, out: &Path, format: IdentityFormat) -> SignedIdentity {
        self.sign_identity_with_ttl(user, out, format, DEFAULT_IDENTITY_TTL)
    }

    /// As [`sign_identity`](Self::sign_identity) with a chosen validity.
    pub fn sign_identity_with_ttl(
        &self,
        user: &str,
        out: &Path,
        format: IdentityFormat,
        ttl: Duration,
    ) -> SignedIdentity {
        let format_name = match format {
            IdentityFormat::File => "file",
            IdentityFormat::Tls => "tls",
        };
        self.tctl(&[
            "auth",
            "sign",
            &format!("--user={user}"),
            &format!("--out={}", out.display()),
            &format!("--format={format_name}"),
            &format!("--ttl={}s", ttl.as_secs()),
            "--overwrite",
        ])
        .ok();
        match format {
            IdentityFormat::File => SignedIdentity::File(out.to_owned()),
            IdentityFormat::Tls => {
                let with = |ext: &str| PathBuf::from(format!("{}.{ext}", out.display()));
                SignedIdentity::Tls {
                    crt: with("crt"),
                    key: with("key"),
                    cas: with("cas"),
                }
            }
        }
    }

    /// An identity file for `user`, signed on first use and kept for the cluster's life.
    pub fn identity_of(&self, user: &str) -> PathBuf {
        let mut ids = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = ids.get(user) {
            return path.clone();
        }
        let path = self
            .scratch
            .join(format!("identity-{}", user.replace(['/', '@'], "_")));
        self.sign_identity(user, &path, IdentityFormat::File);
        ids.insert(user.to_owned(), path.clone());
        path
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "real cluster was running in {}\n--- tail of teleport.log\n{}",
                self.dir.path().display(),
                tail(&self.dir.path().join("teleport.log"), 25)
            );
        }
    }
}

/// `teleport start` under a watchdog that deletes `dir` when the test process ends.
fn spawn_teleport(bins: &Binaries, config: &Path, web_ca: &Path, dir: &Path) -> Supervised {
    Supervised::spawn(
        "teleport",
        &bins.teleport,
        &["start".to_owned(), format!("--config={}", config.display())],
        &[
            // Teleport refuses a web certificate whose chain it cannot verify itself.
            ("SSL_CERT_FILE", &web_ca.display().to_string()),
            // Spares the EC2 metadata probe Teleport makes at start-up (no cloud here).
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
        &dir.join("teleport.out"),
        Some(dir),
    )
}

/// Two distinct free loopback ports (web, auth).
fn two_free_ports() -> (SocketAddr, SocketAddr) {
    // Both listeners are held at once so the kernel cannot hand out the same port twice.
    let a = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind");
    (a.local_addr().expect("addr"), b.local_addr().expect("addr"))
}

/// A free loopback port.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
}

fn teleport_yaml(
    data_dir: &Path,
    log: &Path,
    web: SocketAddr,
    auth: SocketAddr,
    cert: &super::certs::CertFiles,
) -> String {
    format!(
        "\
# Written by the teleport-email real-cluster test harness.
version: v3
teleport:
  nodename: {CLUSTER_NAME}
  data_dir: {data}
  log:
    output: {log}
    severity: INFO
    format:
      output: text
auth_service:
  enabled: true
  listen_addr: {auth}
  cluster_name: {CLUSTER_NAME}
  proxy_listener_mode: multiplex
ssh_service:
  enabled: false
proxy_service:
  enabled: true
  web_listen_addr: {web}
  public_addr: {web}
  https_keypairs:
    - key_file: {key}
      cert_file: {crt}
",
        data = data_dir.display(),
        log = log.display(),
        key = cert.key.display(),
        crt = cert.cert.display(),
    )
}
