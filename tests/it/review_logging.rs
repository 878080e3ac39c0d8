//! Second reader of 1b24e1b (log.output = "syslog", a log file reopened after rotation): the
//! built binary against a syslog socket that is absent, a stream socket, stalled, or briefly
//! down at a reload; the log file's mode; `check`.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use teleport_email::logging::SYSLOG_SOCKET_ENV;
use teleport_email::testkit::smtp::SmtpReceiver;

use crate::support::peers::Peers;

const ALL: &str = "all@example.com";
const EDITORS: &str = "editors@example.com";
const WAIT: Duration = Duration::from_secs(30);

/// Kills the child when the test ends, whatever happened.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(config: &Path, socket: &Path, stderr: &Path) -> Reaper {
    let file = std::fs::File::create(stderr).unwrap();
    Reaper(
        Command::new(env!("CARGO_BIN_EXE_teleport-email"))
            .args(["start", "--config"])
            .arg(config)
            .env(SYSLOG_SOCKET_ENV, socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap(),
    )
}

fn recipients_of(smtp: &SmtpReceiver) -> Vec<String> {
    smtp.messages()
        .into_iter()
        .flat_map(|m| m.rcpt_to)
        .collect()
}

async fn wait_mail(smtp: &SmtpReceiver, n: usize) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while smtp.messages().len() < n {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Reads datagrams until one contains `needle`.
fn recv_until(socket: &UnixDatagram, needle: &str) {
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = socket.recv(&mut buf).expect("a syslog message within 30 s");
        if String::from_utf8_lossy(&buf[..n]).contains(needle) {
            return;
        }
    }
}

/// The original (v17+: integrations/lib/logger `Setup` → lib/utils/log `Initialize`) does not
/// stop when syslog cannot be reached: it logs "Failed to switch logging to syslog" to stderr and
/// runs on (its later lines discarded; the older `NewSLogLogger` kept stderr). Ours exits 3,
/// contrary to the commit's "as with the original": a copied config on a host or container
/// without /dev/log no longer starts, and no mail goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_unreachable_syslog_does_not_stop_the_start_like_the_original() {
    let p = Peers::start().await;
    let config = p.write_config(
        "c.toml",
        &format!("\"*\" = \"{ALL}\"\n"),
        "output = \"syslog\"",
    );
    let stderr = p.dir.path().join("stderr.log");
    let mut d = spawn(&config, &p.dir.path().join("no-such-socket"), &stderr);
    p.auth
        .create_request("alice@example.com", &["editor"], "", &[]);
    let mailed = wait_mail(&p.smtp, 1).await;
    let status = d.0.try_wait().unwrap();
    assert!(
        mailed && status.is_none(),
        "syslog unreachable: mailed = {mailed}, exited = {status:?}; the original runs on:\n{}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
}

