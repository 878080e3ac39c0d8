#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use teleport_email::cli::{Cli, Command};
use teleport_email::{app, check, config, version};

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
        Command::Check { config, send_test } => {
            match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt
                    .block_on(check::run(&config, send_test.as_deref()))
                    .into(),
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    ExitCode::from(teleport_email::exit::Exit::Runtime.code())
                }
            }
        }
    }
}
