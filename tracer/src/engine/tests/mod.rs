//! Detector unit tests on synthetic event streams (no root, no kernel).

mod awaiting;
mod connect;
mod idle_reuse;
mod leak_memory;
mod listen;
mod nearmiss;
mod stall_rst;

use super::{Config, Engine, Finding, Kind};
use crate::event::Event;

fn run(events: &[Event]) -> Engine {
    let mut engine = Engine::new(Config::default());
    for e in events {
        engine.ingest(e);
    }
    engine
}

fn of_kind(engine: &Engine, kind: Kind) -> Vec<Finding> {
    engine
        .findings()
        .into_iter()
        .filter(|f| f.kind == kind)
        .collect()
}
