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
    event::{Event, Sockstat},
    kernel::probes::Probes,
};

/// Where records go after the engine: the log (`record`), stdout (`watch`), the UI
/// (live and replayed), nothing (`report`).
pub trait Sink {
    /// Called once the programs are attached, before any record.
    fn attached(&mut self, _probes: &Probes) -> Result<()> {
        Ok(())
    }
    fn event(&mut self, event: &Event) -> Result<()>;
    /// A connection record (already fed to the engine as `events`, the transitions
    /// it lists); by default the sink takes those events one by one.
    fn conn(&mut self, _conn: &crate::event::Conn, events: &[Event]) -> Result<()> {
        events.iter().try_for_each(|e| self.event(e))
    }
    fn sockstat(&mut self, sample: &Sockstat) -> Result<()>;
    /// Whether this sink shows BPF run time (kernel-wide statistics are then on).
    fn shows_bpf_run_time(&self) -> bool {
        false
    }
    /// What was lost so far (when it changed, and at the end).
    fn losses(&mut self, _losses: &crate::event::Losses) -> Result<()> {
        Ok(())
    }
    /// Connections awaiting a reply, from one inspection.
    fn waiting(&mut self, _snapshot: &crate::event::Waiting) -> Result<()> {
        Ok(())
    }
    /// What the kernel's tables said of one 4-tuple.
    fn tuple(&mut self, _info: &crate::event::TupleInfo) -> Result<()> {
        Ok(())
    }
    /// Listeners' accept queues and listen-drop counters, from one inspection.
    fn listeners(&mut self, _sample: &crate::event::Listeners) -> Result<()> {
        Ok(())
    }
    /// Pooled connections reused after idling, from one inspection.
    fn reuses(&mut self, _r: &crate::event::Reuses) -> Result<()> {
        Ok(())
    }
    fn finding(&mut self, finding: &Finding) -> Result<()>;
    /// A cgroup seen for the first time, with its container and pod.
    fn cgroup(&mut self, _info: &crate::k8s::CgroupInfo) -> Result<()> {
        Ok(())
    }
    /// A pod named by the Kubernetes API.
    fn pod(&mut self, _info: &crate::k8s::api::PodInfo) -> Result<()> {
        Ok(())
    }
    /// Something degraded (printed once by the headless commands).
    fn warn(&mut self, message: &str) {
        crate::errln!("conntrace: warning: {message}");
    }
    /// Called after each look for new findings (5 times a second); `true` stops the run.
    fn tick(&mut self, _engine: &Engine, _probes: &Probes) -> Result<bool> {
        Ok(false)
    }
}

/// A log as a sink (`record`): every record written as it comes, the header once the
/// programs are attached.
impl<W: crate::eventlog::store::Truncate> Sink for crate::eventlog::LogWriter<W> {
    fn attached(&mut self, probes: &Probes) -> Result<()> {
        match self.pending_header.take() {
            Some(header) => self.header(&header.with_probes(probes)),
            None => Ok(()),
        }
    }
    fn event(&mut self, event: &Event) -> Result<()> {
        Self::event(self, event)
    }
    fn conn(&mut self, conn: &crate::event::Conn, _events: &[Event]) -> Result<()> {
        Self::conn(self, conn)
    }
    fn sockstat(&mut self, sample: &Sockstat) -> Result<()> {
        Self::sockstat(self, sample)
    }
    fn losses(&mut self, losses: &crate::event::Losses) -> Result<()> {
        Self::losses(self, losses)
    }
    fn waiting(&mut self, snapshot: &crate::event::Waiting) -> Result<()> {
        Self::waiting(self, snapshot)
    }
    fn tuple(&mut self, info: &crate::event::TupleInfo) -> Result<()> {
        Self::tuple(self, info)
    }
    fn listeners(&mut self, sample: &crate::event::Listeners) -> Result<()> {
        Self::listeners(self, sample)
    }
    fn reuses(&mut self, r: &crate::event::Reuses) -> Result<()> {
        Self::reuses(self, r)
    }
    fn finding(&mut self, finding: &Finding) -> Result<()> {
        Self::finding(self, finding)
    }
    fn cgroup(&mut self, info: &crate::k8s::CgroupInfo) -> Result<()> {
        Self::cgroup(self, info)
    }
    fn pod(&mut self, info: &crate::k8s::api::PodInfo) -> Result<()> {
        Self::pod(self, info)
    }
}
