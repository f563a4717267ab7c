//! Per server endpoint counters for the UI: idle-close histogram, resets, connect
//! errors, retransmits. Bounded; endpoints past the cap are counted, not kept.

use std::net::SocketAddr;

use super::conn::FxMap;

/// Idle-close histogram: 250 ms buckets up to 10 s, then one overflow bucket.
pub const BUCKET_MS: u64 = 250;
pub const BUCKETS: usize = 41;
const MAX_ENDPOINTS: usize = 4096;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub idle_closes: Vec<u32>,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub connect_errors: u64,
    pub retransmits: u64,
    /// A listener's accept queue: queued now, backlog, connection attempts dropped.
    pub listen: Option<(u32, u32, u64)>,
    /// The longest idle time after which a pool here reused a connection.
    pub max_reuse_gap_ms: u64,
}

impl EndpointStats {
    /// The fullest bucket's lower edge (ms) and its count.
    pub fn idle_peak(&self) -> Option<(u64, u32)> {
        let (i, n) = self
            .idle_closes
            .iter()
            .enumerate()
            .max_by_key(|(i, n)| (**n, std::cmp::Reverse(*i)))?;
        (*n > 0).then_some((i as u64 * BUCKET_MS, *n))
    }
}

#[derive(Debug, Default)]
pub struct Endpoints {
    pub by_endpoint: FxMap<SocketAddr, EndpointStats>,
    pub dropped: u64,
}

impl Endpoints {
    fn get(&mut self, endpoint: SocketAddr) -> Option<&mut EndpointStats> {
        if !self.by_endpoint.contains_key(&endpoint) {
            if self.by_endpoint.len() >= MAX_ENDPOINTS {
                self.dropped += 1;
                return None;
            }
            self.by_endpoint.insert(
                endpoint,
                EndpointStats {
                    idle_closes: vec![0; BUCKETS],
                    ..EndpointStats::default()
                },
            );
        }
        self.by_endpoint.get_mut(&endpoint)
    }

    pub fn reuse(&mut self, endpoint: SocketAddr, gap_ms: u64) {
        if let Some(s) = self.get(endpoint) {
            s.max_reuse_gap_ms = s.max_reuse_gap_ms.max(gap_ms);
        }
    }

    pub fn listen(&mut self, endpoint: SocketAddr, queued: u32, backlog: u32, drops: u64) {
        if let Some(s) = self.get(endpoint) {
            s.listen = Some((queued, backlog, drops));
        }
    }

    pub fn idle_close(&mut self, endpoint: SocketAddr, idle_ms: u64) {
        if let Some(s) = self.get(endpoint) {
            let i = usize::try_from(idle_ms / BUCKET_MS)
                .unwrap_or(BUCKETS)
                .min(BUCKETS - 1);
            s.idle_closes[i] += 1;
        }
    }

    pub fn reset(&mut self, endpoint: SocketAddr, sent: bool) {
        if let Some(s) = self.get(endpoint) {
            if sent {
                s.resets_sent += 1;
            } else {
                s.resets_received += 1;
            }
        }
    }

    pub fn connect_error(&mut self, endpoint: SocketAddr) {
        if let Some(s) = self.get(endpoint) {
            s.connect_errors += 1;
        }
    }

    pub fn retransmit(&mut self, endpoint: SocketAddr) {
        if let Some(s) = self.get(endpoint) {
            s.retransmits += 1;
        }
    }
}
