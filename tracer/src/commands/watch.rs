//! `conntrace watch`: live and headless — findings as they fire on stdout (text, or
//! JSON lines with `--json` for a log pipeline), and events too with `-v`.

use std::io::Write as _;

use anyhow::{Context as _, Result};

use crate::{
    commands::cli::WatchArgs,
    engine::Finding,
    event::Record,
    output::report,
    pipeline::{live, Sink},
};

struct StdoutSink {
    json: bool,
    verbose: bool,
    out: std::io::LineWriter<std::io::Stdout>,
}

impl StdoutSink {
    fn write(&mut self, s: &str) -> Result<()> {
        match self.out.write_all(s.as_bytes()) {
            // A closed pipe (`| head`) ends the run cleanly at the next drain.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                crate::signals::request(libc::SIGPIPE);
                Ok(())
            }
            r => r.context("writing to stdout"),
        }
    }
}

impl Sink for StdoutSink {
    fn record(&mut self, record: &Record) -> Result<()> {
        if !self.verbose {
            return Ok(());
        }
        for event in record.events() {
            let line = if self.json {
                serde_json::to_string(&serde_json::json!({ "event": event }))?
            } else {
                serde_json::to_string(&event)?
            };
            self.write(&format!("{line}\n"))?;
        }
        Ok(())
    }
    fn finding(&mut self, finding: &Finding) -> Result<()> {
        let line = if self.json {
            format!(
                "{}\n",
                serde_json::to_string(&serde_json::json!({ "finding": finding }))?
            )
        } else {
            format!(
                "{}\n",
                crate::text::printable_text(&report::text_one(finding))
            )
        };
        self.write(&line)
    }
}

pub fn run(args: &WatchArgs) -> Result<()> {
    let mut sink = StdoutSink {
        json: args.json,
        verbose: args.verbose,
        out: std::io::LineWriter::new(std::io::stdout()),
    };
    let run = live::run(
        &args.filter.to_filter(),
        args.duration,
        args.live.options(args.verbose),
        &mut sink,
        |probes| live::announce(probes, "watching"),
    )?;
    crate::errln!(
        "conntrace: {} events; {}",
        run.stats.delivered,
        live::loss_line(&run)
    );
    Ok(())
}
