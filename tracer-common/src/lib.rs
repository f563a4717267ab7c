//! Wire types shared by the kernel programs (`tracer-ebpf`) and userspace (`tracer`).
//!
//! Everything here is `#[repr(C)]` with fixed-width integers and explicit padding, so
//! the layout is the same on both sides and nothing has implicit padding.
//!
//! - [`RawEvent`]: the one fixed-size record the kernel writes to the ring buffer.
//! - [`Offsets`]: kernel struct field offsets, computed in userspace from the running
//!   kernel's BTF and handed to the programs as a read-only global at load time.
//! - [`Owner`]: who created or accepted a socket, carried by socket in a kernel map.
//! - `LOSS_*`: indexes into the per-CPU loss counter array.
#![no_std]

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`), the one
/// place they are numbered: the kernel programs compare with them and userspace
/// decodes with them.
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const FIN_WAIT1: i32 = 4;
    pub const FIN_WAIT2: i32 = 5;
    pub const TIME_WAIT: i32 = 6;
    pub const CLOSE: i32 = 7;
    pub const CLOSE_WAIT: i32 = 8;
    pub const LAST_ACK: i32 = 9;
    pub const LISTEN: i32 = 10;
    pub const CLOSING: i32 = 11;
    pub const NEW_SYN_RECV: i32 = 12;
    pub const BOUND_INACTIVE: i32 = 13;

    /// ESTABLISHED, FIN_WAIT1/2, TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING: states
    /// reached only after the connection was established, so its last-send and
    /// last-receive timestamps mean something.
    pub const fn had_data(state: i32) -> bool {
        matches!(
            state,
            ESTABLISHED | FIN_WAIT1 | FIN_WAIT2 | TIME_WAIT | CLOSE_WAIT | LAST_ACK | CLOSING
        )
    }
}

/// The errno values the kernel programs compare with or report themselves.
pub mod errno {
    /// No free local port (the port search of connect() failed).
    pub const EADDRNOTAVAIL: i32 = 99;
    /// A non-blocking connect() in progress: not an error.
    pub const EINPROGRESS: i32 = 115;
}

/// Event kinds (stable numbers: they are the wire format).
pub mod kind {
    /// A TCP state transition (`sock:inet_sock_set_state`).
    pub const STATE: u8 = 1;
    /// A `connect()` that returned an error synchronously.
    pub const CONNECT_ERROR: u8 = 2;
    /// An error reported on the socket later (`sock:inet_sk_error_report`).
    pub const SOCK_ERROR: u8 = 3;
    /// A reset sent by this node (`tcp:tcp_send_reset`).
    pub const RESET_SENT: u8 = 4;
    /// A reset received by a local socket (`tcp:tcp_receive_reset`).
    pub const RESET_RECEIVED: u8 = 5;
    /// A segment retransmitted (`tcp:tcp_retransmit_skb`).
    pub const RETRANSMIT: u8 = 6;
    /// A connection handed to a process by `accept()`/`accept4()` (only with
    /// every transition streamed: otherwise the socket's owner is updated in place).
    pub const ACCEPT: u8 = 7;
    /// A [`ConnRecord`](super::ConnRecord): the state transitions a socket went
    /// through since its last record, shipped at once at ->CLOSE (the connection
    /// record) or when something about it must be seen live.
    pub const CONN: u8 = 8;
}

/// Where the owner fields of an event came from.
pub mod owner_src {
    /// The task that happened to run when the event fired (may be unrelated in softirq).
    pub const CURRENT_TASK: u8 = 0;
    /// The process that created (connect/listen) or accepted the socket.
    pub const SOCKET: u8 = 1;
    /// Nobody: the socket's owner is not known (it predates the trace) and the event
    /// fired outside any process' context (softirq, timer), so pid and comm are zero
    /// rather than whichever task the interrupt happened to land on.
    pub const NONE: u8 = 2;
    /// The owner of the listener an accepted socket was cloned from (softirq), until
    /// the first transition the socket takes in a process' context (its `close()`)
    /// names the process that held it; read as known.
    pub const LISTENER: u8 = 3;
}

/// Key of the kernel's listener map: network namespace inode and local port. The
/// kernel programs and userspace (listeners found in `/proc`) both build it here.
pub const fn listener_key(netns_inum: u32, port: u16) -> u64 {
    ((netns_inum as u64) << 32) | port as u64
}

/// Bits of [`RawEvent::flags`].
pub mod flags {
    /// `SO_KEEPALIVE` is set on the socket.
    pub const KEEPALIVE: u8 = 1;
    /// `SOCK_DEAD`: the application closed the socket (`sock_orphan`); the kernel
    /// alone still holds it (FIN_WAIT1, CLOSING, LAST_ACK retransmitting the close).
    pub const ORPHAN: u8 = 2;
    /// On a [`ConnRecord`](super::ConnRecord): the socket reached CLOSE, this is its
    /// last record (the connection record).
    pub const FINAL: u8 = 4;
}

/// Layouts of the classic `tcp:tcp_send_reset` record.
pub mod rst_layout {
    /// Linux 6.10+: its own event with `reason` and the addresses as `sockaddr_in6`-sized
    /// `saddr`/`daddr`; fires also when there is no socket.
    pub const SOCKADDR: u32 = 1;
    /// Before 6.10: the `tcp_event_sk_skb` class (`sport`, `dport`, `saddr[4]`,
    /// `daddr[4]`, `saddr_v6[16]`, `daddr_v6[16]`, `family` from 5.15 or so); fires only
    /// for a full socket.
    pub const SPLIT: u32 = 2;
}

/// Indexes into the `LOSSES` per-CPU array.
pub const LOSS_RINGBUF_FULL: u32 = 0;
/// The socket-owner map could not take an entry.
pub const LOSS_OWNER_MAP: u32 = 1;
/// The in-flight `connect()` argument map could not take an entry.
pub const LOSS_CONNECT_MAP: u32 = 2;
/// A kernel read failed and the event was dropped.
pub const LOSS_READ: u32 = 3;
/// Number of loss counters.
pub const LOSS_COUNTERS: u32 = 4;

/// Transitions a socket's record holds; a ninth ships the record early.
pub const MAX_STEPS: usize = 8;

/// One state transition kept in the kernel until the socket's record ships.
/// 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// `bpf_ktime_get_ns()` of the transition.
    pub ts_ns: u64,
    /// As [`RawEvent::send_idle_jiffies`], when the old state had carried data.
    pub send_idle_jiffies: u32,
    pub recv_idle_jiffies: u32,
    /// `tcp_sock.total_retrans` at the transition.
    pub retrans: u32,
    pub old_state: u8,
    pub new_state: u8,
    pub pad: [u8; 2],
}

impl Step {
    pub const ZERO: Self = Self {
        ts_ns: 0,
        send_idle_jiffies: 0,
        recv_idle_jiffies: 0,
        retrans: 0,
        old_state: 0,
        new_state: 0,
        pad: [0; 2],
    };
}

/// A socket's per-connection state in the kernel (map `SOCKS`, by socket) and, as
/// is, the record shipped on the ring buffer ([`kind::CONN`]): the owner and the
/// transitions since the last record. The head is a [`RawEvent`] (owner, 4-tuple,
/// current state, `flags::FINAL` on the last record), so one decoder reads both;
/// its `ts_ns` is the last step's, its `jiffies` unused. 360 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRecord {
    /// Valid entries of `steps`. Written after the entry it counts. First: in the
    /// kernel's map it shares a cache line with the key, and every transition
    /// reads and writes it (from the CPUs of both ends: each line costs a miss).
    pub steps_len: u32,
    /// `tcp_sock.srtt_us` (8 times the smoothed RTT in µs) at the record.
    pub srtt_us: u32,
    pub head: RawEvent,
    /// `tcp_sock.bytes_acked` / `bytes_received` at the record.
    pub bytes_acked: u64,
    pub bytes_received: u64,
    /// When the socket's entry took its first step (that step's `bpf_ktime_get_ns()`;
    /// 0 until then): with `head.sock`, the entry's identity — a freed socket's
    /// address is soon another socket's.
    pub born_ns: u64,
    pub steps: [Step; MAX_STEPS],
}

impl ConnRecord {
    pub const SIZE: usize = core::mem::size_of::<Self>();
}

const _: () = assert!(ConnRecord::SIZE == 360);

/// `AF_INET` as the kernel numbers it.
pub const AF_INET: u16 = 2;
/// `AF_INET6` as the kernel numbers it.
pub const AF_INET6: u16 = 10;

/// One event on the ring buffer. 136 bytes, 8-byte aligned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// Socket identity (the kernel's `struct sock *`), stable for the socket's life.
    pub sock: u64,
    /// cgroup v2 id of the owner.
    pub cgroup_id: u64,
    /// `bpf_jiffies64()` when the event fired.
    pub jiffies: u64,
    /// Owner's process id (tgid).
    pub pid: u32,
    /// Owner's thread id.
    pub tid: u32,
    /// One of [`kind`].
    pub kind: u8,
    /// [`AF_INET`] or [`AF_INET6`] (low byte).
    pub family: u8,
    /// Previous TCP state (state events).
    pub old_state: u8,
    /// New TCP state (state events) or the socket's state at the event.
    pub new_state: u8,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    /// Local address; IPv4 in the first four bytes.
    pub saddr: [u8; 16],
    /// Remote address; IPv4 in the first four bytes.
    pub daddr: [u8; 16],
    /// Owner's command name, NUL padded.
    pub comm: [u8; 16],
    /// Jiffies since the socket last sent data (`tcp_sock.lsndtime`).
    pub send_idle_jiffies: u32,
    /// Jiffies since the socket last received data (`icsk_ack.lrcvtime`).
    pub recv_idle_jiffies: u32,
    /// Jiffies since the last ACK from the peer (`tcp_sock.rcv_tstamp`).
    pub ack_idle_jiffies: u32,
    /// Positive errno (connect and socket errors).
    pub errno: i32,
    /// Reset reason (`enum sk_rst_reason`) for resets sent.
    pub reason: u32,
    /// `tcp_sock.total_retrans`.
    pub retrans: u32,
    /// `tcp_sock.packets_out`: segments sent and not yet acknowledged.
    pub packets_out: u32,
    /// `icsk_user_timeout` (`TCP_USER_TIMEOUT`), milliseconds; 0 when unset.
    pub user_timeout_ms: u32,
    /// One of [`owner_src`].
    pub owner_src: u8,
    /// Bits of [`flags`].
    pub flags: u8,
    /// `icsk_retransmits`: retransmission timeouts in a row without an ACK (before
    /// this one, on retransmit events).
    pub rto_count: u8,
    /// TCP flags of the segment a sent reset answers (`SYN` = 0x02); resets sent only.
    pub seg_flags: u8,
    /// Explicit padding to a multiple of 8.
    pub pad: [u8; 4],
}

impl RawEvent {
    /// Size on the wire.
    pub const SIZE: usize = core::mem::size_of::<Self>();

    /// An all-zero event.
    pub const ZERO: Self = Self {
        ts_ns: 0,
        sock: 0,
        cgroup_id: 0,
        jiffies: 0,
        pid: 0,
        tid: 0,
        kind: 0,
        family: 0,
        old_state: 0,
        new_state: 0,
        sport: 0,
        dport: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        comm: [0; 16],
        send_idle_jiffies: 0,
        recv_idle_jiffies: 0,
        ack_idle_jiffies: 0,
        errno: 0,
        reason: 0,
        retrans: 0,
        packets_out: 0,
        user_timeout_ms: 0,
        owner_src: 0,
        flags: 0,
        rto_count: 0,
        seg_flags: 0,
        pad: [0; 4],
    };
}

const _: () = assert!(RawEvent::SIZE == 136);

/// The process that owns a socket, kept in the kernel's owner map by socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Command name.
    pub comm: [u8; 16],
}

/// Byte offsets of the kernel fields the programs read, from the running kernel's BTF.
///
/// Socket fields are relative to the start of `struct sock` (which begins with
/// `sock_common`, and is the first member of `inet_sock`, `inet_connection_sock` and
/// `tcp_sock`). `rst_*` are offsets in the classic `tcp:tcp_send_reset` record, read
/// from its tracefs format.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_family: u32,
    pub skc_state: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub sk_protocol: u32,
    pub sk_err: u32,
    pub sk_flags: u32,
    pub inet_sport: u32,
    pub icsk_lrcvtime: u32,
    pub icsk_user_timeout: u32,
    pub icsk_retransmits: u32,
    pub tp_lsndtime: u32,
    pub tp_rcv_tstamp: u32,
    pub tp_total_retrans: u32,
    pub tp_packets_out: u32,
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    pub rst_skaddr: u32,
    pub rst_state: u32,
    /// Offset of `reason` (Linux 6.10+); meaningful only with `rst_has_reason`.
    pub rst_reason: u32,
    pub rst_has_reason: u32,
    /// One of [`rst_layout`]: how the record carries the addresses.
    pub rst_layout: u32,
    /// [`rst_layout::SOCKADDR`]: `saddr`/`daddr` (`sockaddr_in`/`sockaddr_in6`).
    /// [`rst_layout::SPLIT`]: `saddr_v6`/`daddr_v6` (IPv4 v4-mapped).
    pub rst_saddr: u32,
    pub rst_daddr: u32,
    /// [`rst_layout::SPLIT`]: `sport`/`dport`, host byte order.
    pub rst_sport: u32,
    pub rst_dport: u32,
    pub rst_skbaddr: u32,
    /// `sk_buff.data`: at `tcp_send_reset` it points at the offending segment's TCP header.
    pub skb_data: u32,
    /// Nonzero when the connect() system-call hooks are off: a connect whose port
    /// search or 4-tuple check failed (SYN_SENT -> CLOSE with no local port, or with
    /// no segment ever sent from a bound one, in the caller's context) is reported
    /// as the EADDRNOTAVAIL that connect() returned.
    pub infer_port_exhaustion: u32,
    /// Nonzero when `sock:inet_sk_error_report` is missing (Linux < 5.12): a socket
    /// going to CLOSE with `sk_err` set is reported as that error, before the state
    /// change, as the error report would have been.
    pub infer_sock_errors: u32,
    /// `sock_common.skc_net.net` (the socket's `struct net *`) and `net.ns.inum`: a
    /// listener is known by network namespace and port.
    pub skc_net: u32,
    pub net_inum: u32,
    /// `tcp_sock.bytes_acked`, `bytes_received`, `srtt_us`: read once, at the record.
    pub tp_bytes_acked: u32,
    pub tp_bytes_received: u32,
    pub tp_srtt_us: u32,
    /// `tcp_sock.segs_out`: zero at SYN_SENT -> CLOSE means no SYN ever left (the
    /// 4-tuple check of `inet_hash_connect` failed: EADDRNOTAVAIL).
    pub tp_segs_out: u32,
    /// Nonzero: every transition is its own event (`--every-transition`), as
    /// before connection records.
    pub stream_all: u32,
    /// A close (ESTABLISHED -> FIN_WAIT1 or CLOSE_WAIT) after this many jiffies
    /// idle ships the socket's record at once: an idle close is what the keep-alive
    /// detectors need live.
    pub live_idle_jiffies: u32,
    /// Nonzero once userspace has filled the offsets; programs do nothing before.
    pub ready: u32,
}

impl Offsets {
    /// All zero: the programs' default until userspace overrides the global.
    pub const ZERO: Self = Self {
        skc_daddr: 0,
        skc_rcv_saddr: 0,
        skc_dport: 0,
        skc_family: 0,
        skc_state: 0,
        skc_v6_daddr: 0,
        skc_v6_rcv_saddr: 0,
        sk_protocol: 0,
        sk_err: 0,
        sk_flags: 0,
        inet_sport: 0,
        icsk_lrcvtime: 0,
        icsk_user_timeout: 0,
        icsk_retransmits: 0,
        tp_lsndtime: 0,
        tp_rcv_tstamp: 0,
        tp_total_retrans: 0,
        tp_packets_out: 0,
        task_files: 0,
        files_fdt: 0,
        fdt_max_fds: 0,
        fdt_fd: 0,
        file_private_data: 0,
        socket_sk: 0,
        rst_skaddr: 0,
        rst_state: 0,
        rst_reason: 0,
        rst_has_reason: 0,
        rst_layout: 0,
        rst_saddr: 0,
        rst_daddr: 0,
        rst_sport: 0,
        rst_dport: 0,
        rst_skbaddr: 0,
        skb_data: 0,
        infer_port_exhaustion: 0,
        infer_sock_errors: 0,
        skc_net: 0,
        net_inum: 0,
        tp_bytes_acked: 0,
        tp_bytes_received: 0,
        tp_srtt_us: 0,
        tp_segs_out: 0,
        stream_all: 0,
        live_idle_jiffies: 0,
        ready: 0,
    };
}

/// Arguments of a `connect()` in flight, kept by thread between enter and exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectArgs {
    pub fd: u64,
    pub uservaddr: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all three are repr(C), made of integers and byte arrays with explicit
    // padding, so every bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::RawEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Offsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Owner {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnRecord {}

    /// The bytes of a wire type as the kernel writes them (tests and seeds build
    /// records in code).
    pub trait AsBytes: aya::Pod {
        fn as_bytes(&self) -> &[u8] {
            // SAFETY: a Pod is plain data with no uninitialised bytes (see above);
            // the slice borrows `self` for its size.
            unsafe {
                core::slice::from_raw_parts(
                    core::ptr::from_ref(self).cast::<u8>(),
                    core::mem::size_of_val(self),
                )
            }
        }
    }

    impl<T: aya::Pod> AsBytes for T {}
}

#[cfg(feature = "user")]
pub use user::AsBytes;
