//! The data model every layer shares: [`Record`] (what flows from a source to the
//! engine and a sink, and what the log stores) and what it carries — [`Event`],
//! [`Conn`], the inspection's and the sampler's snapshots, [`Losses`] — with their
//! time format ([`rfc3339`]). Kept apart from the `repr(C)` wire types in
//! `tracer-common`.

use std::{fmt, net::SocketAddr};

use serde::{Deserialize, Serialize};

mod comm;
mod record;
pub mod rfc3339;

pub use comm::Comm;
pub use record::Record;

/// One connection-lifecycle fact. In the log (and `watch -v`) through [`EventLine`]:
/// the keys a connection line uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "EventLine", from = "EventLine")]
pub struct Event {
    /// Wall-clock time, RFC 3339 with milliseconds.
    pub time: std::time::SystemTime,
    /// CLOCK_MONOTONIC nanoseconds (the kernel's timestamp): ordering and durations.
    pub mono_ns: u64,
    pub kind: EventKind,
    /// Owner process id (tgid); 0 when unknown.
    pub pid: u32,
    /// Owner thread id.
    pub tid: u32,
    /// Owner command name.
    pub comm: Comm,
    /// cgroup v2 id of the owner.
    pub cgroup: u64,
    /// `true` when pid/comm are the socket's owner (connect, listen, accept);
    /// `false` when the socket predates the trace: then pid/comm are the process
    /// acting on it in a system call (close, shutdown), or pid 0 and an empty comm
    /// for events raised in softirq or timer context.
    pub owner_known: bool,
    /// Socket identity, stable for the socket's life (kernel `struct sock` address).
    pub sock: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// An event as a log line (version 3 and 4): `t`, `ns`, `type` and its fields, `sk`,
/// `pid`, `tid` (only when not `pid`), `comm`, `cg` (only when set), `own` (only when
/// false), `l`, `r` — the keys of a `conn` line. Versions 1 and 2 (`time`,
/// `mono_ns`, `sock`, `cgroup`, `owner_known`, `local`, `remote`, every field
/// always) read too.
#[derive(Serialize, Deserialize)]
struct EventLine {
    #[serde(rename = "t", alias = "time", with = "crate::event::rfc3339")]
    time: std::time::SystemTime,
    #[serde(rename = "ns", alias = "mono_ns")]
    mono_ns: u64,
    #[serde(flatten)]
    kind: EventKind,
    #[serde(rename = "sk", alias = "sock", with = "hex_u64")]
    sock: u64,
    pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tid: Option<u32>,
    comm: Comm,
    #[serde(
        rename = "cg",
        alias = "cgroup",
        default,
        skip_serializing_if = "is_zero"
    )]
    cgroup: u64,
    #[serde(
        rename = "own",
        alias = "owner_known",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    owner_known: Option<bool>,
    #[serde(rename = "l", alias = "local")]
    local: SocketAddr,
    #[serde(rename = "r", alias = "remote")]
    remote: SocketAddr,
}

impl From<Event> for EventLine {
    fn from(e: Event) -> Self {
        Self {
            time: e.time,
            mono_ns: e.mono_ns,
            kind: e.kind,
            sock: e.sock,
            tid: (e.tid != e.pid).then_some(e.tid),
            pid: e.pid,
            comm: e.comm,
            cgroup: e.cgroup,
            owner_known: (!e.owner_known).then_some(false),
            local: e.local,
            remote: e.remote,
        }
    }
}

impl From<EventLine> for Event {
    fn from(l: EventLine) -> Self {
        Self {
            time: l.time,
            mono_ns: l.mono_ns,
            kind: l.kind,
            pid: l.pid,
            tid: l.tid.unwrap_or(l.pid),
            comm: l.comm,
            cgroup: l.cgroup,
            owner_known: l.owner_known.unwrap_or(true),
            sock: l.sock,
            local: l.local,
            remote: l.remote,
        }
    }
}

