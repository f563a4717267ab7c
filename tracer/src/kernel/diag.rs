//! Periodic inspection of open connections through `sock_diag` (`NETLINK_SOCK_DIAG`,
//! `INET_DIAG` with `tcp_info`), the interface `ss -ti` uses: the kernel's own
//! per-socket timestamps and counters, read in one dump per network namespace, with
//! no program running per packet or per request.
//!
//! A request that was delivered and acknowledged just before its peer vanished
//! raises no kernel event at all (nothing to retransmit, no reset, no state change):
//! only a look at the socket shows that we spoke last, long ago, and heard nothing
//! since. That look is this module; what it means is the engine's `awaiting` detector.
//!
//! Network namespaces are found in `/proc/*/ns/net` (refreshed every
//! [`NETNS_REFRESH`]); one netlink socket is opened inside each (by a short-lived thread
//! that enters it), so pods' connections are seen from the host.

use crate::event::KeepaliveSettings;
use std::{
    collections::{HashMap, HashSet},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

/// How often the set of network namespaces is looked for again.
pub const NETNS_REFRESH: Duration = Duration::from_secs(10);
/// Namespaces inspected at most.
const MAX_NAMESPACES: usize = 4096;

/// One established TCP connection as `sock_diag` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagConn {
    /// Inode number of the connection's network namespace.
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Socket inode (0 for a socket no file refers to any more).
    pub inode: u64,
    /// A listening socket (its local port is a service port of the namespace).
    pub listening: bool,
    /// The socket's keepalive timer is armed (SO_KEEPALIVE on, nothing outstanding).
    pub keepalive_timer: bool,
    /// Milliseconds since we last sent data / received data / received an ACK.
    pub last_data_sent_ms: u32,
    pub last_data_recv_ms: u32,
    pub last_ack_recv_ms: u32,
    /// Segments sent and not acknowledged.
    pub unacked: u32,
    /// Smoothed RTT, microseconds.
    pub rtt_us: u32,
    /// Bytes of ours the peer acknowledged (+1 for the SYN), bytes received from it.
    pub bytes_acked: u64,
    pub bytes_received: u64,
    /// Segments with data sent (`tcpi_data_segs_out`, Linux 4.6; 0 where absent).
    pub data_segs_out: u32,
    /// A listener's accept queue: connections waiting for accept() (`idiag_rqueue`,
    /// `sk_ack_backlog`) and its backlog (`idiag_wqueue`, `sk_max_ack_backlog`).
    pub queued: u32,
    pub backlog: u32,
    /// When the kernel answered (CLOCK_MONOTONIC ms, read as its batch of the dump
    /// arrived): the instant the `last_*_ms` ages count back from. A pass dumps every
    /// namespace one after another, seconds in all on a busy node or a slow guest.
    pub seen_ms: u64,
}

