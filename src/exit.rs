//! Process exit codes, one per kind of failure (documented in the README).

use std::process::ExitCode;

/// Why the process ends; `code()` is what the shell sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Normal end, including a graceful stop on SIGTERM/SIGINT.
    Success,
    /// A runtime failure after start-up (e.g. the watch was lost with `TELEPORT_PLUGIN_FAIL_FAST`).
    Runtime,
    /// Bad command line (clap's own code).
    Usage,
    /// The configuration file is missing, unreadable or invalid, or logging could not be set up.
    Config,
    /// Teleport could not be reached, or refused us, at start-up.
    Teleport,
    /// The mail server (SMTP or Mailgun) failed its start-up health check.
    Mailer,
    /// Stopped by force: a second signal, or in-flight work outlived the grace period.
    Forced,
}

impl Exit {
    /// The numeric exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Runtime => 1,
            Exit::Usage => 2,
            Exit::Config => 3,
            Exit::Teleport => 4,
            Exit::Mailer => 5,
            Exit::Forced => 6,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e.code())
    }
}