/// What happened, with the fields of that kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A TCP state transition.
    State {
        old: TcpState,
        new: TcpState,
        /// Time since the connection last sent or received data.
        idle_ms: u64,
        send_idle_ms: u64,
        recv_idle_ms: u64,
        /// Who closed first, on the transition that shows it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        closed_by: Option<Closer>,
        #[serde(default)]
        retrans: u32,
    },
    /// `connect()` returned an error synchronously.
    Connect { errno: Errno, state: TcpState },
    /// An error reported on the socket asynchronously.
    Error { errno: Errno, state: TcpState },
    /// A reset sent or received.
    Reset {
        direction: Direction,
        /// State of the socket; `None` when the reset answered a segment with no socket.
        state: Option<TcpState>,
        /// Kernel reset reason (sent resets, kernels >= 6.10).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Time since the connection last sent or received data.
        #[serde(default)]
        idle_ms: u64,
        /// Time since the connection last received data (received resets).
        #[serde(default)]
        recv_idle_ms: u64,
        /// The reset answered a SYN: a connection attempt refused (sent resets).
        #[serde(default)]
        syn: bool,
    },
    /// A retransmitted segment.
    Retransmit {
        state: TcpState,
        /// Retransmits of the connection that left the host before this one
        /// (`total_retrans`; a segment dropped locally is not counted).
        retrans: u32,
        /// Retransmission timeouts in a row with no ACK before this one
        /// (`icsk_retransmits`; 0 for fast retransmits).
        #[serde(default)]
        rto_count: u8,
        /// Time since the last ACK from the peer.
        ack_idle_ms: u64,
        packets_out: u32,
        keepalive: bool,
        user_timeout_ms: u32,
        /// The application already closed the socket: only the kernel holds it,
        /// retransmitting (`SOCK_DEAD`). Absent from older logs: read as held.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        orphan: bool,
    },
    /// A connection accepted by a process.
    Accept { state: TcpState },
}

impl EventKind {
    /// The `type` tag as written in the log.
    pub fn name(&self) -> &'static str {
        match self {
            Self::State { .. } => "state",
            Self::Connect { .. } => "connect",
            Self::Error { .. } => "error",
            Self::Reset { .. } => "reset",
            Self::Retransmit { .. } => "retransmit",
            Self::Accept { .. } => "accept",
        }
    }
}

/// A socket's state transitions, shipped together by the kernel (log `{"conn": …}`):
/// at ->CLOSE the whole connection in one record, with its totals; earlier when
/// something about it must be seen live (a close after idling, a reset, an error, a
/// retransmit) or when userspace reads the kernel's map for open connections. The
/// engine takes it as the [`EventKind::State`] events it stands for ([`Conn::events`]), live and replayed alike.
#[derive(Debug, Clone, PartialEq)]
pub struct Conn {
    /// Wall-clock time of the first step, to the millisecond.
    pub time: std::time::SystemTime,
    /// CLOCK_MONOTONIC of the first step, to the microsecond.
    pub mono_ns: u64,
    /// The socket and its owner, in the order of its log line (`sk`, `pid`, `tid`,
    /// `comm`, `cg`, `own`, `l`, `r`); as in [`Event`].
    pub sock: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: Comm,
    pub cgroup: u64,
    pub owner_known: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The transitions, oldest first.
    pub steps: Vec<Step>,
    /// On the connection's last record (it reached CLOSE).
    pub totals: Option<Totals>,
}

/// One transition of a [`Conn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Microseconds after the record's first step.
    pub after_us: u64,
    pub old: TcpState,
    pub new: TcpState,
    pub send_idle_ms: u64,
    pub recv_idle_ms: u64,
    pub retrans: u32,
}

impl Step {
    /// Who closed an established connection, when this step is that close: the
    /// peer (ESTABLISHED -> CLOSE_WAIT) or this end (ESTABLISHED -> FIN_WAIT1).
    pub fn closer(&self) -> Option<Closer> {
        match (self.old, self.new) {
            (TcpState::Established, TcpState::CloseWait) => Some(Closer::Peer),
            (TcpState::Established, TcpState::FinWait1) => Some(Closer::Local),
            _ => None,
        }
    }
}

/// What a connection carried, read once at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// `total_retrans`.
    pub retrans: u32,
    /// Retransmission timeouts in a row at the end (`icsk_retransmits`).
    pub rto_count: u8,
    /// `bytes_acked` / `bytes_received` (RFC 4898): sequence space acknowledged by
    /// the peer / received in order, the data plus one for a FIN.
    pub bytes_acked: u64,
    pub bytes_received: u64,
    /// Smoothed round-trip time, µs.
    pub srtt_us: u32,
}

