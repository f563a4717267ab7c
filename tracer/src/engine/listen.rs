//! `listen-overflow`: a listener whose accept queue is full, so the kernel drops new
//! connection attempts — no reset, no state change on the server, only its
//! `ListenOverflows`/`ListenDrops` counters tick while clients elsewhere time out.
//!
//! Input: [`Listeners`] samples from the periodic inspection (each listener with
//! something queued, with its backlog and holder; each network namespace's cumulative
//! counters, written whenever they move). Rule: the drops a namespace's counters gained
//! over a pass go to the listener seen full (queue at its backlog) in that namespace,
//! else to its fullest queue, else to the namespace (no listener seen: named as such,
//! info). Critical while drops continue (one within [`ONGOING_MS`]), warning after.
//! Evidence: queue and backlog (and `somaxconn`, which clamps the backlog), drops in
//! all and per second over the last pass with drops, SYN cookies sent, how long the
//! queue has been full. Client-side connect timeouts to the same listener are folded in
//! by the engine (one incident, one finding).

use std::{collections::HashMap, fmt::Write as _, net::SocketAddr, time::SystemTime};

use super::finding::{secs, Finding, Kind, Process, Severity};
use crate::event::{ListenCounters, Listeners, NamespaceListen};

/// Drops this recent (engine clock) keep the finding critical.
pub const ONGOING_MS: u64 = 10_000;
const MAX_LISTENERS: usize = 4096;
const MAX_NAMESPACES: usize = 8192;

#[derive(Debug, Clone)]
struct Listener {
    pid: u32,
    comm: String,
    cgroup: u64,
    queued: u32,
    backlog: u32,
    max_queued: u32,
    somaxconn: u32,
    /// Seen full since (monotonic ns), and the longest time seen full.
    full_since: Option<u64>,
    full_ms: u64,
    drops: u64,
    overflows: u64,
    cookies: u64,
    drops_per_s: f64,
    last_drop_ns: u64,
    first: SystemTime,
    last: SystemTime,
}

/// Drops in a namespace where no listener was seen queueing.
#[derive(Debug, Clone)]
struct Unattributed {
    drops: u64,
    last_drop_ns: u64,
    first: SystemTime,
    last: SystemTime,
}

#[derive(Debug, Default)]
pub struct ListenOverflow {
    /// Last counters per namespace, with the monotonic time they were read.
    counters: HashMap<u32, (u64, NamespaceListen)>,
    listeners: HashMap<(u32, SocketAddr), Listener>,
    unattributed: HashMap<u32, Unattributed>,
    pub dropped: u64,
}

/// `b - a` per counter; `None` when a counter went back (a namespace re-created).
fn delta(a: &ListenCounters, b: &ListenCounters) -> Option<ListenCounters> {
    Some(ListenCounters {
        overflows: b.overflows.checked_sub(a.overflows)?,
        drops: b.drops.checked_sub(a.drops)?,
        req_q_full_drop: b.req_q_full_drop.checked_sub(a.req_q_full_drop)?,
        req_q_full_cookies: b.req_q_full_cookies.checked_sub(a.req_q_full_cookies)?,
        backlog_drop: b.backlog_drop.checked_sub(a.backlog_drop)?,
        syncookies_sent: b.syncookies_sent.checked_sub(a.syncookies_sent)?,
    })
}

impl ListenOverflow {
    pub fn sample(&mut self, l: &Listeners) {
        let now = l.mono_ns;
        let seen: std::collections::HashSet<(u32, SocketAddr)> =
            l.queues.iter().map(|q| (q.netns, q.local)).collect();
        // Listeners not in this sample have nothing queued now.
        for (key, k) in &mut self.listeners {
            if !seen.contains(key) {
                k.queued = 0;
                k.full_since = None;
            }
        }
        for q in &l.queues {
            let key = (q.netns, q.local);
            if !self.listeners.contains_key(&key) && self.listeners.len() >= MAX_LISTENERS {
                self.dropped += 1;
                continue;
            }
            let k = self.listeners.entry(key).or_insert_with(|| Listener {
                pid: q.process.pid,
                comm: q.process.comm.clone(),
                cgroup: q.process.cgroup,
                queued: 0,
                backlog: q.backlog,
                max_queued: 0,
                somaxconn: 0,
                full_since: None,
                full_ms: 0,
                drops: 0,
                overflows: 0,
                cookies: 0,
                drops_per_s: 0.0,
                last_drop_ns: 0,
                first: l.time,
                last: l.time,
            });
            if q.process.pid != 0 {
                (k.pid, k.cgroup) = (q.process.pid, q.process.cgroup);
                k.comm.clone_from(&q.process.comm);
            }
            k.queued = q.queued;
            k.backlog = q.backlog;
            k.max_queued = k.max_queued.max(q.queued);
            k.last = l.time;
            if q.queued >= q.backlog {
                let since = *k.full_since.get_or_insert(now);
                k.full_ms = k.full_ms.max(now.saturating_sub(since) / 1_000_000);
            } else {
                k.full_since = None;
            }
        }
        for ns in &l.namespaces {
            self.namespace(l, ns);
        }
    }

