//! `keepalive-reuse-race` (critical): a process sent on a pooled connection the peer
//! had already closed, or raced the peer's FIN, and got a reset.
//!
//! Rule: on a connection this node opened (not an accepted one), a reset received
//! in CLOSE_WAIT — the peer's FIN had arrived and the process wrote anyway — or in
//! LAST_ACK after the process wrote in CLOSE_WAIT (its last send newer than the FIN
//! by more than a tick) and then closed (it read the EOF before the reset to its
//! write came back: a round trip away on a real network), or a
//! reset received in ESTABLISHED after the connection sat idle for at least 80 % of
//! the endpoint's known idle-close timeout (the request crossed the server's FIN).
//! Each connection counts once. The reuse gap is how long the connection had been
//! idle when the process reused it.
//!
//! From the server's side (the clients on other nodes): a server that closed an
//! accepted connection after it sat idle (ESTABLISHED -> FIN_WAIT1 at least
//! `idle_min_ms` after its last segment, as `idle-close-timeout` counts an idle
//! close; a close right after the server's own answer is not remembered) and then sent a
//! reset on the same 4-tuple — data reached its FIN_WAIT socket (the request crossed
//! the FIN: `raced_fin`) or its time-wait socket (the client reused the connection
//! later) — saw a client reuse a connection it had closed. Grouped by (server process,
//! local endpoint) with the client addresses and reset reasons. When the client's end
//! of the same connection is traced here too, only the client's side counts it (one
//! connection, one failure) — also when the client dialled an address DNAT
//! translated (a Service VIP): conntrack's `tuple` records match the two views, and
//! the client's finding names the backend. Resets of time-wait sockets are traced
//! from Linux 6.10.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    time::SystemTime,
};

use super::{
    conn::{Comm, Role, Tracked},
    expiring::ExpiringMap,
    finding::{secs, Finding, Involved, Kind, Process, Severity},
    idle::IdleClose,
    Config,
};
use crate::event::{Event, TcpState};

const MAX_GAPS: usize = 256;
/// Server-side closes remembered at most, and for how long (a FIN_WAIT2 or time-wait
/// socket lives about 60 s).
const MAX_CLOSES: usize = 65_536;
const CLOSE_KEEP_NS: u64 = 120_000_000_000;
/// Groups (process x endpoint) kept at most per side; client addresses per group.
const MAX_GROUPS: usize = 4096;
const MAX_CLIENTS: usize = 16;

/// A server's active close of an idle accepted connection.
#[derive(Debug, Clone)]
struct ServerClose {
    pid: u32,
    comm: Comm,
    cgroup: u64,
    sock: u64,
    idle_ms: u64,
}

/// Failed reuses seen from the server's side, by (server pid, local endpoint).
#[derive(Debug)]
struct ServerSide {
    comm: String,
    cgroup: u64,
    count: u64,
    raced: u64,
    idle_ms: Vec<u64>,
    clients: BTreeSet<IpAddr>,
    more_clients: bool,
    reasons: BTreeMap<String, u64>,
    socks: Involved,
    first: SystemTime,
    last: SystemTime,
}

#[derive(Debug)]
struct Failures {
    comm: String,
    cgroup: u64,
    count: u64,
    raced: u64,
    gaps_ms: Vec<u64>,
    fin_idle_ms: Vec<u64>,
    /// Where DNAT sent the endpoint (a Service VIP's backends), as conntrack said.
    backends: BTreeSet<SocketAddr>,
    socks: Involved,
    first: SystemTime,
    last: SystemTime,
}

/// Failed reuses by (pid, endpoint).
pub struct ReuseRace {
    by_key: HashMap<(u32, SocketAddr), Failures>,
    closes: ExpiringMap<(SocketAddr, SocketAddr), ServerClose>,
    server_side: HashMap<(u32, SocketAddr), ServerSide>,
    /// Groups not kept because their table was full.
    dropped: u64,
}

impl Default for ReuseRace {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            closes: ExpiringMap::new(MAX_CLOSES, CLOSE_KEEP_NS),
            server_side: HashMap::new(),
            dropped: 0,
        }
    }
}

fn median(v: &[u64]) -> Option<u64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