impl Conn {
    /// The state events this record stands for, in order.
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        self.steps.iter().map(|s| self.event(s))
    }

    /// One of this record's steps as the transition event it stands for.
    pub fn event(&self, s: &Step) -> Event {
        let after = std::time::Duration::from_micros(s.after_us);
        let closed_by = s.closer();
        Event {
            time: self.time + after,
            mono_ns: self
                .mono_ns
                .saturating_add(s.after_us.saturating_mul(1_000)),
            kind: EventKind::State {
                old: s.old,
                new: s.new,
                idle_ms: s.send_idle_ms.min(s.recv_idle_ms),
                send_idle_ms: s.send_idle_ms,
                recv_idle_ms: s.recv_idle_ms,
                closed_by,
                retrans: s.retrans,
            },
            pid: self.pid,
            tid: self.tid,
            comm: self.comm,
            cgroup: self.cgroup,
            owner_known: self.owner_known,
            sock: self.sock,
            local: self.local,
            remote: self.remote,
        }
    }

    /// The history in the log's short form: `SS E+41 FW1+1203~0/0 FW2+1210~ C+1215~`:
    /// each state ([`TcpState::short`]) preceded by `OLD>` when the old state is not
    /// the previous step's (nor, on the first step, the usual one: CLOSE before
    /// SYN_SENT, LISTEN before SYN_RECV); `+µs` after the first step; `~send/recv` idle
    /// ms when not both 0, a bare `~` when they are the previous step's; `!n`
    /// retransmits when any.
    pub fn history(&self) -> String {
        let mut out = Vec::with_capacity(8 * self.steps.len());
        self.write_history(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// [`Conn::history`] appended to a line being built (the log's hot path: no
    /// formatting machinery, no allocation).
    pub fn write_history(&self, out: &mut Vec<u8>) {
        let mut num = itoa::Buffer::new();
        let mut prev: Option<TcpState> = None;
        let mut idle = (0, 0);
        for (i, s) in self.steps.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            // The old state is the previous step's new one (or the usual first one),
            // written only when not.
            if prev.or_else(|| usual_first_old(s.new)) != Some(s.old) {
                out.extend_from_slice(s.old.short().as_bytes());
                out.push(b'>');
            }
            out.extend_from_slice(s.new.short().as_bytes());
            if s.after_us != 0 {
                out.push(b'+');
                out.extend_from_slice(num.format(s.after_us).as_bytes());
            }
            let step_idle = (s.send_idle_ms, s.recv_idle_ms);
            if step_idle != (0, 0) {
                out.push(b'~');
                if step_idle != idle {
                    out.extend_from_slice(num.format(s.send_idle_ms).as_bytes());
                    out.push(b'/');
                    out.extend_from_slice(num.format(s.recv_idle_ms).as_bytes());
                }
            }
            idle = step_idle;
            if s.retrans != 0 {
                out.push(b'!');
                out.extend_from_slice(num.format(s.retrans).as_bytes());
            }
            prev = Some(s.new);
        }
    }

    /// Parses [`Conn::history`] (and the longer form logs before version 5 wrote: the
    /// first step's old state always named, idle always in full).
    pub fn parse_history(h: &str) -> Result<Vec<Step>, String> {
        let mut steps = Vec::new();
        let mut prev: Option<TcpState> = None;
        let mut idle = (0, 0);
        for token in h.split_ascii_whitespace() {
            if steps.len() >= 1024 {
                return Err("history longer than 1024 steps".to_owned());
            }
            let bad = || format!("bad history step '{token}'");
            let (states, rest) = token
                .find(['+', '~', '!'])
                .map_or((token, ""), |i| token.split_at(i));
            let (old, new) = if let Some((o, n)) = states.split_once('>') {
                (
                    TcpState::from_short(o).ok_or_else(bad)?,
                    TcpState::from_short(n).ok_or_else(bad)?,
                )
            } else {
                let new = TcpState::from_short(states).ok_or_else(bad)?;
                let old = prev.or_else(|| usual_first_old(new)).ok_or_else(bad)?;
                (old, new)
            };
            let mut step = Step {
                after_us: 0,
                old,
                new,
                send_idle_ms: 0,
                recv_idle_ms: 0,
                retrans: 0,
            };
            let mut rest = rest;
            while let Some(c) = rest.chars().next() {
                let body = &rest[1..];
                let end = body.find(['+', '~', '!']).unwrap_or(body.len());
                let (field, tail) = body.split_at(end);
                match c {
                    '+' => step.after_us = field.parse().map_err(|_| bad())?,
                    '~' if field.is_empty() && idle != (0, 0) => {
                        (step.send_idle_ms, step.recv_idle_ms) = idle;
                    }
                    '~' => {
                        let (a, b) = field.split_once('/').ok_or_else(bad)?;
                        step.send_idle_ms = a.parse().map_err(|_| bad())?;
                        step.recv_idle_ms = b.parse().map_err(|_| bad())?;
                    }
                    '!' => step.retrans = field.parse().map_err(|_| bad())?,
                    _ => return Err(bad()),
                }
                rest = tail;
            }
            prev = Some(new);
            idle = (step.send_idle_ms, step.recv_idle_ms);
            steps.push(step);
        }
        if steps.is_empty() {
            return Err("empty history".to_owned());
        }
        Ok(steps)
    }
}

