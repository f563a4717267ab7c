//! `idle-close-timeout` (info): an endpoint that closes idle keep-alive connections
//! after a consistent idle time.
//!
//! Rule: a sample is the idle time (since the last data either way) at which the
//! server side closed first — a peer FIN seen by a client on this node
//! (ESTABLISHED -> CLOSE_WAIT), or the active close of a local server's accepted
//! connection (ESTABLISHED -> FIN_WAIT1). Closes after less than `idle_min_ms` are
//! request/response closes, not idle timeouts. The same connection seen from both
//! ends (loopback) counts once. The estimate is the median of the largest cluster of
//! samples whose width is within max(12 ms, 2 % of the value) — three clock ticks at
//! HZ=250 — and it is reported once that cluster has `idle_min_samples` samples.

use std::{collections::VecDeque, net::SocketAddr, time::SystemTime};

use super::{
    conn::{FxMap, FxSet},
    finding::{secs, Finding, Kind, Severity},
    Config,
};

const MAX_SAMPLES: usize = 512;
const MAX_ENDPOINTS: usize = 4096;
const DEDUPE: usize = 256;

#[derive(Debug)]
struct Samples {
    values: VecDeque<u64>,
    /// The last clients seen, oldest first, and the same as a set for lookups.
    clients: VecDeque<SocketAddr>,
    client_set: FxSet<SocketAddr>,
    first: SystemTime,
    last: SystemTime,
}

/// A cluster of idle-close times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cluster {
    pub estimate_ms: u64,
    pub spread_ms: u64,
    pub samples: usize,
    pub min_ms: u64,
    pub max_ms: u64,
}

/// The largest group of values within tolerance of each other.
pub fn cluster(values: &[u64]) -> Option<Cluster> {
    let mut v = values.to_vec();
    v.sort_unstable();
    let mut best: Option<(usize, usize)> = None;
    let mut j = 0;
    for i in 0..v.len() {
        j = j.max(i);
        let tolerance = 12.max(v[i] / 50);
        while j + 1 < v.len() && v[j + 1] - v[i] <= tolerance {
            j += 1;
        }
        let better = best.is_none_or(|(bi, bj)| {
            let (n, bn) = (j - i, bj - bi);
            n > bn || (n == bn && v[j] - v[i] < v[bj] - v[bi])
        });
        if better {
            best = Some((i, j));
        }
    }
    let (i, j) = best?;
    let group = &v[i..=j];
    Some(Cluster {
        estimate_ms: group[group.len() / 2],
        spread_ms: group[group.len() - 1] - group[0],
        samples: group.len(),
        min_ms: group[0],
        max_ms: group[group.len() - 1],
    })
}

/// Idle-close samples by endpoint.
#[derive(Debug, Default)]
pub struct IdleClose {
    endpoints: FxMap<SocketAddr, Samples>,
    /// Samples dropped because the endpoint table was full.
    pub dropped: u64,
}

impl IdleClose {
    /// One close by the server side of `endpoint`, for the connection from `client`;
    /// `false` when it is not a new sample (too short, or that connection already counted).
    pub fn sample(
        &mut self,
        endpoint: SocketAddr,
        client: SocketAddr,
        idle_ms: u64,
        time: SystemTime,
        cfg: &Config,
    ) -> bool {
        if idle_ms < cfg.idle_min_ms {
            return false;
        }
        if !self.endpoints.contains_key(&endpoint) && self.endpoints.len() >= MAX_ENDPOINTS {
            self.dropped += 1;
            return false;
        }
        let s = self.endpoints.entry(endpoint).or_insert_with(|| Samples {
            values: VecDeque::new(),
            clients: VecDeque::new(),
            client_set: FxSet::default(),
            first: time,
            last: time,
        });
        if !s.client_set.insert(client) {
            return false;
        }
        if s.clients.len() == DEDUPE {
            if let Some(old) = s.clients.pop_front() {
                s.client_set.remove(&old);
            }
        }
        s.clients.push_back(client);
        if s.values.len() == MAX_SAMPLES {
            s.values.pop_front();
        }
        s.values.push_back(idle_ms);
        s.last = time;
        true
    }

    fn cluster_of(&self, endpoint: &SocketAddr, cfg: &Config) -> Option<Cluster> {
        let s = self.endpoints.get(endpoint)?;
        let (a, b) = s.values.as_slices();
        let c = cluster(&[a, b].concat())?;
        (c.samples >= cfg.idle_min_samples).then_some(c)
    }

    /// The endpoint's idle-close timeout, once established.
    pub fn estimate_ms(&self, endpoint: &SocketAddr, cfg: &Config) -> Option<u64> {
        self.cluster_of(endpoint, cfg).map(|c| c.estimate_ms)
    }

    pub fn findings(&self, cfg: &Config, out: &mut Vec<Finding>) {
        for (endpoint, s) in &self.endpoints {
            let Some(c) = self.cluster_of(endpoint, cfg) else {
                continue;
            };
            let safe = c.estimate_ms / 5 * 4;
            out.push(Finding {
                kind: Kind::IdleCloseTimeout,
                severity: Severity::Info,
                summary: format!(
                    "{endpoint} closes idle connections after {} (n={}, spread {} ms)",
                    secs(c.estimate_ms),
                    c.samples,
                    c.spread_ms
                ),
                endpoint: endpoint.to_string(),
                process: None,
                count: c.samples as u64,
                first_seen: s.first,
                last_seen: s.last,
                evidence: crate::evidence! {
                    "idle_timeout_ms" => c.estimate_ms,
                    "spread_ms" => c.spread_ms,
                    "samples" => c.samples,
                    "min_ms" => c.min_ms,
                    "max_ms" => c.max_ms,
                    "idle_closes_seen" => s.values.len(),
                },
                recommendation: format!(
                    "clients that pool connections to {endpoint} must retire them before {} idle: \
                     set the pool's idle timeout below it (e.g. {}) or validate connections on borrow",
                    secs(c.estimate_ms),
                    secs(safe)
                ),
                socks: Vec::new(),
            });
        }
    }
}
