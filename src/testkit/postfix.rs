//! Postfix's `smtp-sink` as a peer: a real SMTP server we did not write, run as a child process
//! on a loopback port, with what it received read back from its dump files.
//!
//! Neither it nor `smtp-source` is part of this repository: [`program`] finds them through an
//! environment variable or on `PATH`. A binary unpacked from Debian's `postfix` package with
//! `dpkg -x` (`usr/sbin/smtp-sink`) needs Postfix's own libraries, which it looks for in
//! `/usr/lib/postfix`; [`command`] points the child at the `usr/lib/postfix` of the same tree.

use std::ffi::OsString;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Names `smtp-sink`.
pub const SINK_ENV: &str = "SMTP_SINK_BIN";
/// Names `smtp-source`.
pub const SOURCE_ENV: &str = "SMTP_SOURCE_BIN";

/// Put in front of every message in a dump file, so that messages a dump file may share (two
/// transactions drawing the same random file name) are told apart.
const SEPARATOR: &str = "=== smtp-sink message ===";

/// The program `env` names (when set and not empty), else `name` found on `PATH`.
pub fn program(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A command for a Postfix test program, with the libraries of a `dpkg -x` tree on the loader's
/// path when `bin` sits in one (`<root>/usr/sbin/<bin>` beside `<root>/usr/lib/postfix`).
pub fn command(bin: &Path) -> Command {
    let mut command = Command::new(bin);
    let libs = bin
        .parent()
        .and_then(Path::parent)
        .map(|usr| usr.join("lib/postfix"));
    if let Some(libs) = libs.filter(|l| l.join("libpostfix-util.so").exists()) {
        let mut value = OsString::from(libs);
        if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|v| !v.is_empty()) {
            value.push(":");
            value.push(old);
        }
        command.env("LD_LIBRARY_PATH", value);
    }
    command
}

/// How to run `smtp-sink`.
#[derive(Debug, Clone, Copy)]
pub struct SinkOptions {
    /// Announce `PIPELINING` (smtp-sink's `-p` turns it off).
    pub pipelining: bool,
    /// Write every message to a file of its own (`-d`), for [`SmtpSink::mails`]. Files cost
    /// smtp-sink time per message; without them it only counts.
    pub dump: bool,
}

/// One message from a dump file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedMail {
    /// The `MAIL FROM` address, without angle brackets.
    pub mail_from: String,
    /// The `RCPT TO` addresses, without angle brackets.
    pub rcpt_to: Vec<String>,
    /// Header and body as received, dot-unstuffed, each line ended with CRLF. smtp-sink ends
    /// dumped lines with a bare LF whatever the client sent, so line ends cannot be checked
    /// here; a CR that did not end a line survives.
    pub data: Vec<u8>,
}

/// A running `smtp-sink` on `127.0.0.1`; killed, and its dump directory removed, when dropped.
pub struct SmtpSink {
    child: Child,
    port: u16,
    dir: PathBuf,
    /// When this process read each increment of smtp-sink's message counter (`-c`).
    completed: Arc<Mutex<Vec<Instant>>>,
}