/// The old state a history leaves unwritten on its first step: CLOSE before
/// SYN_SENT (a connect), LISTEN before SYN_RECV (an accepted socket's first
/// transition); none (always written) before any other.
fn usual_first_old(new: TcpState) -> Option<TcpState> {
    match new {
        TcpState::SynSent => Some(TcpState::Close),
        TcpState::SynRecv => Some(TcpState::Listen),
        _ => None,
    }
}

/// A periodic sample of node-wide TCP memory and socket counts, from
/// `/proc/net/sockstat` and `/proc/sys/net/ipv4/tcp_mem`. Written to the log, so a
/// replay sees the same samples the live run saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sockstat {
    #[serde(rename = "t", alias = "time", with = "crate::event::rfc3339")]
    pub time: std::time::SystemTime,
    #[serde(rename = "ns", alias = "mono_ns")]
    pub mono_ns: u64,
    pub tcp_inuse: u64,
    pub tcp_orphan: u64,
    pub tcp_tw: u64,
    pub tcp_alloc: u64,
    /// TCP memory in use, pages.
    pub tcp_mem_pages: u64,
    /// `tcp_mem`: min, pressure, max (pages).
    pub tcp_mem: [u64; 3],
    #[serde(default)]
    pub max_orphans: u64,
    /// `ip_local_port_range` of the node's network namespace.
    #[serde(default)]
    pub local_port_range: [u16; 2],
    /// The connection tracker's statistics, where the module is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackStats>,
}

/// `/proc/net/stat/nf_conntrack` summed over CPUs (cumulative counters), the table's
/// size and `nf_conntrack_max`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackStats {
    pub entries: u64,
    pub max: u64,
    /// Packets dropped because no entry could be made (the table full).
    pub drop: u64,
    /// Entries evicted early to make room.
    pub early_drop: u64,
    /// Entries that could not be inserted (a clash: two packets of one flow at once).
    pub insert_failed: u64,
}

/// One inspection's look at the listeners (`{"listeners": ...}`): every listener
/// with something in its accept queue, and each network namespace's cumulative
/// listen-drop counters. Written when something is queued or a counter moved, so a
/// replay sees what the live run saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listeners {
    #[serde(rename = "t", alias = "time", with = "crate::event::rfc3339")]
    pub time: std::time::SystemTime,
    #[serde(rename = "ns", alias = "mono_ns")]
    pub mono_ns: u64,
    /// Since the previous inspection: the counters' changes happened within it.
    pub interval_ms: u64,
    pub queues: Vec<ListenQueue>,
    pub namespaces: Vec<NamespaceListen>,
}

/// A process as the inspection or the kernel's tables name it: the holder of a
/// socket (its lowest pid, from /proc) or the thread the trace saw own it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    #[serde(rename = "cg", alias = "cgroup", default)]
    pub cgroup: u64,
}

/// A listener's accept queue at one inspection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenQueue {
    pub netns: u32,
    #[serde(rename = "l", alias = "local")]
    pub local: SocketAddr,
    /// Connections waiting for accept(), and the listen backlog (after the clamp to
    /// `somaxconn`): full when `queued` reaches `backlog`.
    pub queued: u32,
    pub backlog: u32,
    /// The process holding the socket (pid 0: none found).
    #[serde(flatten)]
    pub process: Process,
}

