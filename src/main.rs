#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use teleport_email::cli::{Cli, Command};
use teleport_email::{app, check, config, version};

/// mimalloc rather than the C library's allocator: under a burst, glibc's malloc and free took a
/// fifth of the daemon's instructions (musl's is slower still). Built without transparent huge
/// pages, so the idle RSS stays where glibc's is (~10 MB).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
