//! conntrace userspace. The tree follows the pipeline, one layer per directory; a
//! layer imports only from the layers above it in this list:
//!
//! ```text
//! event/     the data model every layer shares: Record, the one thing that flows from
//!            a source to the engine and a sink (Event, Conn, the snapshots, Losses);
//!            text: escaping
//! kernel/    what the kernel offers (BTF, tracefs), the loaded kernel session (the
//!            programs of tracer-ebpf; wire types in tracer-common), its ring buffer and
//!            socket map read as Records; the kernel's own tables (listeners, sock_diag,
//!            sockstat) and the inspection thread, also producing Records
//! engine/    the pure diagnosis engine: records in, findings out; never knows whether
//!            its input is live or replayed
//! eventlog/  the JSON Lines log: writer, reader, the hot-path encoder
//! output/    findings rendered (text, markdown, JSON), terminal text that survives a
//!            closed pipe, Prometheus metrics and their server
//! pipeline/  live (sources -> filters and attribution -> engine -> sink) and recorded
//!            (log -> engine -> sink), through one dispatch of a Record
//! commands/  the command line and the headless commands: record, watch, report, check
//! tui/       the terminal UI, live and on a recording
//! lab/       the incidents reproduced locally
//! ```
//!
//! Beside them: [`k8s`] (the pod and container of a cgroup), [`signals`] (stopping
//! cleanly from the first moment) and, with the `fuzz` feature,
//! `fuzz` (mutation fuzzing of every parser; its smoke run is a unit test).

pub mod commands;
pub mod engine;
pub mod event;
pub mod eventlog;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
pub mod k8s;
pub mod kernel;
pub mod lab;
pub mod output;
pub mod pipeline;
pub mod signals;
pub mod text;
pub mod tui;
