//! Ring-buffer bytes -> [`Event`]. Pure: the clock and the reset-reason names are
//! handed in, so the decoder is tested without a kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tracer_common::{flags, kind, owner_src, ConnRecord, RawEvent, AF_INET6, MAX_STEPS};

use crate::{
    event::{Closer, Comm, Conn, Direction, Errno, Event, EventKind, Record, TcpState, Totals},
    kernel::time::KernelClock,
};

/// One ring-buffer record as the kernel wrote it, parsed field by field (on the
/// stack, one at a time: the size difference is the wire's).
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed one at a time, never stored"
)]
pub enum Wire {
    Event(RawEvent),
    Conn(ConnRecord),
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is not [`RawEvent::SIZE`] bytes.
    Size(usize),
    /// An event kind this build does not know.
    Kind(u8),
    /// A connection record with no steps, or more than it can hold.
    Steps(u32),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Size(n) => write!(
                f,
                "record of {n} bytes, expected {} (event) or {} (connection)",
                RawEvent::SIZE,
                ConnRecord::SIZE
            ),
            Self::Kind(k) => write!(f, "unknown event kind {k}"),
            Self::Steps(n) => write!(f, "connection record with {n} steps"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes wire events.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub clock: KernelClock,
    /// `enum sk_rst_reason` names by value (from BTF), without the `SK_RST_REASON_` prefix.
    pub reset_reasons: Vec<String>,
}

// The programs are built for `bpfel` and their records read in place: this host
// must be little-endian too (every platform conntrace ships for is).
const _: () = assert!(
    cfg!(target_endian = "little"),
    "conntrace reads the kernel's little-endian records in place"
);

/// A wire type from exactly its size in bytes.
fn read_pod<T: aya::Pod>(b: &[u8]) -> Result<T, DecodeError> {
    if b.len() != std::mem::size_of::<T>() {
        return Err(DecodeError::Size(b.len()));
    }
    // SAFETY: `b` holds exactly `size_of::<T>()` bytes, read unaligned; `T` is plain
    // data (repr(C) integers and byte arrays with explicit padding: every bit pattern
    // is a value), written by the BPF programs in this host's byte order.
    Ok(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

/// Parses an event as the programs wrote it.
pub fn parse_raw(b: &[u8]) -> Result<RawEvent, DecodeError> {
    read_pod(b)
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

fn addr(family: u8, raw: [u8; 16], port: u16) -> SocketAddr {
    let ip = if u16::from(family) == AF_INET6 {
        // v4-mapped addresses (dual-stack sockets) read better as plain IPv4.
        Ipv6Addr::from(raw).to_canonical()
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    };
    SocketAddr::new(ip, port)
}

/// The owner is the socket's (connect, listen, accept, or its listener's), not
/// whichever task ran.
fn owner_known(src: u8) -> bool {
    src == owner_src::SOCKET || src == owner_src::LISTENER
}

fn comm(raw: [u8; 16]) -> Comm {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    Comm::new(&String::from_utf8_lossy(&raw[..len]))
}

/// Parses a connection record as the programs wrote it (its head, then the steps).
pub fn parse_conn(b: &[u8]) -> Result<ConnRecord, DecodeError> {
    read_pod(b)
}

/// Parses one ring-buffer record by its size, checking a connection record's kind.
pub fn parse(bytes: &[u8]) -> Result<Wire, DecodeError> {
    if bytes.len() == ConnRecord::SIZE {
        let rec = parse_conn(bytes)?;
        if rec.head.kind != kind::CONN {
            return Err(DecodeError::Kind(rec.head.kind));
        }
        return Ok(Wire::Conn(rec));
    }
    parse_raw(bytes).map(Wire::Event)
}

impl Decoder {
    /// A decoder for records built in code: boot at 2023-11-14T22:13:20Z, HZ 250,
    /// two reset reasons.
    #[cfg(any(test, feature = "fuzz"))]
    pub fn sample() -> Self {
        Self {
            clock: KernelClock {
                boot: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
                hz: 250,
            },
            reset_reasons: vec!["NOT_SPECIFIED".into(), "NO_SOCKET".into()],
        }
    }

    /// Decodes one ring-buffer record: an event, or a connection's transitions.
    pub fn decode(&self, bytes: &[u8]) -> Result<Record, DecodeError> {
        self.convert_wire(&parse(bytes)?)
    }

    /// Converts a parsed record.
    pub fn convert_wire(&self, wire: &Wire) -> Result<Record, DecodeError> {
        match wire {
            Wire::Event(raw) => self.convert(raw).map(Record::Event),
            Wire::Conn(rec) => self.convert_conn(rec).map(Record::Conn),
        }
    }

    /// Converts a parsed connection record. Times are kept to the microsecond, and
    /// the wall time is the boot time plus the first: what the log keeps (the
    /// header's boot time to the nanosecond, `ns`, the steps' offsets), so a replay
    /// feeds the engine exactly what the live run did.
    pub fn convert_conn(&self, rec: &ConnRecord) -> Result<Conn, DecodeError> {
        let n = rec.steps_len as usize;
        if n == 0 || n > MAX_STEPS {
            return Err(DecodeError::Steps(rec.steps_len));
        }
        let raw = &rec.head;
        let first_ns = rec.steps[0].ts_ns / 1_000 * 1_000;
        let time = self.clock.wall(first_ns);
        let ms = |j: u32| self.clock.jiffies_to_ms(j);
        let steps = rec.steps[..n]
            .iter()
            .map(|s| {
                let old = TcpState::from_kernel(s.old_state);
                let idle = |j: u32| if old.had_data() { ms(j) } else { 0 };
                crate::event::Step {
                    after_us: s.ts_ns.saturating_sub(first_ns) / 1_000,
                    old,
                    new: TcpState::from_kernel(s.new_state),
                    send_idle_ms: idle(s.send_idle_jiffies),
                    recv_idle_ms: idle(s.recv_idle_jiffies),
                    retrans: s.retrans,
                }
            })
            .collect();
        Ok(Conn {
            time,
            mono_ns: first_ns,
            pid: raw.pid,
            tid: raw.tid,
            comm: comm(raw.comm),
            cgroup: raw.cgroup_id,
            owner_known: owner_known(raw.owner_src),
            sock: raw.sock,
            local: addr(raw.family, raw.saddr, raw.sport),
            remote: addr(raw.family, raw.daddr, raw.dport),
            steps,
            totals: (raw.flags & flags::FINAL != 0).then_some(Totals {
                retrans: raw.retrans,
                rto_count: raw.rto_count,
                bytes_acked: rec.bytes_acked,
                bytes_received: rec.bytes_received,
                srtt_us: rec.srtt_us >> 3,
            }),
        })
    }

    fn reason(&self, reason: u32) -> String {
        self.reset_reasons
            .get(reason as usize)
            .cloned()
            .unwrap_or_else(|| reason.to_string())
    }

    /// Converts a parsed wire event.
    pub fn convert(&self, raw: &RawEvent) -> Result<Event, DecodeError> {
        let ms = |j: u32| self.clock.jiffies_to_ms(j);
        let old = TcpState::from_kernel(raw.old_state);
        let new = TcpState::from_kernel(raw.new_state);
        // Before a connection is established its send/receive timestamps are unset.
        let idle = |state: TcpState, jiffies: u32| if state.had_data() { ms(jiffies) } else { 0 };
        let kind = match raw.kind {
            kind::STATE => {
                let (send_idle_ms, recv_idle_ms) = (
                    idle(old, raw.send_idle_jiffies),
                    idle(old, raw.recv_idle_jiffies),
                );
                let closed_by = match (old, new) {
                    (TcpState::Established, TcpState::CloseWait) => Some(Closer::Peer),
                    (TcpState::Established, TcpState::FinWait1) => Some(Closer::Local),
                    _ => None,
                };
                EventKind::State {
                    old,
                    new,
                    idle_ms: send_idle_ms.min(recv_idle_ms),
                    send_idle_ms,
                    recv_idle_ms,
                    closed_by,
                    retrans: raw.retrans,
                }
            }
            kind::CONNECT_ERROR => EventKind::Connect {
                errno: Errno(raw.errno),
                state: new,
            },
            kind::SOCK_ERROR => EventKind::Error {
                errno: Errno(raw.errno),
                state: new,
            },
            kind::RESET_SENT => EventKind::Reset {
                direction: Direction::Sent,
                state: (raw.new_state != 0).then_some(new),
                // Kernels before 6.10 give no reason (no `enum sk_rst_reason`).
                reason: (!self.reset_reasons.is_empty()).then(|| self.reason(raw.reason)),
                idle_ms: 0,
                recv_idle_ms: 0,
                syn: raw.seg_flags & TCP_SYN != 0 && raw.seg_flags & TCP_ACK == 0,
            },
            kind::RESET_RECEIVED => EventKind::Reset {
                direction: Direction::Received,
                state: Some(new),
                reason: None,
                idle_ms: idle(new, raw.send_idle_jiffies).min(idle(new, raw.recv_idle_jiffies)),
                recv_idle_ms: idle(new, raw.recv_idle_jiffies),
                syn: false,
            },
            kind::RETRANSMIT => EventKind::Retransmit {
                state: new,
                retrans: raw.retrans,
                rto_count: raw.rto_count,
                // A handshake never received an ACK: `rcv_tstamp` is unset (the age
                // would be the uptime), so there is no ACK age to give.
                ack_idle_ms: if matches!(new, TcpState::SynSent | TcpState::SynRecv) {
                    0
                } else {
                    ms(raw.ack_idle_jiffies)
                },
                packets_out: raw.packets_out,
                keepalive: raw.flags & flags::KEEPALIVE != 0,
                user_timeout_ms: raw.user_timeout_ms,
                orphan: raw.flags & flags::ORPHAN != 0,
            },
            kind::ACCEPT => EventKind::Accept { state: new },
            other => return Err(DecodeError::Kind(other)),
        };
        Ok(Event {
            time: self.clock.wall(raw.ts_ns),
            mono_ns: raw.ts_ns,
            kind,
            pid: raw.pid,
            tid: raw.tid,
            comm: comm(raw.comm),
            cgroup: raw.cgroup_id,
            owner_known: owner_known(raw.owner_src),
            sock: raw.sock,
            local: addr(raw.family, raw.saddr, raw.sport),
            remote: addr(raw.family, raw.daddr, raw.dport),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use tracer_common::{AsBytes as _, Step};

    use super::*;

    /// The wire bytes of `raw`, as the BPF program writes them (little-endian host).
    fn wire(raw: &RawEvent) -> Vec<u8> {
        raw.as_bytes().to_vec()
    }

    fn decoder() -> Decoder {
        Decoder::sample()
    }

    fn decode_event(bytes: &[u8]) -> Result<Event, DecodeError> {
        match decoder().decode(bytes)? {
            Record::Event(e) => Ok(e),
            other => panic!("not an event: {other:?}"),
        }
    }

    fn conn_wire(rec: &ConnRecord) -> Vec<u8> {
        rec.as_bytes().to_vec()
    }

    /// A client's whole connection: SYN_SENT, ESTABLISHED 41 µs later, its own
    /// close after 2 s idle, FIN_WAIT2, CLOSE.
    fn client_conn() -> ConnRecord {
        let mut head = close_wait();
        head.kind = kind::CONN;
        head.flags = flags::FINAL;
        head.retrans = 3;
        let step = |ts_ns: u64, old: u8, new: u8, idle: u32| Step {
            ts_ns,
            send_idle_jiffies: idle,
            recv_idle_jiffies: idle + 1,
            retrans: 0,
            old_state: old,
            new_state: new,
            pad: [0; 2],
        };
        let mut steps = [Step::ZERO; MAX_STEPS];
        steps[0] = step(5_000_000_123, 7, 2, 900);
        steps[1] = step(5_000_041_999, 2, 1, 900);
        steps[2] = step(7_000_041_999, 1, 4, 500);
        steps[3] = step(7_000_100_000, 4, 5, 0);
        steps[4] = step(7_000_200_000, 5, 7, 0);
        ConnRecord {
            head,
            steps_len: 5,
            srtt_us: 8 * 120,
            bytes_acked: 100,
            bytes_received: 2000,
            born_ns: 6_999_000_000,
            steps,
        }
    }

    #[test]
    fn connection_record_decodes_to_its_transitions() {
        let rec = client_conn();
        assert_eq!(parse_conn(&conn_wire(&rec)).unwrap(), rec);
        let Record::Conn(c) = decoder().decode(&conn_wire(&rec)).unwrap() else {
            panic!("not a connection");
        };
        assert_eq!(c.mono_ns, 5_000_000_000, "to the microsecond");
        assert_eq!(
            c.time,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_005),
            "to the millisecond"
        );
        assert_eq!(
            c.history(),
            "SS E+41 FW1+2000041~2000/2004 FW2+2000100~0/4 C+2000200~"
        );
        assert_eq!(Conn::parse_history(&c.history()).unwrap(), c.steps);
        // As logs before version 5 wrote it: the same steps.
        assert_eq!(
            Conn::parse_history("C>SS E+41 FW1+2000041~2000/2004 FW2+2000100~0/4 C+2000200~0/4")
                .unwrap(),
            c.steps
        );
        let totals = c.totals.unwrap();
        assert_eq!(
            (totals.srtt_us, totals.retrans, totals.bytes_received),
            (120, 3, 2000)
        );
        let events: Vec<Event> = c.events().collect();
        assert_eq!(events.len(), 5);
        assert!(matches!(
            events[2].kind,
            EventKind::State {
                old: TcpState::Established,
                new: TcpState::FinWait1,
                idle_ms: 2000,
                closed_by: Some(Closer::Local),
                ..
            }
        ));
        assert_eq!(events[2].mono_ns, 7_000_041_000);
        // Before the connection had data its idle clock means nothing.
        assert!(matches!(
            events[0].kind,
            EventKind::State { idle_ms: 0, .. }
        ));
        let mut empty = rec;
        empty.steps_len = 0;
        assert_eq!(
            decoder().decode(&conn_wire(&empty)),
            Err(DecodeError::Steps(0))
        );
        empty.steps_len = 9;
        assert_eq!(
            decoder().decode(&conn_wire(&empty)),
            Err(DecodeError::Steps(9))
        );
    }

    fn close_wait() -> RawEvent {
        let mut raw = RawEvent::ZERO;
        raw.ts_ns = 5_000_000_123;
        raw.sock = 0xffff_8881_0241_1bc0;
        raw.cgroup_id = 42;
        raw.pid = 4242;
        raw.tid = 4243;
        raw.kind = kind::STATE;
        raw.family = 2;
        raw.old_state = 1;
        raw.new_state = 8;
        raw.sport = 40000;
        raw.dport = 8080;
        raw.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        raw.daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        raw.comm[..7].copy_from_slice(b"python3");
        raw.send_idle_jiffies = 380;
        raw.recv_idle_jiffies = 375;
        raw.owner_src = owner_src::SOCKET;
        raw
    }

    #[test]
    fn wire_layout_round_trips() {
        let raw = close_wait();
        assert_eq!(parse_raw(&wire(&raw)).unwrap(), raw);
    }

    #[test]
    fn state_event_decodes_idle_and_closer() {
        let e = decode_event(&wire(&close_wait())).unwrap();
        assert_eq!(e.local.to_string(), "127.0.0.1:40000");
        assert_eq!(e.remote.to_string(), "10.1.2.3:8080");
        assert_eq!(
            (e.pid, e.tid, e.comm.as_str(), e.cgroup),
            (4242, 4243, "python3", 42)
        );
        assert!(e.owner_known);
        assert_eq!(e.mono_ns, 5_000_000_123);
        assert_eq!(
            e.time,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_005) + Duration::from_nanos(123)
        );
        let EventKind::State {
            old,
            new,
            idle_ms,
            send_idle_ms,
            recv_idle_ms,
            closed_by,
            ..
        } = e.kind
        else {
            panic!("not a state event: {:?}", e.kind);
        };
        assert_eq!((old, new), (TcpState::Established, TcpState::CloseWait));
        assert_eq!((idle_ms, send_idle_ms, recv_idle_ms), (1500, 1520, 1500));
        assert_eq!(closed_by, Some(Closer::Peer));
    }

    #[test]
    fn idle_is_zero_before_a_connection_had_data() {
        let mut raw = close_wait();
        raw.old_state = 2; // SYN_SENT
        raw.new_state = 7; // CLOSE
        raw.send_idle_jiffies = 600_000;
        let e = decode_event(&wire(&raw)).unwrap();
        assert!(matches!(
            e.kind,
            EventKind::State {
                idle_ms: 0,
                send_idle_ms: 0,
                closed_by: None,
                ..
            }
        ));
    }

    #[test]
    fn ipv6_and_v4_mapped_addresses() {
        let mut raw = close_wait();
        raw.family = 10;
        raw.saddr = std::net::Ipv6Addr::LOCALHOST.octets();
        raw.daddr = "::ffff:10.0.0.7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let e = decode_event(&wire(&raw)).unwrap();
        assert_eq!(e.local.to_string(), "[::1]:40000");
        assert_eq!(e.remote.to_string(), "10.0.0.7:8080");
    }

    #[test]
    fn reset_sent_without_socket_has_reason_and_no_state() {
        let mut raw = close_wait();
        raw.kind = kind::RESET_SENT;
        raw.new_state = 0;
        raw.reason = 1;
        let e = decode_event(&wire(&raw)).unwrap();
        assert_eq!(
            e.kind,
            EventKind::Reset {
                direction: Direction::Sent,
                state: None,
                reason: Some("NO_SOCKET".into()),
                idle_ms: 0,
                recv_idle_ms: 0,
                syn: false,
            }
        );
        raw.reason = 99;
        let e = decode_event(&wire(&raw)).unwrap();
        assert!(matches!(e.kind, EventKind::Reset { reason: Some(ref r), .. } if r == "99"));
    }

    #[test]
    fn connect_error_carries_errno_name() {
        let mut raw = close_wait();
        raw.kind = kind::CONNECT_ERROR;
        raw.errno = libc::EADDRNOTAVAIL;
        let e = decode_event(&wire(&raw)).unwrap();
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["type"], "connect");
        assert_eq!(json["errno"], "EADDRNOTAVAIL");
    }

    #[test]
    fn bad_size_and_kind_are_errors() {
        assert_eq!(decode_event(&[0; 10]), Err(DecodeError::Size(10)));
        let mut raw = close_wait();
        raw.kind = 200;
        assert_eq!(decode_event(&wire(&raw)), Err(DecodeError::Kind(200)));
    }
}
