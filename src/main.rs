#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use teleport_email::cli::{Cli, Command};
use teleport_email::{app, config, version};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Configure => {
            print!("{}", config::EXAMPLE_CONFIG);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("{}", version::version_line());
            ExitCode::SUCCESS
        }
        Command::Start { config, debug } => app::start(&config, debug).into(),
    }
}
