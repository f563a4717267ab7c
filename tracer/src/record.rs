//! `conntrace record`: kernel events to a JSON Lines log until Ctrl-C, SIGTERM or
//! `--duration`.

use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    cli::RecordArgs,
    log::{Header, LogWriter},
    probes::{EventStream, Probes},
};

/// Counters printed at exit.
#[derive(Debug, Default, Clone, Copy)]
pub struct RecordStats {
    pub written: u64,
    pub filtered: u64,
    pub undecodable: u64,
}

pub fn run(args: &RecordArgs) -> Result<()> {
    let filter = args.filter.to_filter();
    crate::probes::check_privileges()?;
    // Open the output before loading anything, so a bad path fails fast.
    let mut log = LogWriter::create(&args.output)?;
    let mut probes = Probes::load()?;
    let ring = probes.take_ring()?;
    let decoder = probes.decoder.clone();
    log.header(&Header::for_this_host(decoder.clock.hz, decoder.clock.boot))?;
    for warning in &probes.degraded {
        eprintln!("conntrace: warning: {warning}");
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let mut stats = RecordStats::default();
    let mut result: Result<()> = Ok(());
    let mut handle = |bytes: &[u8]| match decoder.decode(bytes) {
        Ok(event) if filter.matches(&event) => {
            if let Err(e) = log.event(&event) {
                if result.is_ok() {
                    result = Err(e);
                }
            } else {
                stats.written += 1;
            }
        }
        Ok(_) => stats.filtered += 1,
        Err(_) => stats.undecodable += 1,
    };
    runtime.block_on(async {
        let mut stream = EventStream::new(ring)?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        // A year stands in for "no deadline" (tokio's timer cannot take Duration::MAX).
        let forever = Duration::from_hours(24 * 365);
        let deadline = args.duration.map_or(forever, Duration::from_secs_f64);
        let sleep = tokio::time::sleep(deadline.min(forever));
        tokio::pin!(sleep);
        eprintln!(
            "conntrace: {} programs attached in {} ms; recording to {} (Ctrl-C to stop)",
            probes.attached.len(),
            probes.attach_time.as_millis(),
            args.output.display()
        );
        loop {
            tokio::select! {
                r = stream.drain_with(&mut handle) => { r?; }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                () = &mut sleep => break,
            }
        }
        stream.drain_now(&mut handle);
        anyhow::Ok(())
    })?;
    result?;
    log.flush()?;
    let losses = probes.losses()?;
    eprintln!(
        "conntrace: wrote {} events to {}; lost {} (ring buffer full {}, owner map {}, connect map {}, kernel read {}); filtered out {}, undecodable {}",
        stats.written,
        args.output.display(),
        losses.iter().sum::<u64>() + stats.undecodable,
        losses[tracer_common::LOSS_RINGBUF_FULL as usize],
        losses[tracer_common::LOSS_OWNER_MAP as usize],
        losses[tracer_common::LOSS_CONNECT_MAP as usize],
        losses[tracer_common::LOSS_READ as usize],
        stats.filtered,
        stats.undecodable,
    );
    Ok(())
}
