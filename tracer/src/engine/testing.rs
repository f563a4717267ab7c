//! Synthetic event streams for the detector unit tests.

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use crate::event::{Closer, Direction, Errno, Event, EventKind, Sockstat, TcpState};

pub const T0: u64 = 1_000_000_000_000;

/// A connection's view: socket id, owner and addresses; builds its events.
#[derive(Clone)]
#[expect(
    clippy::struct_field_names,
    reason = "sock is the kernel's name for it"
)]
pub struct Sock {
    pub sock: u64,
    pub pid: u32,
    pub comm: &'static str,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

pub fn wall(mono_ns: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_nanos(mono_ns)
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

impl Sock {
    pub fn new(sock: u64, pid: u32, comm: &'static str, local: &str, remote: &str) -> Self {
        Self {
            sock,
            pid,
            comm,
            local: addr(local),
            remote: addr(remote),
        }
    }

    pub fn event(&self, at_ms: u64, kind: EventKind) -> Event {
        let mono_ns = T0 + at_ms * 1_000_000;
        Event {
            time: wall(mono_ns),
            mono_ns,
            kind,
            pid: self.pid,
            tid: self.pid,
            comm: self.comm.into(),
            cgroup: 1,
            owner_known: true,
            sock: self.sock,
            local: self.local,
            remote: self.remote,
        }
    }

    pub fn state(&self, at_ms: u64, old: TcpState, new: TcpState, idle_ms: u64) -> Event {
        let closed_by = match (old, new) {
            (TcpState::Established, TcpState::CloseWait) => Some(Closer::Peer),
            (TcpState::Established, TcpState::FinWait1) => Some(Closer::Local),
            _ => None,
        };
        self.event(
            at_ms,
            EventKind::State {
                old,
                new,
                idle_ms,
                send_idle_ms: idle_ms,
                recv_idle_ms: idle_ms,
                closed_by,
                retrans: 0,
            },
        )
    }

    /// CLOSE -> SYN_SENT -> ESTABLISHED at `at_ms`.
    pub fn connect(&self, at_ms: u64) -> Vec<Event> {
        vec![
            self.state(at_ms, TcpState::Close, TcpState::SynSent, 0),
            self.state(at_ms, TcpState::SynSent, TcpState::Established, 0),
        ]
    }

    /// LISTEN -> SYN_RECV -> ESTABLISHED, then accept().
    pub fn accepted(&self, at_ms: u64) -> Vec<Event> {
        vec![
            self.state(at_ms, TcpState::Listen, TcpState::SynRecv, 0),
            self.state(at_ms, TcpState::SynRecv, TcpState::Established, 0),
            self.event(
                at_ms,
                EventKind::Accept {
                    state: TcpState::Established,
                },
            ),
        ]
    }

    pub fn reset_received(&self, at_ms: u64, state: TcpState, recv_idle_ms: u64) -> Event {
        self.event(
            at_ms,
            EventKind::Reset {
                direction: Direction::Received,
                state: Some(state),
                reason: None,
                idle_ms: 0,
                recv_idle_ms,
                syn: false,
            },
        )
    }

    pub fn reset_sent(&self, at_ms: u64, state: Option<TcpState>, reason: &str) -> Event {
        self.event(
            at_ms,
            EventKind::Reset {
                direction: Direction::Sent,
                state,
                reason: Some(reason.to_owned()),
                idle_ms: 0,
                recv_idle_ms: 0,
                syn: true,
            },
        )
    }

    /// A reset this node sent answering data (not a SYN), e.g. from a time-wait socket.
    pub fn reset_sent_for_data(&self, at_ms: u64, state: Option<TcpState>, reason: &str) -> Event {
        let mut e = self.reset_sent(at_ms, state, reason);
        if let EventKind::Reset { syn, .. } = &mut e.kind {
            *syn = false;
        }
        e
    }

    pub fn connect_error(&self, at_ms: u64, errno: i32) -> Event {
        self.event(
            at_ms,
            EventKind::Connect {
                errno: Errno(errno),
                state: TcpState::Close,
            },
        )
    }

    pub fn error(&self, at_ms: u64, errno: i32) -> Event {
        self.event(
            at_ms,
            EventKind::Error {
                errno: Errno(errno),
                state: TcpState::Close,
            },
        )
    }

    pub fn retransmit(&self, at_ms: u64, ack_idle_ms: u64, rto_count: u8) -> Event {
        self.event(
            at_ms,
            EventKind::Retransmit {
                state: TcpState::Established,
                retrans: u32::from(rto_count),
                rto_count,
                ack_idle_ms,
                packets_out: 1,
                keepalive: false,
                user_timeout_ms: 0,
                orphan: false,
            },
        )
    }

    /// A retransmit of the socket's close after the application closed it.
    pub fn orphan_retransmit(&self, at_ms: u64, ack_idle_ms: u64, rto_count: u8) -> Event {
        self.event(
            at_ms,
            EventKind::Retransmit {
                state: TcpState::FinWait1,
                retrans: u32::from(rto_count),
                rto_count,
                ack_idle_ms,
                packets_out: 2,
                keepalive: false,
                user_timeout_ms: 0,
                orphan: true,
            },
        )
    }
}

/// A sockstat sample at `at_ms`.
pub fn sockstat(at_ms: u64, mem_pages: u64, tcp_mem: [u64; 3]) -> Sockstat {
    let mono_ns = T0 + at_ms * 1_000_000;
    Sockstat {
        time: wall(mono_ns),
        mono_ns,
        tcp_inuse: 10,
        tcp_orphan: 0,
        tcp_tw: 3,
        tcp_alloc: 12,
        tcp_mem_pages: mem_pages,
        tcp_mem,
        max_orphans: 65536,
        local_port_range: [32768, 60999],
        conntrack: None,
    }
}

/// An inspection's look at one listener (namespace 7, somaxconn 4096) at `at_ms`:
/// `queued`/`backlog`, and the namespace's cumulative overflows.
pub fn listeners(
    at_ms: u64,
    local: &str,
    (queued, backlog): (u32, u32),
    overflows: u64,
) -> crate::event::Listeners {
    let mono_ns = T0 + at_ms * 1_000_000;
    crate::event::Listeners {
        time: wall(mono_ns),
        mono_ns,
        interval_ms: 2000,
        queues: (queued > 0)
            .then(|| crate::event::ListenQueue {
                netns: 7,
                local: addr(local),
                queued,
                backlog,
                process: crate::event::Process {
                    pid: 300,
                    comm: "srv".into(),
                    cgroup: 0,
                },
            })
            .into_iter()
            .collect(),
        namespaces: vec![crate::event::NamespaceListen {
            netns: 7,
            counters: crate::event::ListenCounters {
                overflows,
                drops: overflows,
                ..Default::default()
            },
            somaxconn: 4096,
            new: false,
        }],
    }
}

/// A connection of `pid` ("worker") awaiting a reply for `waiting_ms`.
pub fn waiting_conn(
    pid: u32,
    local: &str,
    remote: &str,
    waiting_ms: u64,
    keepalive: bool,
) -> crate::event::WaitingConn {
    crate::event::WaitingConn {
        process: crate::event::Process {
            pid,
            comm: "worker".to_owned(),
            cgroup: 0,
        },
        local: addr(local),
        remote: addr(remote),
        waiting_ms,
        last_recv_ms: waiting_ms + 50,
        keepalive,
        last_ack_ms: None,
        keepalive_settings: None,
        peer_here: false,
    }
}

/// An inspection's awaiting-reply snapshot at `at_ms` (threshold 30 s).
pub fn waiting(at_ms: u64, conns: Vec<crate::event::WaitingConn>) -> crate::event::Waiting {
    let mono_ns = T0 + at_ms * 1_000_000;
    crate::event::Waiting {
        time: wall(mono_ns),
        mono_ns,
        after_ms: 30_000,
        conns,
    }
}

/// Asserts that `text` contains `part`, showing the whole text when it does not.
/// `starts_with` / `ends_with` before the part test the text's ends.
macro_rules! assert_has {
    ($text:expr, starts_with $part:expr) => {{
        let text: &str = &$text;
        assert!(text.starts_with($part), "{text}");
    }};
    ($text:expr, ends_with $part:expr) => {{
        let text: &str = &$text;
        assert!(text.ends_with($part), "{text}");
    }};
    ($text:expr, $part:expr) => {{
        let text: &str = &$text;
        assert!(text.contains($part), "{text}");
    }};
}
pub(crate) use assert_has;
