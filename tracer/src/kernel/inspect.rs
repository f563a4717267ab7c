//! The periodic inspection's thread: every pass dumps every namespace's sockets
//! ([`diag`]) and listen counters, and sends what the engine needs — connections
//! awaiting a reply (with their holders and keepalive settings), listeners with
//! something queued (with their holders), each namespace's counters.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    event::{ListenQueue, NamespaceListen, WaitingConn},
    kernel::diag::{awaiting, holders, DiagConn, Inspector},
};

/// One inspection's result: its CLOCK_MONOTONIC time, the connections awaiting a
/// reply, the listeners with something in their accept queue, every namespace's
/// listen counters, and how many namespaces could not be inspected so far.
pub struct Pass {
    pub mono_ns: u64,
    pub conns: Vec<WaitingConn>,
    pub queues: Vec<ListenQueue>,
    pub namespaces: Vec<NamespaceListen>,
    pub namespace_errors: u64,
}

/// How often the inspection runs at most.
pub const INSPECT_EVERY: Duration = Duration::from_secs(2);
/// The share of one CPU the dumps may take: a dump that costs more spaces the next
/// pass out (measured: ~2 ms per 1,000 sockets, so 2 s up to ~10k sockets, ~16 s at
/// 100k), up to [`INSPECT_MAX_PAUSE`]. Only the dumps count: the namespace walk of
/// /proc (every 10 s) and owner lookups are occasional, and a slow first walk must
/// not push the next pass out.
const CPU_SHARE: u32 = 100;
/// The longest pause between passes, however many sockets.
const INSPECT_MAX_PAUSE: Duration = Duration::from_secs(30);
/// Connections kept per snapshot at most (the longest waits).
const MAX_PER_SNAPSHOT: usize = 256;
/// Listeners with a queue kept per pass at most (the fullest).
const MAX_QUEUES: usize = 256;

/// The process holding a socket, and its descriptor there.
struct Holder {
    pid: u32,
    fd: i32,
    comm: String,
    cgroup: u64,
}

/// The inspection's state between passes.
struct Inspection {
    proc_root: PathBuf,
    inspector: Inspector,
    owners: HashMap<u64, Holder>,
    after_ms: Option<u64>,
}