/// One network namespace's listen counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceListen {
    pub netns: u32,
    #[serde(flatten)]
    pub counters: ListenCounters,
    /// `net.core.somaxconn` there (0: unknown).
    #[serde(default)]
    pub somaxconn: u32,
    /// First seen after the trace began (a namespace made since): its counters count
    /// from zero, every drop in them happened while traced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub new: bool,
}

/// `TcpExt` counters of one namespace (cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenCounters {
    /// SYNs or completed handshakes dropped because the accept queue was full.
    pub overflows: u64,
    /// Every drop at a listener (overflows included).
    pub drops: u64,
    #[serde(default)]
    pub req_q_full_drop: u64,
    #[serde(default)]
    pub req_q_full_cookies: u64,
    #[serde(default)]
    pub backlog_drop: u64,
    #[serde(default)]
    pub syncookies_sent: u64,
}

/// Connections awaiting a reply at one moment, from the periodic inspection of open
/// sockets (`sock_diag`): each one's last data was ours, acknowledged, and nothing came
/// back for at least `after_ms`. Written to the log, so a replay sees what the live
/// run saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    #[serde(rename = "t", alias = "time", with = "crate::event::rfc3339")]
    pub time: std::time::SystemTime,
    #[serde(rename = "ns", alias = "mono_ns")]
    pub mono_ns: u64,
    /// The threshold the inspection used.
    pub after_ms: u64,
    pub conns: Vec<WaitingConn>,
}

/// What the kernel's own tables said about one 4-tuple when an event needed it
/// (`{"tuple": ...}` in the log, so a replay knows it too): the socket holding a
/// 4-tuple a bound connect() could not take, or the address a connection to a
/// translated destination (a Service VIP, by DNAT) really reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TupleInfo {
    #[serde(rename = "t", alias = "time", with = "crate::event::rfc3339")]
    pub time: std::time::SystemTime,
    #[serde(rename = "ns", alias = "mono_ns")]
    pub mono_ns: u64,
    /// The connection's own view: this node's end, and the destination it dialled.
    #[serde(rename = "l", alias = "local")]
    pub local: SocketAddr,
    #[serde(rename = "r", alias = "remote")]
    pub remote: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<TupleHolder>,
    /// Where DNAT sent `remote` (conntrack's reply source): the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<SocketAddr>,
}

/// The socket holding a 4-tuple: a connection of this node that closed on it
/// (time-wait holds it for 60 s after this side closed first), or one still open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TupleHolder {
    pub state: TcpState,
    #[serde(flatten)]
    pub process: Process,
    /// How long ago the holding connection closed, and which end sent the first FIN
    /// (`"local"`: this node, so its time-wait socket holds the tuple).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_ago_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_fin: Option<String>,
    /// When the kernel frees the tuple (the time-wait socket's end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_in_ms: Option<u64>,
}

/// Pooled connections reused after idling, seen by one inspection pass
/// (`{"reuse": ...}`): how long each sat idle before its process sent on it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reuses {
    #[serde(rename = "t", alias = "time", with = "crate::event::rfc3339")]
    pub time: std::time::SystemTime,
    #[serde(rename = "ns", alias = "mono_ns")]
    pub mono_ns: u64,
    pub reuses: Vec<Reuse>,
}

/// One reuse of an idle connection this node opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reuse {
    #[serde(flatten)]
    pub process: Process,
    #[serde(rename = "l", alias = "local")]
    pub local: SocketAddr,
    #[serde(rename = "r", alias = "remote")]
    pub remote: SocketAddr,
    /// From the connection's last activity (data either way) to the send that reused
    /// it; exact to a tick when one segment was sent since the previous pass, else the
    /// idle time the previous pass saw (a lower bound).
    pub gap_ms: u64,
    pub exact: bool,
}

/// One connection awaiting a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitingConn {
    /// The process holding the socket (the lowest pid; 0: none found).
    #[serde(flatten)]
    pub process: Process,
    #[serde(rename = "l", alias = "local")]
    pub local: SocketAddr,
    #[serde(rename = "r", alias = "remote")]
    pub remote: SocketAddr,
    /// Since our last data was sent (and acknowledged): how long we have waited.
    pub waiting_ms: u64,
    /// Since the peer last sent data.
    pub last_recv_ms: u64,
    /// The socket's keepalive timer is armed: probes will settle it.
    pub keepalive: bool,
    /// Since the peer last sent anything (its ACK of our request, usually): the clock
    /// the kernel's keepalive timer counts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ack_ms: Option<u64>,
    /// The keepalive settings the kernel will apply (read with the socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_settings: Option<KeepaliveSettings>,
    /// The peer's end of this connection is open in the same network namespace: a
    /// server on this node still holds it (busy or stuck, not gone).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub peer_here: bool,
}

