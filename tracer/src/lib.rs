//! conntrace userspace. The tree follows the pipeline, one layer per directory, each
//! importing only from the layers before it:
//!
//! ```text
//! kernel programs (tracer-ebpf; wire types in tracer-common)
//!   -> kernel/    load, attach, read the ring buffer and socket map; decode to event::Event
//!   -> pipeline/  filter, restore owners, feed the engine (live, or a log's records)
//!   -> engine/    the pure diagnosis engine: events in, findings out
//!   -> eventlog/  the JSON Lines log: writer, reader, encoder
//!   -> output/    terminal text, Prometheus metrics and their HTTP server
//!   -> commands/  the command line and the headless commands (record, watch, report)
//!      tui/       the terminal UI, live and on a recording
//! ```
//!
//! Beside the pipeline: [`event`] (the data model every layer shares), [`k8s`] (the
//! pod and container of a cgroup), [`lab`] (the incidents reproduced locally),
//! [`signals`] (stopping cleanly) and [`fuzz`] (mutation fuzzing of every parser).
//! The engine never knows whether its events are live or replayed.

pub mod commands;
pub mod engine;
pub mod event;
pub mod eventlog;
pub mod fuzz;
pub mod k8s;
pub mod kernel;
pub mod lab;
pub mod output;
pub mod pipeline;
pub mod signals;
pub mod tui;
