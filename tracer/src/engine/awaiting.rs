//! `awaiting-reply`: connections whose request was delivered and acknowledged, and
//! whose peer has sent nothing since — a worker blocked in `recv()` on a peer that may
//! have vanished after acknowledging (no retransmit, no reset, no state change: no
//! kernel event at all, so this comes from the periodic inspection's [`Waiting`]
//! snapshots).
//!
//! Rule: per (program, cgroup, peer) — one worker process or many of the same
//! program (psql, prefork workers) — the connections of each snapshot (each waited at least
//! the snapshot's threshold; the inspector leaves out accepted connections, idle pooled
//! ones where the peer spoke last, and unacknowledged data, which is `stalled-peer`).
//! - **critical** when two or more of them went silent together: their waits began
//!   within [`TOGETHER_MS`] of each other — the signature of a vanished node rather
//!   than one slow query;
//! - **warning** for a lone wait (a slow query or a long-poll past the threshold is
//!   indistinguishable from one socket);
//! - **info** when the peer's end of every one is open in the same network namespace
//!   (a server on this node still holds it: slow or stuck, not vanished);
//! - **info** when every one has its keepalive armed with settings that end the wait
//!   within [`KEEPALIVE_SOON_MS`] (or, in a log written before the settings were read,
//!   armed at all). Keepalive that ends it only in hours — the kernel's defaults, 2 h
//!   idle + 9 x 75 s, which libpq and most drivers turn on — is named with the time it
//!   ends the wait and ranked as no keepalive: during an incident that is a hang.
//!
//! Kept: the worst moment per group (most connections, then longest wait); groups are
//! bounded (`MAX_GROUPS`).

use std::{collections::HashMap, fmt::Write as _, net::SocketAddr, time::SystemTime};

use super::finding::{secs, span, Finding, Kind, Process, Severity};
use crate::event::{KeepaliveSettings, Waiting, WaitingConn};

/// Waits that began within this of each other count as one moment.
pub const TOGETHER_MS: u64 = 1_000;
/// Keepalive that ends a wait within this ranks it info: the probes will settle it
/// before anyone has to act.
pub const KEEPALIVE_SOON_MS: u64 = 5 * 60_000;
const MAX_GROUPS: usize = 4096;
const MAX_PIDS: usize = 16;

/// (program, cgroup, peer).
type Key = (String, u64, SocketAddr);

#[derive(Debug, Clone)]
struct Group {
    /// The processes seen waiting (at most [`MAX_PIDS`]).
    pids: std::collections::BTreeSet<u32>,
    /// Every connection's peer end was open in its own namespace.
    peer_here_all: bool,
    connections: u64,
    together: u64,
    waiting_ms: u64,
    keepalive_all: bool,
    /// When the last of the group's waits ends by keepalive, if known for every one,
    /// and one connection's settings.
    keepalive_ends: Option<(SystemTime, KeepaliveSettings)>,
    after_ms: u64,
    locals: Vec<SocketAddr>,
    first: SystemTime,
    last: SystemTime,
}

#[derive(Debug, Default)]
pub struct Awaiting {
    by_key: HashMap<Key, Group>,
    /// The latest snapshot: (local, remote) -> waiting ms, and its time.
    latest: HashMap<(SocketAddr, SocketAddr), u64>,
    latest_ns: u64,
    pub dropped: u64,
}