/// When a socket's keepalive ends a wait: `TCP_KEEPIDLE` / `TCP_KEEPINTVL` /
/// `TCP_KEEPCNT` and `TCP_USER_TIMEOUT`, as the kernel applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepaliveSettings {
    pub idle_ms: u64,
    pub interval_ms: u64,
    pub probes: u32,
    /// 0: not set.
    pub user_timeout_ms: u64,
    pub source: SettingsSource,
}

/// Where keepalive settings were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SettingsSource {
    /// The socket itself (`getsockopt` on its holder's descriptor).
    Socket,
    /// Its network namespace's `net.ipv4.tcp_keepalive_*` (no holder found; a value
    /// the application set on the socket would not show).
    Namespace,
}

impl KeepaliveSettings {
    /// Milliseconds after the peer last sent anything at which the kernel gives up on
    /// a silent peer (`tcp_keepalive_timer`): the first probe after `idle`, one every
    /// `interval`; with no `TCP_USER_TIMEOUT` the connection is reset when the timer
    /// finds `probes` unanswered, with one set at the first firing whose time since
    /// the peer's last segment reaches it once a probe is out.
    pub fn gives_up_after_ms(&self) -> u64 {
        let Self {
            idle_ms,
            interval_ms,
            probes,
            user_timeout_ms,
            source: _,
        } = *self;
        let interval = interval_ms.max(1);
        if user_timeout_ms == 0 {
            return idle_ms.saturating_add(interval.saturating_mul(u64::from(probes)));
        }
        let earliest = idle_ms.saturating_add(interval);
        if user_timeout_ms <= earliest {
            return earliest;
        }
        let firings = (user_timeout_ms - idle_ms).div_ceil(interval);
        idle_ms.saturating_add(firings.saturating_mul(interval))
    }
}

/// What a recording lost, cumulative: events that never reached the log and table
/// entries dropped because a bounded table was full. Written to the log when it
/// changes (checked once a second) and at the end, so `report` and `replay` know a
/// lossy recording from a complete one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Losses {
    /// Events the kernel could not put on the full ring buffer.
    pub ringbuf_full: u64,
    /// Sockets whose owner the kernel could not remember (owner map full).
    pub owner_map: u64,
    /// connect() calls whose arguments the kernel could not keep.
    pub connect_map: u64,
    /// Events dropped because a kernel read failed.
    pub kernel_read: u64,
    /// Records that could not be decoded.
    pub undecodable: u64,
    /// Engine table entries evicted or not kept (connections, groups).
    pub engine_evicted: u64,
    /// Owners of closed connections the pipeline's bounded memory of them dropped
    /// before their time: a late reset or error on such a tuple (a time-wait
    /// socket's) has no owner, and an EADDRNOTAVAIL no named holder.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub closed_owners: u64,
    /// Records the log could not take (its disk full or failing): traced and
    /// diagnosed, not written.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub log_unwritten: u64,
    /// Program runs the kernel skipped because the same program was already running
    /// on that CPU (a softirq interrupting it: the kernel's `recursion_misses`): the
    /// transitions or events of those runs were not seen, and a connection whose
    /// close was among them is not shipped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub kernel_nested: u64,
    /// Connections closed idle or reset whose DNAT translation (a Service VIP's
    /// backend, from conntrack) was not looked up: over the lookups' budget of the
    /// second. Their findings name the address dialled, not the backend.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub conntrack_skipped: u64,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if signature"
)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Losses {
    /// Events that never reached the log.
    pub fn events(&self) -> u64 {
        self.ringbuf_full
            .saturating_add(self.kernel_read)
            .saturating_add(self.undecodable)
            .saturating_add(self.kernel_nested)
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Socket owners the bounded owner maps had no room for.
    pub fn owners_not_kept(&self) -> u64 {
        self.owner_map
            .saturating_add(self.connect_map)
            .saturating_add(self.closed_owners)
    }

    /// The exit line's counts, by what was lost: `lost 3 events (ring buffer full
    /// 3, …); 0 socket owners not kept (…); 0 engine table entries dropped early`.
    /// Only the first are missing from the log; the others degrade what the log's
    /// lines say (an owner) or what the engine remembers (a closed connection the
    /// keep-alive race memory dropped when full).
    pub fn counts(&self) -> String {
        format!(
            "lost {} events (ring buffer full {}, kernel read {}, nested program runs {}, undecodable {}); {} socket owners not kept (owner map {}, connect map {}, closed connections {}); {} engine table entries dropped early (tables full)",
            self.events(),
            self.ringbuf_full,
            self.kernel_read,
            self.kernel_nested,
            self.undecodable,
            self.owners_not_kept(),
            self.owner_map,
            self.connect_map,
            self.closed_owners,
            self.engine_evicted,
        ) + &self.conntrack_text()
    }

    /// `; N DNAT backends not looked up (…)`, or nothing.
    fn conntrack_text(&self) -> String {
        if self.conntrack_skipped == 0 {
            return String::new();
        }
        format!(
            "; {} DNAT backends not looked up (conntrack lookups over their budget of the second)",
            self.conntrack_skipped
        )
    }

    /// `lost 12 events (ring buffer full 10, kernel read 2); ...`, or `None`.
    pub fn describe(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        Some(format!(
            "this recording lost {} events (ring buffer full {}, kernel read failures {}, program runs the kernel skipped as nested {}, undecodable {}), {} socket owners (owner map full {}, connect map full {}, closed connections' owners forgotten early {}) and {} engine table entries: findings may be incomplete",
            self.events(),
            self.ringbuf_full,
            self.kernel_read,
            self.kernel_nested,
            self.undecodable,
            self.owners_not_kept(),
            self.owner_map,
            self.connect_map,
            self.closed_owners,
            self.engine_evicted,
        ) + &self.conntrack_text()
            + &if self.log_unwritten > 0 {
            format!(
                "; the log itself misses {} records its disk could not take",
                self.log_unwritten
            )
        } else {
            String::new()
        })
    }
}

/// Who sent the first FIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Closer {
    /// ESTABLISHED -> CLOSE_WAIT: the peer closed first.
    Peer,
    /// ESTABLISHED -> FIN_WAIT1: this side closed first.
    Local,
}

