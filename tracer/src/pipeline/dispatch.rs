//! The one path from a record to the engine and a [`Sink`], for live runs and
//! recorded logs alike: the engine takes the record first (so the sink sees the
//! engine's view after it), then the sink. Findings read from a log go nowhere: the
//! engine finds them again from the records.

use anyhow::Result;

use crate::{engine::Engine, event::Record, output::metrics::Metrics, pipeline::Sink};

/// One record (live: already filtered and attributed).
pub fn dispatch(
    engine: &mut Engine,
    metrics: Option<&mut Metrics>,
    record: &Record,
    sink: &mut dyn Sink,
) -> Result<()> {
    let mut metrics = metrics;
    engine.record_observed(record, |e, idle| {
        if let Some(m) = metrics.as_deref_mut() {
            m.observe(e, idle);
        }
    });
    match record {
        Record::Finding(_) | Record::FinalFindings(_) => Ok(()),
        _ => sink.record(record),
    }
}

/// A sink that keeps only the last `losses` record: replaying a log for its
/// findings (`report`, the fuzzer).
#[derive(Debug, Default)]
pub struct LastLosses {
    pub losses: Option<crate::event::Losses>,
}

impl Sink for LastLosses {
    fn record(&mut self, record: &Record) -> Result<()> {
        if let Record::Losses(l) = record {
            self.losses = Some(*l);
        }
        Ok(())
    }
    fn finding(&mut self, _: &crate::engine::Finding) -> Result<()> {
        Ok(())
    }
}
