//! Long-lived peer processes (teleport, nginx) that die with the test process, and one-shot
//! commands (tctl, tsh, sqlite3) run with a time limit.
//!
//! A peer is started by a tiny `sh` watchdog that holds the read end of a pipe whose write end
//! only the test process has. When the test process goes away for any reason — `Drop`, a panic,
//! `process::exit` after the last test, even SIGKILL — the pipe closes and the watchdog stops the
//! peer (SIGTERM, then SIGKILL after 5 s). So a cluster kept in a `static` does not outlive the
//! test binary, and no `unsafe` (prctl) is needed.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The watchdog: `$1` = log file, `$2` = a directory to delete afterwards (or empty), the rest =
/// the peer's command line. It prints the peer's pid, then waits for its stdin to close; if the
/// last thing it read was `keep`, the directory is kept (a restart of the same peer).
const WATCHDOG: &str = r#"
log="$1"; cleanup="$2"; shift 2
"$@" </dev/null >>"$log" 2>&1 &
pid=$!
echo "$pid"
said=$(cat)
kill -TERM "$pid" 2>/dev/null
i=0
while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i+1)); done
kill -KILL "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
if [ -n "$cleanup" ] && [ "$said" != keep ]; then rm -rf "$cleanup"; fi
exit 0
"#;

/// A peer process supervised by the watchdog; dropping it stops the peer and waits for it.
pub struct Supervised {
    name: String,
    watchdog: Child,
    lifeline: Option<ChildStdin>,
    pid: u32,
    log: PathBuf,
}

impl Supervised {
    /// Starts `program args…` with stdout and stderr appended to `log`. When the peer has been
    /// stopped, `cleanup` (the peer's temporary directory) is deleted: that matters for peers
    /// kept in a `static`, which is never dropped.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        log: &Path,
        cleanup: Option<&Path>,
    ) -> Self {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg("watchdog")
            .arg(log)
            .arg(cleanup.map(Path::as_os_str).unwrap_or_default())
            .arg(program)
            .args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut watchdog = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start sh to supervise {name}: {e}"));
        let mut line = String::new();
        BufReader::new(watchdog.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("watchdog of {name} said nothing: {e}"));
        let pid = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("watchdog of {name} printed {line:?}, not a pid"));
        let lifeline = watchdog.stdin.take();
        Supervised {
            name: name.to_owned(),
            watchdog,
            lifeline,
            pid,
            log: log.to_owned(),
        }
    }

    /// The peer's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the peer is still running (not exited, not a zombie).
    pub fn is_running(&self) -> bool {
        match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            // The state is the first field after the parenthesised command name.
            Ok(stat) => {
                stat.rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().next())
                    != Some("Z")
            }
            Err(_) => false,
        }
    }

    /// The last `lines` lines of the peer's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Supervised {
    /// Stops the peer (as dropping does) but keeps its directory, e.g. to start it again.
    pub fn stop_keeping_files(mut self) {
        if let Some(mut lifeline) = self.lifeline.take() {
            use std::io::Write;
            let _ = lifeline.write_all(b"keep");
        }
    }

    /// Stops the peer with SIGTERM (SIGKILL after 5 s) and waits for it.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.watchdog.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "watchdog of {} did not finish in 10 s; killing it",
            self.name
        );
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// The last `lines` lines of a text file (empty if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What a finished one-shot command left behind.
#[derive(Debug)]
pub struct Run {
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Returns `self` if the command succeeded, else panics showing everything it printed.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(self.success(), "command failed: {self}");
        self
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout\n{}\n--- stderr\n{}",
            self.cmdline, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs a command to completion within `limit`, its output captured through files (no pipe can
/// fill up and stall it), and kills it if it takes longer.
pub fn run(mut cmd: Command, scratch: &Path, limit: Duration) -> Run {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let out_path = scratch.join(format!("cmd-{n}.out"));
    let err_path = scratch.join(format!("cmd-{n}.err"));
    let cmdline = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("scratch file"))
        .stderr(File::create(&err_path).expect("scratch file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{cmdline}`: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{cmdline}` did not finish within {limit:?}\n--- stdout\n{}\n--- stderr\n{}",
                tail(&out_path, 40),
                tail(&err_path, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| {
        let text = String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
        let _ = fs::remove_file(p);
        text
    };
    Run {
        cmdline,
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

/// Makes sure `program` is on PATH, installing the Debian package `package` if it is not.
///
/// Panics, saying so, when the install is impossible: a test that needs the peer must fail
/// loudly rather than pass without it.
pub fn ensure_debian_package(program: &str, package: &str) {
    static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = APT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let found = |p: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {p}"))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if found(program) {
        return;
    }
    eprintln!("{program} not found: installing the Debian package {package} (apt-get)");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package}"
        ))
        .stdout(Stdio::null())
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()) && found(program),
        "{program} is needed by this test and could not be installed with apt-get ({package}): {status:?}. \
         Install it by hand (`apt-get install {package}`)."
    );
}