impl Closer {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Local => "local",
        }
    }
}

/// Reset direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Sent,
    Received,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Received => "received",
        }
    }
}

/// Kernel TCP states (`include/net/tcp_states.h`), named as the kernel names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    BoundInactive,
    Unknown,
}

impl TcpState {
    /// From the kernel's number ([`tracer_common::tcp_state`]).
    pub fn from_kernel(n: u8) -> Self {
        use tracer_common::tcp_state as k;
        match i32::from(n) {
            k::ESTABLISHED => Self::Established,
            k::SYN_SENT => Self::SynSent,
            k::SYN_RECV => Self::SynRecv,
            k::FIN_WAIT1 => Self::FinWait1,
            k::FIN_WAIT2 => Self::FinWait2,
            k::TIME_WAIT => Self::TimeWait,
            k::CLOSE => Self::Close,
            k::CLOSE_WAIT => Self::CloseWait,
            k::LAST_ACK => Self::LastAck,
            k::LISTEN => Self::Listen,
            k::CLOSING => Self::Closing,
            k::NEW_SYN_RECV => Self::NewSynRecv,
            k::BOUND_INACTIVE => Self::BoundInactive,
            _ => Self::Unknown,
        }
    }

    /// States a connection reaches only after it was established, so its
    /// last-send/last-receive timestamps mean something.
    pub fn had_data(self) -> bool {
        matches!(
            self,
            Self::Established
                | Self::FinWait1
                | Self::FinWait2
                | Self::CloseWait
                | Self::LastAck
                | Self::Closing
                | Self::TimeWait
        )
    }