impl ReuseRace {
    pub fn on_reset(
        &mut self,
        conn: &mut Tracked,
        e: &Event,
        state: TcpState,
        (recv_idle_ms, estimate_ms): (u64, Option<u64>),
        backend: Option<SocketAddr>,
    ) {
        if conn.role == Role::Server || conn.role == Role::Listener || conn.reuse_failed {
            return;
        }
        if !self.by_key.contains_key(&(conn.pid, conn.remote)) && self.by_key.len() >= MAX_GROUPS {
            self.dropped += 1;
            return;
        }
        let now = e.mono_ns;
        let (gap_ms, fin_idle, raced) = match (state, conn.peer_fin) {
            (TcpState::CloseWait, Some((fin_ns, fin_idle))) => (
                fin_idle.saturating_add(now.saturating_sub(fin_ns) / 1_000_000),
                Some(fin_idle),
                false,
            ),
            (TcpState::CloseWait, None) => (recv_idle_ms, None, false),
            // It wrote after the FIN, read the EOF and closed; the reset to its write
            // came back after that.
            (TcpState::LastAck, fin) => match conn.close_wait_write_gap_ms {
                Some(gap) => (gap, fin.map(|(_, idle)| idle), false),
                None => return,
            },
            (TcpState::Established, _)
                if estimate_ms
                    .is_some_and(|t| recv_idle_ms.saturating_mul(10) >= t.saturating_mul(8)) =>
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
                backends: BTreeSet::new(),
                socks: Involved::default(),
                first: e.time,
                last: e.time,
            });
        f.count += 1;
        f.socks.add(conn.sock, conn.local);
        f.raced += u64::from(raced);
        if let Some(b) = backend {
            if f.backends.len() < MAX_CLIENTS {
                f.backends.insert(b);
            }
        }
        if f.gaps_ms.len() < MAX_GAPS {
            f.gaps_ms.push(gap_ms);
            f.fin_idle_ms.extend(fin_idle);
        }
        f.last = e.time;
    }

    /// Whether `pid`'s requests to `endpoint` already failed on reused connections.
    pub fn failed(&self, pid: u32, endpoint: SocketAddr) -> bool {
        self.by_key.contains_key(&(pid, endpoint))
    }

    /// Groups and server closes not kept because a table was full.
    pub fn dropped(&self) -> u64 {
        self.dropped + self.closes.evicted
    }

    /// A server closed an accepted connection after `idle_ms` quiet.
    pub fn on_server_close(&mut self, conn: &Tracked, e: &Event, idle_ms: u64) {
        let close = ServerClose {
            pid: conn.pid,
            comm: conn.comm,
            cgroup: conn.cgroup,
            sock: conn.sock,
            idle_ms,
        };
        self.closes
            .insert((conn.local, conn.remote), e.mono_ns, close);
    }

    /// A reset this node sent on `e.local -> e.remote`. `client_here`: the client's
    /// end of the same connection is traced on this node (it counts the failure).
    pub fn on_reset_sent(
        &mut self,
        e: &Event,
        state: Option<TcpState>,
        reason: Option<&str>,
        client_here: bool,
    ) {
        let tuple = (e.local, e.remote);
        // Only a reset after the close counts.
        if self
            .closes
            .get(&tuple, e.mono_ns)
            .is_none_or(|(at, _)| at > e.mono_ns)
        {
            return;
        }
        let Some(close) = self.closes.remove(&tuple) else {
            return;
        };
        if client_here {
            return;
        }
        let key = (close.pid, e.local);
        if !self.server_side.contains_key(&key) && self.server_side.len() >= MAX_GROUPS {
            self.dropped += 1;
            return;
        }
        let g = self.server_side.entry(key).or_insert_with(|| ServerSide {
            comm: close.comm.to_string(),
            cgroup: close.cgroup,
            count: 0,
            raced: 0,
            idle_ms: Vec::new(),
            clients: BTreeSet::new(),
            more_clients: false,
            reasons: BTreeMap::new(),
            socks: Involved::default(),
            first: e.time,
            last: e.time,
        });
        g.count += 1;
        g.raced += u64::from(state == Some(TcpState::FinWait1));
        if g.idle_ms.len() < MAX_GAPS {
            g.idle_ms.push(close.idle_ms);
        }
        if g.clients.len() < MAX_CLIENTS {
            g.clients.insert(e.remote.ip());
        } else if !g.clients.contains(&e.remote.ip()) {
            g.more_clients = true;
        }
        let reason = reason.unwrap_or("unknown (kernel < 6.10)");
        if g.reasons.len() < 32 || g.reasons.contains_key(reason) {
            *g.reasons.entry(reason.to_owned()).or_default() += 1;
        }
        g.socks.add(close.sock, e.local);
        g.last = e.time;
    }

    pub fn findings(&self, idle: &IdleClose, cfg: &Config, out: &mut Vec<Finding>) {
        self.client_findings(idle, cfg, out);
        for ((pid, endpoint), g) in &self.server_side {
            let timeout = idle
                .estimate_ms(endpoint, cfg)
                .or_else(|| median(&g.idle_ms));
            let process = Process::new(*pid, &g.comm, g.cgroup);
            let closed_at = timeout.map_or_else(|| "an unknown".to_owned(), secs);
            let mut clients: Vec<String> = g.clients.iter().map(ToString::to_string).collect();
            if g.more_clients {
                clients.push("...".to_owned());
            }
            let summary = format!(
                "clients at {} reused connections {} time{} after this server, {}, closed them at {closed_at} idle; each got a reset",
                clients.join(", "),
                g.count,
                if g.count == 1 { "" } else { "s" },
                process.describe(),
            );
            let recommendation = match timeout {
                Some(t) => format!(
                    "on the clients: set the pool's idle timeout (or max lifetime) below {} (e.g. {}) or validate connections on borrow; or on this server: raise the keep-alive timeout above the clients' pool idle time",
                    secs(t),
                    secs(t / 5 * 4)
                ),
                None => "on the clients: set the pool's idle timeout below this server's keep-alive timeout or validate on borrow; or raise the server's keep-alive timeout".to_owned(),
            };
            out.push(race(
                summary,
                endpoint,
                process,
                (g.count, g.first, g.last),
                crate::evidence! {
                    "vantage" => "server",
                    "idle_timeout_ms" => timeout,
                    "failed_reuses" => g.count,
                    "raced_fin" => g.raced,
                    "clients" => clients,
                    "reset_reasons" => g.reasons,
                    "outcome" => "reset sent",
                },
                recommendation,
                &g.socks,
            ));
        }
    }

    fn client_findings(&self, idle: &IdleClose, cfg: &Config, out: &mut Vec<Finding>) {
        for ((pid, endpoint), f) in &self.by_key {
            let timeout = idle
                .estimate_ms(endpoint, cfg)
                .or_else(|| median(&f.fin_idle_ms));
            let process = Process::new(*pid, &f.comm, f.cgroup);
            let closed_at = timeout.map_or_else(|| "an unknown".to_owned(), secs);
            let behind = if f.backends.is_empty() {
                String::new()
            } else {
                let b: Vec<String> = f.backends.iter().map(ToString::to_string).collect();
                format!(" (-> backend {})", b.join(", "))
            };
            let summary = format!(
                "{} reused {} connection{} to {endpoint}{behind} after the server closed them at {closed_at} idle",
                process.describe(),
                f.count,
                if f.count == 1 { "" } else { "s" },
            );
            let recommendation = match timeout {
                Some(t) => format!(
                    "set the client pool's idle timeout (or max lifetime) below {} (e.g. {}) or raise the server's keep-alive timeout; validate connections on borrow",
                    secs(t),
                    secs(t / 5 * 4)
                ),
                None => "set the client pool's idle timeout below the server's keep-alive timeout, or validate connections on borrow".to_owned(),
            };
            let mut evidence = crate::evidence! {
                    "idle_timeout_ms" => timeout,
                    "failed_reuses" => f.count,
                    "raced_fin" => f.raced,
                    "reuse_gap_ms" => median(&f.gaps_ms),
                    "max_reuse_gap_ms" => f.gaps_ms.iter().max(),
                    "outcome" => "reset received",
                    "vantage" => "client",
            };
            if !f.backends.is_empty() {
                let b: Vec<String> = f.backends.iter().map(ToString::to_string).collect();
                evidence.insert("backends".into(), serde_json::json!(b));
            }
            out.push(race(
                summary,
                endpoint,
                process,
                (f.count, f.first, f.last),
                evidence,
                recommendation,
                &f.socks,
            ));
        }
    }
}

/// A `keepalive-reuse-race` finding; `seen` is (count, first, last).
fn race(
    summary: String,
    endpoint: &SocketAddr,
    process: Process,
    seen: (u64, SystemTime, SystemTime),
    evidence: BTreeMap<String, serde_json::Value>,
    recommendation: String,
    socks: &Involved,
) -> Finding {
    Finding {
        kind: Kind::KeepaliveReuseRace,
        severity: Severity::Critical,
        summary,
        endpoint: endpoint.to_string(),
        process: Some(process),
        count: seen.0,
        first_seen: seen.1,
        last_seen: seen.2,
        evidence,
        recommendation,
        socks: socks.to_vec(),
    }
}
