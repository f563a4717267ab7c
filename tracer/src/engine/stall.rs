//! `stalled-peer`: connections retransmitting to a peer that no longer answers.
//!
//! Rule: a retransmit with no ACK from the peer for at least `stall_ms` marks its
//! connection stalled. Who waits on it decides the severity:
//! - the process still holds the socket (the kernel's `SOCK_DEAD` is clear) and it
//!   never received a FIN or RST: **critical**, grouped by (process, peer) — a worker
//!   blocked on a vanished peer. Evidence says whether keepalive or TCP_USER_TIMEOUT
//!   would have ended the wait, how many finally timed out, and how many the process
//!   has closed since.
//! - the application already closed it (an orphan retransmitting its FIN from
//!   FIN_WAIT1 / CLOSING / LAST_ACK): **info**, grouped by peer with no process — nobody
//!   waits on it; the processes that closed them are listed, and the node's orphan
//!   count against `tcp_max_orphans` (what `tcp-memory-pressure` watches) is shown.
//!
//! Each connection counts once per group; groups are bounded (`MAX_GROUPS`).

use std::{collections::HashMap, time::SystemTime};

use super::{
    conn::Tracked,
    finding::{secs, Finding, Involved, Kind, Process, Severity},
    Config,
};
use crate::event::{Event, EventKind};

/// Groups kept at most (process × peer); beyond, new ones are counted as dropped.
const MAX_GROUPS: usize = 4096;
/// Processes named as having closed a group's orphans.
const MAX_CLOSERS: usize = 8;

#[derive(Debug)]
struct Group {
    comm: String,
    cgroup: u64,
    connections: u64,
    retransmits: u64,
    max_ack_idle_ms: u64,
    keepalive: bool,
    user_timeout_ms: u32,
    timed_out: u64,
    /// Held connections of this group the process closed afterwards.
    closed_since: u64,
    /// Orphan groups: who closed the sockets (`comm (pid N)`), bounded.
    closed_by: Vec<String>,
    socks: Involved,
    first: SystemTime,
    last: SystemTime,
}

impl Group {
    fn new(comm: &str, cgroup: u64, at: SystemTime) -> Self {
        Self {
            comm: comm.to_owned(),
            cgroup,
            connections: 0,
            retransmits: 0,
            max_ack_idle_ms: 0,
            keepalive: false,
            user_timeout_ms: 0,
            timed_out: 0,
            closed_since: 0,
            closed_by: Vec::new(),
            socks: Involved::default(),
            first: at,
            last: at,
        }
    }
}

/// `(pid, peer)` of a held group; orphan groups use pid 0 and `orphan` set.
type Key = (u32, String, bool);

#[derive(Debug, Default)]
pub struct Stalls {
    by_key: HashMap<Key, Group>,
    /// Stalls not grouped because `MAX_GROUPS` was reached.
    pub dropped: u64,
}

impl Stalls {
    fn group(&mut self, key: Key, conn: &Tracked, at: SystemTime) -> Option<&mut Group> {
        if !self.by_key.contains_key(&key) && self.by_key.len() >= MAX_GROUPS {
            self.dropped += 1;
            return None;
        }
        Some(
            self.by_key
                .entry(key)
                .or_insert_with(|| Group::new(&conn.comm.to_string(), conn.cgroup, at)),
        )
    }

    pub fn on_retransmit(&mut self, conn: &mut Tracked, e: &Event, cfg: &Config) {
        let EventKind::Retransmit {
            ack_idle_ms,
            orphan,
            ..
        } = e.kind
        else {
            return;
        };
        conn.retransmits += 1;
        conn.max_ack_idle_ms = conn.max_ack_idle_ms.max(ack_idle_ms);
        if orphan {
            self.on_orphan(conn, e, ack_idle_ms, cfg);
            return;
        }
        let stalled_now =
            ack_idle_ms >= cfg.stall_ms && conn.peer_fin.is_none() && !conn.reset_received;
        if !conn.stalled && !stalled_now {
            return;
        }
        let first = !conn.stalled;
        let key = (conn.pid, conn.remote.to_string(), false);
        let Some(g) = self.group(key, conn, e.time) else {
            return;
        };
        conn.stalled = true;
        g.connections += u64::from(first);
        g.socks.add(conn.sock, conn.local);
        g.retransmits += if first {
            u64::from(conn.retransmits)
        } else {
            1
        };
        g.max_ack_idle_ms = g.max_ack_idle_ms.max(ack_idle_ms);
        g.keepalive |= conn.keepalive;
        g.user_timeout_ms = g.user_timeout_ms.max(conn.user_timeout_ms);
        g.last = e.time;
    }

