//! Where log lines go besides the standard streams: a file that is reopened when log rotation
//! moves or removes it, and the local syslog daemon.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::MakeWriter;

use crate::calendar::civil_from_days;

/// How often the log file's path is looked at for a rotation.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// A log file opened for appending, reopened (created again) when the file at its path is no
/// longer the one open: logrotate moved or removed it. No signal is needed, as with the original.
pub(super) struct ReopeningFile {
    path: PathBuf,
    state: Mutex<Open>,
}

struct Open {
    file: File,
    /// (device, inode) of the open file.
    id: (u64, u64),
    checked: Instant,
}

fn open(path: &Path) -> io::Result<Open> {
    // 0644, as the original (whatever the umask allows beyond it).
    let file = (OpenOptions::new().create(true).append(true))
        .mode(0o644)
        .open(path)?;
    let meta = file.metadata()?;
    Ok(Open {
        file,
        id: (meta.dev(), meta.ino()),
        checked: Instant::now(),
    })
}

impl ReopeningFile {
    pub(super) fn open(path: &Path) -> io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            path: path.to_owned(),
            state: Mutex::new(open(path)?),
        }))
    }

    fn write_line(&self, buf: &[u8]) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= ROTATION_CHECK {
            state.checked = Instant::now();
            let moved = std::fs::metadata(&self.path)
                .map(|m| (m.dev(), m.ino()) != state.id)
                .unwrap_or(true);
            if moved {
                // Keep writing to the old file if the new one cannot be made (a full disk).
                if let Ok(fresh) = open(&self.path) {
                    *state = fresh;
                }
            }
        }
        state.file.write_all(buf)
    }
}

/// One event's line into a [`ReopeningFile`].
pub(super) struct FileLine(Arc<ReopeningFile>);

impl Write for FileLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_line(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The writer the subscriber holds: each event gets a [`FileLine`].
pub(super) struct FileWriter(pub(super) Arc<ReopeningFile>);

impl<'a> MakeWriter<'a> for FileWriter {
    type Writer = FileLine;

    fn make_writer(&'a self) -> Self::Writer {
        FileLine(self.0.clone())
    }
}

/// Where the local syslog daemon listens, in the order Go's `log/syslog` tries them.
const SYSLOG_SOCKETS: [&str; 3] = ["/dev/log", "/var/run/syslog", "/var/run/log"];

/// Sets the syslog socket instead of the usual places (tests; a chroot).
pub const SYSLOG_SOCKET_ENV: &str = "TELEPORT_EMAIL_SYSLOG_SOCKET";

/// `kern.warning`, the priority the original gives every line (Go's `syslog.Dial` with
/// `LOG_WARNING` and no facility).
const PRIORITY: u8 = 4;

/// The longest line sent to syslog (a datagram larger than the socket allows would be lost
/// whole; BSDs allow 2 KiB, Linux about 200 KiB); longer ones are cut, with a note.
const MAX_SYSLOG_LINE: usize = 16 * 1024;

/// How often a syslog that could not be reached is tried again (lines go to stderr meanwhile).
const SYSLOG_RETRY: Duration = Duration::from_secs(5);

/// The local syslog daemon, one message per log line, as the original sends them:
/// `<4>Mmm dd hh:mm:ss /path/to/teleport-email[pid]: line` (the time in UTC).
///
/// Never blocks and never stops the daemon: the socket is non-blocking (a reader that stopped
/// reading costs the lines it does not take, not the daemon's one thread), and while syslog
/// cannot be reached (at start, or restarting) lines go to stderr, and it is tried again every
/// few seconds. The original also runs on when syslog is missing.
pub(super) struct Syslog {
    candidates: Vec<PathBuf>,
    tag: String,
    conn: Mutex<Conn>,
}

enum Conn {
    Datagram(UnixDatagram),
    /// `unix-stream` (syslog-ng can offer `/dev/log` so); each message ends with its newline.
    Stream(UnixStream),
    Down {
        since: Instant,
    },
}

impl Syslog {
    /// The local syslog daemon: [`SYSLOG_SOCKET_ENV`], else the usual sockets.
    pub(super) fn local() -> Arc<Self> {
        let candidates: Vec<PathBuf> = match std::env::var_os(SYSLOG_SOCKET_ENV) {
            Some(p) => vec![PathBuf::from(p)],
            None => SYSLOG_SOCKETS.iter().map(PathBuf::from).collect(),
        };
        Self::at(candidates, tag())
    }

    /// Syslog at the first of `candidates` that answers, tagging lines with `tag`.
    pub(super) fn at(candidates: Vec<PathBuf>, tag: String) -> Arc<Self> {
        let conn = match dial_any(&candidates) {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!(
                    "Failed to switch logging to syslog ({e}); logging to stderr until it can be reached"
                );
                Conn::Down {
                    since: Instant::now(),
                }
            }
        };
        Arc::new(Self {
            candidates,
            tag,
            conn: Mutex::new(conn),
        })
    }

    /// Whether syslog was reached (for `check`).
    pub(super) fn reached(&self) -> bool {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        !matches!(*conn, Conn::Down { .. })
    }

    fn send(&self, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let mut message = format!(
            "<{PRIORITY}>{} {}[{}]: ",
            stamp(SystemTime::now()),
            self.tag,
            std::process::id()
        )
        .into_bytes();
        if line.len() > MAX_SYSLOG_LINE {
            // Cut before a UTF-8 continuation byte, never inside a character.
            let mut end = MAX_SYSLOG_LINE;
            while end > 0 && (line[end] & 0xC0) == 0x80 {
                end -= 1;
            }
            message.extend_from_slice(&line[..end]);
            message.extend_from_slice(TRUNCATED.as_bytes());
        } else {
            message.extend_from_slice(line);
        }
        message.push(b'\n');
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if let Conn::Down { since } = *conn {
            if since.elapsed() < SYSLOG_RETRY {
                return to_stderr(line);
            }
            match dial_any(&self.candidates) {
                Ok(fresh) => *conn = fresh,
                Err(_) => {
                    *conn = Conn::Down {
                        since: Instant::now(),
                    };
                    return to_stderr(line);
                }
            }
        }
        match try_send(&mut conn, &message) {
            Sent::Yes | Sent::Dropped => {}
            Sent::Broken => {
                // The daemon restarted: connect again once, as Go's writer does.
                *conn = match dial_any(&self.candidates) {
                    Ok(fresh) => fresh,
                    Err(_) => Conn::Down {
                        since: Instant::now(),
                    },
                };
                if !matches!(try_send(&mut conn, &message), Sent::Yes | Sent::Dropped) {
                    *conn = Conn::Down {
                        since: Instant::now(),
                    };
                    to_stderr(line);
                }
            }
        }
    }
}