/// Go's `unixSyslog` dials "unixgram" and then "unix" (a stream socket, as syslog-ng's
/// `unix-stream("/dev/log")` offers) on every path; ours tries datagrams only and stops the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_stream_syslog_socket_is_used_like_go() {
    let p = Peers::start().await;
    let config = p.write_config(
        "c.toml",
        &format!("\"*\" = \"{ALL}\"\n"),
        "output = \"syslog\"",
    );
    let socket = p.dir.path().join("dev-log-stream");
    let listener = UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    let stderr = p.dir.path().join("stderr.log");
    let mut d = spawn(&config, &socket, &stderr);
    let deadline = Instant::now() + WAIT;
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        if let Some(status) = d.0.try_wait().unwrap() {
            panic!(
                "a stream /dev/log: the daemon exited ({status}); Go's log/syslog falls back to \
                 \"unix\":\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "never connected");
        std::thread::sleep(Duration::from_millis(50));
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while !got.contains("Plugin is ready") {
        let n = conn.read(&mut buf).expect("syslog lines within 30 s");
        assert!(n > 0, "closed: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// A syslog reader that stalls (its queue full: net.unix.max_dgram_qlen is 10 by default) makes
/// the next log line block in `send` on the daemon's only runtime thread: no mail goes out, and
/// SIGTERM is not acted on (its handler runs on that thread). Expected: lines are dropped, the
/// daemon goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_stalled_syslog_reader_does_not_freeze_the_daemon() {
    let p = Peers::start().await;
    let config = p.write_config(
        "c.toml",
        &format!("\"*\" = \"{ALL}\"\n"),
        "output = \"syslog\"",
    );
    let socket_path = p.dir.path().join("dev-log");
    let server = UnixDatagram::bind(&socket_path).unwrap();
    let stderr = p.dir.path().join("stderr.log");
    let mut d = spawn(&config, &socket_path, &stderr);
    let server = tokio::task::spawn_blocking(move || {
        recv_until(&server, "Plugin is ready");
        server
    })
    .await
    .unwrap();
    // The reader stops: fill its queue from another socket.
    let filler = UnixDatagram::unbound().unwrap();
    filler.connect(&socket_path).unwrap();
    filler.set_nonblocking(true).unwrap();
    let mut queued = 0;
    while filler.send(b"<4>filler").is_ok() {
        queued += 1;
        assert!(queued < 100_000);
    }
    p.auth
        .create_request("alice@example.com", &["editor"], "", &[]);
    let first = wait_mail(&p.smtp, 1).await;
    p.auth
        .create_request("bob@example.com", &["editor"], "", &[]);
    let mailed = first && wait_mail(&p.smtp, 2).await;
    let pid = d.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    // Past the 15 s grace period, after which the daemon exits at once.
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut exited = None;
    while Instant::now() < deadline {
        if let Some(s) = d.0.try_wait().unwrap() {
            exited = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Where the daemon's threads wait (the runtime thread: in unix_dgram_sendmsg).
    let wchan: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .map(|t| std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    drop(server);
    assert!(
        mailed && exited.is_some(),
        "with the syslog reader stalled ({queued} datagrams queued): first mail = {first}, second mail = {mailed}, \
         exited 25 s after SIGTERM = {exited:?}; threads wait in {wchan:?}"
    );
}

/// A SIGHUP that changes recipients while syslog is briefly away (rsyslog restarting) is
/// rejected whole, because logging is set up anew even though `log.output` did not change; the
/// rejection's ERROR goes to the unreachable syslog, so nothing tells the operator. Expected: the
/// recipients apply (the running writer reconnects on its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_sighup_while_syslog_restarts_still_applies_new_recipients() {
    let p = Peers::start().await;
    let log = "output = \"syslog\"";
    let config = p.write_config("c.toml", &format!("\"*\" = \"{ALL}\"\n"), log);
    let socket_path = p.dir.path().join("dev-log");
    let server = UnixDatagram::bind(&socket_path).unwrap();
    let stderr = p.dir.path().join("stderr.log");
    let d = spawn(&config, &socket_path, &stderr);
    let server = tokio::task::spawn_blocking(move || {
        recv_until(&server, "Plugin is ready");
        server
    })
    .await
    .unwrap();
    drop(server);
    std::fs::remove_file(&socket_path).unwrap();
    p.write_config(
        "c.toml",
        &format!("\"*\" = \"{ALL}\"\n\"editor\" = \"{EDITORS}\"\n"),
        log,
    );
    Command::new("kill")
        .args(["-HUP", &d.0.id().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.auth
        .create_request("alice@example.com", &["editor"], "", &[]);
    assert!(wait_mail(&p.smtp, 1).await, "no mail");
    let to = recipients_of(&p.smtp);
    assert!(
        to.iter().any(|r| r == EDITORS),
        "the reload was rejected because syslog was away for a moment; mail went to {to:?}"
    );
}

/// The original creates its log file with mode 0644 (logFileDefaultMode); ours asks for 0666 and
/// leaves it to the umask: under `umask 000` (some container runtimes) the log, which names
/// users, requests and reasons, is world-writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_log_file_is_created_0644_like_the_original() {
    let p = Peers::start().await;
    let log = p.dir.path().join("plugin.log");
    let config = p.write_config(
        "c.toml",
        &format!("\"*\" = \"{ALL}\"\n"),
        &format!("output = \"{}\"", log.display()),
    );
    let child = Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" start --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_teleport-email"))
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _d = Reaper(child);
    let deadline = Instant::now() + WAIT;
    while !log.exists() {
        assert!(Instant::now() < deadline, "no log file");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "log file mode {mode:o}");
}

/// `check` ("everything `start` needs, tried once") passes a config whose `log.output` `start`
/// refuses (a file in a missing directory; an unreachable syslog): start exits 3 after check said
/// "All checks passed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_check_tries_the_log_output_as_start_does() {
    let p = Peers::start().await;
    let run_check = |config: PathBuf| {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_teleport-email"))
                .args(["check", "--config"])
                .arg(&config)
                .output()
                .unwrap()
        })
    };
    // The harness: the same config with a usable log output passes.
    let good = p.write_config(
        "good.toml",
        &format!("\"*\" = \"{ALL}\"\n"),
        "output = \"stderr\"",
    );
    let out = run_check(good).await.unwrap();
    assert!(
        out.status.success(),
        "control: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let bad = p.dir.path().join("missing-dir").join("plugin.log");
    let config = p.write_config(
        "c.toml",
        &format!("\"*\" = \"{ALL}\"\n"),
        &format!("output = \"{}\"", bad.display()),
    );
    let out = run_check(config).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "check passed a log.output that start refuses:\n{stdout}"
    );
}
