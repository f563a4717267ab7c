//! The `conntrace` binary.

use std::process::ExitCode;

use clap::Parser as _;
use tracer::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Record(args) => tracer::record::run(args),
        Command::Watch(args) => tracer::watch::run(args),
        Command::Report(args) => tracer::report::run(&args.file, args.format),
        Command::Lab(args) => tracer::lab::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conntrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