impl SmtpSink {
    /// Starts `bin` on a free loopback port and waits (up to 10 s) until it accepts connections.
    pub async fn start(bin: &Path, options: SinkOptions) -> io::Result<Self> {
        let mut last = io::Error::other("never tried");
        // The port is chosen by binding and releasing it, so another process may take it first.
        for _ in 0..3 {
            match Self::try_start(bin, options).await {
                Ok(sink) => return Ok(sink),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn try_start(bin: &Path, options: SinkOptions) -> io::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // In memory where there is a tmpfs: smtp-sink creates a file per message, and a disk
        // would set the pace.
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "smtp-sink-{}-{port}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut cmd = command(bin);
        // -c: a running counter on stdout, updated whenever a message ends (read below).
        cmd.arg("-c");
        if !options.pipelining {
            cmd.arg("-p");
        }
        if options.dump {
            cmd.arg("-d")
                .arg(dir.join("m."))
                .arg("-S")
                .arg(format!("{SEPARATOR}\\n"));
        }
        if effective_uid_is_root() {
            // smtp-sink refuses to run as root without a user to switch to, which must be able
            // to write the dump directory.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
            cmd.args(["-u", "nobody"]);
        }
        cmd.arg(format!("127.0.0.1:{port}"))
            .arg("256")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // A file, not a pipe nobody reads: a pipe that fills would stall smtp-sink.
            .stderr(std::fs::File::create(stderr_path(&dir))?);
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot start {}: {e}", bin.display()))
        })?;
        let completed = Arc::new(Mutex::new(Vec::new()));
        if let Some(stdout) = child.stdout.take() {
            let completed = Arc::clone(&completed);
            std::thread::spawn(move || read_counter(stdout, &completed));
        }
        let mut sink = Self {
            child,
            port,
            dir,
            completed,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(sink);
            }
            if let Some(status) = sink.child.try_wait()? {
                let stderr = std::fs::read_to_string(stderr_path(&sink.dir)).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "{} exited ({status}): {}",
                    bin.display(),
                    stderr.trim()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "{} did not listen on port {port} within 10 s",
                    bin.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Messages received so far (final dot read), each with the moment this process learnt of
    /// it: good to the time smtp-sink's counter takes to reach a pipe and a thread, well under a
    /// millisecond. The times are in order; which time belongs to which message is not known.
    pub fn completed(&self) -> Vec<Instant> {
        self.completed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until at least `n` messages were received; false on timeout.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self
            .completed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            < n
        {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }

    /// Every message in the dump files (only with [`SinkOptions::dump`]), in no useful order.
    pub fn mails(&self) -> io::Result<Vec<DumpedMail>> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<io::Result<_>>()?;
        names.sort();
        let mut mails = Vec::new();
        for name in names {
            let text = std::fs::read(&name)?;
            mails.extend(parse_dump(&text));
        }
        Ok(mails)
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(stderr_path(&self.dir));
    }
}

/// Where smtp-sink's stderr goes: beside its dump directory, not in it.
fn stderr_path(dir: &Path) -> PathBuf {
    dir.with_extension("stderr")
}

/// Reads `-c` output (`sess=1 quit=0 mesg=7`, one update per CR) and notes the moment of every
/// message the count grows by.
fn read_counter(mut stdout: impl Read, completed: &Mutex<Vec<Instant>>) {
    let mut buf = [0u8; 4096];
    let mut pending = Vec::new();
    let mut seen = 0usize;
    while let Ok(n) = stdout.read(&mut buf) {
        if n == 0 {
            return;
        }
        let now = Instant::now();
        pending.extend_from_slice(&buf[..n]);
        let Some(end) = pending.iter().rposition(|b| matches!(b, b'\r' | b'\n')) else {
            continue;
        };
        let text = String::from_utf8_lossy(&pending[..end]).into_owned();
        pending.drain(..=end);
        let count = text
            .rsplit("mesg=")
            .next()
            .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|d| d.parse::<usize>().ok());
        if let Some(count) = count.filter(|c| *c > seen) {
            let mut times = completed.lock().unwrap_or_else(|e| e.into_inner());
            times.extend(std::iter::repeat_n(now, count - seen));
            seen = count;
        }
    }
}

/// The messages of one dump file: for each, after the separator, smtp-sink's own records
/// (`X-Mail-Args:`, one `X-Rcpt-Args:` per recipient, ...) ended by a three-line `Received:`
/// header, then the message, then one empty line.
fn parse_dump(file: &[u8]) -> Vec<DumpedMail> {
    let text = String::from_utf8_lossy(file);
    let mut mails = Vec::new();
    for chunk in text.split(&format!("{SEPARATOR}\n")) {
        let mut lines = chunk.split_inclusive('\n');
        let (mut mail_from, mut rcpt_to) = (String::new(), Vec::new());
        let mut found = false;
        for line in lines.by_ref() {
            let arg = |prefix: &str| {
                let value = line.strip_prefix(prefix)?.split_whitespace().next()?;
                Some(value.trim_matches(['<', '>']).to_owned())
            };
            if let Some(from) = arg("X-Mail-Args:") {
                mail_from = from;
            } else if let Some(to) = arg("X-Rcpt-Args:") {
                rcpt_to.push(to);
            } else if line.starts_with("Received:") {
                found = true;
                break;
            }
        }
        if !found {
            continue;
        }
        let rest: Vec<&str> = lines.skip_while(|l| l.starts_with([' ', '\t'])).collect();
        // The empty line smtp-sink adds after each message.
        let message = rest.strip_suffix(&["\n"]).unwrap_or(&rest);
        let mut data = Vec::new();
        for line in message {
            data.extend_from_slice(line.strip_suffix('\n').unwrap_or(line).as_bytes());
            data.extend_from_slice(b"\r\n");
        }
        mails.push(DumpedMail {
            mail_from,
            rcpt_to,
            data,
        });
    }
    mails
}

/// Whether this process runs as root (effective uid 0), from `/proc/self/status`.
fn effective_uid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_file_gives_envelope_and_message() {
        let file = format!(
            "{SEPARATOR}\nX-Client-Addr: 127.0.0.1\nX-Client-Proto: ESMTP\nX-Helo-Args: client\n\
             X-Mail-Args: <a@example.com> BODY=8BITMIME\nX-Rcpt-Args: <b@example.com>\n\
             X-Rcpt-Args: <c@example.com>\nReceived: from client ([127.0.0.1])\n\
             \tby smtp-sink (smtp-sink) with ESMTP id 1234abcd;\n\tTue,  1 Dec 2026 17:58:01 +0000 (UTC)\n\
             X-First: kept\nSubject: hi\n\n.body\n\n{SEPARATOR}\nX-Mail-Args: <>\n\
             X-Rcpt-Args: <d@example.com>\nReceived: from x\n\tby y\n\tnow\nSubject: two\n\nend\n\n"
        );
        let mails = parse_dump(file.as_bytes());
        assert_eq!(mails.len(), 2);
        assert_eq!(mails[0].mail_from, "a@example.com");
        assert_eq!(mails[0].rcpt_to, ["b@example.com", "c@example.com"]);
        assert_eq!(
            mails[0].data,
            b"X-First: kept\r\nSubject: hi\r\n\r\n.body\r\n"
        );
        assert_eq!(mails[1].mail_from, "");
        assert_eq!(mails[1].rcpt_to, ["d@example.com"]);
        assert_eq!(mails[1].data, b"Subject: two\r\n\r\nend\r\n");
    }

    #[test]
    fn the_counter_notes_each_new_message_once() {
        let completed = Mutex::new(Vec::new());
        let out = "sess=0 quit=0 mesg=1\rsess=0 quit=0 mesg=3\rsess=1 quit=1 mesg=3\r";
        read_counter(out.as_bytes(), &completed);
        assert_eq!(completed.lock().unwrap().len(), 3);
    }
}
