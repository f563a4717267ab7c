//! conntrace userspace.
//!
//! Kernel programs -> [`probes`] (load, attach, ring buffer) -> [`decode`] (bytes to
//! [`event::Event`]) -> [`log`] (JSON Lines writer and reader).
//!
//! - [`btf`]: kernel struct offsets from `/sys/kernel/btf/vmlinux`.
//! - [`tracefs`]: mounting tracefs, classic tracepoint record formats.
//! - [`support`]: what the running kernel offers; degraded facts by name.
//! - [`time`]: monotonic-to-wall clock and HZ.
//! - [`filter`]: the `--pid`, `--comm`, `--port` and `--cidr` filters.
//! - [`engine`]: the pure diagnosis engine and its detectors.
//! - [`live`]: probes -> engine -> sink, shared by [`record`] and [`watch`].
//! - [`report`]: findings from a log; [`lab`]: the incidents reproduced locally.
//! - [`sockstat`]: node TCP memory samples; [`k8s`]: container and pod of a cgroup.
//! - [`tui`]: the terminal UI, live and on a recording.
//! - [`cli`]: the command line.

pub mod btf;
pub mod cli;
pub mod decode;
pub mod diag;
pub mod engine;
pub mod event;
pub mod filter;
pub mod fuzz;
pub mod jsonl;
pub mod k8s;
pub mod lab;
pub mod listeners;
pub mod live;
pub mod log;
pub mod metrics;
pub mod metrics_http;
pub mod out;
pub mod probes;
pub mod recent;
pub mod record;
pub mod report;
pub mod signals;
pub mod sockstat;
pub mod support;
pub mod time;
pub mod tracefs;
pub mod tui;
pub mod watch;
