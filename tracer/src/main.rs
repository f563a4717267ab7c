//! The `conntrace` binary.

use std::process::ExitCode;

use clap::Parser as _;
use tracer::commands::cli::{Cli, Command};

fn main() -> ExitCode {
    // Before anything else: SIGINT, SIGTERM and SIGHUP stop every command cleanly.
    tracer::signals::install();
    let cli = Cli::parse();
    let result = match &cli.command {
        None => tracer::tui::run_live(&cli.filter, cli.live),
        Some(Command::Tui(args)) => tracer::tui::run_live(&args.filter, args.live),
        Some(Command::Replay(args)) => tracer::tui::run_replay(&args.file),
        Some(Command::Record(args)) => tracer::commands::record::run(args),
        Some(Command::Watch(args)) => tracer::commands::watch::run(args),
        Some(Command::Report(args)) => {
            tracer::commands::report::run(&args.file, args.format, args.stats)
        }
        Some(Command::Lab(args)) => tracer::lab::run(args),
        Some(Command::Check(args)) => tracer::commands::check::run(args.live),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracer::errln!("conntrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
