//! Listening TCP sockets that predate the trace, found in `/proc` the way `ss -ltnp`
//! finds them, so the connections they accept have an owner from their first
//! (softirq) event — and at all with `--no-syscall-hooks`. conntrace only sees
//! `listen()` calls made while it runs.
//!
//! Per network namespace (one process in it is enough) the LISTEN rows of
//! `/proc/PID/net/tcp{,6}` give port and socket inode; the socket inode is matched to
//! a process through `/proc/*/fd` links `socket:[INODE]` (the lowest pid holding it:
//! the parent of a pre-forked server).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::Path,
};

/// A listening socket and the process holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Inode number of the network namespace (`/proc/PID/ns/net`).
    pub netns: u32,
    pub port: u16,
    pub pid: u32,
    pub comm: String,
    /// cgroup v2 id (the inode of the process' cgroup directory); 0 when unknown.
    pub cgroup_id: u64,
}

/// Processes scanned at most: a bound on the work on a very busy node.
const MAX_PROCESSES: usize = 65_536;

/// Every listening TCP socket under `proc_root` (normally `/proc`), cgroup ids resolved
/// under `cgroup_root` (normally `/sys/fs/cgroup`). Unreadable entries (processes that
/// exit meanwhile) are skipped.
pub fn scan(proc_root: &Path, cgroup_root: &Path) -> Vec<Listener> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.truncate(MAX_PROCESSES);

    // netns -> one pid in it; socket inode -> lowest pid holding it.
    let mut namespaces: BTreeMap<u32, u32> = BTreeMap::new();
    let mut holders: HashMap<u64, u32> = HashMap::new();
    for &pid in &pids {
        let base = proc_root.join(pid.to_string());
        let Some(ns) = std::fs::read_link(base.join("ns/net"))
            .ok()
            .and_then(|l| bracketed(l.to_str()?, "net:"))
            .and_then(|n| u32::try_from(n).ok())
        else {
            continue;
        };
        namespaces.entry(ns).or_insert(pid);
        let Ok(fds) = std::fs::read_dir(base.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Some(ino) = std::fs::read_link(fd.path())
                .ok()
                .and_then(|l| bracketed(l.to_str()?, "socket:"))
            {
                holders.entry(ino).or_insert(pid);
            }
        }
    }

    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (&netns, &pid) in &namespaces {
        for (port, ino) in listening_in(proc_root, pid, netns) {
            let Some(&owner) = holders.get(&ino) else {
                continue;
            };
            if !seen.insert((netns, port)) {
                continue; // the same port on IPv4 and IPv6, or on two addresses
            }
            out.push(Listener {
                netns,
                port,
                pid: owner,
                comm: comm(proc_root, owner),
                cgroup_id: cgroup_id(proc_root, cgroup_root, owner),
            });
        }
    }
    out
}

/// `(local port, socket inode)` of the listening sockets of `pid`'s namespace: from
/// `sock_diag`, which walks only the listening hash; where it cannot be asked, the
/// LISTEN rows of `/proc/PID/net/tcp{,6}` (which list every socket of the namespace,
/// time-wait ones included).
fn listening_in(proc_root: &Path, pid: u32, netns: u32) -> Vec<(u16, u64)> {
    let base = proc_root.join(pid.to_string());
    if let Ok(conns) = crate::kernel::diag::listening_in(&base.join("ns/net"), netns) {
        return conns
            .iter()
            .filter(|c| c.listening)
            .map(|c| (c.local.port(), c.inode))
            .collect();
    }
    ["net/tcp", "net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(base.join(table)).ok())
        .flat_map(|text| listening(&text))
        .collect()
}

/// `N` of `prefix[N]`.
fn bracketed(link: &str, prefix: &str) -> Option<u64> {
    link.strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// `(local port, socket inode)` of the LISTEN (`0A`) rows of a `/proc/net/tcp{,6}` table.
pub fn listening(table: &str) -> Vec<(u16, u64)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if cols.len() < 10 || cols[3] != "0A" {
                return None;
            }
            let port = u16::from_str_radix(cols[1].rsplit_once(':')?.1, 16).ok()?;
            let ino = cols[9].parse().ok()?;
            (ino != 0).then_some((port, ino))
        })
        .collect()
}

fn comm(proc_root: &Path, pid: u32) -> String {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_default()
}

/// The cgroup v2 id of `pid`: the inode of its directory under the cgroup root.
pub fn cgroup_id(proc_root: &Path, cgroup_root: &Path, pid: u32) -> u64 {
    let Ok(text) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")) else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .and_then(|path| std::fs::metadata(cgroup_root.join(path.trim_start_matches('/'))).ok())
        .map_or(0, |m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_rows_give_port_and_inode() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:A2B4 01 00000000:00000000 00:00000000 00000000     0        0 123457 1 0000000000000000 20 4 30 10 -1\n\
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 100 0 0 10 0\n";
        // The established row is not a listener; a listener with inode 0 (being torn
        // down) has no holder to find.
        assert_eq!(listening(table), vec![(8080, 123_456)]);
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening(v6), vec![(80, 777)]);
        assert!(listening("").is_empty());
    }

    #[test]
    fn links_are_parsed_by_kind() {
        assert_eq!(bracketed("socket:[123]", "socket:"), Some(123));
        assert_eq!(bracketed("net:[4026531840]", "net:"), Some(4_026_531_840));
        assert_eq!(bracketed("pipe:[5]", "socket:"), None);
        assert_eq!(bracketed("/dev/null", "socket:"), None);
    }

    #[test]
    fn this_process_listening_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let found = scan(Path::new("/proc"), Path::new("/sys/fs/cgroup"));
        let me = found
            .iter()
            .find(|l| l.port == port)
            .unwrap_or_else(|| panic!("port {port} not among {found:?}"));
        assert_eq!(me.pid, std::process::id());
        assert!(!me.comm.is_empty());
    }
}