impl DiagConn {
    /// We spoke last, were acknowledged, and have heard nothing since: the peer owes
    /// us a reply. (An idle pooled connection has the peer's answer as its last data.)
    ///
    /// The times are in clock ticks (1-4 ms), and a worker loop sends its next request
    /// in the same tick as the previous answer arrived. Then the kernel's ACK clock
    /// decides: `rcv_tstamp` (`last_ack_recv`) moves with every acceptable segment from
    /// the peer, its data included, so an answer leaves it equal to the last data's
    /// time; a segment newer than the peer's last data with nothing outstanding
    /// on its side is a pure ACK of data we sent after that data — our request,
    /// acknowledged and unanswered. (The peer's keepalive probes are out of window
    /// and never reach `tcp_ack`.) Still read as answered, never a false alarm: the
    /// same tick for all three (the peer's ACK of the request came within the tick of
    /// its previous answer: quick ACKs on a sub-tick path).
    pub fn awaiting_reply(&self) -> bool {
        let same_tick = self.last_data_sent_ms == self.last_data_recv_ms;
        self.unacked == 0
            && self.bytes_acked > 1
            && (self.last_data_sent_ms < self.last_data_recv_ms
                || (same_tick
                    && (self.bytes_received == 0
                        || self.last_ack_recv_ms < self.last_data_recv_ms)))
    }
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const NLMSG_HDRLEN: usize = 16;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const INET_DIAG_INFO: u16 = 2;
const TCP_ESTABLISHED: u32 = 1;
const TCP_LISTEN: u32 = 10;
/// `idiag_timer` of a socket whose keepalive timer is pending.
const TIMER_KEEPALIVE: u8 = 2;
/// `struct inet_diag_msg`: 72 bytes.
const DIAG_MSG_LEN: usize = 72;

/// `inet_diag_req_v2` for the TCP sockets of `family` in `states` (a bit per state),
/// with `tcp_info`.
fn request(family: u8, states: u32) -> [u8; NLMSG_HDRLEN + 56] {
    let mut m = [0u8; NLMSG_HDRLEN + 56];
    let len = u32::try_from(m.len()).unwrap_or(0);
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    let r = &mut m[NLMSG_HDRLEN..];
    r[0] = family;
    r[1] = 6; // IPPROTO_TCP
    r[2] = 1 << (INET_DIAG_INFO - 1);
    r[4..8].copy_from_slice(&states.to_ne_bytes());
    m
}

/// Established and listening sockets: what a pass inspects.
const OPEN_STATES: u32 = (1 << TCP_ESTABLISHED) | (1 << TCP_LISTEN);

/// `inet_diag_req_v2` for the one socket with this 4-tuple (the kernel's hash lookup,
/// no dump), with `tcp_info`; `seq` to match its answer.
fn request_one(local: SocketAddr, remote: SocketAddr, seq: u32) -> [u8; NLMSG_HDRLEN + 56] {
    let mut m = request(
        if local.is_ipv4() { AF_INET } else { AF_INET6 },
        OPEN_STATES,
    );
    m[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    // `struct inet_diag_sockid`: ports and addresses in network order, the local end
    // first; any interface; no cookie (INET_DIAG_NOCOOKIE).
    let id = &mut m[NLMSG_HDRLEN + 8..];
    id[0..2].copy_from_slice(&local.port().to_be_bytes());
    id[2..4].copy_from_slice(&remote.port().to_be_bytes());
    for (at, ip) in [(4, local.ip()), (20, remote.ip())] {
        match ip {
            std::net::IpAddr::V4(a) => id[at..at + 4].copy_from_slice(&a.octets()),
            std::net::IpAddr::V6(a) => id[at..at + 16].copy_from_slice(&a.octets()),
        }
    }
    id[40..48].fill(0xff);
    m
}

/// The established connection with this 4-tuple in the namespace of `fd`; `None`
/// when there is none (closed, or in another state).
pub fn query_one(
    fd: &OwnedFd,
    netns: u32,
    local: SocketAddr,
    remote: SocketAddr,
) -> io::Result<Option<DiagConn>> {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let req = request_one(local, remote, seq);
    // SAFETY: req is valid for its length.
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    // The answer is one message (or an error); one left over from an earlier request
    // whose wait timed out has another sequence number and is skipped.
    for _ in 0..4 {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        let arrived = now_ms();
        let len = u32_at(&buf, 0).map_or(0, |l| l as usize);
        if n < NLMSG_HDRLEN || len < NLMSG_HDRLEN || len > n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "short netlink message",
            ));
        }
        if u32_at(&buf, 8) != Some(seq) {
            continue;
        }
        return match u16_at(&buf, 4) {
            Some(SOCK_DIAG_BY_FAMILY) => {
                let payload = &buf[NLMSG_HDRLEN..len];
                Ok(parse_msg(netns, payload)
                    .filter(|_| payload.get(1).map(|&s| u32::from(s)) == Some(TCP_ESTABLISHED))
                    .map(|c| DiagConn {
                        seen_ms: arrived,
                        ..c
                    }))
            }
            Some(NLMSG_ERROR) => match u32_at(&buf, NLMSG_HDRLEN).map_or(0, u32::cast_signed) {
                e if e == -libc::ENOENT => Ok(None),
                e => Err(io::Error::from_raw_os_error(-e)),
            },
            _ => Ok(None),
        };
    }
    Ok(None)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn addr(family: u8, raw: &[u8], port_be: [u8; 2]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes(port_be);
    let ip = if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(raw.get(..16)?).ok()?);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses one `inet_diag_msg` with its attributes; `None` when malformed.