    /// The log's short name in a connection history (`CW`).
    pub fn short(self) -> &'static str {
        match self {
            Self::Established => "E",
            Self::SynSent => "SS",
            Self::SynRecv => "SR",
            Self::FinWait1 => "FW1",
            Self::FinWait2 => "FW2",
            Self::TimeWait => "TW",
            Self::Close => "C",
            Self::CloseWait => "CW",
            Self::LastAck => "LA",
            Self::Listen => "L",
            Self::Closing => "CG",
            Self::NewSynRecv => "NSR",
            Self::BoundInactive => "BI",
            Self::Unknown => "U",
        }
    }

    /// From [`TcpState::short`].
    pub fn from_short(s: &str) -> Option<Self> {
        Some(match s {
            "E" => Self::Established,
            "SS" => Self::SynSent,
            "SR" => Self::SynRecv,
            "FW1" => Self::FinWait1,
            "FW2" => Self::FinWait2,
            "TW" => Self::TimeWait,
            "C" => Self::Close,
            "CW" => Self::CloseWait,
            "LA" => Self::LastAck,
            "L" => Self::Listen,
            "CG" => Self::Closing,
            "NSR" => Self::NewSynRecv,
            "BI" => Self::BoundInactive,
            "U" => Self::Unknown,
            _ => return None,
        })
    }

    /// The kernel's name, e.g. `CLOSE_WAIT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
            Self::BoundInactive => "BOUND_INACTIVE",
            Self::Unknown => "UNKNOWN",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An errno, written by name (`"EADDRNOTAVAIL"`); unknown numbers as `"E<n>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Errno(pub i32);

const ERRNO_NAMES: [(i32, &str); 24] = [
    (libc::EPERM, "EPERM"),
    (libc::ENOENT, "ENOENT"),
    (libc::EINTR, "EINTR"),
    (libc::EBADF, "EBADF"),
    (libc::EAGAIN, "EAGAIN"),
    (libc::ENOMEM, "ENOMEM"),
    (libc::EACCES, "EACCES"),
    (libc::EINVAL, "EINVAL"),
    (libc::EMFILE, "EMFILE"),
    (libc::EPIPE, "EPIPE"),
    (libc::ENOTSOCK, "ENOTSOCK"),
    (libc::EAFNOSUPPORT, "EAFNOSUPPORT"),
    (libc::EADDRINUSE, "EADDRINUSE"),
    (libc::EADDRNOTAVAIL, "EADDRNOTAVAIL"),
    (libc::ENETDOWN, "ENETDOWN"),
    (libc::ENETUNREACH, "ENETUNREACH"),
    (libc::ECONNABORTED, "ECONNABORTED"),
    (libc::ECONNRESET, "ECONNRESET"),
    (libc::EISCONN, "EISCONN"),
    (libc::ETIMEDOUT, "ETIMEDOUT"),
    (libc::ECONNREFUSED, "ECONNREFUSED"),
    (libc::EHOSTDOWN, "EHOSTDOWN"),
    (libc::EHOSTUNREACH, "EHOSTUNREACH"),
    (libc::EALREADY, "EALREADY"),
];

impl Errno {
    /// The symbolic name, or `E<n>` for numbers not in the table.
    pub fn name(self) -> String {
        ERRNO_NAMES
            .iter()
            .find(|(n, _)| *n == self.0)
            .map_or_else(|| format!("E{}", self.0), |(_, s)| (*s).to_owned())
    }

    /// Parses a name (`ECONNREFUSED`) or `E<n>`.
    pub fn from_name(s: &str) -> Option<Self> {
        if let Some((n, _)) = ERRNO_NAMES.iter().find(|(_, name)| *name == s) {
            return Some(Self(*n));
        }
        s.strip_prefix('E')?.parse().ok().map(Self)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl Serialize for Errno {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Errno {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        Self::from_name(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown errno {s}")))
    }
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    // Kernel addresses exceed 2^53: written as hex strings so JSON tools keep them exact.
    #[expect(
        clippy::trivially_copy_pass_by_ref,
        reason = "serde's `with` signature"
    )]
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:#x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        let digits = s.strip_prefix("0x").unwrap_or(&s);
        u64::from_str_radix(digits, 16).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::Losses;

    /// The DNAT lookups skipped are said where they happened, and only then.
    #[test]
    fn skipped_dnat_lookups_are_said_only_when_some_were() {
        let none = Losses {
            ringbuf_full: 1,
            ..Losses::default()
        };
        assert!(!none.counts().contains("DNAT"));
        assert!(!none.describe().unwrap().contains("DNAT"));
        let some = Losses {
            conntrack_skipped: 7,
            ..Losses::default()
        };
        assert!(!some.is_empty());
        assert!(some.counts().ends_with(
            "; 7 DNAT backends not looked up (conntrack lookups over their budget of the second)"
        ));
        assert!(some
            .describe()
            .unwrap()
            .contains("; 7 DNAT backends not looked up"));
    }
}