impl Inspection {
    /// Holders of the sockets `inodes` not known yet (one walk of /proc), and only
    /// of those: the table holds what this pass reports.
    fn learn_owners(&mut self, inodes: &[u64]) {
        let unknown: HashSet<u64> = inodes
            .iter()
            .copied()
            .filter(|i| !self.owners.contains_key(i))
            .collect();
        for (ino, (pid, fd)) in holders(&self.proc_root, &unknown) {
            let comm = std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("comm"))
                .map(|c| c.trim_end().to_owned())
                .unwrap_or_default();
            let cgroup = crate::kernel::listeners::cgroup_id(
                &self.proc_root,
                Path::new("/sys/fs/cgroup"),
                pid,
            );
            self.owners.insert(
                ino,
                Holder {
                    pid,
                    fd,
                    comm,
                    cgroup,
                },
            );
        }
        let live: HashSet<u64> = inodes.iter().copied().collect();
        self.owners.retain(|ino, _| live.contains(ino));
    }

    fn queue(&self, c: &DiagConn) -> ListenQueue {
        let holder = self.owners.get(&c.inode);
        ListenQueue {
            netns: c.netns,
            local: c.local,
            queued: c.queued,
            backlog: c.backlog,
            pid: holder.map_or(0, |h| h.pid),
            comm: holder.map(|h| h.comm.clone()).unwrap_or_default(),
            cgroup: holder.map_or(0, |h| h.cgroup),
        }
    }

    /// `open`: every (netns, local, remote) of the pass — a peer whose end is open in
    /// the same namespace (loopback, a pod's own sidecar) is right here.
    fn waiting(&self, c: &DiagConn, open: &HashSet<(u32, SocketAddr, SocketAddr)>) -> WaitingConn {
        let holder = self.owners.get(&c.inode);
        // Read each pass: an application may change them on a live socket.
        let keepalive_settings = c
            .keepalive_timer
            .then(|| {
                holder
                    .and_then(|h| crate::kernel::keepalive::of_socket(h.pid, h.fd, c.inode).ok())
                    .or_else(|| self.inspector.namespace_keepalive(c.netns))
            })
            .flatten();
        WaitingConn {
            pid: holder.map_or(0, |h| h.pid),
            comm: holder.map(|h| h.comm.clone()).unwrap_or_default(),
            cgroup: holder.map_or(0, |h| h.cgroup),
            local: c.local,
            remote: c.remote,
            waiting_ms: u64::from(c.last_data_sent_ms),
            last_recv_ms: u64::from(c.last_data_recv_ms),
            keepalive: c.keepalive_timer,
            last_ack_ms: Some(u64::from(c.last_ack_recv_ms)),
            keepalive_settings,
            peer_here: open.contains(&(c.netns, c.remote, c.local)),
        }
    }

    fn pass(&mut self) -> Pass {
        let all = self.inspector.pass();
        let mono_ns = u64::try_from(crate::kernel::time::monotonic_now().as_nanos()).unwrap_or(0);
        let open: HashSet<(u32, SocketAddr, SocketAddr)> =
            all.iter().map(|c| (c.netns, c.local, c.remote)).collect();
        let mut found = self
            .after_ms
            .map_or_else(Vec::new, |after| awaiting(&all, after));
        found.sort_by_key(|c| std::cmp::Reverse(c.last_data_sent_ms));
        found.truncate(MAX_PER_SNAPSHOT);
        let mut listeners: Vec<&DiagConn> = all
            .iter()
            .filter(|c| c.listening && c.queued > 0 && c.inode != 0)
            .collect();
        listeners.sort_by_key(|c| {
            std::cmp::Reverse(u64::from(c.queued) * 1000 / u64::from(c.backlog.max(1)))
        });
        listeners.truncate(MAX_QUEUES);
        let inodes: Vec<u64> = found.iter().chain(&listeners).map(|c| c.inode).collect();
        self.learn_owners(&inodes);
        Pass {
            mono_ns,
            conns: found.iter().map(|c| self.waiting(c, &open)).collect(),
            queues: listeners.iter().map(|c| self.queue(c)).collect(),
            namespaces: self.inspector.listen_counters(),
            namespace_errors: self.inspector.errors,
        }
    }
}

/// Runs the inspection on its own thread every [`INSPECT_EVERY`] (or less often:
/// at most 1 % of a CPU, see `CPU_SHARE`), sending each pass's connections awaiting a
/// reply (none when `after_ms` is `None`) and listeners with the CLOCK_MONOTONIC time
/// of the pass. Owners come from `/proc/*/fd` (looked up only for sockets not seen
/// before). The thread ends when the receiver is dropped.
pub fn spawn(after_ms: Option<u64>) -> io::Result<std::sync::mpsc::Receiver<Pass>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    std::thread::Builder::new()
        .name("conntrace-diag".to_owned())
        .spawn(move || {
            let proc_root = PathBuf::from("/proc");
            let mut inspection = Inspection {
                inspector: Inspector::new(&proc_root),
                proc_root,
                owners: HashMap::new(),
                after_ms,
            };
            // The first pass at once: the namespaces' counters read at the start are
            // the baseline every later drop is counted against.
            let mut pause = Duration::ZERO;
            loop {
                std::thread::sleep(pause);
                let pass = inspection.pass();
                pause = (inspection.inspector.last_dump * CPU_SHARE)
                    .clamp(INSPECT_EVERY, INSPECT_MAX_PAUSE);
                if tx.send(pass).is_err() {
                    return;
                }
            }
        })?;
    Ok(rx)
}
