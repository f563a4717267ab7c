//! The `conntrace` binary.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};
use tracer::commands::cli::{Cli, Command};

fn main() -> ExitCode {
    // Before anything else: SIGINT, SIGTERM and SIGHUP stop every command cleanly.
    tracer::signals::install();
    // Flags given before the command apply to it, or are refused (exit 2, as clap).
    let command = Cli::parse().resolve().unwrap_or_else(|e| {
        Cli::command()
            .error(clap::error::ErrorKind::ArgumentConflict, e)
            .exit()
    });
    let result = match &command {
        Command::Tui(args) => {
            tracer::tui::run_live(args.filter.to_filter(), args.live.options(false))
        }
        Command::Replay(args) => tracer::tui::run_replay(&args.file),
        Command::Record(args) => tracer::commands::record::run(args),
        Command::Watch(args) => tracer::commands::watch::run(args),
        Command::Report(args) => tracer::commands::report::run(&args.file, args.format, args.stats),
        Command::Lab(args) => tracer::lab::run(match &args.scenario {
            Some(name) if !args.list => tracer::lab::Options::Run(name),
            _ => tracer::lab::Options::List,
        }),
        Command::Check(args) => tracer::commands::check::run(args.live),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracer::errln!("conntrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