    /// A retransmit of a socket its application has closed: nobody waits on it.
    fn on_orphan(&mut self, conn: &mut Tracked, e: &Event, ack_idle_ms: u64, cfg: &Config) {
        if conn.stalled && !conn.orphan_stalled {
            // A worker's stalled connection, now closed by its process.
            if let Some(g) = self
                .by_key
                .get_mut(&(conn.pid, conn.remote.to_string(), false))
            {
                g.closed_since += 1;
            }
        }
        if !conn.orphan_stalled && (ack_idle_ms < cfg.stall_ms || conn.reset_received) {
            return;
        }
        let first = !conn.orphan_stalled;
        let closer = (conn.pid != 0).then(|| format!("{} (pid {})", conn.comm, conn.pid));
        let Some(g) = self.group((0, conn.remote.to_string(), true), conn, e.time) else {
            return;
        };
        conn.orphan_stalled = true;
        g.connections += u64::from(first);
        g.retransmits += 1;
        g.socks.add(conn.sock, conn.local);
        g.max_ack_idle_ms = g.max_ack_idle_ms.max(ack_idle_ms);
        if let Some(c) = closer {
            if g.closed_by.len() < MAX_CLOSERS && !g.closed_by.contains(&c) {
                g.closed_by.push(c);
            }
        }
        g.last = e.time;
    }

    pub fn on_timeout(&mut self, conn: &mut Tracked) {
        if conn.stalled && !std::mem::replace(&mut conn.timed_out, true) {
            if let Some(g) = self
                .by_key
                .get_mut(&(conn.pid, conn.remote.to_string(), false))
            {
                g.timed_out += 1;
            }
        }
    }

    /// `orphans`: the node's latest `(orphaned sockets, tcp_max_orphans)`, if sampled.
    pub fn findings(&self, orphans: Option<(u64, u64)>, out: &mut Vec<Finding>) {
        for ((pid, peer, orphan), g) in &self.by_key {
            out.push(if *orphan {
                orphan_finding(peer, g, orphans)
            } else {
                held_finding(*pid, peer, g)
            });
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn held_finding(pid: u32, peer: &str, g: &Group) -> Finding {
    let process = Process::new(pid, &g.comm, g.cgroup);
    let guards = match (g.keepalive, g.user_timeout_ms) {
        (false, 0) => "keepalive and TCP_USER_TIMEOUT off",
        (true, 0) => "keepalive on, TCP_USER_TIMEOUT off",
        (false, _) => "keepalive off, TCP_USER_TIMEOUT set",
        (true, _) => "keepalive on, TCP_USER_TIMEOUT set",
    };
    let closed = if g.closed_since > 0 {
        format!("; {} closed by the process since", g.closed_since)
    } else {
        String::new()
    };
    Finding {
        kind: Kind::StalledPeer,
        severity: Severity::Critical,
        summary: format!(
            "{} connection{} from {} to {peer} retransmitting with no ACK for {}; no FIN or RST ever received; {guards}{closed}",
            g.connections,
            plural(g.connections),
            process.describe(),
            secs(g.max_ack_idle_ms),
        ),
        endpoint: peer.to_owned(),
        process: Some(process),
        count: g.connections,
        first_seen: g.first,
        last_seen: g.last,
        evidence: crate::evidence! {
            "no_ack_ms" => g.max_ack_idle_ms,
            "retransmits" => g.retransmits,
            "keepalive" => g.keepalive,
            "user_timeout_ms" => g.user_timeout_ms,
            "timed_out" => g.timed_out,
            "closed_since" => g.closed_since,
        },
        recommendation: "the peer vanished without FIN or RST (node or pod killed, network partition): set TCP_USER_TIMEOUT (e.g. 30 s) and TCP keepalive on these connections, and validate pooled connections (pgbouncer: server_check_query / tcp_user_timeout); the kernel alone waits ~15 minutes".to_owned(),
        socks: g.socks.to_vec(),
    }
}

fn orphan_finding(peer: &str, g: &Group, orphans: Option<(u64, u64)>) -> Finding {
    let by = if g.closed_by.is_empty() {
        String::new()
    } else {
        format!(" (closed by {})", g.closed_by.join(", "))
    };
    let mut evidence = crate::evidence! {
        "orphaned" => true,
        "no_ack_ms" => g.max_ack_idle_ms,
        "retransmits" => g.retransmits,
        "closed_by" => g.closed_by,
    };
    let node = orphans.map_or_else(String::new, |(n, max)| {
        evidence.insert("node_orphans".to_owned(), serde_json::json!(n));
        evidence.insert("max_orphans".to_owned(), serde_json::json!(max));
        format!("; the node holds {n} orphaned sockets of tcp_max_orphans {max}")
    });
    Finding {
        kind: Kind::StalledPeer,
        severity: Severity::Info,
        summary: format!(
            "{} orphaned socket{} still retransmitting {} close to {peer} with no ACK for {}{by}: the peer vanished; nobody waits on {}{node}",
            g.connections,
            plural(g.connections),
            if g.connections == 1 { "its" } else { "their" },
            secs(g.max_ack_idle_ms),
            if g.connections == 1 { "it" } else { "them" },
        ),
        endpoint: peer.to_owned(),
        process: None,
        count: g.connections,
        first_seen: g.first,
        last_seen: g.last,
        evidence,
        recommendation: "nothing is blocked: the application closed these sockets and the kernel retries the close on its own (net.ipv4.tcp_orphan_retries) before freeing them; only many at once matter — they count against net.ipv4.tcp_max_orphans (see tcp-memory-pressure)".to_owned(),
        socks: g.socks.to_vec(),
    }
}
