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
    event::{
        ListenCounters, ListenQueue, Listeners, Process, Record, Reuse, Reuses, Waiting,
        WaitingConn,
    },
    kernel::{
        diag::{awaiting, holders, DiagConn, Inspector},
        time::KernelClock,
    },
};

/// One inspection's records, in this order: the listeners (those with something in
/// their accept queue, and every namespace's counters that moved since the previous
/// pass — all of them the first time: the engine's baseline), when either is not
/// empty; the connections this node opened that were reused after idling, when any
/// were; the connections awaiting a reply (`after_ms` given), even none. Owners are
/// /proc's holders. With how many namespaces could not be inspected so far.
pub struct Pass {
    pub records: Vec<Record>,
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
/// Reuses reported per pass at most (the longest gaps), and the shortest gap worth one.
const MAX_REUSES: usize = 256;
pub const MIN_REUSE_GAP_MS: u64 = 500;
/// Connections whose last activity is remembered between passes, at most.
const MAX_TRACKED: usize = 65_536;
/// Between passes (2 s apart at best, up to 30 s on a node with many sockets), the
/// inspection looks again at this many of the connections this node opened, every
/// [`PROBE_EVERY`], each by its 4-tuple (the kernel's hash lookup, not a dump): a
/// pool that reuses its connections every 1.7 s then shows each reuse's idle gap
/// exactly, where passes seconds apart see several sends and only a lower bound.
/// 128 lookups every 0.5 s: ~1 ms of CPU a second at most.
const MAX_PROBED: usize = 128;
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// A connection of this node: its namespace and its ends.
type ConnKey = (u32, SocketAddr, SocketAddr);

/// What the inspection last saw of a connection: when (monotonic ms), when it last
/// sent, when it was last active (data either way); and its data segments sent.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at_ms: u64,
    sent_ms: u64,
    active_ms: u64,
    data_segs_out: u32,
}

impl Seen {
    /// From the kernel's answer: its ages count back from when it arrived, not from
    /// when the pass that asked began or ended.
    fn of(c: &DiagConn) -> Self {
        let at_ms = c.seen_ms;
        Self {
            at_ms,
            sent_ms: at_ms.saturating_sub(u64::from(c.last_data_sent_ms)),
            active_ms: at_ms
                .saturating_sub(u64::from(c.last_data_sent_ms.min(c.last_data_recv_ms))),
            data_segs_out: c.data_segs_out,
        }
    }
}

/// A connection's reuse since it was last seen, if it idled at least
/// [`MIN_REUSE_GAP_MS`] before sending again: (gap, exact). Times are monotonic ms;
/// the kernel's are in ticks, so a send within a tick of the previous one is no reuse.
fn reuse_gap(before: Seen, now: Seen) -> Option<(u64, bool)> {
    // No data segment since: no reuse, whatever the ages say (each is rounded to a
    // tick, and two looks' clocks are read apart from the kernel's).
    if now.data_segs_out == before.data_segs_out || now.sent_ms <= before.sent_ms + 4 {
        return None;
    }
    // One data segment since: that send ended the idle time. More: the first of them
    // came after the previous look, whose idle time is then a lower bound.
    let exact = now.data_segs_out == before.data_segs_out.wrapping_add(1);
    let gap = if exact {
        now.sent_ms.saturating_sub(before.active_ms)
    } else {
        before.at_ms.saturating_sub(before.active_ms)
    };
    (gap >= MIN_REUSE_GAP_MS).then_some((gap, exact))
}

/// The process holding a socket, and its descriptor there.
struct Holder {
    process: Process,
    fd: i32,
}