pub fn parse_msg(netns: u32, b: &[u8]) -> Option<DiagConn> {
    if b.len() < DIAG_MSG_LEN {
        return None;
    }
    let family = b[0];
    let timer = b[2];
    let id = &b[4..52];
    let local = addr(family, &id[4..20], [id[0], id[1]])?;
    let remote = addr(family, &id[20..36], [id[2], id[3]])?;
    let inode = u64::from(u32_at(b, 68)?);
    let (queued, backlog) = (u32_at(b, 56)?, u32_at(b, 60)?);
    let mut conn = DiagConn {
        netns,
        local,
        remote,
        inode,
        listening: u32::from(b[1]) == TCP_LISTEN,
        keepalive_timer: timer == TIMER_KEEPALIVE,
        last_data_sent_ms: 0,
        last_data_recv_ms: 0,
        last_ack_recv_ms: 0,
        unacked: 0,
        rtt_us: 0,
        bytes_acked: 0,
        bytes_received: 0,
        data_segs_out: 0,
        queued,
        backlog,
        seen_ms: 0,
    };
    let mut at = DIAG_MSG_LEN;
    let mut info = false;
    while at + 4 <= b.len() {
        let len = usize::from(u16_at(b, at)?);
        let kind = u16_at(b, at + 2)?;
        if len < 4 || at + len > b.len() {
            break;
        }
        if kind == INET_DIAG_INFO {
            let t = &b[at + 4..at + len];
            conn.unacked = u32_at(t, 24)?;
            conn.last_data_sent_ms = u32_at(t, 44)?;
            conn.last_data_recv_ms = u32_at(t, 52)?;
            conn.last_ack_recv_ms = u32_at(t, 56)?;
            conn.rtt_us = u32_at(t, 68)?;
            conn.bytes_acked = u64_at(t, 120)?;
            conn.bytes_received = u64_at(t, 128)?;
            conn.data_segs_out = u32_at(t, 156).unwrap_or(0);
            info = true;
        }
        at += (len + 3) & !3;
    }
    (info || conn.listening).then_some(conn)
}

/// Monotonic milliseconds now.
fn now_ms() -> u64 {
    u64::try_from(crate::kernel::time::monotonic_now().as_millis()).unwrap_or(0)
}

/// Reads a whole dump answer from `fd`, calling `each` per message payload with the
/// time its batch arrived ([`now_ms`]).
fn read_dump(fd: &OwnedFd, mut each: impl FnMut(&[u8], u64)) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        if n == 0 {
            return Ok(());
        }
        let arrived = now_ms();
        let mut at = 0;
        while at + NLMSG_HDRLEN <= n {
            let len = u32_at(&buf, at).map_or(0, |l| l as usize);
            let kind = u16_at(&buf, at + 4).unwrap_or(NLMSG_DONE);
            if len < NLMSG_HDRLEN || at + len > n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "short netlink message",
                ));
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = u32_at(&buf, at + NLMSG_HDRLEN).map_or(0, u32::cast_signed);
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                SOCK_DIAG_BY_FAMILY => each(&buf[at + NLMSG_HDRLEN..at + len], arrived),
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}

/// A netlink socket of `protocol` in the calling thread's network namespace, whose
/// reads give up after `timeout`.
pub fn netlink_socket(protocol: i32, timeout: Duration) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().try_into().unwrap_or(2),
        tv_usec: timeout.subsec_micros().into(),
    };
    // SAFETY: a valid timeval for SO_RCVTIMEO.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            u32::try_from(std::mem::size_of::<libc::timeval>()).unwrap_or(16),
        );
    }
    Ok(fd)
}

