//! The kernel's own drop counters, read from procfs: each network namespace's
//! `TcpExt` listen counters (`/proc/net/netstat`: `ListenOverflows`, `ListenDrops`,
//! `TCPReqQFullDrop`, `TCPReqQFullDoCookies`, `TCPBacklogDrop`, `SyncookiesSent`) and
//! the connection tracker's per-CPU statistics (`/proc/net/stat/nf_conntrack`:
//! `drop`, `early_drop`, `insert_failed`) with its size against `nf_conntrack_max`.
//!
//! A SYN dropped because a listener's accept queue is full changes no socket's
//! state and sends nothing back: these counters are the only trace the kernel keeps.
//! They are cumulative and read once per inspection pass, never per packet.

use std::{
    fs::File,
    io::{self, Read as _, Seek as _},
};

use crate::event::{ConntrackStats, ListenCounters};

/// Parses the `TcpExt:` header and value lines of a `netstat` file.
pub fn parse_tcpext(text: &str) -> Option<ListenCounters> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let mut c = ListenCounters::default();
    let mut seen = false;
    for (name, value) in names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
    {
        let Ok(v) = value.parse::<u64>() else {
            return None;
        };
        let slot = match name {
            "ListenOverflows" => &mut c.overflows,
            "ListenDrops" => &mut c.drops,
            "TCPReqQFullDrop" => &mut c.req_q_full_drop,
            "TCPReqQFullDoCookies" => &mut c.req_q_full_cookies,
            "TCPBacklogDrop" => &mut c.backlog_drop,
            "SyncookiesSent" => &mut c.syncookies_sent,
            _ => continue,
        };
        *slot = v;
        seen = true;
    }
    seen.then_some(c)
}

/// Sums `/proc/net/stat/nf_conntrack`'s per-CPU rows (hexadecimal, a header line
/// naming the columns).
pub fn parse_conntrack_stat(text: &str) -> Option<ConntrackStats> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (entries, drop, early_drop, insert_failed) = (
        col("entries")?,
        col("drop")?,
        col("early_drop")?,
        col("insert_failed"),
    );
    let mut s = ConntrackStats::default();
    let mut rows = 0;
    for line in lines {
        let v: Vec<u64> = line
            .split_whitespace()
            .map(|h| u64::from_str_radix(h, 16))
            .collect::<Result<_, _>>()
            .ok()?;
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        // `entries` is the table's size, repeated on every row.
        s.entries = at(entries);
        s.drop += at(drop);
        s.early_drop += at(early_drop);
        s.insert_failed += insert_failed.map_or(0, at);
        rows += 1;
    }
    (rows > 0).then_some(s)
}

/// An open procfs file re-read from its start: a `/proc/thread-self/net/...` file
/// opened by a thread inside a network namespace keeps answering for that namespace.
pub struct Reread {
    file: File,
    buf: String,
}

impl Reread {
    pub fn open(path: &str) -> io::Result<Self> {
        Ok(Self {
            file: File::open(path)?,
            buf: String::new(),
        })
    }

    pub fn read(&mut self) -> io::Result<&str> {
        self.file.rewind()?;
        self.buf.clear();
        self.file.read_to_string(&mut self.buf)?;
        Ok(&self.buf)
    }
}

/// The calling thread's namespace's `net.core.somaxconn` (the cap on every backlog).
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The node's connection tracker, when the module is loaded: its statistics and
/// `nf_conntrack_max`.
pub fn conntrack() -> Option<ConntrackStats> {
    let stat = std::fs::read_to_string("/proc/net/stat/nf_conntrack").ok()?;
    let mut s = parse_conntrack_stat(&stat)?;
    s.max = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .ok()
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(0);
    if let Some(count) = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()
        .and_then(|c| c.trim().parse().ok())
    {
        s.entries = count;
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcpext_listen_counters_are_read_by_name() {
        let text = "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPBacklogDrop TCPReqQFullDoCookies TCPReqQFullDrop\n\
                    TcpExt: 3 0 25 27 1 2 4\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        let c = parse_tcpext(text).expect("parsed");
        assert_eq!(
            (
                c.syncookies_sent,
                c.overflows,
                c.drops,
                c.backlog_drop,
                c.req_q_full_cookies,
                c.req_q_full_drop
            ),
            (3, 25, 27, 1, 2, 4)
        );
        assert!(parse_tcpext("TcpExt: ListenOverflows\nTcpExt: x\n").is_none());
        assert!(parse_tcpext("IpExt: A\nIpExt: 1\n").is_none());
        let real = std::fs::read_to_string("/proc/net/netstat").expect("netstat");
        assert!(parse_tcpext(&real).is_some(), "this kernel's own file");
    }

    #[test]
    fn conntrack_statistics_sum_the_cpus() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                    0000002a  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 00000010 00000002 00000000  00000000 00000000 00000000 00000000\n\
                    0000002a  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000005 00000000 00000000  00000000 00000000 00000000 00000000\n";
        let s = parse_conntrack_stat(text).expect("parsed");
        assert_eq!(
            (s.entries, s.insert_failed, s.drop, s.early_drop),
            (42, 1, 21, 2)
        );
        assert!(parse_conntrack_stat("entries drop\nzz 1\n").is_none());
    }
}
