//! The command line: `start`, `check`, `configure`, `version`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

/// Teleport plugin for access requests approval via E-mail.
#[derive(Debug, Parser)]
#[command(name = "teleport-email", version = None, disable_version_flag = true)]
#[command(about = "Teleport plugin for access requests approval via E-mail")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Starts the Teleport Email plugin.
    Start {
        /// TOML config file path.
        #[arg(short, long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Enable verbose (debug) logging; the log output stays as configured.
        #[arg(short, long)]
        debug: bool,
    },
    /// Checks the config, the Teleport connection and permissions, and the mail server.
    Check {
        /// TOML config file path.
        #[arg(short, long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Also send one real test mail to this address.
        #[arg(long, value_name = "ADDRESS")]
        send_test: Option<String>,
    },
    /// Prints an example configuration file, with every key explained.
    Configure,
    /// Prints the version.
    Version,
}