/// A `NETLINK_SOCK_DIAG` socket in the calling thread's network namespace.
fn diag_socket() -> io::Result<OwnedFd> {
    netlink_socket(libc::NETLINK_SOCK_DIAG, Duration::from_secs(2))
}

/// Every established and listening TCP socket of one namespace's netlink socket.
pub fn dump(fd: &OwnedFd, netns: u32, out: &mut Vec<DiagConn>) -> io::Result<()> {
    dump_states(fd, netns, OPEN_STATES, out)
}

/// The listening TCP sockets of the network namespace `path` (`/proc/PID/ns/net`,
/// inode `netns`). Only the listening hash is walked: the kernel skips its table of
/// connections, time-wait sockets included, which a read of `/proc/net/tcp` formats
/// one by one (~2 µs each: 130 ms more at start with 70,000 of them).
pub fn listening_in(path: &Path, netns: u32) -> io::Result<Vec<DiagConn>> {
    in_namespace(path, || {
        let fd = diag_socket()?;
        let mut out = Vec::new();
        dump_states(&fd, netns, 1 << TCP_LISTEN, &mut out)?;
        Ok(out)
    })
}

/// The TCP sockets in `states` of one namespace's netlink socket.
fn dump_states(fd: &OwnedFd, netns: u32, states: u32, out: &mut Vec<DiagConn>) -> io::Result<()> {
    for family in [AF_INET, AF_INET6] {
        let req = request(family, states);
        // SAFETY: req is valid for its length.
        let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        read_dump(fd, |payload, arrived| {
            out.extend(parse_msg(netns, payload).map(|c| DiagConn {
                seen_ms: arrived,
                ..c
            }));
        })?;
    }
    Ok(())
}

/// Runs `make` on a thread inside the network namespace `path` (`/proc/PID/ns/net`):
/// setns affects only the calling thread, and a socket keeps the namespace it was
/// made in.
pub fn in_namespace<T: Send>(
    path: &Path,
    make: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let ns = std::fs::File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only, with a namespace fd we hold.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            make()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}

/// A diag socket inside the network namespace `path`, and the namespace's keepalive
/// defaults (its sysctls are the opener's namespace's).
fn socket_in(path: &Path) -> io::Result<(OwnedFd, Namespace)> {
    in_namespace(path, || {
        let ns = Namespace {
            new: false,
            keepalive: crate::kernel::keepalive::of_namespace(),
            netstat: crate::kernel::netstat::Reread::open("/proc/thread-self/net/netstat").ok(),
            somaxconn: crate::kernel::netstat::somaxconn().unwrap_or(0),
        };
        Ok((diag_socket()?, ns))
    })
}

/// The calling thread's CPU time (user and system).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// What the inspector keeps of a network namespace besides its diag socket: its
/// keepalive defaults, its `netstat` file (opened inside it) and `somaxconn`.
struct Namespace {
    /// Found after the first pass, not yet reported.
    new: bool,
    keepalive: Option<KeepaliveSettings>,
    netstat: Option<crate::kernel::netstat::Reread>,
    somaxconn: u32,
}

/// The inspector: one diag socket per network namespace, refreshed periodically.
pub struct Inspector {
    proc_root: std::path::PathBuf,
    sockets: HashMap<u32, OwnedFd>,
    /// Each namespace's keepalive defaults.
    namespaces: HashMap<u32, Namespace>,
    refreshed: Option<Instant>,
    /// Passes made (namespaces found after the first are new).
    passes: u64,
    /// Namespaces of processes at the last walk of /proc.
    seen_processes: HashSet<u32>,
    /// Namespaces whose socket could not be made or dumped (counted, not fatal).
    pub errors: u64,
    /// The CPU time the last pass's dumps took (this thread's, kernel work included:
    /// wall time would count the waits of a loaded node as our cost).
    pub last_dump: Duration,
}

