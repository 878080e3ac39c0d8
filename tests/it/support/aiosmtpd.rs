//! aiosmtpd, a real SMTP server that is not ours: installed on first use into a venv under the
//! target directory (`python3 -m venv` + `pip install aiosmtpd`), then started per test with the
//! TLS and AUTH variant the test needs (`tests/peers/aiosmtpd_server.py`).
//!
//! Without python3, venv or pip the tests fail with the reason; they never pass silently.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use teleport_email::testkit::tls::TestPki;

/// The aiosmtpd release the tests run against.
pub const VERSION: &str = "1.4.6";

/// How the server speaks TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// No TLS at all (no STARTTLS offered).
    #[default]
    Plain,
    /// STARTTLS offered.
    StartTls,
    /// TLS from the first byte.
    Implicit,
}

/// One server variant.
#[derive(Debug, Clone, Default)]
pub struct Variant {
    pub mode: Mode,
    /// Refuse everything but EHLO/STARTTLS/QUIT before TLS.
    pub require_starttls: bool,
    /// Require AUTH with `support::USER` / `support::PASSWORD`.
    pub auth: bool,
    /// AUTH mechanisms not to offer (e.g. `"PLAIN"` to force LOGIN).
    pub auth_exclude: Vec<&'static str>,
}

/// A message as aiosmtpd received it.
#[derive(Debug, Clone)]
pub struct AioMail {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub tls: bool,
    pub auth_user: Option<String>,
    pub data: Vec<u8>,
}

/// A running aiosmtpd; killed when dropped.
pub struct Aiosmtpd {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Aiosmtpd {
    /// Starts `variant` (with `pki`'s certificate when it uses TLS) and waits until it listens.
    pub fn start(variant: &Variant, pki: Option<&TestPki>) -> Self {
        let python = python();
        let mut last_error = String::new();
        // A port picked by binding :0 can be taken before the server binds it: retry.
        for _ in 0..3 {
            match Self::try_start(&python, variant, pki) {
                Ok(server) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("aiosmtpd did not start: {last_error}");
    }

    fn try_start(python: &Path, variant: &Variant, pki: Option<&TestPki>) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let outdir = dir.path().join("mail");
        std::fs::create_dir(&outdir).map_err(|e| e.to_string())?;
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/aiosmtpd_server.py");
        let mut cmd = Command::new(python);
        cmd.arg(&script)
            .arg("--port")
            .arg(port.to_string())
            .arg("--outdir")
            .arg(&outdir);
        match variant.mode {
            Mode::Plain => cmd.args(["--mode", "plain"]),
            Mode::StartTls => cmd.args(["--mode", "starttls"]),
            Mode::Implicit => cmd.args(["--mode", "implicit"]),
        };
        if variant.mode != Mode::Plain {
            let pki = pki.ok_or("a TLS variant needs a PKI")?;
            let files = pki.write_to(dir.path()).map_err(|e| e.to_string())?;
            cmd.arg("--cert")
                .arg(files.server_cert)
                .arg("--key")
                .arg(files.server_key);
        }
        if variant.require_starttls {
            cmd.arg("--require-starttls");
        }
        if variant.auth {
            cmd.args(["--user", super::USER, "--password", super::PASSWORD]);
        }
        for mechanism in &variant.auth_exclude {
            cmd.args(["--auth-exclude", mechanism]);
        }
        let stderr_path = dir.path().join("stderr.txt");
        let stderr = std::fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        if line.trim() == format!("READY {port}") {
            return Ok(Self { child, port, dir });
        }
        let _ = child.kill();
        let _ = child.wait();
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        Err(format!("no READY line (got {line:?}); stderr:\n{stderr}"))
    }

    /// Waits until at least `n` messages arrived, and returns them in order.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<AioMail> {
        let outdir = self.dir.path().join("mail");
        let deadline = Instant::now() + timeout;
        loop {
            let mut metas: Vec<PathBuf> = std::fs::read_dir(&outdir)
                .expect("aiosmtpd output directory")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            if metas.len() >= n {
                metas.sort();
                return metas.iter().map(|p| read_mail(p)).collect();
            }
            if Instant::now() > deadline {
                let stderr =
                    std::fs::read_to_string(self.dir.path().join("stderr.txt")).unwrap_or_default();
                panic!(
                    "aiosmtpd got {} of {n} messages; stderr:\n{stderr}",
                    metas.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_mail(meta_path: &Path) -> AioMail {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(meta_path).expect("envelope file")).expect("JSON");
    let data = std::fs::read(meta_path.with_extension("eml")).expect("message file");
    AioMail {
        mail_from: meta["mail_from"].as_str().unwrap_or_default().to_owned(),
        rcpt_tos: meta["rcpt_tos"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        tls: meta["tls"].as_bool().unwrap_or(false),
        auth_user: meta["auth_user"].as_str().map(str::to_owned),
        data,
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("local address").port()
}

/// The venv's python with aiosmtpd installed; installs it once (per target directory).
fn python() -> PathBuf {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PYTHON.get_or_init(provision) {
        Ok(path) => path.clone(),
        Err(e) => panic!(
            "the aiosmtpd tests need python3 with the venv module and pip reaching PyPI \
             (to install aiosmtpd {VERSION}); provisioning failed: {e}"
        ),
    }
}

fn provision() -> Result<PathBuf, String> {
    let venv = pip_venv("aiosmtpd", VERSION, &["-c", "import aiosmtpd.controller"])?;
    Ok(venv.join("bin").join("python"))
}

/// A venv under the target directory holding `package==version` from PyPI, made once (under a
/// lock, so parallel tests share it); `check` is run with the venv's python to prove it works.
/// Returns the venv directory.
pub fn pip_venv(package: &str, version: &str, check: &[&str]) -> Result<PathBuf, String> {
    let target = target_dir()?;
    let venv = target.join(format!("{package}-venv"));
    let python = venv.join("bin").join("python");
    let ready = venv.join(format!(".{package}-{version}-ready"));
    if ready.exists() {
        return Ok(venv);
    }
    let _lock = DirLock::acquire(&target.join(format!("{package}-venv.lock")))?;
    if ready.exists() {
        return Ok(venv);
    }
    let system_python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    if !python.exists() {
        run(Command::new(&system_python).args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("{package}=={version}"),
    ]))?;
    run(Command::new(&python).args(check))?;
    std::fs::write(&ready, version).map_err(|e| format!("{}: {e}", ready.display()))?;
    Ok(venv)
}

pub fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The cargo target directory: the test binary lives in `<target>/debug/deps/`.
pub fn target_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("no target directory above {}", exe.display()))
}

/// A lock between processes: a directory only one can create. A lock older than ten minutes is
/// taken to be left over from a killed run.
pub struct DirLock(PathBuf);

impl DirLock {
    pub fn acquire(path: &Path) -> Result<Self, String> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            match std::fs::create_dir(path) {
                Ok(()) => return Ok(Self(path.to_owned())),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let age = std::fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok());
                    if age.is_some_and(|a| a > Duration::from_secs(600)) {
                        let _ = std::fs::remove_dir(path);
                        continue;
                    }
                    if Instant::now() > deadline {
                        return Err(format!(
                            "{} is still locked after 10 minutes",
                            path.display()
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}
