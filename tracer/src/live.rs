//! The live pipeline shared by `record` and `watch`: kernel events and periodic
//! node samples, filtered, fed to the engine and handed to a [`Sink`].

use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    engine::{Config, Engine, Finding},
    event::{Event, Sockstat},
    filter::Filter,
    probes::{EventStream, Probes},
    sockstat,
    time::{monotonic_now, KernelClock},
};

/// Where the live run's output goes.
pub trait Sink {
    fn event(&mut self, event: &Event) -> Result<()>;
    fn sockstat(&mut self, sample: &Sockstat) -> Result<()>;
    fn finding(&mut self, finding: &Finding) -> Result<()>;
    /// Called after each look for new findings (5 times a second); `true` stops the run.
    fn tick(&mut self, _engine: &Engine, _probes: &Probes, _stats: LiveStats) -> Result<bool> {
        Ok(false)
    }
}

/// Counters printed at exit.
#[derive(Debug, Default, Clone, Copy)]
pub struct LiveStats {
    pub delivered: u64,
    pub filtered: u64,
    pub undecodable: u64,
}

/// How often node samples are taken (also the engine's tick for leak ages).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often the ring buffer is drained when the kernel did not wake the reader.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// How often new findings are looked for.
const POLL_EVERY: Duration = Duration::from_millis(200);

fn sample_now(clock: &KernelClock) -> Result<Sockstat> {
    let mono = u64::try_from(monotonic_now().as_nanos()).unwrap_or(u64::MAX);
    sockstat::read(mono, clock.wall(mono))
}

/// Decoded events through the filter into the engine and the sink.
struct Pipeline<'a> {
    decoder: &'a crate::decode::Decoder,
    filter: &'a Filter,
    engine: Engine,
    stats: LiveStats,
    failure: Option<anyhow::Error>,
}

impl Pipeline<'_> {
    fn handle(&mut self, bytes: &[u8], sink: &mut dyn Sink) {
        match self.decoder.decode(bytes) {
            Ok(event) if self.filter.matches(&event) => {
                self.stats.delivered += 1;
                self.engine.ingest(&event);
                if let Err(e) = sink.event(&event) {
                    self.failure.get_or_insert(e);
                }
            }
            Ok(_) => self.stats.filtered += 1,
            Err(_) => self.stats.undecodable += 1,
        }
    }

    fn sample(&mut self, sink: &mut dyn Sink) -> Result<()> {
        let s = sample_now(&self.decoder.clock)?;
        self.engine.sample(&s);
        sink.sockstat(&s)
    }

    fn poll(&mut self, sink: &mut dyn Sink) -> Result<()> {
        for f in self.engine.poll_new() {
            sink.finding(&f)?;
        }
        Ok(())
    }
}

/// The outcome of a live run.
pub struct LiveRun {
    pub engine: Engine,
    pub stats: LiveStats,
    pub probes: Probes,
}

/// Runs until Ctrl-C, SIGTERM or `duration`; `on_attached` is called once every
/// program is attached.
pub fn run(
    filter: &Filter,
    duration: Option<f64>,
    sink: &mut dyn Sink,
    on_attached: impl FnOnce(&Probes),
) -> Result<LiveRun> {
    let mut probes = Probes::load()?;
    let ring = probes.take_ring()?;
    let decoder = probes.decoder.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let mut pipe = Pipeline {
        decoder: &decoder,
        filter,
        engine: Engine::new(Config::default()),
        stats: LiveStats::default(),
        failure: None,
    };
    runtime.block_on(async {
        let mut stream = EventStream::new(ring)?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        // A year stands in for "no deadline" (tokio's timer cannot take Duration::MAX).
        let forever = Duration::from_hours(24 * 365);
        let deadline = duration
            .map_or(forever, Duration::from_secs_f64)
            .min(forever);
        let stop = tokio::time::sleep(deadline);
        tokio::pin!(stop);
        let mut samples = tokio::time::interval(SAMPLE_EVERY);
        let mut polls = tokio::time::interval(POLL_EVERY);
        // The kernel side wakes the reader only past 1 MiB unread (see tracer-ebpf's
        // emit); below that the ring is drained on this timer.
        let mut drains = tokio::time::interval(DRAIN_EVERY);
        on_attached(&probes);
        loop {
            tokio::select! {
                r = stream.drain_with(|b| pipe.handle(b, sink)) => { r?; }
                _ = drains.tick() => { stream.drain_now(|b| pipe.handle(b, sink)); }
                _ = samples.tick() => pipe.sample(sink)?,
                _ = polls.tick() => {
                    pipe.poll(sink)?;
                    if sink.tick(&pipe.engine, &probes, pipe.stats)? {
                        break;
                    }
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                () = &mut stop => break,
            }
            if let Some(e) = pipe.failure.take() {
                return Err(e);
            }
        }
        stream.drain_now(|b| pipe.handle(b, sink));
        // A last sample closes the run, so a replay ends on the same clock.
        pipe.sample(sink)?;
        pipe.poll(sink)
    })?;
    let Pipeline {
        engine,
        stats,
        failure,
        ..
    } = pipe;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(LiveRun {
        engine,
        stats,
        probes,
    })
}

/// The exit line about what was delivered and lost.
pub fn loss_line(run: &LiveRun) -> Result<String> {
    let losses = run.probes.losses()?;
    let l = |i: u32| losses[i as usize];
    Ok(format!(
        "lost {} (ring buffer full {}, owner map {}, connect map {}, kernel read {}, undecodable {}, engine table evictions {}); filtered out {}",
        losses.iter().sum::<u64>() + run.stats.undecodable,
        l(tracer_common::LOSS_RINGBUF_FULL),
        l(tracer_common::LOSS_OWNER_MAP),
        l(tracer_common::LOSS_CONNECT_MAP),
        l(tracer_common::LOSS_READ),
        run.stats.undecodable,
        run.engine.stats.evicted,
        run.stats.filtered,
    ))
}