impl Inspector {
    pub fn new(proc_root: &Path) -> Self {
        Self {
            proc_root: proc_root.to_owned(),
            sockets: HashMap::new(),
            namespaces: HashMap::new(),
            refreshed: None,
            passes: 0,
            seen_processes: HashSet::new(),
            errors: 0,
            last_dump: Duration::ZERO,
        }
    }

    /// Looks for namespaces: processes' every [`NETNS_REFRESH`] (a walk of /proc),
    /// named ones (`/run/netns`, a handful of entries) on every pass. Namespaces made
    /// with `ip netns add` may hold no process, only threads that entered them (which
    /// /proc/PID/ns/net does not show).
    fn refresh(&mut self) {
        let walk = self.refreshed.is_none_or(|t| t.elapsed() >= NETNS_REFRESH);
        let mut paths: Vec<std::path::PathBuf> = Vec::new();
        if walk {
            self.refreshed = Some(Instant::now());
            self.seen_processes.clear();
            paths.extend(
                std::fs::read_dir(&self.proc_root)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_str()
                            .is_some_and(|n| n.parse::<u32>().is_ok())
                    })
                    .map(|e| e.path().join("ns/net")),
            );
        }
        let from_proc = paths.len();
        paths.extend(
            std::fs::read_dir("/run/netns")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path()),
        );
        let mut present = HashSet::new();
        for (i, path) in paths.into_iter().enumerate() {
            let Some(inum) = std::fs::metadata(&path)
                .ok()
                .and_then(|m| u32::try_from(std::os::unix::fs::MetadataExt::ino(&m)).ok())
            else {
                continue;
            };
            if i < from_proc {
                self.seen_processes.insert(inum);
            }
            if !present.insert(inum)
                || self.sockets.contains_key(&inum)
                || self.sockets.len() >= MAX_NAMESPACES
            {
                continue;
            }
            match socket_in(&path) {
                Ok((fd, mut ns)) => {
                    self.sockets.insert(inum, fd);
                    ns.new = self.passes > 0;
                    self.namespaces.insert(inum, ns);
                }
                Err(_) => self.errors += 1,
            }
        }
        // A namespace stays while a process or a name holds it.
        let seen = &self.seen_processes;
        self.sockets
            .retain(|inum, _| present.contains(inum) || seen.contains(inum));
        let sockets = &self.sockets;
        self.namespaces.retain(|inum, _| sockets.contains_key(inum));
    }

    /// Each namespace's listen counters now, with its `somaxconn`.
    /// Their CPU time joins the pass's (`last_dump`): ~37 µs a namespace (the kernel
    /// formats the whole file), measured with `cargo run --release --example
    /// listen_cost`.
    pub fn listen_counters(&mut self) -> Vec<crate::event::NamespaceListen> {
        let started = thread_cpu_time();
        let mut out = Vec::new();
        for (&netns, ns) in &mut self.namespaces {
            let Some(file) = ns.netstat.as_mut() else {
                continue;
            };
            if let Some(counters) = file
                .read()
                .ok()
                .and_then(crate::kernel::netstat::parse_tcpext)
            {
                out.push(crate::event::NamespaceListen {
                    netns,
                    counters,
                    somaxconn: ns.somaxconn,
                    new: std::mem::take(&mut ns.new),
                });
            }
        }
        out.sort_by_key(|n| n.netns);
        self.last_dump += thread_cpu_time().saturating_sub(started);
        out
    }

    /// The keepalive defaults of network namespace `netns`, when it could be entered.
    pub fn namespace_keepalive(&self, netns: u32) -> Option<KeepaliveSettings> {
        self.namespaces.get(&netns).and_then(|n| n.keepalive)
    }

    /// One pass: every established connection of every namespace.
    pub fn pass(&mut self) -> Vec<DiagConn> {
        self.refresh();
        self.passes += 1;
        let started = thread_cpu_time();
        let mut out = Vec::new();
        let mut failed = Vec::new();
        for (&netns, fd) in &self.sockets {
            if dump(fd, netns, &mut out).is_err() {
                failed.push(netns);
            }
        }
        self.last_dump = thread_cpu_time().saturating_sub(started);
        self.errors += failed.len() as u64;
        for netns in failed {
            self.sockets.remove(&netns);
        }
        out
    }

    /// [`query_one`] in the namespace `netns`; `None` when that namespace is not
    /// inspected (any more).
    pub fn query(
        &self,
        netns: u32,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Option<io::Result<Option<DiagConn>>> {
        let fd = self.sockets.get(&netns)?;
        Some(query_one(fd, netns, local, remote))
    }

    pub fn namespaces(&self) -> usize {
        self.sockets.len()
    }
}

