//! `conntrack-full`: the node's connection tracker dropping what it cannot track.
//! NodePort and Service traffic crosses conntrack; when its table is full, new
//! connections' packets are dropped (`drop`) or old entries evicted early
//! (`early_drop`), and clients elsewhere see timeouts with nothing on the server.
//! `insert_failed` counts entries that lost a race to the same tuple.
//!
//! Input: the node samples' cumulative `/proc/net/stat/nf_conntrack` sums (the node's
//! network namespace), present only where the module is loaded. Rule: any `drop` or
//! `insert_failed` gained, or the table at 90 % of `nf_conntrack_max`; critical while
//! drops continue ([`super::listen::ONGOING_MS`]).

use std::time::SystemTime;

use super::finding::{Finding, Kind, Severity};
use crate::event::{ConntrackStats, Sockstat};

/// The table this full is worth a finding even without drops.
const NEAR_FULL_PCT: u64 = 90;

#[derive(Debug, Default)]
pub struct ConntrackTable {
    prev: Option<ConntrackStats>,
    drops: u64,
    early_drops: u64,
    insert_failed: u64,
    peak: u64,
    max: u64,
    last_drop_ns: u64,
    first: Option<SystemTime>,
    last: Option<SystemTime>,
}

impl ConntrackTable {
    pub fn sample(&mut self, s: &Sockstat) {
        let Some(c) = s.conntrack else {
            return;
        };
        self.max = c.max;
        let near_full = c.max > 0 && c.entries * 100 >= c.max * NEAR_FULL_PCT;
        let (mut drop, mut early, mut failed) = (0, 0, 0);
        if let Some(p) = self.prev.replace(c) {
            drop = c.drop.saturating_sub(p.drop);
            early = c.early_drop.saturating_sub(p.early_drop);
            failed = c.insert_failed.saturating_sub(p.insert_failed);
        }
        if drop + early + failed == 0 && !near_full {
            return;
        }
        self.drops += drop;
        self.early_drops += early;
        self.insert_failed += failed;
        self.peak = self.peak.max(c.entries);
        if drop > 0 {
            self.last_drop_ns = s.mono_ns;
        }
        self.first.get_or_insert(s.time);
        self.last = Some(s.time);
    }

    pub fn findings(&self, now_ns: u64, out: &mut Vec<Finding>) {
        let (Some(first), Some(last)) = (self.first, self.last) else {
            return;
        };
        let dropping = self.drops > 0
            && now_ns.saturating_sub(self.last_drop_ns) <= super::listen::ONGOING_MS * 1_000_000;
        let summary = if self.drops > 0 {
            format!(
                "the node's connection tracker dropped {} packets of new connections (table {}/{}): connections through NAT, Services and NodePorts fail while it is full",
                self.drops, self.peak, self.max
            )
        } else if self.insert_failed > 0 {
            format!(
                "the node's connection tracker failed {} inserts (clashing entries for one tuple: parallel DNS queries, NAT races); table {}/{}",
                self.insert_failed, self.peak, self.max
            )
        } else {
            format!(
                "the node's connection tracking table is {} % full ({}/{})",
                self.peak * 100 / self.max.max(1),
                self.peak,
                self.max
            )
        };
        out.push(Finding {
            kind: Kind::ConntrackFull,
            severity: if dropping {
                Severity::Critical
            } else {
                Severity::Warning
            },
            summary,
            endpoint: "netns:node".to_owned(),
            process: None,
            count: self.drops + self.insert_failed,
            first_seen: first,
            last_seen: last,
            evidence: crate::evidence! {
                "drop" => self.drops,
                "early_drop" => self.early_drops,
                "insert_failed" => self.insert_failed,
                "entries_peak" => self.peak,
                "nf_conntrack_max" => self.max,
                "namespace" => "the node's (root)",
            },
            recommendation: "raise net.netfilter.nf_conntrack_max (and nf_conntrack_buckets) to fit the node's connections, shorten nf_conntrack_tcp_timeout_time_wait / _close_wait where they hold entries, or keep short-lived connections off conntrack (NOTRACK for local health checks); for insert failures on DNS, use TCP or single-request-reopen".to_owned(),
            socks: Vec::new(),
        });
    }
}
