//! The one path from a record to the engine and a [`Sink`], for live runs and
//! recorded logs alike: each record kind feeds the engine first (so the sink sees
//! the engine's view after it), then the sink.

use anyhow::Result;

use crate::{
    engine::Engine,
    event::{Conn, Event, Sockstat, Waiting},
    eventlog::Record,
    k8s::{api::PodInfo, CgroupInfo},
    output::metrics::Metrics,
    pipeline::Sink,
};

/// One kernel event (live: already filtered).
pub fn event(
    engine: &mut Engine,
    metrics: Option<&mut Metrics>,
    e: &Event,
    sink: &mut dyn Sink,
) -> Result<()> {
    engine.ingest(e);
    if let Some(m) = metrics {
        m.observe(e);
    }
    sink.event(e)
}

/// One connection record, as the transitions it lists (`events`, from
/// [`Conn::events`]): the engine's detectors see exactly what a stream of
/// per-transition events would have given them.
pub fn conn(
    engine: &mut Engine,
    mut metrics: Option<&mut Metrics>,
    c: &Conn,
    events: &[Event],
    sink: &mut dyn Sink,
) -> Result<()> {
    for e in events {
        engine.ingest(e);
        if let Some(m) = metrics.as_deref_mut() {
            m.observe(e);
        }
    }
    sink.conn(c, events)
}

pub fn sockstat(engine: &mut Engine, s: &Sockstat, sink: &mut dyn Sink) -> Result<()> {
    engine.sample(s);
    sink.sockstat(s)
}

pub fn waiting(engine: &mut Engine, w: &Waiting, sink: &mut dyn Sink) -> Result<()> {
    engine.waiting(w);
    sink.waiting(w)
}

pub fn tuple(
    engine: &mut Engine,
    info: &crate::event::TupleInfo,
    sink: &mut dyn Sink,
) -> Result<()> {
    engine.tuple(info);
    sink.tuple(info)
}

pub fn listeners(
    engine: &mut Engine,
    sample: &crate::event::Listeners,
    sink: &mut dyn Sink,
) -> Result<()> {
    engine.listeners(sample);
    sink.listeners(sample)
}

pub fn reuses(engine: &mut Engine, r: &crate::event::Reuses, sink: &mut dyn Sink) -> Result<()> {
    engine.reuses(r);
    sink.reuses(r)
}

pub fn cgroup(engine: &mut Engine, info: &CgroupInfo, sink: &mut dyn Sink) -> Result<()> {
    engine.cgroup(info);
    sink.cgroup(info)
}

pub fn pod(engine: &mut Engine, info: &PodInfo, sink: &mut dyn Sink) -> Result<()> {
    engine.pod(info);
    sink.pod(info)
}

/// One record of a log. Findings written in the log are not fed back: the engine
/// finds them again from the events.
pub fn record(engine: &mut Engine, record: &Record, sink: &mut dyn Sink) -> Result<()> {
    match record {
        Record::Event(e) => event(engine, None, e, sink),
        Record::Conn(c) => {
            let events: Vec<Event> = c.events().collect();
            conn(engine, None, c, &events, sink)
        }
        Record::Sockstat(s) => sockstat(engine, s, sink),
        Record::Waiting(w) => waiting(engine, w, sink),
        Record::Tuple(t) => tuple(engine, t, sink),
        Record::Listeners(l) => listeners(engine, l, sink),
        Record::Reuses(r) => reuses(engine, r, sink),
        Record::Cgroup(c) => cgroup(engine, c, sink),
        Record::Pod(p) => pod(engine, p, sink),
        Record::Losses(l) => sink.losses(l),
        Record::Finding(_) | Record::FinalFindings(_) => Ok(()),
    }
}

/// A sink that keeps only the last `losses` record: replaying a log for its
/// findings (`report`, the fuzzer).
#[derive(Debug, Default)]
pub struct Findings {
    pub losses: Option<crate::event::Losses>,
}

impl Sink for Findings {
    fn event(&mut self, _: &Event) -> Result<()> {
        Ok(())
    }
    fn conn(&mut self, _: &Conn, _: &[Event]) -> Result<()> {
        Ok(())
    }
    fn sockstat(&mut self, _: &Sockstat) -> Result<()> {
        Ok(())
    }
    fn losses(&mut self, losses: &crate::event::Losses) -> Result<()> {
        self.losses = Some(*losses);
        Ok(())
    }
    fn finding(&mut self, _: &crate::engine::Finding) -> Result<()> {
        Ok(())
    }
}
