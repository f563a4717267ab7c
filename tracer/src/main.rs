//! The `conntrace` binary.

use std::process::ExitCode;

use clap::Parser as _;
use tracer::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Record(args) => tracer::record::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conntrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
