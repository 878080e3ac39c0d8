//! Where log lines go besides the standard streams: a file that is reopened when log rotation
//! moves or removes it, and the local syslog daemon.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
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
    let file = OpenOptions::new().create(true).append(true).open(path)?;
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

/// The local syslog daemon, over its datagram socket, one message per log line, as the original
/// sends them: `<4>Mmm dd hh:mm:ss teleport-email[pid]: line` (the time in UTC).
pub(super) struct Syslog {
    path: PathBuf,
    socket: Mutex<UnixDatagram>,
    tag: String,
}

impl Syslog {
    /// Connects to the local syslog daemon.
    pub(super) fn connect() -> io::Result<Arc<Self>> {
        let candidates: Vec<PathBuf> = match std::env::var_os(SYSLOG_SOCKET_ENV) {
            Some(p) => vec![PathBuf::from(p)],
            None => SYSLOG_SOCKETS.iter().map(PathBuf::from).collect(),
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no syslog socket");
        for path in candidates {
            match dial(&path) {
                Ok(socket) => {
                    return Ok(Arc::new(Self {
                        path,
                        socket: Mutex::new(socket),
                        tag: tag(),
                    }));
                }
                Err(e) => last = io::Error::new(e.kind(), format!("{}: {e}", path.display())),
            }
        }
        Err(last)
    }

    fn send(&self, line: &[u8]) -> io::Result<()> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let mut message = format!(
            "<{PRIORITY}>{} {}[{}]: ",
            stamp(SystemTime::now()),
            self.tag,
            std::process::id()
        )
        .into_bytes();
        message.extend_from_slice(line);
        message.push(b'\n');
        let mut socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        if socket.send(&message).is_ok() {
            return Ok(());
        }
        // The daemon restarted: connect again once, as Go's writer does.
        *socket = dial(&self.path)?;
        socket.send(&message).map(drop)
    }
}

fn dial(path: &Path) -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket.connect(path)?;
    Ok(socket)
}

/// The program's name, as Go's `log/syslog` tags messages without a tag of their own.
fn tag() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
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
        // A syslog daemon that is gone cannot be told; the line is dropped.
        let _ = self.0.send(buf);
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
        let syslog = Arc::new(Syslog {
            path: path.clone(),
            socket: Mutex::new(dial(&path).unwrap()),
            tag: "teleport-email".into(),
        });
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
}
