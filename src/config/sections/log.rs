//! `[log]`: where log lines go, from which severity, in which format.

use std::path::PathBuf;

use toml::Table;

use crate::config::reader::{Findings, Section};
use crate::config::{LogConfig, LogFormat, LogOutput, LogSeverity};

pub(super) fn read_log(f: &mut Findings, t: &Table) -> Option<LogConfig> {
    let mut s = Section::new("log", t);
    let output = s.string(f, "output", &[]).unwrap_or_default();
    let severity = s.string(f, "severity", &[]).unwrap_or_default();
    let format = s.string(f, "format", &[]).unwrap_or_default();
    s.finish(f);

    let output = log_output(output);
    let severity = log_severity(f, &severity);
    let format = log_format(f, &format);
    Some(LogConfig {
        output,
        severity: severity?,
        format: format?,
    })
}

/// `log.output`: a stream name, `syslog`, or a file path.
fn log_output(output: String) -> LogOutput {
    match output.to_ascii_lowercase().as_str() {
        "" | "stderr" | "error" | "2" => LogOutput::Stderr,
        "stdout" | "out" | "1" => LogOutput::Stdout,
        "syslog" => LogOutput::Syslog,
        _ => LogOutput::File(PathBuf::from(output)),
    }
}

fn log_severity(f: &mut Findings, severity: &str) -> Option<LogSeverity> {
    match severity.to_ascii_lowercase().as_str() {
        "" | "info" => Some(LogSeverity::Info),
        "trace" => Some(LogSeverity::Trace),
        "debug" => Some(LogSeverity::Debug),
        "warn" | "warning" => Some(LogSeverity::Warn),
        "err" | "error" => Some(LogSeverity::Error),
        other => {
            f.error(
                "log.severity",
                format!(
                    "unsupported logger severity {other:?} (use trace, debug, info, warn or error)"
                ),
            );
            None
        }
    }
}

fn log_format(f: &mut Findings, format: &str) -> Option<LogFormat> {
    match format.to_ascii_lowercase().as_str() {
        "" | "text" => Some(LogFormat::Text),
        "json" => Some(LogFormat::Json),
        other => {
            f.error(
                "log.format",
                format!("unsupported log output format {other:?} (use text or json)"),
            );
            None
        }
    }
}
