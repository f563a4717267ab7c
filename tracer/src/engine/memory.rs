//! `tcp-memory-pressure`: node TCP memory against `tcp_mem`.
//!
//! Rule: from each sample, a warning when TCP memory is above the `tcp_mem`
//! pressure threshold (the kernel starts shrinking buffers), critical at 90 % of
//! its max (past it the kernel logs "TCP: out of memory" and drops), and a warning
//! when orphaned sockets pass 80 % of `tcp_max_orphans`. The worst sample is kept
//! with the processes holding the most connections at that moment.

use std::{collections::HashMap, time::SystemTime};

use super::{
    conn::ConnTable,
    finding::{Finding, Kind, Severity},
};
use crate::event::{Sockstat, TcpState};

#[derive(Debug, Clone)]
struct Worst {
    sample: Sockstat,
    pct_of_max: u64,
    holders: Vec<serde_json::Value>,
}

#[derive(Debug, Default)]
pub struct MemoryPressure {
    port_range: Option<[u16; 2]>,
    /// The latest sample's orphaned sockets and `tcp_max_orphans`.
    orphans: Option<(u64, u64)>,
    worst: Option<Worst>,
    over: u64,
    first: Option<SystemTime>,
    last: Option<SystemTime>,
}

fn severity(s: &Sockstat) -> Option<Severity> {
    let [_, pressure, max] = s.tcp_mem;
    if max > 0 && s.tcp_mem_pages.saturating_mul(10) >= max.saturating_mul(9) {
        Some(Severity::Critical)
    } else if (pressure > 0 && s.tcp_mem_pages > pressure)
        || (s.max_orphans > 0 && s.tcp_orphan.saturating_mul(10) >= s.max_orphans.saturating_mul(8))
    {
        Some(Severity::Warning)
    } else {
        None
    }
}

impl MemoryPressure {
    pub fn port_range(&self) -> Option<[u16; 2]> {
        self.port_range
    }

    /// The latest sample's `(orphaned sockets, tcp_max_orphans)`.
    pub fn orphans(&self) -> Option<(u64, u64)> {
        self.orphans
    }

    pub fn sample(&mut self, s: &Sockstat, conns: &ConnTable) {
        self.orphans = Some((s.tcp_orphan, s.max_orphans));
        if s.local_port_range != [0, 0] {
            self.port_range = Some(s.local_port_range);
        }
        if severity(s).is_none() {
            return;
        }
        self.over += 1;
        self.first.get_or_insert(s.time);
        self.last = Some(s.time);
        let max = s.tcp_mem[2].max(1);
        let pct = s.tcp_mem_pages.saturating_mul(100) / max;
        if self.worst.as_ref().is_some_and(|w| w.pct_of_max >= pct) {
            return;
        }
        let mut per_pid: HashMap<u32, (String, u64, u64)> = HashMap::new();
        for c in conns.iter().filter(|c| c.is_open()) {
            let e = per_pid
                .entry(c.pid)
                .or_insert_with(|| (c.comm.to_string(), 0, 0));
            e.1 += 1;
            e.2 += u64::from(c.state == TcpState::CloseWait);
        }
        let mut top: Vec<_> = per_pid.into_iter().collect();
        top.sort_by(|a, b| b.1 .1.cmp(&a.1 .1).then(a.0.cmp(&b.0)));
        let holders = top
            .into_iter()
            .take(5)
            .map(|(pid, (comm, conns, close_wait))| {
                serde_json::json!({"pid": pid, "comm": comm, "connections": conns, "close_wait": close_wait})
            })
            .collect();
        self.worst = Some(Worst {
            sample: s.clone(),
            pct_of_max: pct,
            holders,
        });
    }

    pub fn findings(&self, out: &mut Vec<Finding>) {
        let (Some(w), Some(first), Some(last)) = (&self.worst, self.first, self.last) else {
            return;
        };
        let s = &w.sample;
        let severity = severity(s).unwrap_or(Severity::Warning);
        out.push(Finding {
            kind: Kind::TcpMemoryPressure,
            severity,
            summary: format!(
                "node TCP memory reached {}% of tcp_mem max ({} of {} pages; pressure at {}), {} orphaned sockets, {} in TIME_WAIT",
                w.pct_of_max, s.tcp_mem_pages, s.tcp_mem[2], s.tcp_mem[1], s.tcp_orphan, s.tcp_tw
            ),
            endpoint: "node".to_owned(),
            process: None,
            count: self.over,
            first_seen: first,
            last_seen: last,
            evidence: crate::evidence! {
                "tcp_mem_pages" => s.tcp_mem_pages,
                "tcp_mem_pressure_pages" => s.tcp_mem[1],
                "tcp_mem_max_pages" => s.tcp_mem[2],
                "pct_of_max" => w.pct_of_max,
                "orphans" => s.tcp_orphan,
                "max_orphans" => s.max_orphans,
                "time_wait" => s.tcp_tw,
                "sockets_in_use" => s.tcp_inuse,
                "samples_over_threshold" => self.over,
                "top_holders" => w.holders,
            },
            recommendation: "find the process holding sockets (top_holders; CLOSE_WAIT piles are leaks) and fix or restart it; raise net.ipv4.tcp_mem only once nothing leaks".to_owned(),
            socks: Vec::new(),
        });
    }
}
