//! A plugin daemon as a child process: started with a config, its output written to a log file
//! (watched for the moment `Plugin is ready` appears), and its memory and CPU read from `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

const READY: &str = "Plugin is ready";

pub struct Daemon {
    child: Child,
    pub log: PathBuf,
    /// From spawn to the ready line.
    pub ready_after: Duration,
    ticks_per_second: f64,
}

impl Daemon {
    /// Starts `bin start --config <config>` and waits (up to 60 s) for `Plugin is ready`.
    pub async fn start(bin: &Path, config: &Path, log: PathBuf) -> anyhow::Result<Self> {
        // The daemon writes its log straight to the file (appending), as under systemd or
        // Docker; copying it through a pipe would cost this process CPU per line, in the
        // middle of the measurement.
        // Emptied first: each round starts the log afresh (and its ready line with it).
        std::fs::File::create(&log)?;
        let file = std::fs::OpenOptions::new().append(true).open(&log)?;
        let started = Instant::now();
        let child = Command::new(bin)
            .arg("start")
            .arg(format!("--config={}", config.display()))
            .env("TELEPORT_PLUGIN_FAIL_FAST", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut daemon = Self {
            child,
            log,
            ready_after: Duration::ZERO,
            ticks_per_second: clock_ticks(),
        };
        let deadline = started + Duration::from_secs(60);
        loop {
            // Polled every millisecond: the ready time is good to about that.
            if std::fs::read_to_string(&daemon.log).is_ok_and(|t| t.contains(READY)) {
                daemon.ready_after = started.elapsed();
                return Ok(daemon);
            }
            if let Some(status) = daemon.child.try_wait()? {
                anyhow::bail!(
                    "{} exited ({status}) before it was ready:\n{}",
                    bin.display(),
                    daemon.log_tail(30)
                );
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "{} was not ready within 60 s:\n{}",
                    bin.display(),
                    daemon.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
    pub fn status_bytes(&self, field: &str) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = text.lines().find(|l| l.starts_with(&format!("{field}:")))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// User plus system CPU time so far.
    pub fn cpu(&self) -> Option<Duration> {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // Fields after the command name (which may contain spaces): state is field 3,
        // utime and stime are fields 14 and 15.
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some(Duration::from_secs_f64(
            (utime + stime) / self.ticks_per_second,
        ))
    }

    /// Whether the log holds `text` by now.
    pub fn log_contains(&self, text: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|t| t.contains(text))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Log lines at ERROR level: ` ERROR ` in ours (text format), a leading `ERRO` in Go's.
    pub fn error_lines(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("ERRO ") || l.contains(" ERROR "))
            .count()
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `getconf CLK_TCK`, or Linux's usual 100.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