/// What the cut-off tail of a long line becomes.
const TRUNCATED: &str = " … [truncated]";

enum Sent {
    Yes,
    /// The reader is not keeping up: the line is dropped rather than wait.
    Dropped,
    /// The connection is gone.
    Broken,
}

fn try_send(conn: &mut Conn, message: &[u8]) -> Sent {
    let result = match conn {
        Conn::Datagram(socket) => socket.send(message).map(|_| ()),
        Conn::Stream(stream) => match stream.write(message) {
            Ok(n) if n == message.len() => Ok(()),
            // Half a message would garble the next: start a new connection.
            Ok(_) => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
            Err(e) => Err(e),
        },
        Conn::Down { .. } => Err(io::Error::from(io::ErrorKind::NotConnected)),
    };
    match result {
        Ok(()) => Sent::Yes,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Sent::Dropped,
        Err(_) => Sent::Broken,
    }
}

fn to_stderr(line: &[u8]) {
    let mut err = io::stderr().lock();
    let _ = err.write_all(line);
    let _ = err.write_all(b"\n");
}

/// The first of `candidates` that answers, as a datagram socket, else a stream (as Go's
/// `log/syslog` tries `unixgram`, then `unix`, on each path).
fn dial_any(candidates: &[PathBuf]) -> io::Result<Conn> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no syslog socket");
    for path in candidates {
        match dial(path) {
            Ok(conn) => return Ok(conn),
            Err(e) => last = io::Error::new(e.kind(), format!("{}: {e}", path.display())),
        }
    }
    Err(last)
}

fn dial(path: &Path) -> io::Result<Conn> {
    let datagram = UnixDatagram::unbound().and_then(|socket| {
        socket.connect(path)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    });
    match datagram {
        Ok(socket) => Ok(Conn::Datagram(socket)),
        Err(_) => {
            // Non-blocking before the connect: a listener whose backlog is full answers "try
            // again" at once instead of holding the daemon's thread.
            let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
            socket.set_nonblocking(true)?;
            socket.connect(&socket2::SockAddr::unix(path)?)?;
            Ok(Conn::Stream(UnixStream::from(socket)))
        }
    }
}