/// The inspection's state between passes.
pub struct Inspection {
    proc_root: PathBuf,
    inspector: Inspector,
    owners: HashMap<u64, Holder>,
    after_ms: Option<u64>,
    /// Client connections as the inspection last saw them.
    seen: HashMap<ConnKey, Seen>,
    /// The connections looked at again between passes ([`MAX_PROBED`]).
    probed: Vec<ConnKey>,
    clock: KernelClock,
    /// Each namespace's listen counters as last sent, and the previous pass's time.
    listen_counters: HashMap<u32, ListenCounters>,
    last_listen_pass: Option<u64>,
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
                    process: Process { pid, comm, cgroup },
                    fd,
                },
            );
        }
    }

    /// Reuses of this node's connections since the previous pass; remembers this
    /// pass's view for the next.
    fn reuses<'a>(&mut self, all: &'a [DiagConn]) -> Vec<(&'a DiagConn, u64, bool)> {
        let listening: HashSet<(u32, u16)> = all
            .iter()
            .filter(|c| c.listening)
            .map(|c| (c.netns, c.local.port()))
            .collect();
        let mut seen = HashMap::with_capacity(self.seen.len().min(MAX_TRACKED));
        let mut found = Vec::new();
        // Probed until the next pass: first the connections that idled, shortest idle
        // first (the likeliest to be reused within a server's keep-alive timeout),
        // then the busy ones.
        let mut probe: Vec<((bool, u32), ConnKey)> = Vec::new();
        for c in all.iter().filter(|c| {
            !c.listening
                && c.inode != 0
                && c.bytes_acked > 1
                && !listening.contains(&(c.netns, c.local.port()))
        }) {
            let now = Seen::of(c);
            let key = (c.netns, c.local, c.remote);
            let mut reused = false;
            if let Some(before) = self.seen.get(&key) {
                if let Some((gap, exact)) = reuse_gap(*before, now) {
                    found.push((c, gap, exact));
                    reused = true;
                }
            }
            if seen.len() < MAX_TRACKED {
                seen.insert(key, now);
                let idle = c.last_data_sent_ms.min(c.last_data_recv_ms);
                let idled = reused || u64::from(idle) >= MIN_REUSE_GAP_MS;
                probe.push(((!idled, idle), key));
            }
        }
        self.seen = seen;
        if probe.len() > MAX_PROBED {
            probe.select_nth_unstable_by_key(MAX_PROBED, |(rank, _)| *rank);
            probe.truncate(MAX_PROBED);
        }
        self.probed = probe.into_iter().map(|(_, key)| key).collect();
        found.sort_by_key(|(_, gap, _)| std::cmp::Reverse(*gap));
        found.truncate(MAX_REUSES);
        found
    }

    fn queue(&self, c: &DiagConn) -> ListenQueue {
        let holder = self.owners.get(&c.inode);
        ListenQueue {
            netns: c.netns,
            local: c.local,
            queued: c.queued,
            backlog: c.backlog,
            process: holder.map(|h| h.process.clone()).unwrap_or_default(),
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
                    .and_then(|h| {
                        crate::kernel::keepalive::of_socket(h.process.pid, h.fd, c.inode).ok()
                    })
                    .or_else(|| self.inspector.namespace_keepalive(c.netns))
            })
            .flatten();
        WaitingConn {
            process: holder.map(|h| h.process.clone()).unwrap_or_default(),
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

    /// An inspection of `/proc`'s processes' namespaces; `after_ms`: report waits
    /// from this long (`None`: none).
    pub fn new(after_ms: Option<u64>, clock: KernelClock) -> Self {
        let proc_root = PathBuf::from("/proc");
        Self {
            inspector: Inspector::new(&proc_root),
            proc_root,
            owners: HashMap::new(),
            after_ms,
            seen: HashMap::new(),
            probed: Vec::new(),
            clock,
            listen_counters: HashMap::new(),
            last_listen_pass: None,
        }
    }

    /// A look between passes at the connections [`MAX_PROBED`] names: their reuses
    /// since they were last seen, as a pass with one [`Reuses`] record; `None` when
    /// none was reused. A connection gone (or no longer established) is dropped.
    pub fn probe(&mut self) -> Option<Pass> {
        if self.probed.is_empty() {
            return None;
        }
        let mono_ns = u64::try_from(crate::kernel::time::monotonic_now().as_nanos()).unwrap_or(0);
        let mut reused = Vec::new();
        let mut probed = std::mem::take(&mut self.probed);
        probed.retain(|&(netns, local, remote)| {
            let Some(Ok(Some(c))) = self.inspector.query(netns, local, remote) else {
                return false;
            };
            let now = Seen::of(&c);
            if let Some(before) = self.seen.get_mut(&(netns, local, remote)) {
                if let Some((gap, exact)) = reuse_gap(*before, now) {
                    reused.push((c, gap, exact));
                }
                *before = now;
            }
            true
        });
        self.probed = probed;
        if reused.is_empty() {
            return None;
        }
        let inodes: Vec<u64> = reused.iter().map(|(c, _, _)| c.inode).collect();
        self.learn_owners(&inodes);
        Some(Pass {
            records: vec![Record::Reuses(Reuses {
                time: self.clock.wall(mono_ns),
                mono_ns,
                reuses: self.reuse_records(&reused),
            })],
            namespace_errors: self.inspector.errors,
        })
    }

    fn reuse_records(&self, reused: &[(DiagConn, u64, bool)]) -> Vec<Reuse> {
        reused
            .iter()
            .map(|(c, gap, exact)| {
                let holder = self.owners.get(&c.inode);
                Reuse {
                    process: holder.map(|h| h.process.clone()).unwrap_or_default(),
                    local: c.local,
                    remote: c.remote,
                    gap_ms: *gap,
                    exact: *exact,
                }
            })
            .collect()
    }

    /// The listeners' record of a pass, if something queued or a counter moved.
    fn listeners(&mut self, mono_ns: u64, queues: Vec<ListenQueue>) -> Option<Record> {
        let moved: Vec<_> = self
            .inspector
            .listen_counters()
            .into_iter()
            .filter(|n| n.new || self.listen_counters.get(&n.netns) != Some(&n.counters))
            .collect();
        if self.listen_counters.len() > 65_536 {
            self.listen_counters.clear();
        }
        for n in &moved {
            self.listen_counters.insert(n.netns, n.counters);
        }
        let interval_ms = self
            .last_listen_pass
            .replace(mono_ns)
            .map_or(0, |before| mono_ns.saturating_sub(before) / 1_000_000);
        (!queues.is_empty() || !moved.is_empty()).then(|| {
            Record::Listeners(Listeners {
                time: self.clock.wall(mono_ns),
                mono_ns,
                interval_ms,
                queues,
                namespaces: moved,
            })
        })
    }

    /// One pass: every namespace dumped, waits, reuses, queues and counters.
    pub fn pass(&mut self) -> Pass {
        let all = self.inspector.pass();
        let mono_ns = u64::try_from(crate::kernel::time::monotonic_now().as_nanos()).unwrap_or(0);
        let reused: Vec<(DiagConn, u64, bool)> = self
            .reuses(&all)
            .into_iter()
            .map(|(c, gap, exact)| (c.clone(), gap, exact))
            .collect();
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
        let inodes: Vec<u64> = found
            .iter()
            .chain(&listeners)
            .copied()
            .chain(reused.iter().map(|(c, _, _)| c))
            .map(|c| c.inode)
            .collect();
        self.learn_owners(&inodes);
        // Owners are kept while their socket is open (a pool's connections are
        // reused again and again).
        let open_inodes: HashSet<u64> = all.iter().map(|c| c.inode).collect();
        self.owners.retain(|ino, _| open_inodes.contains(ino));
        let time = self.clock.wall(mono_ns);
        let conns = found.iter().map(|c| self.waiting(c, &open)).collect();
        let reused_now = self.reuse_records(&reused);
        let queues = listeners.iter().map(|c| self.queue(c)).collect();
        let mut records: Vec<Record> = self.listeners(mono_ns, queues).into_iter().collect();
        if !reused_now.is_empty() {
            records.push(Record::Reuses(Reuses {
                time,
                mono_ns,
                reuses: reused_now,
            }));
        }
        if let Some(after_ms) = self.after_ms {
            records.push(Record::Waiting(Waiting {
                time,
                mono_ns,
                after_ms,
                conns,
            }));
        }
        Pass {
            records,
            namespace_errors: self.inspector.errors,
        }
    }
}