/// Connections this node opened (their local port is no listening port of their
/// namespace) that await a reply for at least `after_ms`.
pub fn awaiting(all: &[DiagConn], after_ms: u64) -> Vec<&DiagConn> {
    let listening: HashSet<(u32, u16)> = all
        .iter()
        .filter(|c| c.listening)
        .map(|c| (c.netns, c.local.port()))
        .collect();
    all.iter()
        .filter(|c| {
            !c.listening
                && c.inode != 0
                && c.awaiting_reply()
                && u64::from(c.last_data_sent_ms) >= after_ms
                && !listening.contains(&(c.netns, c.local.port()))
        })
        .collect()
}

/// Socket inode -> the lowest pid holding it and its descriptor number there, for the
/// inodes asked about; one walk of `/proc/*/fd`. Bounded by the processes on the node.
pub fn holders<S: std::hash::BuildHasher>(
    proc_root: &Path,
    inodes: &HashSet<u64, S>,
) -> HashMap<u64, (u32, i32)> {
    let mut found = HashMap::new();
    if inodes.is_empty() {
        return found;
    }
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return found;
    };
    let mut pids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(ino) = std::fs::read_link(fd.path()).ok().and_then(|l| {
                l.to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            }) else {
                continue;
            };
            if inodes.contains(&ino) {
                let Some(n) = fd.file_name().to_str().and_then(|n| n.parse().ok()) else {
                    continue;
                };
                found.entry(ino).or_insert((pid, n));
            }
        }
        if found.len() == inodes.len() {
            break;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as the kernel builds it: inet_diag_msg + an INET_DIAG_INFO attribute.
    fn message(timer: u8, unacked: u32, sent: u32, recv: u32) -> Vec<u8> {
        let mut b = vec![0u8; DIAG_MSG_LEN];
        b[0] = AF_INET;
        b[1] = 1;
        b[2] = timer;
        b[4..6].copy_from_slice(&40000u16.to_be_bytes());
        b[6..8].copy_from_slice(&5432u16.to_be_bytes());
        b[8..12].copy_from_slice(&[10, 0, 0, 1]);
        b[24..28].copy_from_slice(&[10, 0, 0, 7]);
        b[68..72].copy_from_slice(&777u32.to_ne_bytes());
        let mut info = vec![0u8; 160];
        info[120..128].copy_from_slice(&100u64.to_ne_bytes());
        info[24..28].copy_from_slice(&unacked.to_ne_bytes());
        info[44..48].copy_from_slice(&sent.to_ne_bytes());
        info[52..56].copy_from_slice(&recv.to_ne_bytes());
        info[56..60].copy_from_slice(&sent.to_ne_bytes());
        info[68..72].copy_from_slice(&250u32.to_ne_bytes());
        let len = u16::try_from(info.len() + 4).unwrap_or(0);
        b.extend_from_slice(&len.to_ne_bytes());
        b.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        b.extend_from_slice(&info);
        b
    }

    #[test]
    fn a_diag_message_gives_addresses_inode_and_times() {
        let c = parse_msg(9, &message(0, 0, 40_000, 41_000)).expect("parsed");
        assert_eq!(c.local.to_string(), "10.0.0.1:40000");
        assert_eq!(c.remote.to_string(), "10.0.0.7:5432");
        assert_eq!((c.netns, c.inode, c.rtt_us), (9, 777, 250));
        assert!(!c.keepalive_timer);
        assert!(c.awaiting_reply(), "we sent last, acknowledged");
        let pooled = parse_msg(9, &message(2, 0, 41_000, 40_000)).expect("parsed");
        assert!(pooled.keepalive_timer);
        assert!(!pooled.awaiting_reply(), "the peer answered last");
        let in_flight = parse_msg(9, &message(0, 2, 40_000, 41_000)).expect("parsed");
        assert!(
            !in_flight.awaiting_reply(),
            "unacknowledged data: a stall, not a wait"
        );
        let mut same_tick = parse_msg(9, &message(0, 0, 40_000, 40_000)).expect("parsed");
        assert!(same_tick.awaiting_reply(), "sent, and never heard any data");
        same_tick.bytes_received = 10;
        assert!(
            !same_tick.awaiting_reply(),
            "an answer in the same tick reads as answered"
        );
        // psql through pgbouncer, as `ss -ti` showed it: lastsnd:18992 lastrcv:18992
        // lastack:18948 — the query left in the tick ReadyForQuery arrived, and its
        // ACK came 44 ms later.
        let worker = DiagConn {
            last_data_sent_ms: 18_992,
            last_data_recv_ms: 18_992,
            last_ack_recv_ms: 18_948,
            ..same_tick.clone()
        };
        assert!(worker.awaiting_reply(), "an ACK after the peer's last data");
        let quick_ack = DiagConn {
            last_ack_recv_ms: 18_992,
            ..worker
        };
        assert!(
            !quick_ack.awaiting_reply(),
            "all in one tick stays ambiguous: read as answered"
        );
    }

    #[test]
    fn truncated_or_attributeless_messages_are_skipped() {
        let m = message(0, 0, 1, 2);
        for cut in [0, 10, DIAG_MSG_LEN, DIAG_MSG_LEN + 3, DIAG_MSG_LEN + 40] {
            assert!(parse_msg(1, &m[..cut]).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn this_hosts_own_connection_is_dumped() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let mut inspector = Inspector::new(Path::new("/proc"));
        let all = inspector.pass();
        let local = c.local_addr().expect("local");
        assert!(all.iter().any(|d| d.local == local), "{} seen", all.len());
    }

    /// A probe finds one connection by its 4-tuple, as the dump shows it, in both
    /// families; a closed one is gone.
    #[test]
    fn one_connection_is_found_by_its_four_tuple() {
        use std::io::{Read as _, Write as _};
        let mut inspector = Inspector::new(Path::new("/proc"));
        let _ = inspector.pass();
        let netns = *inspector.sockets.keys().next().expect("this namespace");
        for at in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(l) = std::net::TcpListener::bind(at) else {
                continue; // no IPv6 here
            };
            let mut c =
                std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
            let (mut s, _) = l.accept().expect("accept");
            let (local, remote) = (c.local_addr().expect("local"), c.peer_addr().expect("peer"));
            let look = || {
                inspector
                    .query(netns, local, remote)
                    .expect("an inspected namespace")
                    .expect("a netlink answer")
            };
            let before = look().expect("found");
            assert_eq!((before.local, before.remote), (local, remote));
            c.write_all(b"ping").expect("write");
            let mut b = [0u8; 4];
            s.read_exact(&mut b).expect("read");
            let after = look().expect("found");
            assert_eq!(after.data_segs_out, before.data_segs_out + 1, "{after:?}");
            assert_eq!(after.bytes_acked, before.bytes_acked + 4, "{after:?}");
            let unknown: SocketAddr = if local.is_ipv4() {
                "127.0.0.1:9"
            } else {
                "[::1]:9"
            }
            .parse()
            .expect("addr");
            assert_eq!(
                inspector
                    .query(netns, local, unknown)
                    .expect("ns")
                    .expect("answer"),
                None
            );
            drop(c);
            assert_eq!(look(), None, "closed: no longer established");
        }
    }
}
