//! `close-wait-leak`: a process holding sockets in CLOSE_WAIT — the peer closed, the
//! process never called close().
//!
//! Rule: on each periodic sample, count per process the sockets that have sat in
//! CLOSE_WAIT longer than `close_wait_age_ms`; a process holding at least
//! `close_wait_min` is reported (warning; critical at ten times that). Growth is the
//! change in that count over the last minute of samples, per minute. A leak that
//! resolved stays in the report with its peak.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::SystemTime,
};

use super::{
    conn::{ConnTable, Role},
    finding::{secs, Finding, Kind, Process, Severity},
    Config,
};

#[derive(Debug)]
struct Leak {
    comm: String,
    cgroup: u64,
    count: usize,
    peak: usize,
    oldest_ms: u64,
    endpoints: BTreeMap<String, usize>,
    socks: Vec<(u64, std::net::SocketAddr)>,
    history: VecDeque<(u64, usize)>,
    /// The fastest growth seen over any one-minute window, per minute.
    max_growth: f64,
    first: SystemTime,
    last: SystemTime,
}

/// One process's leaked sockets at one evaluation.
struct Tally<'a> {
    count: usize,
    oldest_ms: u64,
    endpoints: BTreeMap<String, usize>,
    socks: Vec<(u64, std::net::SocketAddr)>,
    comm: &'a str,
    cgroup: u64,
}

#[derive(Debug, Default)]
pub struct CloseWaitLeak {
    by_pid: HashMap<u32, Leak>,
    last_eval_ns: Option<u64>,
    /// Leaking processes not kept because `MAX_PROCESSES` were.
    pub dropped: u64,
}

/// Leaking processes kept at most.
const MAX_PROCESSES: usize = 4096;

const MINUTE_NS: u64 = 60_000_000_000;

impl CloseWaitLeak {
    pub fn evaluate(&mut self, conns: &ConnTable, now: u64, wall: SystemTime, cfg: &Config) {
        let age_ns = cfg.close_wait_age_ms * 1_000_000;
        let mut tally: HashMap<u32, Tally<'_>> = HashMap::new();
        for c in conns.iter() {
            let Some(since) = c.close_wait_since else {
                continue;
            };
            let age = now.saturating_sub(since);
            if age < age_ns {
                continue;
            }
            let t = tally.entry(c.pid).or_insert_with(|| Tally {
                count: 0,
                oldest_ms: 0,
                endpoints: BTreeMap::new(),
                socks: Vec::new(),
                comm: c.comm.as_str(),
                cgroup: c.cgroup,
            });
            t.count += 1;
            t.oldest_ms = t.oldest_ms.max(age / 1_000_000);
            if t.socks.len() < 8 {
                t.socks.push((c.sock, c.local));
            }
            let endpoint = if c.role == Role::Client {
                c.remote
            } else {
                c.local
            };
            *t.endpoints.entry(endpoint.to_string()).or_default() += 1;
        }
        for leak in self.by_pid.values_mut() {
            leak.count = 0;
        }
        for (pid, t) in tally {
            let Tally {
                count,
                oldest_ms,
                endpoints,
                mut socks,
                comm,
                cgroup,
            } = t;
            socks.sort_unstable();
            if count < cfg.close_wait_min && !self.by_pid.contains_key(&pid) {
                continue;
            }
            if !self.by_pid.contains_key(&pid) && self.by_pid.len() >= MAX_PROCESSES {
                self.dropped += 1;
                continue;
            }
            let last_eval = self.last_eval_ns;
            let leak = self.by_pid.entry(pid).or_insert_with(|| Leak {
                comm: comm.to_owned(),
                cgroup,
                count: 0,
                peak: 0,
                oldest_ms: 0,
                endpoints: BTreeMap::new(),
                socks: Vec::new(),
                // Below the threshold at the previous sample: growth starts from zero there.
                history: last_eval.into_iter().map(|t| (t, 0)).collect(),
                max_growth: 0.0,
                first: wall,
                last: wall,
            });
            leak.count = count;
            leak.peak = leak.peak.max(count);
            leak.oldest_ms = leak.oldest_ms.max(oldest_ms);
            leak.endpoints = endpoints;
            leak.socks = socks;
            leak.last = wall;
        }
        self.last_eval_ns = Some(now);
        for leak in self.by_pid.values_mut() {
            leak.history.push_back((now, leak.count));
            while leak
                .history
                .front()
                .is_some_and(|(t, _)| t.saturating_add(MINUTE_NS) < now)
            {
                leak.history.pop_front();
            }
            leak.max_growth = leak.max_growth.max(growth(&leak.history));
        }
    }

    pub fn findings(&self, cfg: &Config, out: &mut Vec<Finding>) {
        for (pid, leak) in &self.by_pid {
            if leak.peak < cfg.close_wait_min {
                continue;
            }
            let process = Process::new(*pid, &leak.comm, leak.cgroup);
            let growth = growth(&leak.history);
            let endpoint = leak
                .endpoints
                .iter()
                .max_by_key(|(e, n)| (**n, std::cmp::Reverse((*e).clone())))
                .map_or_else(|| "unknown".to_owned(), |(e, _)| e.clone());
            let severity = if leak.peak >= 10 * cfg.close_wait_min {
                Severity::Critical
            } else {
                Severity::Warning
            };
            let summary = if leak.count == 0 {
                format!(
                    "{} held up to {} sockets in CLOSE_WAIT for more than {} ({endpoint}), growing up to {:.1}/min; all since closed",
                    process.describe(),
                    leak.peak,
                    secs(cfg.close_wait_age_ms),
                    leak.max_growth,
                )
            } else {
                format!(
                    "{} holds {} sockets in CLOSE_WAIT for more than {} ({endpoint}), growing {growth:.1}/min{}",
                    process.describe(),
                    leak.count,
                    secs(cfg.close_wait_age_ms),
                    if leak.peak > leak.count { format!(" (peak {})", leak.peak) } else { String::new() },
                )
            };
            out.push(Finding {
                kind: Kind::CloseWaitLeak,
                severity,
                summary,
                endpoint,
                process: Some(process),
                count: leak.peak as u64,
                first_seen: leak.first,
                last_seen: leak.last,
                evidence: crate::evidence! {
                    "close_wait_now" => leak.count,
                    "close_wait_peak" => leak.peak,
                    "oldest_ms" => leak.oldest_ms,
                    "age_threshold_ms" => cfg.close_wait_age_ms,
                    "growth_per_min" => (growth * 10.0).round() / 10.0,
                    "max_growth_per_min" => (leak.max_growth * 10.0).round() / 10.0,
                    "by_endpoint" => leak.endpoints,
                },
                recommendation: "the process never closes sockets its peers closed: find the code path that drops a connection without close() (error paths, abandoned responses) and close it; until fixed, restart the process before it exhausts file descriptors or TCP memory".to_owned(),
                socks: leak.socks.clone(),
            });
        }
    }
}

/// Change per minute between the first and last points of a history window.
fn growth(history: &VecDeque<(u64, usize)>) -> f64 {
    match (history.front(), history.back()) {
        (Some(&(t0, n0)), Some(&(t1, n1))) if t1 > t0 => {
            #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
            let per_min = (n1 as f64 - n0 as f64) * 60e9 / (t1 - t0) as f64;
            per_min
        }
        _ => 0.0,
    }
}
