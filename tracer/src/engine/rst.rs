//! `rst-storm` (warning): an unusual rate of resets for one endpoint.
//!
//! Rule: at least `rst_storm_count` resets sent or received for one endpoint (the
//! connection's server end, whichever end is traced: a reset answering a SYN is its
//! destination's; a connection the trace holds has its server; else the end on a
//! port outside the ephemeral range, or the lower port) within any `rst_window_ms`.
//! Evidence: totals by direction and reason, and the peak count seen within one
//! window.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    time::SystemTime,
};

use super::{
    finding::{secs, Finding, Kind, Severity},
    Config,
};
use crate::event::{Direction, Event};

#[derive(Debug, Default)]
struct Window {
    times: VecDeque<u64>,
    sent: u64,
    received: u64,
    reasons: BTreeMap<String, u64>,
    peak: usize,
    storm: Option<(SystemTime, SystemTime)>,
}

#[derive(Debug, Default)]
pub struct RstStorm {
    by_endpoint: HashMap<SocketAddr, Window>,
    pub dropped: u64,
    /// When the full table last let go of its quiet endpoints (monotonic ns).
    swept_ns: u64,
}

const MAX_ENDPOINTS: usize = 8192;

impl RstStorm {
    pub fn record(
        &mut self,
        endpoint: SocketAddr,
        e: &Event,
        dir: Direction,
        reason: Option<&str>,
        cfg: &Config,
    ) {
        let window_ns = cfg.rst_window_ms * 1_000_000;
        if !self.by_endpoint.contains_key(&endpoint) && self.by_endpoint.len() >= MAX_ENDPOINTS {
            // Full: endpoints with no storm and no reset within the window hold
            // nothing a finding needs; they go, at most once a window.
            if self.swept_ns.saturating_add(window_ns) <= e.mono_ns {
                self.swept_ns = e.mono_ns;
                self.by_endpoint.retain(|_, w| {
                    w.storm.is_some()
                        || w.times
                            .back()
                            .is_some_and(|t| t.saturating_add(window_ns) >= e.mono_ns)
                });
            }
            if self.by_endpoint.len() >= MAX_ENDPOINTS {
                self.dropped += 1;
                return;
            }
        }
        let w = self.by_endpoint.entry(endpoint).or_default();
        match dir {
            Direction::Sent => w.sent += 1,
            Direction::Received => w.received += 1,
        }
        if let Some(r) = reason {
            // Kernel reasons are an enum; a log could hold any string: 64 at most.
            if w.reasons.len() < 64 || w.reasons.contains_key(r) {
                *w.reasons.entry(r.to_owned()).or_default() += 1;
            }
        }
        w.times.push_back(e.mono_ns);
        while w
            .times
            .front()
            .is_some_and(|t| t.saturating_add(window_ns) < e.mono_ns)
        {
            w.times.pop_front();
        }
        w.peak = w.peak.max(w.times.len());
        if w.times.len() >= cfg.rst_storm_count {
            let first = w.storm.map_or(e.time, |(f, _)| f);
            w.storm = Some((first, e.time));
        }
        // Only the count within the window matters; keep the deque bounded.
        while w.times.len() > cfg.rst_storm_count.max(1) * 4 {
            w.times.pop_front();
        }
    }

    pub fn findings(&self, cfg: &Config, out: &mut Vec<Finding>) {
        for (endpoint, w) in &self.by_endpoint {
            let Some((first, last)) = w.storm else {
                continue;
            };
            out.push(Finding {
                kind: Kind::RstStorm,
                severity: Severity::Warning,
                summary: format!(
                    "{endpoint}: {} resets within {} (sent {}, received {})",
                    w.peak,
                    secs(cfg.rst_window_ms),
                    w.sent,
                    w.received
                ),
                endpoint: endpoint.to_string(),
                process: None,
                count: w.sent.saturating_add(w.received),
                first_seen: first,
                last_seen: last,
                evidence: crate::evidence! {
                    "resets_sent" => w.sent,
                    "resets_received" => w.received,
                    "reasons" => w.reasons,
                    "peak_in_window" => w.peak,
                    "window_ms" => cfg.rst_window_ms,
                },
                recommendation: "resets at this rate mean connections are being torn down rather than closed: see the reasons (NO_SOCKET: nothing listens; TCP_ABORT_ON_DATA: writes after close; TIMEWAIT/INVALID: stale connections) and the related findings".to_owned(),
                socks: Vec::new(),
            });
        }
    }
}