/// Runs the inspection on its own thread every [`INSPECT_EVERY`] (or less often:
/// at most 1 % of a CPU, see `CPU_SHARE`), sending each pass's connections awaiting a
/// reply (none when `after_ms` is `None`) and listeners with the CLOCK_MONOTONIC time
/// of the pass. Owners come from `/proc/*/fd` (looked up only for sockets not seen
/// before). The thread ends when the receiver is dropped.
pub fn spawn(
    after_ms: Option<u64>,
    clock: KernelClock,
) -> io::Result<std::sync::mpsc::Receiver<Pass>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    std::thread::Builder::new()
        .name("conntrace-diag".to_owned())
        .spawn(move || {
            let mut inspection = Inspection::new(after_ms, clock);
            // The first pass at once: the namespaces' counters read at the start are
            // the baseline every later drop is counted against.
            loop {
                let pass = inspection.pass();
                let pause = (inspection.inspector.last_dump * CPU_SHARE)
                    .clamp(INSPECT_EVERY, INSPECT_MAX_PAUSE);
                if tx.send(pass).is_err() {
                    return;
                }
                // Looks at the pool connections between passes.
                let next = std::time::Instant::now() + pause;
                while let Some(left) = next.checked_duration_since(std::time::Instant::now()) {
                    std::thread::sleep(left.min(PROBE_EVERY));
                    if left <= PROBE_EVERY {
                        break;
                    }
                    if let Some(p) = inspection.probe() {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                }
            }
        })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    fn seen(at_ms: u64, sent_ms: u64, active_ms: u64, segs: u32) -> Seen {
        Seen {
            at_ms,
            sent_ms,
            active_ms,
            data_segs_out: segs,
        }
    }

    #[test]
    fn one_send_since_the_last_look_is_an_exact_gap_more_a_lower_bound() {
        let before = seen(10_000, 9_000, 9_100, 5);
        assert_eq!(
            reuse_gap(before, seen(12_000, 11_700, 11_710, 6)),
            Some((2_600, true))
        );
        assert_eq!(
            reuse_gap(before, seen(12_000, 11_700, 11_710, 8)),
            Some((900, false))
        );
        // No send since (within a tick), or a short gap: no reuse.
        assert_eq!(reuse_gap(before, seen(12_000, 9_004, 9_100, 5)), None);
        assert_eq!(reuse_gap(before, seen(12_000, 9_400, 9_400, 6)), None);
        // A look whose ages count back from a later instant than they were taken at
        // (a pass that read the clock after seconds of dumps; CI's 6.12 guest then
        // saw an idle pool "reused" after 3.41 s): no data segment, no reuse.
        assert_eq!(reuse_gap(before, seen(12_000, 9_300, 9_300, 5)), None);
    }

    /// A pool connection reused between passes is seen by the probe, its gap exact.
    #[test]
    fn a_probe_between_passes_sees_a_reuse_exactly() {
        let clock = KernelClock::detect().expect("clock");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 4];
        let mut request = |client: &mut std::net::TcpStream| {
            client.write_all(b"ping").expect("write");
            server.read_exact(&mut buf).expect("read");
            server.write_all(b"pong").expect("answer");
            client.read_exact(&mut buf).expect("read the answer");
        };
        request(&mut client);
        let mut inspection = Inspection::new(None, clock);
        // Idle at the pass: among the connections probed first.
        std::thread::sleep(Duration::from_millis(600));
        let _ = inspection.pass();
        let key = (
            client.local_addr().expect("local"),
            client.peer_addr().expect("peer"),
        );
        assert!(inspection.probed.iter().any(|k| (k.1, k.2) == key));
        std::thread::sleep(Duration::from_millis(200));
        request(&mut client);
        let pass = inspection.probe().expect("a reuse");
        let Some(Record::Reuses(r)) = pass.records.first() else {
            panic!("{:?}", pass.records);
        };
        let mine = r
            .reuses
            .iter()
            .find(|r| r.local == key.0)
            .expect("this connection's reuse");
        assert!(mine.exact, "{mine:?}");
        assert!((750..1500).contains(&mine.gap_ms), "{mine:?}");
        assert_eq!(mine.process.pid, std::process::id(), "{mine:?}");
        // Nothing sent since: no reuse on the next look.
        assert!(inspection
            .probe()
            .is_none_or(|p| !format!("{:?}", p.records).contains(&key.0.to_string())));
    }
}
