//! `conntrace record`: kernel events, node samples and findings to a JSON Lines log
//! until Ctrl-C, SIGTERM or `--duration`; a findings summary at exit.

use std::fs::File;

use anyhow::Result;

use crate::{
    commands::cli::RecordArgs,
    commands::report,
    engine::Finding,
    event::{Event, Sockstat},
    eventlog::{Header, LogWriter},
    kernel::probes,
    pipeline::{live, Sink},
};

struct LogSink {
    log: LogWriter<File>,
    header: Header,
}

impl Sink for LogSink {
    /// The header names the programs attached and what this kernel could not give.
    fn attached(&mut self, probes: &probes::Probes) -> Result<()> {
        self.log.header(&self.header.clone().with_probes(probes))
    }
    fn event(&mut self, event: &Event) -> Result<()> {
        self.log.event(event)
    }
    fn conn(&mut self, conn: &crate::event::Conn, _events: &[Event]) -> Result<()> {
        self.log.conn(conn)
    }
    fn sockstat(&mut self, sample: &Sockstat) -> Result<()> {
        self.log.sockstat(sample)
    }

    fn losses(&mut self, losses: &crate::event::Losses) -> Result<()> {
        self.log.losses(losses)
    }

    fn waiting(&mut self, snapshot: &crate::event::Waiting) -> Result<()> {
        self.log.waiting(snapshot)
    }
    fn finding(&mut self, finding: &Finding) -> Result<()> {
        self.log.finding(finding)
    }
    fn cgroup(&mut self, info: &crate::k8s::CgroupInfo) -> Result<()> {
        self.log.cgroup(info)
    }
    fn pod(&mut self, info: &crate::k8s::api::PodInfo) -> Result<()> {
        self.log.pod(info)
    }
}

pub fn run(args: &RecordArgs) -> Result<()> {
    probes::check_privileges()?;
    // Open the output before loading anything, so a bad path fails fast.
    let log = LogWriter::create(&args.output, args.force)?;
    let clock = crate::kernel::time::KernelClock::detect()?;
    let mut sink = LogSink {
        log,
        header: Header::for_this_host(clock.hz, clock.boot),
    };
    let output = args.output.display().to_string();
    let run = live::run(
        &args.filter.to_filter(),
        args.duration,
        {
            let mut o = args.live.options();
            o.attach.diagnostics = args.verbose;
            o
        },
        &mut sink,
        |probes| live::announce(probes, &format!("recording to {output}")),
    )?;
    let findings = run.engine.findings();
    sink.log.final_findings(&findings)?;
    sink.log.finish()?;
    if let Some(sig) = crate::signals::requested() {
        crate::errln!("conntrace: stopped by {}", crate::signals::name(sig));
    }
    crate::errln!(
        "conntrace: wrote {} events to {output}; {}",
        sink.log.events,
        live::loss_line(&run)
    );
    if findings.is_empty() {
        crate::errln!("conntrace: no findings");
    } else {
        crate::output::term::text(true, &report::render(&findings, report::Format::Text)?);
    }
    Ok(())
}
