//! The diagnosis engine: pure, clock taken from its inputs.
//!
//! It consumes [`Event`]s and [`Sockstat`] samples — live or replayed, it cannot
//! tell — keeps a bounded table of connections, and feeds each detector:
//!
//! | module | finding |
//! |---|---|
//! | [`idle`] | `idle-close-timeout` |
//! | [`reuse`] | `keepalive-reuse-race` |
//! | [`leak`] | `close-wait-leak` |
//! | [`memory`] | `tcp-memory-pressure` |
//! | [`connect`] | `connect-errors`, `connection-refused` |
//! | [`stall`] | `stalled-peer` |
//! | [`awaiting`] | `awaiting-reply` (from [`Waiting`] snapshots) |
//! | [`rst`] | `rst-storm` |
//! | [`listen`] | `listen-overflow` (from [`crate::event::Listeners`] samples) |
//! | [`timeout`] | `connect-timeout` (folded into `listen-overflow` for a listener on this node) |
//! | [`conntrack_table`] | `conntrack-full` (from the node samples) |
//! | [`nearmiss`] | `keepalive-near-miss` (from [`crate::event::Reuses`]: the race before it fails) |
//!
//! Findings are computed from detector state on demand and sorted, so the same
//! inputs give the same findings in the same order.

pub mod awaiting;
pub mod conn;
pub mod connect;
pub mod conntrack_table;
pub mod endpoints;
pub mod expiring;
pub mod finding;
pub mod idle;
pub mod leak;
pub mod listen;
pub mod memory;
pub mod nearmiss;
pub mod reuse;
pub mod rst;
pub mod stall;
pub mod timeout;
pub mod tuples;

use std::{collections::HashMap, time::SystemTime};

pub use conn::{Comm, ConnTable, Role, Tracked};
pub use finding::{Finding, Kind, Process, Severity};

use crate::event::{Direction, Errno, Event, EventKind, Record, Sockstat, TcpState, Waiting};

/// The longest kernel tick (HZ=100): idle times are counted in ticks, so a send is
/// known to follow an instant only when it is newer by more than this.
const TICK_SLACK_MS: u64 = 10;

/// Thresholds; each detector documents how it uses them.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Idle closes shorter than this are not keep-alive timeouts (request/response closes).
    pub idle_min_ms: u64,
    /// Samples needed in one cluster before an idle timeout is reported.
    pub idle_min_samples: usize,
    /// A socket in CLOSE_WAIT longer than this counts as leaked.
    pub close_wait_age_ms: u64,
    /// Leaked sockets one process must hold before it is reported.
    pub close_wait_min: usize,
    /// No ACK from the peer for this long while retransmitting: stalled.
    pub stall_ms: u64,
    /// Resets per endpoint within `rst_window_ms` that make a storm.
    pub rst_storm_count: usize,
    pub rst_window_ms: u64,
    /// Connections tracked at most; beyond, the oldest closed then oldest open go.
    pub max_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            idle_min_ms: 500,
            idle_min_samples: 3,
            close_wait_age_ms: 5_000,
            close_wait_min: 3,
            stall_ms: 3_000,
            rst_storm_count: 100,
            rst_window_ms: 10_000,
            max_connections: 262_144,
        }
    }
}

/// What the engine has processed and what it had to drop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub samples: u64,
    /// Connections dropped from the table because it was full, and stall / reuse
    /// groups and server closes not kept because theirs was.
    pub evicted: u64,
}

