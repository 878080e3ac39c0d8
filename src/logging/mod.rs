//! Logging: text or JSON lines to stderr, stdout, a file (reopened after log rotation) or the
//! local syslog; level, format and output can be replaced at run time (start-up and config
//! reload) through one [`Logging`] handle.

use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::Layered;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry, reload};

use crate::config::{LogConfig, LogFormat, LogOutput, LogSeverity};

mod writers;

pub use writers::SYSLOG_SOCKET_ENV;

/// Whether `log.output` can be used as `start` would use it (for `check`): `Err` names the problem
/// for a file that cannot be opened; `Ok(false)` for a syslog that cannot be reached now (the
/// daemon would log to stderr meanwhile).
pub fn try_output(output: &LogOutput) -> Result<bool, LogError> {
    match output {
        LogOutput::Stderr | LogOutput::Stdout => Ok(true),
        LogOutput::File(path) => {
            ReopeningFile::open(path)
                .map(|_| true)
                .map_err(|source| LogError {
                    what: format!("open log file {}", path.display()),
                    source,
                })
        }
        LogOutput::Syslog => Ok(Syslog::local().reached()),
    }
}
use writers::{FileWriter, ReopeningFile, Syslog, SyslogWriter};

/// The level filter sits directly on the registry (a global filter: per-layer filters cannot be
/// swapped at run time); the output layer sits on top of it.
type Filtered = Layered<reload::Layer<Targets, Registry>, Registry>;
type BoxedLayer = Box<dyn Layer<Filtered> + Send + Sync>;

/// Crates whose debug output is noise (or could echo request headers): kept at INFO at most.
const QUIET_CRATES: &[&str] = &["h2", "hyper", "hyper_util", "reqwest", "tower", "mio"];

/// The installed subscriber; [`Logging::apply`] swaps its settings.
pub struct Logging {
    filter: reload::Handle<Targets, Registry>,
    output: reload::Handle<BoxedLayer, Filtered>,
}

/// The log file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("log.output: cannot {what}: {source}")]
pub struct LogError {
    what: String,
    source: std::io::Error,
}

impl Logging {
    /// Installs the global subscriber with the start-up defaults: text, INFO, stderr.
    /// Returns `None` if a subscriber is already installed (tests in one process).
    pub fn init() -> Option<Self> {
        let default = LogConfig {
            output: LogOutput::Stderr,
            severity: LogSeverity::Info,
            format: LogFormat::Text,
        };
        let (targets, layer) = build(&default, false).ok()?;
        let (targets, filter) = reload::Layer::new(targets);
        let (layer, output) = reload::Layer::new(layer);
        tracing_subscriber::registry()
            .with(targets)
            .with(layer)
            .try_init()
            .ok()?;
        Some(Self { filter, output })
    }

    /// Applies `[log]` (with `--debug` forcing DEBUG); the old settings stay if this fails.
    pub fn apply(&self, config: &LogConfig, debug: bool) -> Result<(), LogError> {
        let (targets, layer) = build(config, debug)?;
        // Only fails when the subscriber is gone, i.e. the process is exiting.
        let _ = self.output.reload(layer);
        let _ = self.filter.reload(targets);
        Ok(())
    }
}

fn level(config: &LogConfig, debug: bool) -> LevelFilter {
    if debug && config.severity > LogSeverity::Debug {
        return LevelFilter::DEBUG;
    }
    match config.severity {
        LogSeverity::Trace => LevelFilter::TRACE,
        LogSeverity::Debug => LevelFilter::DEBUG,
        LogSeverity::Info => LevelFilter::INFO,
        LogSeverity::Warn => LevelFilter::WARN,
        LogSeverity::Error => LevelFilter::ERROR,
    }
}

fn build(config: &LogConfig, debug: bool) -> Result<(Targets, BoxedLayer), LogError> {
    let level = level(config, debug);
    let quiet = level.min(LevelFilter::INFO);
    let filter = QUIET_CRATES
        .iter()
        .fold(Targets::new().with_default(level), |t, c| {
            t.with_target(*c, quiet)
        });
    let (writer, ansi) = match &config.output {
        LogOutput::Stderr => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        ),
        LogOutput::Stdout => (
            BoxMakeWriter::new(std::io::stdout),
            std::io::stdout().is_terminal(),
        ),
        LogOutput::File(path) => {
            let file = ReopeningFile::open(path).map_err(|source| LogError {
                what: format!("open log file {}", path.display()),
                source,
            })?;
            (BoxMakeWriter::new(FileWriter(file)), false)
        }
        // Never an error: while syslog cannot be reached, lines go to stderr (as the original,
        // the daemon runs on).
        LogOutput::Syslog => (BoxMakeWriter::new(SyslogWriter(Syslog::local())), false),
    };
    let layer: BoxedLayer = match config.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
    };
    Ok((filter, layer))
}