    fn namespace(&mut self, l: &Listeners, ns: &NamespaceListen) {
        let now = l.mono_ns;
        if !self.counters.contains_key(&ns.netns) && self.counters.len() >= MAX_NAMESPACES {
            self.dropped += 1;
            return;
        }
        let before = match self.counters.insert(ns.netns, (now, *ns)) {
            Some((_, before)) => before.counters,
            // A namespace made since the trace began: every drop in it is new.
            None if ns.new => ListenCounters::default(),
            None => return,
        };
        let Some(d) = delta(&before, &ns.counters) else {
            return;
        };
        let drops = d.drops.max(d.overflows);
        if drops == 0 {
            return;
        }
        // The pass interval: the counters are written whenever they move, so the
        // previous value held until the previous pass.
        #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
        let per_s = drops as f64 * 1000.0 / l.interval_ms.max(1) as f64;
        // The listener seen full, else the fullest queue in this namespace.
        let target = l
            .queues
            .iter()
            .filter(|q| q.netns == ns.netns)
            .max_by_key(|q| {
                (
                    q.queued >= q.backlog,
                    u64::from(q.queued) * 1000 / u64::from(q.backlog.max(1)),
                )
            })
            .map(|q| (q.netns, q.local));
        if let Some(k) = target.and_then(|key| self.listeners.get_mut(&key)) {
            k.drops += drops;
            k.overflows += d.overflows;
            k.cookies += d.syncookies_sent + d.req_q_full_cookies;
            k.drops_per_s = per_s;
            k.last_drop_ns = now;
            k.somaxconn = ns.somaxconn;
            k.last = l.time;
            return;
        }
        let u = self
            .unattributed
            .entry(ns.netns)
            .or_insert_with(|| Unattributed {
                drops: 0,
                last_drop_ns: now,
                first: l.time,
                last: l.time,
            });
        u.drops += drops;
        u.last_drop_ns = now;
        u.last = l.time;
    }

    /// Every listener seen queueing: (address, queued now, backlog, drops so far).
    pub fn states(&self) -> impl Iterator<Item = (SocketAddr, u32, u32, u64)> + '_ {
        self.listeners
            .iter()
            .map(|((_, local), k)| (*local, k.queued, k.backlog, k.drops))
    }

    pub fn findings(&self, now_ns: u64, out: &mut Vec<Finding>) {
        let ongoing = |at: u64| now_ns.saturating_sub(at) <= ONGOING_MS * 1_000_000;
        for ((netns, local), k) in &self.listeners {
            if k.drops == 0 {
                continue;
            }
            let process = Process::new(k.pid, &k.comm, k.cgroup);
            let full = k.full_since.map_or(k.full_ms, |s| {
                k.full_ms.max(now_ns.saturating_sub(s) / 1_000_000)
            });
            let mut summary = format!(
                "listener {local} of {} dropped {} connection attempt{}: its accept queue is full ({}/{} queued",
                process.describe(),
                k.drops,
                if k.drops == 1 { "" } else { "s" },
                k.max_queued,
                k.backlog,
            );
            if full > 0 {
                let _ = write!(summary, ", full for {}", secs(full));
            }
            summary.push_str("): the process is not accepting");
            if k.somaxconn != 0 && k.backlog >= k.somaxconn {
                let _ = write!(
                    summary,
                    " (backlog clamped by net.core.somaxconn {})",
                    k.somaxconn
                );
            }
            out.push(Finding {
                kind: Kind::ListenOverflow,
                severity: if ongoing(k.last_drop_ns) {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                summary,
                endpoint: local.to_string(),
                process: Some(process),
                count: k.drops,
                first_seen: k.first,
                last_seen: k.last,
                evidence: crate::evidence! {
                    "queued" => k.max_queued,
                    "backlog" => k.backlog,
                    "somaxconn" => (k.somaxconn != 0).then_some(k.somaxconn),
                    "drops" => k.drops,
                    "listen_overflows" => k.overflows,
                    "drops_per_s" => (k.drops_per_s * 10.0).round() / 10.0,
                    "syncookies_sent" => k.cookies,
                    "full_for_ms" => full,
                    "netns" => netns,
                    "attribution" => if k.max_queued >= k.backlog { "listener seen full" } else { "fullest queue in its namespace" },
                },
                recommendation: format!(
                    "the process holding {local} does not call accept() as fast as connections arrive: a blocked event loop, a stalled accept loop or too few workers (a stack dump of pid {} shows where it waits). Fix that first; then size the backlog (listen(fd, N), e.g. the server's backlog setting) together with net.core.somaxconn{} — a bigger queue only delays the drops",
                    k.pid,
                    if k.somaxconn == 0 { String::new() } else { format!(" (now {})", k.somaxconn) }
                ),
                socks: Vec::new(),
            });
        }
        for (netns, u) in &self.unattributed {
            out.push(Finding {
                kind: Kind::ListenOverflow,
                severity: Severity::Info,
                summary: format!(
                    "network namespace {netns} dropped {} connection attempt{} at a full listen queue; no listener was seen queueing (it emptied between inspections, or a filter left it out)",
                    u.drops,
                    if u.drops == 1 { "" } else { "s" }
                ),
                endpoint: format!("netns:{netns}"),
                process: None,
                count: u.drops,
                first_seen: u.first,
                last_seen: u.last,
                evidence: crate::evidence! {
                    "drops" => u.drops,
                    "netns" => netns,
                    "ongoing" => ongoing(u.last_drop_ns),
                },
                recommendation: "look for a listener in that namespace whose process stopped accepting (ss -ltn shows Recv-Q at Send-Q); nstat ListenOverflows counts the drops".to_owned(),
                socks: Vec::new(),
            });
        }
    }
}
