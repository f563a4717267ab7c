//! `keepalive-near-miss` (warning), and a pool named safe (info): the keep-alive race
//! predicted before its first failure.
//!
//! Inputs: reuse gaps — how long a pooled connection sat idle before its process
//! sent on it again ([`Reuses`] from the inspection: exact to a tick when one
//! segment was sent between two passes, a lower bound otherwise) — per (client
//! process, endpoint); the endpoint's idle-close timeout (learned from either end by
//! [`IdleClose`]); and the pool's own idle timeout, from the client's active closes
//! after idling (a pool evicting idle connections itself: Java's `HttpClient`, a
//! validating pool).
//!
//! Rule: with the server's timeout T known and no failure yet for the pair (the race
//! finding covers that), a reuse gap of at least [`DANGER`] of T is a near miss: the
//! server's timer runs from its own last activity, and the request must reach it
//! before T — network and scheduling delays, the server's timer granularity and the
//! jitter of a pool's idle times eat the rest (the same share the race rule takes
//! for a request that crossed the server's FIN). A pool that retires idle
//! connections itself before that share, and never reused one beyond it, is safe.

use std::{collections::HashMap, net::SocketAddr, time::SystemTime};

use super::{
    finding::{secs, Finding, Kind, Process, Severity},
    idle::{cluster, IdleClose},
    Config,
};
use crate::event::Reuse;

/// The share of the server's timeout where a reuse gap becomes a near miss.
pub const DANGER: (u64, u64) = (4, 5);
const MAX_GROUPS: usize = 4096;
const MAX_SAMPLES: usize = 256;
/// Pool closes needed before the pool's own timeout is named.
const POOL_SAMPLES: usize = 3;

#[derive(Debug)]
struct Group {
    comm: String,
    cgroup: u64,
    reuses: u64,
    max_gap_ms: u64,
    /// The longest gap was measured exactly (not a lower bound).
    max_exact: bool,
    gaps_ms: Vec<u64>,
    /// Idle times at which the client itself closed pooled connections.
    pool_closes_ms: Vec<u64>,
    first: SystemTime,
    last: SystemTime,
}

#[derive(Debug, Default)]
pub struct NearMiss {
    by_key: HashMap<(u32, SocketAddr), Group>,
    pub dropped: u64,
}

/// The pool's own idle timeout from the idle times of its closes: a tight cluster
/// when there is one, else the first quartile — an eviction timer closes at its
/// timeout or a little after, while a process exiting or dropping its pool closes
/// later, never sooner.
fn pool_timeout(closes_ms: &[u64]) -> Option<u64> {
    if closes_ms.len() < POOL_SAMPLES {
        return None;
    }
    if let Some(c) = cluster(closes_ms).filter(|c| c.samples >= POOL_SAMPLES) {
        return Some(c.estimate_ms);
    }
    let mut v = closes_ms.to_vec();
    v.sort_unstable();
    Some(v[v.len() / 4])
}

/// `value` is at least [`DANGER`] of `of`.
fn in_danger(value: u64, of: u64) -> bool {
    value.saturating_mul(DANGER.1) >= of.saturating_mul(DANGER.0)
}

impl NearMiss {
    fn group(
        &mut self,
        pid: u32,
        endpoint: SocketAddr,
        comm: &str,
        cgroup: u64,
        at: SystemTime,
    ) -> Option<&mut Group> {
        let key = (pid, endpoint);
        if !self.by_key.contains_key(&key) && self.by_key.len() >= MAX_GROUPS {
            self.dropped += 1;
            return None;
        }
        let g = self.by_key.entry(key).or_insert_with(|| Group {
            comm: comm.to_owned(),
            cgroup,
            reuses: 0,
            max_gap_ms: 0,
            max_exact: false,
            gaps_ms: Vec::new(),
            pool_closes_ms: Vec::new(),
            first: at,
            last: at,
        });
        g.last = at;
        Some(g)
    }

    pub fn on_reuse(&mut self, r: &Reuse, at: SystemTime) {
        let Some(g) = self.group(
            r.process.pid,
            r.remote,
            &r.process.comm,
            r.process.cgroup,
            at,
        ) else {
            return;
        };
        g.reuses += 1;
        if r.gap_ms > g.max_gap_ms {
            g.max_gap_ms = r.gap_ms;
            g.max_exact = r.exact;
        }
        if g.gaps_ms.len() < MAX_SAMPLES {
            g.gaps_ms.push(r.gap_ms);
        }
    }