/// The server's end of `local -> remote` by the ports alone
/// ([`conn::serves_by_ports`]): for events of connections the table does not hold.
fn server_end(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> std::net::SocketAddr {
    if conn::serves_by_ports(local, remote) {
        local
    } else {
        remote
    }
}

/// An idle-close sample an event gave: the server endpoint that closed first (the
/// address its client dialled) and the connection's idle milliseconds then.
pub type IdleSample = (std::net::SocketAddr, u64);

/// The engine.
pub struct Engine {
    cfg: Config,
    now_ns: u64,
    now_wall: SystemTime,
    conns: ConnTable,
    idle: idle::IdleClose,
    reuse: reuse::ReuseRace,
    leak: leak::CloseWaitLeak,
    memory: memory::MemoryPressure,
    connect: connect::ConnectFailures,
    stall: stall::Stalls,
    awaiting: awaiting::Awaiting,
    rst: rst::RstStorm,
    tuples: tuples::Tuples,
    listen: listen::ListenOverflow,
    timeouts: timeout::ConnectTimeouts,
    conntrack: conntrack_table::ConntrackTable,
    nearmiss: nearmiss::NearMiss,
    endpoints: endpoints::Endpoints,
    stats: Stats,
    /// Containers and pods by cgroup id, from the `cgroup` records.
    cgroups: HashMap<u64, crate::k8s::ContainerRef>,
    /// Pod names by UID, from the `pod` records.
    pods: HashMap<String, crate::k8s::api::PodInfo>,
    /// Local port span to a destination, refreshed at most once a second.
    ports_seen: HashMap<std::net::SocketAddr, (u64, Option<(u16, u16)>)>,
    /// Count last reported per finding identity, for [`Engine::poll_new`].
    reported: HashMap<(Kind, String, u32), u64>,
    /// The idle-close sample the event being ingested gave (server endpoint, idle
    /// ms), for [`Engine::record_observed`]'s observer.
    idle_sampled: Option<IdleSample>,
}

impl Engine {
    pub fn new(cfg: Config) -> Self {
        Self {
            conns: ConnTable::new(cfg.max_connections),
            cfg,
            now_ns: 0,
            now_wall: SystemTime::UNIX_EPOCH,
            idle: idle::IdleClose::default(),
            reuse: reuse::ReuseRace::default(),
            leak: leak::CloseWaitLeak::default(),
            memory: memory::MemoryPressure::default(),
            connect: connect::ConnectFailures::default(),
            stall: stall::Stalls::default(),
            awaiting: awaiting::Awaiting::default(),
            rst: rst::RstStorm::default(),
            tuples: tuples::Tuples::default(),
            listen: listen::ListenOverflow::default(),
            timeouts: timeout::ConnectTimeouts::default(),
            conntrack: conntrack_table::ConntrackTable::default(),
            nearmiss: nearmiss::NearMiss::default(),
            endpoints: endpoints::Endpoints::default(),
            stats: Stats::default(),
            ports_seen: HashMap::new(),
            cgroups: HashMap::new(),
            pods: HashMap::new(),
            reported: HashMap::new(),
            idle_sampled: None,
        }
    }

    /// Feeds one record, whatever its source (live or a log): its events, snapshot or
    /// sample to the detectors that take it. Findings in a log are not taken back:
    /// the engine finds them again from the records.
    pub fn record(&mut self, record: &Record) {
        self.record_observed(record, |_, _| {});
    }

    /// [`Engine::record`], handing each kernel event it takes (an event, or each
    /// transition of a connection record, made once) to `observe` too: the metrics.
    pub fn record_observed(
        &mut self,
        record: &Record,
        mut observe: impl FnMut(&Event, Option<IdleSample>),
    ) {
        match record {
            Record::Event(e) => {
                self.ingest(e);
                observe(e, self.idle_sampled.take());
            }
            Record::Conn(c) => {
                for e in c.events() {
                    self.ingest(&e);
                    observe(&e, self.idle_sampled.take());
                }
            }
            Record::Sockstat(s) => self.sample(s),
            Record::Waiting(w) => self.waiting(w),
            Record::Tuple(t) => self.tuple(t),
            Record::Listeners(l) => self.listeners(l),
            Record::Reuses(r) => self.reuses(r),
            Record::Cgroup(c) => self.cgroup(c),
            Record::Pod(p) => self.pod(p),
            Record::Losses(_) | Record::Finding(_) | Record::FinalFindings(_) => {}
        }
    }

    /// Owners the trace saw, given to what the inspection found through /proc (a
    /// socket's holder there is a process; the trace names the thread that opened
    /// the connection or called listen()).
    pub fn attribute(&self, record: &mut Record) {
        let traced = |t: &conn::Tracked| {
            t.owner_known.then(|| crate::event::Process {
                pid: t.pid,
                comm: t.comm.to_string(),
                cgroup: t.cgroup,
            })
        };
        match record {
            Record::Waiting(w) => {
                for c in &mut w.conns {
                    if let Some(p) = self.conns.client_conn(c.local, c.remote).and_then(traced) {
                        c.process = p;
                    }
                }
            }
            Record::Reuses(r) => {
                for r in &mut r.reuses {
                    if let Some(p) = self.conns.client_conn(r.local, r.remote).and_then(traced) {
                        r.process = p;
                    }
                }
            }
            Record::Listeners(l) => {
                for q in &mut l.queues {
                    if let Some(p) = self.conns.listener_at(q.local).and_then(traced) {
                        q.process = p;
                    }
                }
            }
            _ => {}
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The connection table.
    pub fn conns(&self) -> &ConnTable {
        &self.conns
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn endpoints(&self) -> &endpoints::Endpoints {
        &self.endpoints
    }

    /// The engine's clock: the latest input's monotonic and wall time.
    pub fn now(&self) -> (u64, SystemTime) {
        (self.now_ns, self.now_wall)
    }

    fn advance(&mut self, mono_ns: u64, wall: SystemTime) {
        if mono_ns >= self.now_ns {
            self.now_ns = mono_ns;
            self.now_wall = wall;
        }
    }

    /// Feeds one event.
    pub fn ingest(&mut self, e: &Event) {
        // Only this event's sample reaches the observer.
        self.idle_sampled = None;
        self.stats.events += 1;
        self.advance(e.mono_ns, e.time);
        let now = self.now_ns;
        match &e.kind {
            EventKind::State {
                old, new, idle_ms, ..
            } => self.on_state(e, *old, *new, *idle_ms),
            EventKind::Reset {
                direction: Direction::Received,
                state,
                recv_idle_ms,
                ..
            } => {
                let estimate = self.idle.estimate_ms(&e.remote, &self.cfg);
                let backend = self.tuples.backend(e.local, e.remote);
                // Counted under the connection's server, whichever end is here: a
                // server's clients hanging up with resets are not endpoints.
                let mut server = server_end(e.local, e.remote);
                if let Some(conn) = self.conns.touch(e, now) {
                    server = conn.server_endpoint();
                    self.endpoints.reset(server, false);
                    conn.reset_received = true;
                    self.reuse.on_reset(
                        conn,
                        e,
                        state.unwrap_or(conn.state),
                        (*recv_idle_ms, estimate),
                        backend,
                    );
                }
                self.rst
                    .record(server, e, Direction::Received, None, &self.cfg);
            }
            EventKind::Reset {
                direction: Direction::Sent,
                reason,
                state,
                syn,
                ..
            } => {
                // The connection's server: the end a SYN was sent to, the traced
                // connection's server, else the end the ports say (a client aborting
                // its connections is not an endpoint of its own).
                let endpoint = if *syn {
                    e.local
                } else {
                    self.conns
                        .get(e.sock)
                        .filter(|c| e.sock != 0 && c.local == e.local && c.remote == e.remote)
                        .map_or_else(|| server_end(e.local, e.remote), Tracked::server_endpoint)
                };
                // Only a reset answering a SYN is a refused connection attempt; late
                // segments of a connection already gone also get NO_SOCKET resets.
                if *syn && state.is_none() && reason.as_deref() == Some("NO_SOCKET") {
                    self.connect.on_no_socket_reset(&endpoint.to_string(), e);
                }
                self.endpoints.reset(endpoint, true);
                let client_here = self.client_here(e.local, e.remote);
                self.reuse
                    .on_reset_sent(e, *state, reason.as_deref(), client_here);
                self.rst
                    .record(endpoint, e, Direction::Sent, reason.as_deref(), &self.cfg);
            }
            EventKind::Connect { errno, .. } => {
                let conn = self.conns.touch(e, now);
                let first = conn.is_none_or(|c| !std::mem::replace(&mut c.connect_failed, true));
                if first {
                    self.on_connect_failure(e, *errno);
                }
            }
            EventKind::Error { errno, .. } => self.on_error(e, *errno),
            EventKind::Retransmit { state, .. } => {
                if let Some(conn) = self.conns.touch(e, now) {
                    self.endpoints.retransmit(conn.server_endpoint());
                    // A handshake's retransmits wait on no established peer: they are
                    // a connect timeout in the making, never a stall.
                    match state {
                        TcpState::SynSent => conn.syn_retransmits += 1,
                        TcpState::SynRecv | TcpState::NewSynRecv => {}
                        _ => self.stall.on_retransmit(conn, e, &self.cfg),
                    }
                }
            }
            EventKind::Accept { .. } => {
                if let Some(conn) = self.conns.touch(e, now) {
                    conn.role = Role::Server;
                    conn.set_owner(e);
                }
            }
        }
        self.count_evicted();
    }

    fn on_state(&mut self, e: &Event, old: TcpState, new: TcpState, idle_ms: u64) {
        let now = self.now_ns;
        if new == TcpState::SynSent
            || new == TcpState::Listen
            || (old == TcpState::Listen && new == TcpState::SynRecv)
        {
            let role = match new {
                TcpState::SynSent => Role::Client,
                TcpState::Listen => Role::Listener,
                _ => Role::Server,
            };
            self.conns.open(e, role, now);
        }
        // A server's idle close whose client end is traced here through a translated
        // address (a Service VIP): the client samples it, under the address it dialled.
        let through_nat = old == TcpState::Established
            && new == TcpState::FinWait1
            && self
                .tuples
                .dialled(e.remote, e.local)
                .is_some_and(|vip| self.conns.client_of(e.remote, vip));
        let Some(conn) = self.conns.touch(e, now) else {
            return;
        };
        conn.state = new;
        let conn = if new == TcpState::Established {
            conn.established = true;
            let sock = conn.sock;
            self.conns.established(sock);
            let Some(conn) = self.conns.get_mut(sock) else {
                return;
            };
            conn
        } else {
            conn
        };
        match (old, new) {
            (TcpState::Established, TcpState::CloseWait) => {
                conn.peer_fin = Some((e.mono_ns, idle_ms));
                conn.close_wait_since = Some(e.mono_ns);
                // The peer closed first: an idle close of a server only when the peer
                // serves (a server's socket sees its clients hang up the same way).
                if !conn.local_serves() {
                    let endpoint = e.remote;
                    if self
                        .idle
                        .sample(endpoint, e.local, idle_ms, e.time, &self.cfg)
                    {
                        self.endpoints.idle_close(endpoint, idle_ms);
                        self.idle_sampled = Some((endpoint, idle_ms));
                    }
                }
            }
            // A pool retiring an idle connection itself: its own idle timeout.
            (TcpState::Established, TcpState::FinWait1)
                if conn.role == Role::Client && idle_ms >= self.cfg.idle_min_ms =>
            {
                self.nearmiss.on_pool_close(
                    conn.pid,
                    conn.remote,
                    conn.comm.as_str(),
                    conn.cgroup,
                    idle_ms,
                    e.time,
                );
            }
            // The process wrote after the peer's FIN (its last send is newer than the
            // FIN by more than a tick) and then closed: a reset that follows in
            // LAST_ACK answers that write (the process read the EOF and closed before
            // the reset came back, as it does when the reset takes a round trip).
            (TcpState::CloseWait, TcpState::LastAck)
                if conn.role != Role::Server && conn.role != Role::Listener =>
            {
                conn.closing_in_close_wait(e, TICK_SLACK_MS);
            }
            // An idle close only (as idle.rs counts one): a close right after the
            // server's own answer (`Connection: close`, every connection of a
            // churning server) leaves nothing a pool could reuse, and remembering
            // each would overflow the memory of real idle closes. A connection
            // accepted before the trace started serves by its ports.
            (TcpState::Established, TcpState::FinWait1)
                if conn.role != Role::Listener
                    && conn.local_serves()
                    && idle_ms >= self.cfg.idle_min_ms =>
            {
                self.reuse.on_server_close(conn, e, idle_ms);
                let endpoint = e.local;
                if !through_nat
                    && self
                        .idle
                        .sample(endpoint, e.remote, idle_ms, e.time, &self.cfg)
                {
                    self.endpoints.idle_close(endpoint, idle_ms);
                    self.idle_sampled = Some((endpoint, idle_ms));
                }
            }
            _ => {}
        }
        if old == TcpState::CloseWait {
            conn.close_wait_since = None;
        }
        // The caller closed a connecting socket whose SYNs went unanswered.
        if old == TcpState::SynSent
            && new == TcpState::Close
            && conn.role == Role::Client
            && !conn.reset_received
            && !conn.connect_failed
            && timeout::ConnectTimeouts::abandoned(conn, e.mono_ns)
        {
            conn.connect_failed = true;
            self.timeouts.on_timeout(conn, e, false);
        }
        if new == TcpState::Close {
            let sock = conn.sock;
            self.conns.closed(sock, now);
        }
    }

    /// Whether the client's end of the connection a server at `server` has with
    /// `client` is traced here: directly, or through an address DNAT translated.
    fn client_here(&self, server: std::net::SocketAddr, client: std::net::SocketAddr) -> bool {
        self.conns.client_of(client, server)
            || self
                .tuples
                .dialled(client, server)
                .is_some_and(|vip| self.conns.client_of(client, vip))
    }

    /// One idle-close timeout seen from both ends of a translated connection (the
    /// client's under the Service VIP it dialled, the server's under the pod's
    /// address) is one fact: the VIP's finding keeps it and names its backends.
    fn merge_backends_into_vips(&self, out: &mut Vec<Finding>) {
        let idle: std::collections::HashSet<String> = out
            .iter()
            .filter(|f| f.kind == Kind::IdleCloseTimeout)
            .map(|f| f.endpoint.clone())
            .collect();
        out.retain(|f| {
            f.kind != Kind::IdleCloseTimeout
                || !f
                    .endpoint
                    .parse()
                    .ok()
                    .and_then(|b| self.tuples.vip_of(&b))
                    .is_some_and(|v| idle.contains(&v.to_string()))
        });
        for f in out.iter_mut().filter(|f| f.kind == Kind::IdleCloseTimeout) {
            let Ok(vip) = f.endpoint.parse() else {
                continue;
            };
            let backends = self.tuples.backends_of(vip);
            if backends.is_empty() {
                continue;
            }
            let names: Vec<String> = backends.iter().map(ToString::to_string).collect();
            f.summary = format!("{} (-> backend {})", f.summary, names.join(", "));
            f.evidence
                .insert("backends".to_owned(), serde_json::json!(names));
        }
    }

    /// Connect timeouts against a listener this node saw overflowing are the client
    /// side of the same incident: counted in its `listen-overflow` finding (with the
    /// callers), not again as `connect-timeout`.
    fn fold_timeouts_into_overflows(&self, out: &mut Vec<Finding>) {
        let mut folded = std::collections::HashSet::new();
        for f in out
            .iter_mut()
            .filter(|f| f.kind == Kind::ListenOverflow && f.process.is_some())
        {
            let Ok(listener) = f.endpoint.parse() else {
                continue;
            };
            let against = self.timeouts.against(listener);
            if against.is_empty() {
                continue;
            }
            let total: u64 = against.iter().map(|(_, n, _)| n).sum();
            let clients: Vec<serde_json::Value> = against
                .iter()
                .map(|((pid, _), n, comm)| serde_json::json!({"pid": pid, "comm": comm, "timed_out": n}))
                .collect();
            f.summary = format!(
                "{}; {total} connect{} from this node timed out against it",
                f.summary,
                if total == 1 { "" } else { "s" }
            );
            f.evidence
                .insert("client_timeouts".to_owned(), serde_json::json!(total));
            f.evidence
                .insert("clients".to_owned(), serde_json::json!(clients));
            folded.extend(against.into_iter().map(|(k, _, _)| k));
        }
        let mut timeouts = Vec::new();
        self.timeouts.findings(&mut timeouts);
        out.extend(timeouts.into_iter().filter(|f| {
            let pid = f.process.as_ref().map_or(0, |p| p.pid);
            f.endpoint
                .parse()
                .map_or(true, |d| !folded.contains(&(pid, d)))
        }));
    }

    /// What the kernel's tables said of a 4-tuple.
    fn tuple(&mut self, t: &crate::event::TupleInfo) {
        self.advance(t.mono_ns, t.time);
        self.tuples.learn(t);
        self.count_evicted();
    }

    fn count_evicted(&mut self) {
        self.stats.evicted = self.conns.evicted
            + self.stall.dropped
            + self.reuse.dropped()
            + self.awaiting.dropped
            + self.leak.dropped
            + self.tuples.dropped
            + self.listen.dropped
            + self.timeouts.dropped
            + self.nearmiss.dropped;
    }

    fn on_connect_failure(&mut self, e: &Event, errno: Errno) {
        // A bound source port: the socket holding the 4-tuple, open (this table) or
        // closed with its time-wait socket still there (a `tuple` record).
        // A time-wait socket the kernel reported closing on the tuple is the surer
        // fact: a table entry whose close was not seen may look open.
        let held_by = (e.local.port() != 0)
            .then(|| {
                let closed = self.tuples.holder(e.local, e.remote).cloned();
                match closed {
                    Some(h) if h.state == TcpState::TimeWait => Some(h),
                    _ => self.conns.holder_of(e.local, e.remote, e.sock).or(closed),
                }
            })
            .flatten();
        self.endpoints.connect_error(e.remote);
        let in_use = self.conns.open_to(e.remote);
        // The port span in use is a table scan: at most once a second per destination.
        let ports = if errno.0 == libc::EADDRNOTAVAIL {
            let fresh = self
                .ports_seen
                .get(&e.remote)
                .is_some_and(|(at, _)| at.saturating_add(1_000_000_000) > self.now_ns);
            if !fresh {
                let span = self.conns.local_ports_to(e.remote);
                if self.ports_seen.len() >= 4096 {
                    self.ports_seen.clear();
                }
                self.ports_seen.insert(e.remote, (self.now_ns, span));
            }
            self.ports_seen.get(&e.remote).and_then(|(_, span)| *span)
        } else {
            None
        };
        self.connect
            .on_failure(e, errno, held_by, in_use, ports, self.memory.port_range());
    }

    fn on_error(&mut self, e: &Event, errno: Errno) {
        let now = self.now_ns;
        let Some(conn) = self.conns.touch(e, now) else {
            return;
        };
        if conn.role == Role::Client && !conn.established {
            if !std::mem::replace(&mut conn.connect_failed, true) {
                if errno.0 == libc::ETIMEDOUT {
                    // The kernel's SYN retries ran out: a connect timeout.
                    self.timeouts.on_timeout(conn, e, true);
                } else {
                    self.on_connect_failure(e, errno);
                }
            }
        } else if errno.0 == libc::ETIMEDOUT {
            self.stall.on_timeout(conn);
        }
    }

    /// Learns which container and pod a cgroup is.
    fn cgroup(&mut self, info: &crate::k8s::CgroupInfo) {
        if !info.container.is_empty() && self.cgroups.len() < 65_536 {
            self.cgroups.insert(info.id, info.container.clone());
        }
    }

    /// Learns a pod's name and namespace.
    fn pod(&mut self, info: &crate::k8s::api::PodInfo) {
        if self.pods.len() < 65_536 || self.pods.contains_key(&info.uid) {
            self.pods.insert(info.uid.clone(), info.clone());
        }
    }

    /// Feeds one node sample; also the engine's periodic tick (leak ages).
    fn sample(&mut self, s: &Sockstat) {
        self.stats.samples += 1;
        self.advance(s.mono_ns, s.time);
        self.memory.sample(s, &self.conns);
        self.conntrack.sample(s);
        self.leak
            .evaluate(&self.conns, self.now_ns, self.now_wall, &self.cfg);
    }

    /// Listeners seen queueing: (address, queued now, backlog, drops so far).
    pub fn listener_states(&self) -> Vec<(std::net::SocketAddr, u32, u32, u64)> {
        self.listen.states().collect()
    }

    /// Feeds one inspection's reuses of idle pooled connections.
    fn reuses(&mut self, r: &crate::event::Reuses) {
        self.stats.samples += 1;
        self.advance(r.mono_ns, r.time);
        for reuse in &r.reuses {
            self.nearmiss.on_reuse(reuse, r.time);
            self.endpoints.reuse(reuse.remote, reuse.gap_ms);
        }
        self.count_evicted();
    }

    /// Each pool's longest reuse gap by endpoint (for the metrics).
    pub fn max_reuse_gaps(&self) -> std::collections::HashMap<std::net::SocketAddr, u64> {
        let mut m = std::collections::HashMap::new();
        for (e, gap) in self.nearmiss.max_gaps() {
            let v = m.entry(e).or_insert(0);
            *v = gap.max(*v);
        }
        m
    }

    /// The idle-close timeout learned for `endpoint`, if any.
    pub fn idle_timeout_ms(&self, endpoint: &std::net::SocketAddr) -> Option<u64> {
        self.idle.estimate_ms(endpoint, &self.cfg)
    }

    /// Feeds one look at the listeners' queues and drop counters.
    fn listeners(&mut self, l: &crate::event::Listeners) {
        self.stats.samples += 1;
        self.advance(l.mono_ns, l.time);
        self.listen.sample(l);
        for (local, queued, backlog, drops) in self.listen.states() {
            self.endpoints.listen(local, queued, backlog, drops);
        }
        self.count_evicted();
    }

    /// Feeds one snapshot of connections awaiting a reply.
    fn waiting(&mut self, w: &Waiting) {
        self.stats.samples += 1;
        self.advance(w.mono_ns, w.time);
        self.awaiting.snapshot(w);
        self.count_evicted();
    }

    /// How long `local -> remote` has been awaiting a reply, as of the latest
    /// inspection plus the time since; `None` when it was not waiting then.
    pub fn waiting_ms(
        &self,
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
    ) -> Option<u64> {
        self.awaiting
            .latest(local, remote)
            .map(|(ms, at)| ms.saturating_add(self.now_ns.saturating_sub(at) / 1_000_000))
    }

    /// Every current finding, most severe first, then by kind, endpoint and pid.
    pub fn findings(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        self.idle.findings(&self.cfg, &mut out);
        self.merge_backends_into_vips(&mut out);
        self.reuse.findings(&self.idle, &self.cfg, &mut out);
        self.nearmiss.findings(
            &self.idle,
            &self.cfg,
            |pid, endpoint| self.reuse.failed(pid, endpoint),
            &mut out,
        );
        self.leak.findings(&self.cfg, &mut out);
        self.memory.findings(&mut out);
        self.connect.findings(&mut out);
        self.stall.findings(self.memory.orphans(), &mut out);
        self.awaiting.findings(&mut out);
        self.rst.findings(&self.cfg, &mut out);
        self.conntrack.findings(self.now_ns, &mut out);
        self.listen.findings(self.now_ns, &mut out);
        self.fold_timeouts_into_overflows(&mut out);
        for f in &mut out {
            let Some(p) = f.process.as_mut() else {
                continue;
            };
            let known = p
                .cgroup
                .as_deref()
                .and_then(|id| id.parse::<u64>().ok())
                .and_then(|id| self.cgroups.get(&id));
            if let Some(c) = known {
                p.container.clone_from(&c.container_id);
                // `namespace/name` once the API named the pod, else its UID.
                p.pod = c.pod_uid.as_ref().map(|uid| {
                    self.pods.get(uid).map_or_else(
                        || uid.clone(),
                        |pod| format!("{}/{}", pod.namespace, pod.name),
                    )
                });
            }
        }
        out.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then(a.kind.cmp(&b.kind))
                .then_with(|| a.endpoint.cmp(&b.endpoint))
                .then_with(|| {
                    let pid = |f: &Finding| f.process.as_ref().map_or(0, |p| p.pid);
                    pid(a).cmp(&pid(b))
                })
        });
        out
    }

    /// Findings that are new, or whose count grew, since the last call.
    pub fn poll_new(&mut self) -> Vec<Finding> {
        let mut fresh = Vec::new();
        for f in self.findings() {
            let key = (
                f.kind,
                f.endpoint.clone(),
                f.process.as_ref().map_or(0, |p| p.pid),
            );
            // Identities are bounded by the detectors' own caps; this bound is a guard.
            if self.reported.len() >= 262_144 && !self.reported.contains_key(&key) {
                self.reported.clear();
            }
            let last = self.reported.insert(key, f.count);
            if last.is_none_or(|n| f.count > n) {
                fresh.push(f);
            }
        }
        fresh
    }
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
