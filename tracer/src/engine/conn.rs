//! The bounded connection table, keyed by socket identity.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use crate::event::{Event, TcpState};

pub use crate::event::Comm;

/// FxHash (rustc's): socket ids are already well spread kernel addresses, and the
/// table is on the hot path of every event, where SipHash costs more than it buys.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ]));
        }
        for b in chunks.remainder() {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }
    fn write_u16(&mut self, v: u16) {
        self.write_u64(u64::from(v));
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// A `HashMap` with [`FxHasher`].
pub type FxMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;
/// A `HashSet` with [`FxHasher`].
pub type FxSet<K> = std::collections::HashSet<K, std::hash::BuildHasherDefault<FxHasher>>;

/// Closed connections stay this long, so the late events of a dying socket (the
/// error report after ->CLOSE, the synchronous connect error) still find it.
const CLOSED_GRACE_NS: u64 = 2_000_000_000;

/// Which side of the connection this socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Opened by connect().
    Client,
    /// Accepted from a listener.
    Server,
    Listener,
    /// Opened before conntrace started.
    Unknown,
}

/// One tracked connection.
#[derive(Debug, Clone)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent facts about one connection"
)]
pub struct Tracked {
    pub sock: u64,
    pub generation: u64,
    pub role: Role,
    pub pid: u32,
    pub comm: Comm,
    pub cgroup: u64,
    pub owner_known: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    pub opened_ns: u64,
    pub last_ns: u64,
    pub established: bool,
    /// When the peer's FIN arrived (ESTABLISHED -> CLOSE_WAIT), with the idle time then.
    pub peer_fin: Option<(u64, u64)>,
    /// When it entered CLOSE_WAIT (monotonic ns).
    pub close_wait_since: Option<u64>,
    pub reset_received: bool,
    pub connect_failed: bool,
    pub reuse_failed: bool,
    pub retransmits: u32,
    /// SYN retransmits while connecting (SYN_SENT).
    pub syn_retransmits: u32,
    pub max_ack_idle_ms: u64,
    pub stalled: bool,
    /// Seen retransmitting its close after the application closed it.
    pub orphan_stalled: bool,
    pub timed_out: bool,
    pub keepalive: bool,
    pub user_timeout_ms: u32,
    pub closed_ns: Option<u64>,
    /// The process wrote after the peer's FIN and then closed (CLOSE_WAIT ->
    /// LAST_ACK): how long the connection had been idle when it wrote.
    pub close_wait_write_gap_ms: Option<u64>,
    counted_remote: bool,
}

impl Tracked {
    fn new(e: &Event, role: Role, generation: u64, now: u64) -> Self {
        Self {
            sock: e.sock,
            generation,
            role,
            pid: e.pid,
            comm: e.comm,
            cgroup: e.cgroup,
            owner_known: e.owner_known,
            local: e.local,
            remote: e.remote,
            state: TcpState::Close,
            // The event's own time: a connection record's steps arrive together at its
            // end, when the engine's clock is already past its first step.
            opened_ns: if e.mono_ns == 0 {
                now
            } else {
                e.mono_ns.min(now)
            },
            last_ns: now,
            established: false,
            peer_fin: None,
            close_wait_since: None,
            reset_received: false,
            connect_failed: false,
            reuse_failed: false,
            retransmits: 0,
            syn_retransmits: 0,
            max_ack_idle_ms: 0,
            stalled: false,
            orphan_stalled: false,
            timed_out: false,
            keepalive: false,
            user_timeout_ms: 0,
            closed_ns: None,
            close_wait_write_gap_ms: None,
            counted_remote: false,
        }
    }

    /// Takes the owner from an event that knows it.
    pub fn set_owner(&mut self, e: &Event) {
        self.pid = e.pid;
        self.comm = e.comm;
        self.cgroup = e.cgroup;
        self.owner_known = true;
    }

    /// The server side of the connection: the remote end of a connection this node
    /// opened, the local end of an accepted one; for connections seen first mid-life,
    /// the end whose port is not an ephemeral one (Linux's default
    /// `ip_local_port_range`, 32768-60999), else the end with the lower port.
    pub fn server_endpoint(&self) -> SocketAddr {
        if self.local_serves() {
            self.local
        } else {
            self.remote
        }
    }

    /// Whether this end is the connection's server (see [`Tracked::server_endpoint`]).
    pub fn local_serves(&self) -> bool {
        match self.role {
            Role::Client => false,
            Role::Server | Role::Listener => true,
            Role::Unknown => serves_by_ports(self.local, self.remote),
        }
    }