/// The size of the largest set of start times within `TOGETHER_MS` of each other.
fn largest_cluster(mut starts: Vec<u64>) -> u64 {
    starts.sort_unstable();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..starts.len() {
        while starts[hi] - starts[lo] > TOGETHER_MS {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best as u64
}

impl Awaiting {
    /// How long `local -> remote` had waited at the latest snapshot, and when that was.
    pub fn latest(&self, local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
        self.latest
            .get(&(local, remote))
            .map(|ms| (*ms, self.latest_ns))
    }

    pub fn snapshot(&mut self, w: &Waiting) {
        self.latest = w
            .conns
            .iter()
            .map(|c| ((c.local, c.remote), c.waiting_ms))
            .collect();
        self.latest_ns = w.mono_ns;
        let mut groups: HashMap<Key, Vec<&crate::event::WaitingConn>> = HashMap::new();
        for c in &w.conns {
            groups
                .entry((c.process.comm.clone(), c.process.cgroup, c.remote))
                .or_default()
                .push(c);
        }
        let now_ms = w.mono_ns / 1_000_000;
        for (key, conns) in groups {
            let starts = conns
                .iter()
                .map(|c| now_ms.saturating_sub(c.waiting_ms))
                .collect();
            let together = largest_cluster(starts);
            let connections = conns.len() as u64;
            let waiting_ms = conns.iter().map(|c| c.waiting_ms).max().unwrap_or(0);
            let keepalive_all = conns.iter().all(|c| c.keepalive);
            let keepalive_ends = conns
                .iter()
                .map(|c| keepalive_end(c, w.time))
                .collect::<Option<Vec<_>>>()
                .and_then(|ends| ends.into_iter().max_by_key(|(at, _)| *at));
            if !self.by_key.contains_key(&key) && self.by_key.len() >= MAX_GROUPS {
                self.dropped += 1;
                continue;
            }
            let peer_here_all = conns.iter().all(|c| c.peer_here);
            let g = self.by_key.entry(key).or_insert_with(|| Group {
                pids: std::collections::BTreeSet::new(),
                peer_here_all,
                connections: 0,
                together: 0,
                waiting_ms: 0,
                keepalive_all,
                keepalive_ends,
                after_ms: w.after_ms,
                locals: Vec::new(),
                first: w.time,
                last: w.time,
            });
            g.last = w.time;
            g.peer_here_all &= peer_here_all;
            for c in &conns {
                if g.pids.len() < MAX_PIDS {
                    g.pids.insert(c.process.pid);
                }
            }
            g.waiting_ms = g.waiting_ms.max(waiting_ms);
            g.keepalive_all &= keepalive_all;
            g.keepalive_ends = if g.keepalive_all {
                keepalive_ends
            } else {
                None
            };
            if (connections, together) > (g.connections, g.together) {
                g.connections = connections;
                g.together = together;
                g.after_ms = w.after_ms;
                g.locals = conns.iter().take(8).map(|c| c.local).collect();
            }
        }
    }

    pub fn findings(&self, out: &mut Vec<Finding>) {
        for ((comm, cgroup, peer), g) in &self.by_key {
            let pid = g.pids.first().copied().unwrap_or(0);
            let process = Process::new(pid, comm, *cgroup);
            // How long after the group's last snapshot the probes end the waits.
            let ends_in_ms = g.keepalive_ends.map(|(at, _)| {
                at.duration_since(g.last)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            });
            let settled_soon =
                g.keepalive_all && ends_in_ms.is_none_or(|ms| ms <= KEEPALIVE_SOON_MS);
            let severity = if settled_soon || g.peer_here_all {
                Severity::Info
            } else if g.together >= 2 {
                Severity::Critical
            } else {
                Severity::Warning
            };
            let keepalive = match (g.keepalive_all, g.keepalive_ends, ends_in_ms) {
                (false, ..) => "keepalive off: the kernel will wait forever".to_owned(),
                (true, Some((at, k)), Some(ms)) if ms <= KEEPALIVE_SOON_MS => format!(
                    "keepalive on: if the peer is gone its probes end the wait in {} (about {}; {})",
                    span(ms),
                    clock(at),
                    describe(&k)
                ),
                (true, Some((at, k)), Some(ms)) => format!(
                    "keepalive on, but its probes end the wait only in {} (about {}; {}): until then it hangs",
                    span(ms),
                    clock(at),
                    describe(&k)
                ),
                (true, ..) => {
                    "keepalive on (its probes will end the wait if the peer is gone)".to_owned()
                }
            };
            let n = g.connections;
            let who = if g.pids.len() > 1 {
                let pids: Vec<String> = g.pids.iter().map(ToString::to_string).collect();
                format!("{comm} (pids {})", pids.join(", "))
            } else {
                process.describe()
            };
            let mut summary = format!(
                "{n} connection{} from {who} to {peer} awaiting a reply for up to {}: the peer acknowledged the request and has sent nothing since; {keepalive}",
                if n == 1 { "" } else { "s" },
                secs(g.waiting_ms),
            );
            if g.peer_here_all {
                summary.push_str("; the peer's end is open on this node, in the same network namespace: it is slow or stuck, not gone");
            }
            if g.together >= 2 {
                let _ = write!(
                    summary,
                    "; {} went silent within {} of each other — the signature of a vanished peer",
                    g.together,
                    secs(TOGETHER_MS)
                );
            }
            let settings = g.keepalive_ends.map(|(_, k)| k);
            out.push(Finding {
                kind: Kind::AwaitingReply,
                severity,
                summary,
                endpoint: peer.to_string(),
                process: Some(process),
                count: n,
                first_seen: g.first,
                last_seen: g.last,
                evidence: crate::evidence! {
                    "waiting_ms" => g.waiting_ms,
                    "silent_together" => g.together,
                    "pids" => g.pids.iter().collect::<Vec<_>>(),
                    "peer_here" => g.peer_here_all,
                    "keepalive" => g.keepalive_all,
                    "keepalive_ends_in_ms" => ends_in_ms,
                    "keepalive_ends_at" => g.keepalive_ends.map(|(at, _)| humantime::format_rfc3339_seconds(at).to_string()),
                    "keepalive_idle_ms" => settings.map(|k| k.idle_ms),
                    "keepalive_interval_ms" => settings.map(|k| k.interval_ms),
                    "keepalive_probes" => settings.map(|k| k.probes),
                    "user_timeout_ms" => settings.map(|k| k.user_timeout_ms),
                    "keepalive_settings_from" => settings.map(|k| k.source),
                    "threshold_ms" => g.after_ms,
                    "local" => g.locals.iter().map(ToString::to_string).collect::<Vec<_>>(),
                },
                recommendation: "a peer that vanished after acknowledging a request leaves the client waiting forever: turn on TCP keepalive with short timers (e.g. idle 30 s, interval 5 s, 3 probes: SO_KEEPALIVE + TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT) together with TCP_USER_TIMEOUT, give the client a read or statement timeout (libpq/pgbouncer: tcp_user_timeout, statement_timeout; asyncpg: command_timeout), and validate pooled connections on borrow".to_owned(),
                socks: Vec::new(),
            });
        }
    }
}

/// When `c`'s keepalive resets it if the peer stays silent, with its settings; `None`
/// when keepalive is off or its settings were not read.
fn keepalive_end(c: &WaitingConn, now: SystemTime) -> Option<(SystemTime, KeepaliveSettings)> {
    let k = c.keepalive_settings.filter(|_| c.keepalive)?;
    let since_rx = c.last_ack_ms.unwrap_or(c.waiting_ms).min(c.waiting_ms);
    let left = k.gives_up_after_ms().saturating_sub(since_rx);
    Some((now + std::time::Duration::from_millis(left), k))
}

/// `07:58 UTC`.
fn clock(at: SystemTime) -> String {
    let t = humantime::format_rfc3339_seconds(at).to_string();
    t.get(11..16).map_or(t.clone(), |hm| format!("{hm} UTC"))
}

/// `idle 7200 s + 9 x 75 s` (+ `TCP_USER_TIMEOUT 30 s`), and where it was read.
fn describe(k: &KeepaliveSettings) -> String {
    let mut s = format!(
        "idle {} + {} x {}",
        span(k.idle_ms),
        k.probes,
        span(k.interval_ms)
    );
    if k.user_timeout_ms > 0 {
        let _ = write!(s, ", TCP_USER_TIMEOUT {}", span(k.user_timeout_ms));
    }
    if k.source == crate::event::SettingsSource::Namespace {
        s.push_str(", the namespace's defaults");
    }
    s
}
