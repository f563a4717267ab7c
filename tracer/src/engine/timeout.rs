//! `connect-timeout`: connects whose SYNs were never answered — the kernel gave up
//! (ETIMEDOUT after its SYN retries) or the caller did (it closed the connecting
//! socket after its own timeout, as most clients do within seconds). Seen from the
//! client's node; the server's node may show why (`listen-overflow`: SYNs dropped at
//! a full accept queue), and when both ends are on one node the engine folds these
//! into that finding.
//!
//! Rule: a connection this node opened that goes SYN_SENT -> CLOSE with no reset and
//! no other error, after at least [`MIN_WAIT_MS`] or after retransmitting its SYN; or
//! that reports ETIMEDOUT while connecting. Ages are from the SYN (the socket's own
//! SYN_SENT transition), never from a timestamp a socket that was never established
//! does not keep. Grouped by (process, destination); warning.

use std::{collections::HashMap, net::SocketAddr, time::SystemTime};

use super::{
    conn::Tracked,
    finding::{secs, Finding, Involved, Kind, Process, Severity},
};
use crate::event::Event;

/// A connect abandoned sooner than this, without a SYN retransmit, is a client's
/// choice (a happy-eyeballs race, a cancelled request), not an unanswered SYN.
pub const MIN_WAIT_MS: u64 = 1_000;
const MAX_GROUPS: usize = 4096;

#[derive(Debug)]
struct Group {
    comm: String,
    cgroup: u64,
    count: u64,
    by_kernel: u64,
    syn_retransmits: u32,
    waited_ms: Vec<u64>,
    socks: Involved,
    first: SystemTime,
    last: SystemTime,
}

#[derive(Debug, Default)]
pub struct ConnectTimeouts {
    by_key: HashMap<(u32, SocketAddr), Group>,
    pub dropped: u64,
}

impl ConnectTimeouts {
    /// `conn` gave up connecting at `e`: the kernel (`by_kernel`, ETIMEDOUT) or its
    /// caller.
    pub fn on_timeout(&mut self, conn: &Tracked, e: &Event, by_kernel: bool) {
        let key = (conn.pid, conn.remote);
        if !self.by_key.contains_key(&key) && self.by_key.len() >= MAX_GROUPS {
            self.dropped += 1;
            return;
        }
        let g = self.by_key.entry(key).or_insert_with(|| Group {
            comm: conn.comm.to_string(),
            cgroup: conn.cgroup,
            count: 0,
            by_kernel: 0,
            syn_retransmits: 0,
            waited_ms: Vec::new(),
            socks: Involved::default(),
            first: e.time,
            last: e.time,
        });
        g.count += 1;
        g.by_kernel += u64::from(by_kernel);
        g.syn_retransmits = g.syn_retransmits.max(conn.syn_retransmits);
        if g.waited_ms.len() < 256 {
            g.waited_ms
                .push(e.mono_ns.saturating_sub(conn.opened_ns) / 1_000_000);
        }
        g.socks.add(conn.sock, conn.local);
        g.last = e.time;
    }

    /// Whether `conn` waited long enough (or retransmitted its SYN) to count when its
    /// caller closes it still connecting.
    pub fn abandoned(conn: &Tracked, now_ns: u64) -> bool {
        conn.syn_retransmits > 0 || now_ns.saturating_sub(conn.opened_ns) >= MIN_WAIT_MS * 1_000_000
    }

    pub fn findings(&self, out: &mut Vec<Finding>) {
        for ((pid, destination), g) in &self.by_key {
            let process = Process::new(*pid, &g.comm, g.cgroup);
            let longest = g.waited_ms.iter().copied().max().unwrap_or(0);
            out.push(Finding {
                kind: Kind::ConnectTimeout,
                severity: Severity::Warning,
                summary: format!(
                    "{} gave up on {} connect{} to {destination}: no answer to the SYN after up to {} (SYN sent {} time{}){}",
                    process.describe(),
                    g.count,
                    if g.count == 1 { "" } else { "s" },
                    secs(longest),
                    g.syn_retransmits + 1,
                    if g.syn_retransmits == 0 { "" } else { "s" },
                    if g.by_kernel > 0 { "; the kernel timed out some (ETIMEDOUT)" } else { "" },
                ),
                endpoint: destination.to_string(),
                process: Some(process),
                count: g.count,
                first_seen: g.first,
                last_seen: g.last,
                evidence: crate::evidence! {
                    "timed_out" => g.count,
                    "by_kernel" => g.by_kernel,
                    "by_caller" => g.count - g.by_kernel,
                    "max_wait_ms" => longest,
                    "syn_retransmits" => g.syn_retransmits,
                },
                recommendation: format!(
                    "nothing answered the SYNs to {destination}: on its node, a listener whose accept queue is full drops them silently (listen-overflow; nstat ListenOverflows), a firewall or security group may drop them, or the host is down. A connection that was never established is not a stalled peer: retrying at once adds to the queue"
                ),
                socks: g.socks.to_vec(),
            });
        }
    }

    /// Takes the timeouts to `listener` (an exact address, or any address on its port
    /// when it listens on all): (count, callers), and removes them from the findings
    /// this detector will give.
    pub fn against(&self, listener: SocketAddr) -> Vec<((u32, SocketAddr), u64, String)> {
        self.by_key
            .iter()
            .filter(|((_, d), _)| {
                *d == listener || (listener.ip().is_unspecified() && d.port() == listener.port())
            })
            .map(|(k, g)| (*k, g.count, g.comm.clone()))
            .collect()
    }
}