/// The program as it was started (`os.Args[0]`), as Go's `log/syslog` tags messages without a
/// tag of their own.
fn tag() -> String {
    std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "teleport-email".into())
}

/// Go's `time.Stamp`: `Jan _2 15:04:05`.
fn stamp(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (_, month, day) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    let of_day = secs % 86_400;
    format!(
        "{} {day:>2} {:02}:{:02}:{:02}",
        MONTHS[(month as usize).saturating_sub(1) % 12],
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// One event's line to syslog.
pub(super) struct SyslogLine(Arc<Syslog>);

impl Write for SyslogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The writer the subscriber holds for syslog.
pub(super) struct SyslogWriter(pub(super) Arc<Syslog>);

impl<'a> MakeWriter<'a> for SyslogWriter {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> Self::Writer {
        SyslogLine(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_time_stamp() {
        let t = UNIX_EPOCH + Duration::from_secs(1_764_620_767); // 2025-12-01T20:26:07Z
        assert_eq!(stamp(t), "Dec  1 20:26:07");
        let t = UNIX_EPOCH + Duration::from_secs(1_760_000_000); // 2025-10-09T08:53:20Z
        assert_eq!(stamp(t), "Oct  9 08:53:20");
    }

    #[test]
    fn a_rotated_file_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.log");
        let file = ReopeningFile::open(&path).unwrap();
        let writer = FileWriter(file.clone());
        writer.make_writer().write_all(b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("plugin.log.1")).unwrap();
        writer.make_writer().write_all(b"two\n").unwrap(); // within the second: old file
        file.state.lock().unwrap().checked = Instant::now() - ROTATION_CHECK;
        writer.make_writer().write_all(b"three\n").unwrap();
        let old = std::fs::read_to_string(dir.path().join("plugin.log.1")).unwrap();
        assert_eq!(old, "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
    }

    #[test]
    fn syslog_lines_are_one_datagram_each_as_the_original_sends_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let syslog = Syslog::at(vec![path.clone()], "teleport-email".into());
        let writer = SyslogWriter(syslog);
        writer
            .make_writer()
            .write_all(b"level=INFO msg=ready\n")
            .unwrap();
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        let pid = std::process::id();
        assert!(got.starts_with("<4>"), "{got}");
        assert!(
            got.ends_with(&format!(" teleport-email[{pid}]: level=INFO msg=ready\n")),
            "{got}"
        );
    }

    // ---- second reader (review-logging) ----

    fn syslog_at(path: &Path) -> Arc<Syslog> {
        Syslog::at(vec![path.to_owned()], "teleport-email".into())
    }

    /// A syslog reader that stops reading (a stalled rsyslog, journald stopped while systemd
    /// keeps its socket) must not block the writer: the daemon runs on one runtime thread, and
    /// `UnixDatagram::send` blocks once the receiver's queue (net.unix.max_dgram_qlen, 10 by
    /// default) is full. Expected: lines beyond the queue are dropped (or the send times out),
    /// the caller returns.
    #[test]
    fn review_syslog_send_does_not_block_when_the_reader_stops_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let _server = UnixDatagram::bind(&path).unwrap(); // never read
        let writer = SyslogWriter(syslog_at(&path));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for i in 0..1000 {
                let _ = writer
                    .make_writer()
                    .write_all(format!("level=INFO msg=line{i}\n").as_bytes());
            }
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(5)).is_ok(),
            "1000 log lines to a syslog socket nobody reads did not return within 5 s: \
             the writer blocks (and with it the daemon's only runtime thread)"
        );
    }

    /// A line larger than the socket's datagram limit (sk_sndbuf, ~208 KiB on Linux; 2 KiB on
    /// the BSDs and macOS) gets EMSGSIZE, then a reconnect, then EMSGSIZE again, and is dropped
    /// without a trace. Expected: something arrives (the line truncated to fit, with a marker).
    #[test]
    fn review_an_oversized_line_still_reaches_syslog_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let writer = SyslogWriter(syslog_at(&path));
        let mut line = b"level=ERROR msg=big reason=".to_vec();
        line.extend(std::iter::repeat_n(b'x', 400_000));
        line.push(b'\n');
        writer.make_writer().write_all(&line).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let got = server.recv(&mut buf);
        assert!(
            got.is_ok(),
            "a 400 kB log line was silently dropped (nothing reached syslog): {got:?}"
        );
        assert!(buf.starts_with(b"<4>"));
    }

    /// The daemon restarting: the old peer is gone, a new socket at the same path. One line
    /// may be lost at most; the next goes to the new daemon.
    #[test]
    fn review_syslog_reconnects_to_a_restarted_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let first = UnixDatagram::bind(&path).unwrap();
        let writer = SyslogWriter(syslog_at(&path));
        writer.make_writer().write_all(b"one\n").unwrap();
        let mut buf = [0u8; 512];
        first.recv(&mut buf).unwrap();
        drop(first);
        std::fs::remove_file(&path).unwrap();
        let second = UnixDatagram::bind(&path).unwrap();
        second
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        writer.make_writer().write_all(b"two\n").unwrap();
        let n = second.recv(&mut buf).expect("the line after the restart");
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with(": two\n"));
    }

    /// Go's `syslog.Dial` with an empty tag uses `os.Args[0]` as it is (the full path when
    /// started as `/usr/local/bin/teleport-email`), not its base name; the commit says the lines
    /// are "as the original sends them".
    #[test]
    fn review_syslog_tag_is_os_args_0_as_go_log_syslog() {
        let arg0 = std::env::args().next().unwrap();
        assert!(arg0.contains('/'), "the test binary runs by path: {arg0}");
        assert_eq!(tag(), arg0, "Go tags with os.Args[0] verbatim");
    }

    /// The path replaced by a directory: writes go on to the old (rotated) file, nothing panics,
    /// and once a file is back at the path it is used.
    #[test]
    fn review_a_directory_at_the_path_keeps_the_old_file_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.log");
        let file = ReopeningFile::open(&path).unwrap();
        let writer = FileWriter(file.clone());
        std::fs::rename(&path, dir.path().join("plugin.log.1")).unwrap();
        std::fs::create_dir(&path).unwrap();
        file.state.lock().unwrap().checked = Instant::now() - ROTATION_CHECK;
        writer.make_writer().write_all(b"a\n").unwrap();
        std::fs::remove_dir(&path).unwrap();
        file.state.lock().unwrap().checked = Instant::now() - ROTATION_CHECK;
        writer.make_writer().write_all(b"b\n").unwrap();
        let old = std::fs::read_to_string(dir.path().join("plugin.log.1")).unwrap();
        assert_eq!(old, "a\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b\n");
    }

    // ---- second reader (review-final) ----

    /// Finding L1 (MEDIUM; writers.rs `dial`, `UnixStream::connect`): the stream fallback
    /// connects in blocking mode. A syslog-ng `unix-stream` that stops accepting (hung, or its
    /// backlog full) makes `connect` block: at start and on every reload (`Syslog::local()` in
    /// `build`), and after a broken stream or the 5 s retry (inside `send`, holding the mutex, on
    /// the daemon's one runtime thread). The commit promises syslog "never blocks".
    #[tokio::test]
    async fn review_final_dialing_a_stream_syslog_that_does_not_accept_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let socket = tokio::net::UnixSocket::new_stream().unwrap();
        socket.bind(&path).unwrap();
        let _listener = socket.listen(0).unwrap(); // never accepts
        // Fill the backlog (Linux: one pending connection with a backlog of 0).
        let filler_path = path.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while let Ok(s) = UnixStream::connect(&filler_path) {
                held.push(s);
            }
            std::thread::sleep(Duration::from_secs(3600));
        });
        std::thread::sleep(Duration::from_millis(500));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let syslog = syslog_at(&path);
            SyslogWriter(syslog)
                .make_writer()
                .write_all(b"level=INFO msg=ready\n")
                .unwrap();
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(5)).is_ok(),
            "Syslog::at / send blocked for 5 s connecting to a stream syslog that does not \
             accept: start, reload and the logging thread hang"
        );
    }

    /// Finding L2 (LOW; writers.rs `send`, `&line[..MAX_SYSLOG_LINE]`): the cut is at a byte,
    /// so a multi-byte character (a request reason, a user name) at the 16 KiB boundary is split
    /// and the message is no longer UTF-8; journald then stores and shows the whole line as a
    /// blob (`[16.4K blob data]`), not text.
    #[test]
    fn review_final_a_cut_line_is_still_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let writer = SyslogWriter(syslog_at(&path));
        let mut line = vec![b'x'; MAX_SYSLOG_LINE - 1];
        line.extend_from_slice("é and more".as_bytes());
        line.push(b'\n');
        writer.make_writer().write_all(&line).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let n = server.recv(&mut buf).unwrap();
        assert!(
            std::str::from_utf8(&buf[..n]).is_ok(),
            "the line cut at 16 KiB splits a UTF-8 character: the syslog message is not UTF-8"
        );
    }
}
