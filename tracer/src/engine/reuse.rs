//! `keepalive-reuse-race` (critical): a process sent on a pooled connection the peer
//! had already closed, or raced the peer's FIN, and got a reset.
//!
//! Rule: on a connection this node opened (not an accepted one), a reset received
//! in CLOSE_WAIT — the peer's FIN had arrived and the process wrote anyway — or a
//! reset received in ESTABLISHED after the connection sat idle for at least 80 % of
//! the endpoint's known idle-close timeout (the request crossed the server's FIN).
//! Each connection counts once. The reuse gap is how long the connection had been
//! idle when the process reused it.

use std::{collections::HashMap, net::SocketAddr, time::SystemTime};

use super::{
    conn::{Conn, Role},
    finding::{secs, Finding, Involved, Kind, Process, Severity},
    idle::IdleClose,
    Config,
};
use crate::event::{Event, TcpState};

const MAX_GAPS: usize = 256;

#[derive(Debug)]
struct Failures {
    comm: String,
    cgroup: u64,
    count: u64,
    raced: u64,
    gaps_ms: Vec<u64>,
    fin_idle_ms: Vec<u64>,
    socks: Involved,
    first: SystemTime,
    last: SystemTime,
}

/// Failed reuses by (pid, endpoint).
#[derive(Debug, Default)]
pub struct ReuseRace {
    by_key: HashMap<(u32, SocketAddr), Failures>,
}

fn median(v: &[u64]) -> Option<u64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

impl ReuseRace {
    pub fn on_reset(
        &mut self,
        conn: &mut Conn,
        e: &Event,
        state: TcpState,
        recv_idle_ms: u64,
        estimate_ms: Option<u64>,
    ) {
        if conn.role == Role::Server || conn.role == Role::Listener || conn.reuse_failed {
            return;
        }
        let now = e.mono_ns;
        let (gap_ms, fin_idle, raced) = match (state, conn.peer_fin) {
            (TcpState::CloseWait, Some((fin_ns, fin_idle))) => (
                fin_idle + now.saturating_sub(fin_ns) / 1_000_000,
                Some(fin_idle),
                false,
            ),
            (TcpState::CloseWait, None) => (recv_idle_ms, None, false),
            (TcpState::Established, _)
                if estimate_ms.is_some_and(|t| recv_idle_ms * 10 >= t * 8) =>
            {
                (recv_idle_ms, None, true)
            }
            _ => return,
        };
        conn.reuse_failed = true;
        let f = self
            .by_key
            .entry((conn.pid, conn.remote))
            .or_insert_with(|| Failures {
                comm: conn.comm.to_string(),
                cgroup: conn.cgroup,
                count: 0,
                raced: 0,
                gaps_ms: Vec::new(),
                fin_idle_ms: Vec::new(),
                socks: Involved::default(),
                first: e.time,
                last: e.time,
            });
        f.count += 1;
        f.socks.add(conn.sock, conn.local);
        f.raced += u64::from(raced);
        if f.gaps_ms.len() < MAX_GAPS {
            f.gaps_ms.push(gap_ms);
            f.fin_idle_ms.extend(fin_idle);
        }
        f.last = e.time;
    }

    pub fn findings(&self, idle: &IdleClose, cfg: &Config, out: &mut Vec<Finding>) {
        for ((pid, endpoint), f) in &self.by_key {
            let timeout = idle
                .estimate_ms(endpoint, cfg)
                .or_else(|| median(&f.fin_idle_ms));
            let process = Process::new(*pid, &f.comm, f.cgroup);
            let closed_at = timeout.map_or_else(|| "an unknown".to_owned(), secs);
            let summary = format!(
                "{} reused {} connection{} to {endpoint} after the server closed them at {closed_at} idle",
                process.describe(),
                f.count,
                if f.count == 1 { "" } else { "s" },
            );
            let recommendation = match timeout {
                Some(t) => format!(
                    "set the client pool's idle timeout (or max lifetime) below {} (e.g. {}) or raise the server's keep-alive timeout; validate connections on borrow",
                    secs(t),
                    secs(t * 4 / 5)
                ),
                None => "set the client pool's idle timeout below the server's keep-alive timeout, or validate connections on borrow".to_owned(),
            };
            out.push(Finding {
                kind: Kind::KeepaliveReuseRace,
                severity: Severity::Critical,
                summary,
                endpoint: endpoint.to_string(),
                process: Some(process),
                count: f.count,
                first_seen: f.first,
                last_seen: f.last,
                evidence: crate::evidence! {
                    "idle_timeout_ms" => timeout,
                    "failed_reuses" => f.count,
                    "raced_fin" => f.raced,
                    "reuse_gap_ms" => median(&f.gaps_ms),
                    "max_reuse_gap_ms" => f.gaps_ms.iter().max(),
                    "outcome" => "reset received",
                },
                recommendation,
                socks: f.socks.to_vec(),
            });
        }
    }
}
