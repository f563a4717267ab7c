//! Node TCP memory samples from `/proc/net/sockstat` and `/proc/sys/net/ipv4/*`.

use std::time::SystemTime;

use anyhow::{Context as _, Result};

use crate::event::Sockstat;

/// `TCP: inuse 5 orphan 0 tw 2 alloc 7 mem 1` -> (inuse, orphan, tw, alloc, mem).
pub fn parse_sockstat(text: &str) -> Option<(u64, u64, u64, u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let get = |key: &str| -> Option<u64> {
        let i = words.iter().position(|w| *w == key)?;
        words.get(i + 1)?.parse().ok()
    };
    Some((
        get("inuse")?,
        get("orphan")?,
        get("tw")?,
        get("alloc")?,
        get("mem")?,
    ))
}

fn numbers(path: &str) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// Reads one sample now, stamped with the given clocks.
pub fn read(mono_ns: u64, time: SystemTime) -> Result<Sockstat> {
    let text =
        std::fs::read_to_string("/proc/net/sockstat").context("reading /proc/net/sockstat")?;
    let (inuse, orphan, tw, alloc, mem) =
        parse_sockstat(&text).context("/proc/net/sockstat has no TCP line")?;
    let tcp_mem = numbers("/proc/sys/net/ipv4/tcp_mem");
    let range = numbers("/proc/sys/net/ipv4/ip_local_port_range");
    let to_port = |v: Option<&u64>| v.and_then(|p| u16::try_from(*p).ok()).unwrap_or(0);
    Ok(Sockstat {
        time,
        mono_ns,
        tcp_inuse: inuse,
        tcp_orphan: orphan,
        tcp_tw: tw,
        tcp_alloc: alloc,
        tcp_mem_pages: mem,
        tcp_mem: [
            tcp_mem.first().copied().unwrap_or(0),
            tcp_mem.get(1).copied().unwrap_or(0),
            tcp_mem.get(2).copied().unwrap_or(0),
        ],
        max_orphans: numbers("/proc/sys/net/ipv4/tcp_max_orphans")
            .first()
            .copied()
            .unwrap_or(0),
        local_port_range: [to_port(range.first()), to_port(range.get(1))],
        conntrack: crate::kernel::netstat::conntrack(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_tcp_line() {
        let text =
            "sockets: used 180\nTCP: inuse 5 orphan 1 tw 2 alloc 7 mem 3\nUDP: inuse 1 mem 0\n";
        assert_eq!(parse_sockstat(text), Some((5, 1, 2, 7, 3)));
        assert_eq!(parse_sockstat("UDP: inuse 1\n"), None);
    }
}
