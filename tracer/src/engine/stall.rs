//! `stalled-peer` (critical): connections retransmitting to a peer that no longer
//! answers.
//!
//! Rule: a connection whose retransmit arrives with no ACK from the peer for at
//! least `stall_ms`, and which never received a FIN or RST, is stalled. Grouped by
//! (process, peer); each connection counts once. Evidence says whether keepalive or
//! TCP_USER_TIMEOUT would have ended the wait, and how many finally timed out.

use std::{collections::HashMap, time::SystemTime};

use super::{
    conn::Conn,
    finding::{secs, Finding, Involved, Kind, Process, Severity},
    Config,
};
use crate::event::{Event, EventKind};

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
    socks: Involved,
    first: SystemTime,
    last: SystemTime,
}

#[derive(Debug, Default)]
pub struct Stalls {
    by_key: HashMap<(u32, String), Group>,
}

impl Stalls {
    pub fn on_retransmit(&mut self, conn: &mut Conn, e: &Event, cfg: &Config) {
        let EventKind::Retransmit { ack_idle_ms, .. } = e.kind else {
            return;
        };
        conn.retransmits += 1;
        conn.max_ack_idle_ms = conn.max_ack_idle_ms.max(ack_idle_ms);
        let stalled_now =
            ack_idle_ms >= cfg.stall_ms && conn.peer_fin.is_none() && !conn.reset_received;
        if !conn.stalled && !stalled_now {
            return;
        }
        let first = !conn.stalled;
        conn.stalled = true;
        let g = self
            .by_key
            .entry((conn.pid, conn.remote.to_string()))
            .or_insert_with(|| Group {
                comm: conn.comm.to_string(),
                cgroup: conn.cgroup,
                connections: 0,
                retransmits: 0,
                max_ack_idle_ms: 0,
                keepalive: false,
                user_timeout_ms: 0,
                timed_out: 0,
                socks: Involved::default(),
                first: e.time,
                last: e.time,
            });
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

    pub fn on_timeout(&mut self, conn: &mut Conn) {
        if conn.stalled && !std::mem::replace(&mut conn.timed_out, true) {
            if let Some(g) = self.by_key.get_mut(&(conn.pid, conn.remote.to_string())) {
                g.timed_out += 1;
            }
        }
    }

    pub fn findings(&self, out: &mut Vec<Finding>) {
        for ((pid, peer), g) in &self.by_key {
            let process = Process::new(*pid, &g.comm, g.cgroup);
            let guards = match (g.keepalive, g.user_timeout_ms) {
                (false, 0) => "keepalive and TCP_USER_TIMEOUT off",
                (true, 0) => "keepalive on, TCP_USER_TIMEOUT off",
                (false, _) => "keepalive off, TCP_USER_TIMEOUT set",
                (true, _) => "keepalive on, TCP_USER_TIMEOUT set",
            };
            out.push(Finding {
                kind: Kind::StalledPeer,
                severity: Severity::Critical,
                summary: format!(
                    "{} connection{} from {} to {peer} retransmitting with no ACK for {}; no FIN or RST ever received; {guards}",
                    g.connections,
                    if g.connections == 1 { "" } else { "s" },
                    process.describe(),
                    secs(g.max_ack_idle_ms),
                ),
                endpoint: peer.clone(),
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
                },
                recommendation: "the peer vanished without FIN or RST (node or pod killed, network partition): set TCP_USER_TIMEOUT (e.g. 30 s) and TCP keepalive on these connections, and validate pooled connections (pgbouncer: server_check_query / tcp_user_timeout); the kernel alone waits ~15 minutes".to_owned(),
                socks: g.socks.to_vec(),
            });
        }
    }
}