    /// The client closed a pooled connection after `idle_ms` quiet.
    pub fn on_pool_close(
        &mut self,
        pid: u32,
        endpoint: SocketAddr,
        comm: &str,
        cgroup: u64,
        idle_ms: u64,
        at: SystemTime,
    ) {
        let Some(g) = self.group(pid, endpoint, comm, cgroup, at) else {
            return;
        };
        if g.pool_closes_ms.len() < MAX_SAMPLES {
            g.pool_closes_ms.push(idle_ms);
        }
    }

    /// Each (process, endpoint)'s longest reuse gap and the server's timeout, for the
    /// endpoints view and the metrics.
    pub fn max_gaps(&self) -> impl Iterator<Item = (SocketAddr, u64)> + '_ {
        self.by_key.iter().map(|((_, e), g)| (*e, g.max_gap_ms))
    }

    /// `failed(pid, endpoint)`: the race already failed there (its own finding).
    pub fn findings(
        &self,
        idle: &IdleClose,
        cfg: &Config,
        failed: impl Fn(u32, SocketAddr) -> bool,
        out: &mut Vec<Finding>,
    ) {
        for ((pid, endpoint), g) in &self.by_key {
            let Some(timeout) = idle.estimate_ms(endpoint, cfg) else {
                continue;
            };
            if failed(*pid, *endpoint) {
                continue;
            }
            let pool = pool_timeout(&g.pool_closes_ms);
            let process = Process::new(*pid, &g.comm, g.cgroup);
            let danger_ms = timeout * DANGER.0 / DANGER.1;
            let near = g
                .gaps_ms
                .iter()
                .filter(|gap| in_danger(**gap, timeout))
                .count();
            let margin = timeout.saturating_sub(g.max_gap_ms);
            let evidence = crate::evidence! {
                "server_idle_timeout_ms" => timeout,
                "max_reuse_gap_ms" => g.max_gap_ms,
                "max_reuse_gap_exact" => g.max_exact,
                "margin_ms" => margin,
                "danger_from_ms" => danger_ms,
                "reuses" => g.reuses,
                "reuses_in_danger" => near,
                "pool_idle_timeout_ms" => pool,
            };
            let (severity, summary, recommendation) = if g.reuses > 0
                && in_danger(g.max_gap_ms, timeout)
                && g.max_gap_ms < timeout
            {
                (
                    Severity::Warning,
                    format!(
                        "{} reuses pooled connections to {endpoint} after up to {} idle; {endpoint} closes idle connections at {}: a margin of {} — not failed yet, but a quiet pause a little longer and requests go out on connections the server has closed{}",
                        process.describe(),
                        secs(g.max_gap_ms),
                        secs(timeout),
                        secs(margin),
                        pool.map_or_else(String::new, |p| format!(" (the pool itself retires idle connections at {})", secs(p))),
                    ),
                    format!(
                        "set the client pool's idle timeout (or max lifetime) below {} (e.g. {}), so it retires connections before the server does, or raise the server's keep-alive timeout well above the pool's; validate connections on borrow",
                        secs(danger_ms),
                        secs(timeout / 2)
                    ),
                )
            } else if let Some(p) =
                pool.filter(|p| !in_danger(*p, timeout) && !in_danger(g.max_gap_ms, timeout))
            {
                (
                    Severity::Info,
                    format!(
                        "{} retires idle connections to {endpoint} itself at {}, below {endpoint}'s {} keep-alive timeout: safe (longest reuse gap {})",
                        process.describe(),
                        secs(p),
                        secs(timeout),
                        secs(g.max_gap_ms),
                    ),
                    "nothing to change; keep the pool's idle timeout below the server's when either is tuned".to_owned(),
                )
            } else {
                continue;
            };
            out.push(Finding {
                kind: Kind::KeepaliveNearMiss,
                severity,
                summary,
                endpoint: endpoint.to_string(),
                process: Some(process),
                count: if severity == Severity::Warning {
                    near as u64
                } else {
                    g.reuses
                },
                first_seen: g.first,
                last_seen: g.last,
                evidence,
                recommendation,
                socks: Vec::new(),
            });
        }
    }
}
