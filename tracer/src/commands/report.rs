//! `conntrace report FILE`: findings from a recorded log, as text, markdown or JSON.

use std::{io::Write as _, path::Path};

use anyhow::{Context as _, Result};

use crate::output::report::{render_limited, Format};
use crate::{
    engine::{Config, Engine},
    eventlog::{LogReader, Record},
    pipeline::dispatch,
};

/// What a replay of a log produced.
/// Bad lines kept (and printed) at most; the rest are counted.
pub const KEPT_BAD_LINES: usize = 20;

pub struct Replay {
    pub engine: Engine,
    /// The log's header: host, kernel, and the facts its kernel could not give.
    pub header: crate::eventlog::Header,
    /// Bad lines, reported with their numbers (the first [`KEPT_BAD_LINES`]); every
    /// good line was used.
    pub bad_lines: Vec<crate::eventlog::LineError>,
    /// Every bad line, also those not kept.
    pub bad_total: u64,
    pub newer_version: Option<u32>,
    /// The recording's last `losses` line: what it lost (cumulative).
    pub losses: Option<crate::event::Losses>,
    /// Time reading and parsing the log, and time in the engine alone.
    pub read_time: std::time::Duration,
    pub engine_time: std::time::Duration,
}

/// Records parsed before they go through the engine together, so the engine's own
/// time can be measured without a clock read per event.
const BATCH: usize = 4096;

/// Feeds every event and sample of the log at `path` through a fresh engine.
pub fn replay(path: &Path, cfg: Config) -> Result<Replay> {
    let started = std::time::Instant::now();
    let mut reader = LogReader::open(path)?;
    let newer_version = reader
        .is_newer_version()
        .then_some(reader.header.conntrace_log);
    let mut engine = Engine::new(cfg);
    let mut bad_lines = Vec::new();
    let mut bad_total = 0u64;
    let mut engine_time = std::time::Duration::ZERO;
    let mut batch = Vec::with_capacity(BATCH);
    let mut sink = dispatch::LastLosses::default();
    let mut run = |batch: &mut Vec<Record>, engine: &mut Engine| {
        let t = std::time::Instant::now();
        for record in batch.drain(..) {
            // The sink keeps nothing that can fail.
            let _ = dispatch::dispatch(engine, None, &record, &mut sink);
        }
        engine_time += t.elapsed();
    };
    for record in &mut reader {
        match record {
            Ok(r) => {
                batch.push(r);
                if batch.len() == BATCH {
                    run(&mut batch, &mut engine);
                }
            }
            Err(e) => {
                bad_total += 1;
                if bad_lines.len() < KEPT_BAD_LINES {
                    bad_lines.push(e);
                }
            }
        }
    }
    run(&mut batch, &mut engine);
    Ok(Replay {
        losses: sink.losses,
        header: reader.header.clone(),
        engine,
        bad_lines,
        bad_total,
        newer_version,
        read_time: started.elapsed().saturating_sub(engine_time),
        engine_time,
    })
}

pub fn run(path: &Path, format: Format, stats: bool) -> Result<()> {
    let replay = replay(path, Config::default())?;
    if stats {
        let e = replay.engine.stats();
        let rate = |d: std::time::Duration| {
            #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
            let r = e.events as f64 / d.as_secs_f64().max(1e-9);
            r
        };
        crate::errln!(
            "conntrace: {} events, {} samples; reading {:.3} s ({:.0} events/s), engine {:.3} s ({:.0} events/s); {} connections tracked, {} evicted",
            e.events,
            e.samples,
            replay.read_time.as_secs_f64(),
            rate(replay.read_time),
            replay.engine_time.as_secs_f64(),
            rate(replay.engine_time),
            replay.engine.conns().len(),
            e.evicted,
        );
    }
    if let Some(v) = replay.newer_version {
        crate::errln!(
            "conntrace: warning: {} is log version {v}, newer than this conntrace reads (1); unknown fields were skipped",
            path.display()
        );
    }
    for bad in &replay.bad_lines {
        crate::errln!(
            "conntrace: warning: {}: {bad}; the line was skipped",
            path.display()
        );
    }
    if replay.bad_total > replay.bad_lines.len() as u64 {
        crate::errln!(
            "conntrace: warning: {}: {} more bad lines were skipped ({} in all)",
            path.display(),
            replay.bad_total - replay.bad_lines.len() as u64,
            replay.bad_total
        );
    }
    let findings = replay.engine.findings();
    let out = render_limited(&findings, &replay.header, replay.losses.as_ref(), format)?;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(out.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing the report"),
    }
}
