//! Events on their way to the engine and on to a [`Sink`] (the log, stdout, the UI).
//!
//! Live ([`live`]): the kernel's records, owners of resets from recently closed
//! sockets restored ([`recent`]), the kernel's tables asked where an event needs them
//! ([`tuples`]: time-wait holders, DNAT backends), filtered ([`filter`]). Recorded: a log's records as
//! they were written. Both reach the engine and the sink through [`dispatch`], the one
//! place that knows which record feeds which part of the engine, so a recording
//! replayed gives the findings it gave live. Every loss on the way is counted in one
//! [`crate::event::Losses`].

pub mod dispatch;
pub mod filter;
pub mod live;
pub mod recent;
pub mod tuples;

use anyhow::Result;

use crate::{
    engine::{Engine, Finding},
    event::Record,
    kernel::session::KernelSession,
};

/// Where records go after the engine: the log (`record`), stdout (`watch`), the UI
/// (live and replayed), nothing (`report`).
pub trait Sink {
    /// Called once the programs are attached, before any record.
    fn attached(&mut self, _probes: &KernelSession) -> Result<()> {
        Ok(())
    }
    /// One record, after the engine took it.
    fn record(&mut self, record: &Record) -> Result<()>;
    /// A finding the engine made, when first made and whenever its count grew.
    fn finding(&mut self, finding: &Finding) -> Result<()>;
    /// Whether this sink shows BPF run time (kernel-wide statistics are then on).
    fn shows_bpf_run_time(&self) -> bool {
        false
    }
    /// Something degraded (printed once by the headless commands).
    fn warn(&mut self, message: &str) {
        crate::errln!("conntrace: warning: {message}");
    }
    /// Called after each look for new findings (5 times a second); `true` stops the run.
    fn tick(&mut self, _engine: &Engine, _probes: &KernelSession) -> Result<bool> {
        Ok(false)
    }
}

/// A log as a sink (`record`): every record written as it comes, the header once the
/// programs are attached.
impl<W: crate::eventlog::store::Truncate> Sink for crate::eventlog::LogWriter<W> {
    fn attached(&mut self, probes: &KernelSession) -> Result<()> {
        match self.pending_header.take() {
            Some(header) => self.header(&header.with_probes(probes)),
            None => Ok(()),
        }
    }
    fn record(&mut self, record: &Record) -> Result<()> {
        Self::record(self, record)
    }
    fn finding(&mut self, finding: &Finding) -> Result<()> {
        Self::finding(self, finding)
    }
}