    /// CLOSE_WAIT -> LAST_ACK (`e`): whether the process wrote after the peer's FIN
    /// (its last send newer than the FIN by more than `tick_slack_ms`) before it
    /// closed. A reset that follows in LAST_ACK answers that write: the process read
    /// the EOF and closed before the reset came back, as it does when the reset takes
    /// a round trip.
    pub fn closing_in_close_wait(&mut self, e: &Event, tick_slack_ms: u64) {
        if let (
            Some(since),
            crate::event::EventKind::State {
                send_idle_ms,
                recv_idle_ms,
                ..
            },
        ) = (self.close_wait_since, &e.kind)
        {
            let in_close_wait_ms = e.mono_ns.saturating_sub(since) / 1_000_000;
            if send_idle_ms.saturating_add(tick_slack_ms) < in_close_wait_ms {
                self.close_wait_write_gap_ms = Some(recv_idle_ms.saturating_sub(*send_idle_ms));
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.closed_ns.is_none()
    }
}

/// Whether `local` is the server's end of a connection to `remote` neither end of
/// which the trace saw open: the end whose port is not an ephemeral one, else the
/// lower port.
pub fn serves_by_ports(local: SocketAddr, remote: SocketAddr) -> bool {
    let (l, r) = (local.port(), remote.port());
    match (ephemeral(l), ephemeral(r)) {
        (true, false) => false,
        (false, true) => true,
        _ => l < r,
    }
}

/// A port of Linux's default ephemeral range (`net.ipv4.ip_local_port_range`):
/// the kernel's pick for a client's end.
fn ephemeral(port: u16) -> bool {
    (32_768..=60_999).contains(&port)
}

/// Connections by socket, at most `cap`; every eviction is counted.
pub struct ConnTable {
    map: FxMap<u64, Tracked>,
    closed: VecDeque<(u64, u64, u64)>,
    open_by_remote: FxMap<SocketAddr, u32>,
    /// Connections this node opened, by (local, remote): the other end of a
    /// connection whose server end is traced here too. One entry per table entry.
    by_tuple: FxMap<(SocketAddr, SocketAddr), u64>,
    /// Listening sockets seen listen(), by local address; 0 when two open ones share
    /// it (each pod's 0.0.0.0:8080 in its own network namespace: not told apart).
    listening: FxMap<SocketAddr, u64>,
    cap: usize,
    next_generation: u64,
    pub evicted: u64,
}

const UNSPECIFIED: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

impl ConnTable {
    pub fn new(cap: usize) -> Self {
        Self {
            map: FxMap::default(),
            closed: VecDeque::new(),
            open_by_remote: FxMap::default(),
            by_tuple: FxMap::default(),
            listening: FxMap::default(),
            cap: cap.max(16),
            next_generation: 0,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Tracked> {
        self.map.values()
    }

    pub fn get(&self, sock: u64) -> Option<&Tracked> {
        self.map.get(&sock)
    }

    /// The connection of `sock`, as it is (no expiry, no update).
    pub fn get_mut(&mut self, sock: u64) -> Option<&mut Tracked> {
        self.map.get_mut(&sock)
    }

    /// A new connection on this socket (the address may have held an older one).
    pub fn open(&mut self, e: &Event, role: Role, now: u64) {
        if e.sock == 0 {
            return;
        }
        self.make_room(now);
        self.next_generation += 1;
        let conn = Tracked::new(e, role, self.next_generation, now);
        if role == Role::Listener {
            let other_open = self
                .listening
                .get(&e.local)
                .and_then(|s| self.map.get(s))
                .is_some_and(|c| c.sock != e.sock && c.is_open());
            self.listening
                .insert(e.local, if other_open { 0 } else { e.sock });
        }
        if let Some(old) = self.map.insert(e.sock, conn) {
            self.uncount(&old);
        }
    }

    /// The connection of `e`, created (role unknown) when first seen; addresses and
    /// owner are brought up to date.
    pub fn touch(&mut self, e: &Event, now: u64) -> Option<&mut Tracked> {
        if e.sock == 0 {
            return None;
        }
        self.expire(now);
        if self.map.len() >= self.cap && !self.map.contains_key(&e.sock) {
            self.make_room(now);
        }
        // One probe of the table for a step: this runs for every step of every
        // connection.
        let conn = match self.map.entry(e.sock) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                self.next_generation += 1;
                v.insert(Tracked::new(e, Role::Unknown, self.next_generation, now))
            }
        };
        conn.last_ns = now;
        if e.local.port() != 0 {
            conn.local = e.local;
        }
        if e.remote != UNSPECIFIED && e.remote.port() != 0 {
            conn.remote = e.remote;
        }
        if e.owner_known && !conn.owner_known {
            conn.set_owner(e);
        }
        if let crate::event::EventKind::Retransmit {
            keepalive,
            user_timeout_ms,
            ..
        } = e.kind
        {
            conn.keepalive = keepalive;
            conn.user_timeout_ms = user_timeout_ms;
        }
        Some(conn)
    }

    /// The connection reached ESTABLISHED: it now holds a 4-tuple to its remote.
    pub fn established(&mut self, sock: u64) {
        if let Some(conn) = self.map.get_mut(&sock) {
            if !std::mem::replace(&mut conn.counted_remote, true) {
                *self.open_by_remote.entry(conn.remote).or_default() += 1;
            }
            if conn.role == Role::Client {
                self.by_tuple.insert((conn.local, conn.remote), sock);
            }
        }
    }

    /// Marks the connection closed; it is dropped after a grace period.
    pub fn closed(&mut self, sock: u64, now: u64) {
        let Some(conn) = self.map.get_mut(&sock) else {
            return;
        };
        conn.closed_ns = Some(now);
        conn.close_wait_since = None;
        let generation = conn.generation;
        if std::mem::replace(&mut conn.counted_remote, false) {
            let remote = conn.remote;
            uncount(&mut self.open_by_remote, remote);
        }
        self.closed.push_back((sock, generation, now));
    }

    /// Drops what the indexes hold for a connection leaving the table.
    fn uncount(&mut self, conn: &Tracked) {
        if conn.counted_remote {
            uncount(&mut self.open_by_remote, conn.remote);
        }
        let key = (conn.local, conn.remote);
        if self.by_tuple.get(&key) == Some(&conn.sock) {
            self.by_tuple.remove(&key);
        }
        if self.listening.get(&conn.local) == Some(&conn.sock) {
            self.listening.remove(&conn.local);
        }
    }

    fn expire(&mut self, now: u64) {
        while let Some(&(sock, generation, at)) = self.closed.front() {
            if at.saturating_add(CLOSED_GRACE_NS) > now {
                break;
            }
            self.closed.pop_front();
            if self
                .map
                .get(&sock)
                .is_some_and(|c| c.generation == generation && !c.is_open())
            {
                if let Some(old) = self.map.remove(&sock) {
                    self.uncount(&old);
                }
            }
        }
    }

    /// Keeps the table under its cap: closed connections go first; when only open
    /// ones remain, the least recently active eighth goes in one pass.
    fn make_room(&mut self, now: u64) {
        if self.map.len() < self.cap {
            return;
        }
        self.expire(now);
        while self.map.len() >= self.cap {
            let Some((sock, generation, _)) = self.closed.pop_front() else {
                break;
            };
            if self
                .map
                .get(&sock)
                .is_some_and(|c| c.generation == generation)
            {
                if let Some(old) = self.map.remove(&sock) {
                    self.uncount(&old);
                }
                self.evicted += 1;
            }
        }
        if self.map.len() >= self.cap {
            let mut by_age: Vec<(u64, u64)> =
                self.map.values().map(|c| (c.last_ns, c.sock)).collect();
            by_age.sort_unstable();
            for (_, sock) in by_age.into_iter().take(self.cap / 8 + 1) {
                if let Some(old) = self.map.remove(&sock) {
                    self.uncount(&old);
                    self.evicted += 1;
                }
            }
        }
    }

    /// Another live socket holding this exact 4-tuple, described.
    pub fn holder_of(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
        except: u64,
    ) -> Option<crate::event::TupleHolder> {
        let mut holders: Vec<&Tracked> = self
            .map
            .values()
            .filter(|c| c.sock != except && c.is_open() && c.local == local && c.remote == remote)
            .collect();
        holders.sort_by_key(|c| c.sock);
        holders.first().map(|c| crate::event::TupleHolder {
            state: c.state,
            process: crate::event::Process {
                pid: c.pid,
                comm: c.comm.to_string(),
                cgroup: c.cgroup,
            },
            closed_ago_ms: None,
            first_fin: None,
            released_in_ms: None,
        })
    }

    /// The listener this trace saw listen() on `local`, open or closed within the
    /// table's grace period (an inspection's dump may predate its close, whose record
    /// the pipeline took first).
    pub fn listener_at(&self, local: SocketAddr) -> Option<&Tracked> {
        self.listening
            .get(&local)
            .and_then(|sock| self.map.get(sock))
            .filter(|c| c.role == Role::Listener && c.local == local)
    }

    /// Whether a connection this node opened (`connect`) holds `local -> remote`:
    /// the client's end of a connection whose server end is also traced here.
    pub fn client_of(&self, local: SocketAddr, remote: SocketAddr) -> bool {
        self.client_conn(local, remote).is_some()
    }

    /// The connection this node opened on `local -> remote`, if traced.
    pub fn client_conn(&self, local: SocketAddr, remote: SocketAddr) -> Option<&Tracked> {
        self.by_tuple
            .get(&(local, remote))
            .and_then(|sock| self.map.get(sock))
            .filter(|c| c.role == Role::Client && c.local == local && c.remote == remote)
    }

    /// The lowest and highest local port of the open connections to `remote`.
    pub fn local_ports_to(&self, remote: SocketAddr) -> Option<(u16, u16)> {
        let ports = self
            .map
            .values()
            .filter(|c| c.is_open() && c.remote == remote && c.local.port() != 0)
            .map(|c| c.local.port());
        ports.fold(None, |acc, p| {
            Some(acc.map_or((p, p), |(lo, hi): (u16, u16)| (lo.min(p), hi.max(p))))
        })
    }

    /// Established connections open to `remote`.
    pub fn open_to(&self, remote: SocketAddr) -> u32 {
        self.open_by_remote.get(&remote).copied().unwrap_or(0)
    }
}

fn uncount(open_by_remote: &mut FxMap<SocketAddr, u32>, remote: SocketAddr) {
    if let Some(n) = open_by_remote.get_mut(&remote) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            open_by_remote.remove(&remote);
        }
    }
}
