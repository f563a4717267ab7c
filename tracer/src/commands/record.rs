//! `conntrace record`: kernel events, node samples and findings to a JSON Lines log
//! until Ctrl-C, SIGTERM or `--duration`; a findings summary at exit.

use anyhow::Result;

use crate::{
    commands::cli::RecordArgs,
    eventlog::{Header, LogWriter},
    kernel::session,
    output::report,
    pipeline::live,
};

pub fn run(args: &RecordArgs) -> Result<()> {
    session::check_privileges()?;
    // Open the output before loading anything, so a bad path fails fast.
    let mut log = LogWriter::create(&args.output, args.force)?.with_header(Header::for_this_host());
    let output = args.output.display().to_string();
    let run = live::run(
        &args.filter.to_filter(),
        args.duration,
        args.live.options(args.verbose),
        &mut log,
        |probes| live::announce(probes, &format!("recording to {output}")),
    )?;
    let findings = run.engine.findings();
    log.final_findings(&findings)?;
    log.finish()?;
    if let Some(sig) = crate::signals::requested() {
        crate::errln!("conntrace: stopped by {}", crate::signals::name(sig));
    }
    crate::errln!(
        "conntrace: wrote {} events to {output}; {}",
        log.events,
        live::loss_line(&run)
    );
    if args.verbose {
        // Where the kernel's share of the cost goes (with kernel.bpf_stats_enabled).
        for (name, runs, time) in run.probes.program_stats() {
            if runs > 0 {
                let ns = time.as_nanos() / u128::from(runs);
                crate::errln!("conntrace: program {name}: {runs} runs, {ns} ns a run");
            }
        }
    }
    if findings.is_empty() {
        crate::errln!("conntrace: no findings");
    } else {
        crate::output::term::text(true, &report::render(&findings, report::Format::Text)?);
    }
    // The diagnosis went on when the disk filled; the exit status says the log did
    // not keep all of it.
    if let Some(what) = log.incomplete() {
        anyhow::bail!("the log {output} is incomplete: {what}");
    }
    Ok(())
}
