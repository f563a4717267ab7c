//! conntrace kernel programs: TCP connection life cycle from stable tracepoints only.
//!
//! | program | hook | what it yields | first kernel |
//! |---|---|---|---|
//! | `inet_sock_set_state` | tp_btf `inet_sock_set_state(sk, old, new)` | state changes with idle times; socket owners; socket errors from `sk_err` where the error report is missing | 5.5 (tp_btf) |
//! | `inet_sk_error_report` | tp_btf `inet_sk_error_report(sk)` | asynchronous socket errors (`sk_err`) | 5.12 |
//! | `tcp_receive_reset` | tp_btf `tcp_receive_reset(sk)` | resets received, with the state | 5.5 |
//! | `tcp_retransmit_skb` | tp_btf `tcp_retransmit_skb(sk, skb, ...)` | retransmits, with time since the last ACK | 5.5 |
//! | `tcp_send_reset` | tracepoint `tcp/tcp_send_reset` | resets sent; with reason and also with no socket from 6.10 | 4.15 |
//! | `sys_enter_connect`/`sys_exit_connect` | tracepoints `syscalls/*_connect` | synchronous connect errors | any |
//! | `sys_exit_accept`/`sys_exit_accept4` | tracepoints `syscalls/*_accept*` | the accepting process of a socket | any |
//!
//! Helpers used: `bpf_skc_to_tcp_sock` (5.9), ring buffer and `bpf_ringbuf_query`
//! (5.8), `bpf_jiffies64` (5.5): every program loads from 5.10 on, checked by the
//! kernel matrix (`cargo xtask matrix`) on 5.10, 6.1, 6.12 and the host's kernel.
//!
//! No program runs per packet on the data path: idle times are read from the socket's
//! own timestamps at the state change. Struct offsets come from userspace (BTF).
//!
//! A socket's transitions are kept in its [`SOCKS`] entry and shipped together as one
//! [`ConnRecord`]: at ->CLOSE (the connection record, with its totals), and earlier
//! only when they must be seen live ([`ships_now`], and before any other event of the
//! socket so that order holds). `--every-transition` (`Offsets::stream_all`) ships
//! each transition as its own event instead.
#![no_std]
#![no_main]

mod sock;

use aya_ebpf::{
    helpers::generated::bpf_jiffies64,
    macros::{btf_tracepoint, map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::{
    flags, kind, owner_src, rst_layout, ConnRecord, ConnectArgs, Offsets, Owner, RawEvent,
    AF_INET6, LOSS_CONNECT_MAP, LOSS_COUNTERS, LOSS_OWNER_MAP, LOSS_READ, LOSS_RINGBUF_FULL,
    MAX_STEPS,
};

use crate::sock::{
    current_owner, fd_to_sock, fill_sock, fill_sock_state, is_tcp, read, read_sockaddr, tcp_sock,
    Direct, Mem, Probe,
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;
const TCP_LISTEN: i32 = 10;
const EINPROGRESS: i64 = 115;
const EADDRNOTAVAIL: i32 = 99;

/// ESTABLISHED, FIN_WAIT1/2, TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING.
fn had_data(state: i32) -> bool {
    state == TCP_ESTABLISHED || (4..=6).contains(&state) || (8..=9).contains(&state) || state == 11
}

/// Kernel field offsets, filled by userspace at load time.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets::ZERO;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Socket -> its [`ConnRecord`]: owner (connect, listen, accept, or the listener it
/// was cloned from) and the transitions not yet shipped; removed at ->CLOSE. A plain
/// hash map, not LRU: when it is full an insert fails and is counted
/// (`LOSS_OWNER_MAP`), where an LRU map would evict a live socket's owner without a
/// trace. Not preallocated (`BPF_F_NO_PREALLOC`): 352 bytes a socket are taken as
/// sockets come. What comes after ->CLOSE (the error report, a reset sent by
/// close()) carries the socket's 4-tuple; userspace hands it the owner of the
/// connection that closed on it.
#[map]
static SOCKS: HashMap<u64, ConnRecord> = HashMap::with_max_entries(131_072, BPF_F_NO_PREALLOC);

const BPF_F_NO_PREALLOC: u32 = 1;

/// Scratch space to build a new [`SOCKS`] entry (too big for the stack).
#[map]
static SCRATCH: PerCpuArray<ConnRecord> = PerCpuArray::with_max_entries(1, 0);

/// Network namespace and local port of a listening socket ([`listener_key`]) -> its
/// owner, so an accepted child has an owner from its first event (softirq) until
/// `accept()` names the exact process. Pods listen on the same ports in their own
/// namespaces: the port alone would hand one pod's connections to another.
/// Removed when the listener closes; full: the insert fails and is counted.
#[map]
static LISTENERS: HashMap<u64, Owner> = HashMap::with_max_entries(16_384, 0);

/// [`tracer_common::listener_key`] of a typed TCP socket's namespace and `port`.
fn listener_key(tp: *const u8, port: u16, off: &Offsets) -> Result<u64, i64> {
    let net: *const u8 = Direct::get(tp, off.skc_net)?;
    let inum: u32 = Direct::get(net, off.net_inum)?;
    Ok(tracer_common::listener_key(inum, port))
}

/// Thread id -> `connect()` arguments, between syscall entry and exit.
#[map]
static CONNECTS: HashMap<u64, ConnectArgs> = HashMap::with_max_entries(16384, 0);

/// Every event that could not be delivered, by cause (`LOSS_*`).
#[map]
static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_COUNTERS, 0);

fn offsets() -> Offsets {
    // SAFETY: OFFSETS is a plain static; the volatile read stops the compiler from
    // folding the all-zero default that userspace replaces at load time.
    unsafe { core::ptr::read_volatile(&raw const OFFSETS) }
}

fn count_loss(index: u32) {
    if let Some(counter) = LOSSES.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

/// Unread bytes past which the reader is woken at once; below, it drains on its
/// own timer. One wakeup per event would cost more than the event itself.
const WAKEUP_BYTES: u64 = 1 << 20;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Puts an event or a connection record on the ring buffer; a full ring is counted.
fn emit<T>(record: &T) {
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<T>(record, flags).is_err() {
        count_loss(LOSS_RINGBUF_FULL);
    }
}

/// Starts (or restarts: the memory may have held an older socket) `sk`'s entry with
/// `owner`; the entry, or `None` when the map is full (counted).
fn track(sk: u64, owner: &Owner, src: u8) -> Option<*mut ConnRecord> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    set_entry_owner(scratch, owner, src);
    // SAFETY: per-CPU scratch slot, only this program run uses it; the map copies it.
    unsafe {
        (*scratch).steps_len = 0;
        if SOCKS.insert(sk, &*scratch, 0).is_err() {
            count_loss(LOSS_OWNER_MAP);
            return None;
        }
    }
    SOCKS.get_ptr_mut(sk)
}

/// Replaces an entry's (or the scratch entry's) owner.
fn set_entry_owner(rec: *mut ConnRecord, owner: &Owner, src: u8) {
    // SAFETY: `rec` points at a live map value.
    unsafe {
        let head = &mut (*rec).head;
        head.pid = owner.pid;
        head.tid = owner.tid;
        head.cgroup_id = owner.cgroup_id;
        head.comm = owner.comm;
        head.owner_src = src;
    }
}

/// Owner of `sk` if known; else the current task when the hook is known to run in
/// the context of a process acting on the socket (`in_task`), flagged as such; else
/// nobody (pid 0): in softirq the current task is whoever the interrupt landed on.
fn set_owner(ev: &mut RawEvent, sk: u64, in_task: bool) {
    // SAFETY: the value is copied out at once; the map value memory stays valid for
    // the duration of the program.
    let owner = match unsafe { SOCKS.get(sk) } {
        Some(rec) if rec.head.owner_src != owner_src::NONE => {
            ev.owner_src = if rec.head.owner_src == owner_src::CURRENT_TASK {
                owner_src::CURRENT_TASK
            } else {
                owner_src::SOCKET
            };
            Owner {
                cgroup_id: rec.head.cgroup_id,
                pid: rec.head.pid,
                tid: rec.head.tid,
                comm: rec.head.comm,
            }
        }
        _ if in_task => {
            ev.owner_src = owner_src::CURRENT_TASK;
            current_owner()
        }
        _ => {
            ev.owner_src = owner_src::NONE;
            return;
        }
    };
    ev.pid = owner.pid;
    ev.tid = owner.tid;
    ev.cgroup_id = owner.cgroup_id;
    ev.comm = owner.comm;
}

/// Ships `rec`'s transitions (and, on the `last` record, the connection's totals)
/// as one ring-buffer record, and empties them.
#[inline(always)]
fn ship<M: Mem>(
    rec: *mut ConnRecord,
    sk: u64,
    tp: *const u8,
    off: &Offsets,
    last: bool,
) -> Result<(), i64> {
    // SAFETY: `rec` points at a live map value; `tp` is read through `M`.
    unsafe {
        let head = &mut (*rec).head;
        head.ts_ns = aya_ebpf::helpers::bpf_ktime_get_ns();
        head.jiffies = bpf_jiffies64();
        head.kind = kind::CONN;
        head.sock = sk;
        fill_sock::<M>(head, tp, off)?;
        let state: u8 = M::get(tp, off.skc_state)?;
        head.new_state = state;
        head.flags = if last { flags::FINAL } else { 0 };
        if last {
            head.retrans = M::get(tp, off.tp_total_retrans)?;
            head.rto_count = M::get(tp, off.icsk_retransmits)?;
            (*rec).bytes_acked = M::get(tp, off.tp_bytes_acked)?;
            (*rec).bytes_received = M::get(tp, off.tp_bytes_received)?;
            (*rec).srtt_us = M::get(tp, off.tp_srtt_us)?;
        }
        emit(&*rec);
        (*rec).steps_len = 0;
    }
    Ok(())
}

/// Ships what `sk`'s entry holds before an event about it, so its transitions reach
/// userspace in order with the event.
#[inline(always)]
fn ship_pending<M: Mem>(sk: u64, tp: *const u8, off: &Offsets) -> Result<(), i64> {
    if off.stream_all != 0 {
        return Ok(());
    }
    if let Some(rec) = SOCKS.get_ptr_mut(sk) {
        // SAFETY: live map value.
        if unsafe { (*rec).steps_len } != 0 {
            return ship::<M>(rec, sk, tp, off, false);
        }
    }
    Ok(())
}

fn new_event(kind: u8, sk: u64) -> RawEvent {
    let mut ev = RawEvent::ZERO;
    // SAFETY: helper calls without pointer arguments.
    unsafe {
        ev.ts_ns = aya_ebpf::helpers::bpf_ktime_get_ns();
        ev.jiffies = bpf_jiffies64();
    }
    ev.kind = kind;
    ev.sock = sk;
    ev
}

fn report(result: Result<(), i64>) -> i32 {
    if result.is_err() {
        count_loss(LOSS_READ);
    }
    0
}

/// Transitions that only ever run in the system call of a process acting on the
/// socket: connect(), listen(), close()/shutdown(). Everything else (handshake
/// completion, peer FIN, resets, timers) may run in softirq on any task.
fn in_task_transition(old: i32, new: i32) -> bool {
    new == TCP_SYN_SENT
        || new == TCP_LISTEN
        || (new == TCP_FIN_WAIT1 && (old == TCP_ESTABLISHED || old == TCP_SYN_RECV))
        || (old == TCP_CLOSE_WAIT && new == TCP_LAST_ACK)
        || (old == TCP_LISTEN && new == TCP_CLOSE)
}

/// `trace_inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate)`
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    report(try_inet_sock_set_state(&ctx))
}

/// Whether a transition ships the socket's record at once rather than at ->CLOSE:
/// listeners (rare, and every accepted socket needs its listener known), and a
/// close by either side after idling (the idle-timeout and keep-alive race
/// detectors). A socket parked in CLOSE_WAIT after a prompt close (a leak) is read
/// from the map by userspace within seconds; a reset or error on it ships what it
/// holds first, so the engine's order holds.
#[inline(always)]
fn ships_now(old: i32, new: i32, send_idle: u32, recv_idle: u32, off: &Offsets) -> bool {
    new == TCP_LISTEN
        || old == TCP_LISTEN && new == TCP_CLOSE
        || (old == TCP_ESTABLISHED
            && (new == TCP_FIN_WAIT1 || new == TCP_CLOSE_WAIT)
            && send_idle.min(recv_idle) >= off.live_idle_jiffies)
}

fn try_inet_sock_set_state(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let off = offsets();
    if off.ready == 0 {
        return Ok(());
    }
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    // Null unless a full TCP socket; typed for plain loads.
    let tp = tcp_sock(sk);
    if tp.is_null() {
        return Ok(());
    }
    let key = sk as u64;
    let in_task = in_task_transition(old, new);

    // The socket's entry: started by connect() and listen() in the caller's context,
    // or inherited from the listener by a child cloned in softirq.
    let rec = if new == TCP_SYN_SENT || new == TCP_LISTEN {
        let owner = current_owner();
        if new == TCP_LISTEN {
            let sport: u16 = Direct::get(tp, off.inet_sport)?;
            if LISTENERS
                .insert(listener_key(tp, u16::from_be(sport), &off)?, owner, 0)
                .is_err()
            {
                count_loss(LOSS_OWNER_MAP);
            }
        }
        track(key, &owner, owner_src::SOCKET)
    } else if old == TCP_LISTEN && new == TCP_SYN_RECV {
        let sport: u16 = Direct::get(tp, off.inet_sport)?;
        let key_l = listener_key(tp, u16::from_be(sport), &off)?;
        // SAFETY: copied out at once.
        match unsafe { LISTENERS.get(key_l) } {
            Some(owner) => {
                let owner = *owner;
                track(key, &owner, owner_src::LISTENER)
            }
            None => track(key, &ZERO_OWNER, owner_src::NONE),
        }
    } else {
        match SOCKS.get_ptr_mut(key) {
            Some(rec) => Some(rec),
            // A socket older than the trace.
            None if in_task => track(key, &current_owner(), owner_src::CURRENT_TASK),
            None => track(key, &ZERO_OWNER, owner_src::NONE),
        }
    };
    // The first transition in a process' context (its close()) names the process
    // holding a socket known only by its listener (a prefork worker, not the
    // master that listened; within the listener's own process the listening
    // thread stays its name), or not at all.
    if let Some(rec) = rec {
        // SAFETY: live map value.
        let (src, pid) = unsafe { ((*rec).head.owner_src, (*rec).head.pid) };
        if in_task && src != owner_src::SOCKET {
            let current = current_owner();
            if src != owner_src::LISTENER {
                set_entry_owner(rec, &current, owner_src::CURRENT_TASK);
            } else if current.pid != pid {
                set_entry_owner(rec, &current, owner_src::SOCKET);
            } else {
                // SAFETY: live map value.
                unsafe { (*rec).head.owner_src = owner_src::SOCKET };
            }
        }
    }

    // Without the error report (Linux < 5.12): tcp_reset(), tcp_write_err() and ICMP
    // errors of a connecting socket set sk_err before tcp_done() moves it to CLOSE, so
    // the error is read here and reported first, where the error report would be.
    if off.infer_sock_errors != 0 && new == TCP_CLOSE {
        let err: i32 = Direct::get(tp, off.sk_err)?;
        if err != 0 {
            if let Some(rec) = rec {
                if off.stream_all == 0 && unsafe { (*rec).steps_len } != 0 {
                    ship::<Direct>(rec, key, tp, &off, false)?;
                }
            }
            let mut ev = new_event(kind::SOCK_ERROR, key);
            fill_sock::<Direct>(&mut ev, tp, &off)?;
            set_owner(&mut ev, key, in_task);
            ev.errno = err;
            ev.old_state = old as u8;
            ev.new_state = old as u8;
            emit(&ev);
        }
    }

    // SAFETY: helper without arguments.
    let now = unsafe { bpf_jiffies64() } as u32;
    let (mut send_idle, mut recv_idle, mut retrans) = (0u32, 0u32, 0u32);
    // Idle times mean something only once the connection carried data.
    if had_data(old) {
        let lsndtime: u32 = Direct::get(tp, off.tp_lsndtime)?;
        let lrcvtime: u32 = Direct::get(tp, off.icsk_lrcvtime)?;
        send_idle = now.wrapping_sub(lsndtime);
        recv_idle = now.wrapping_sub(lrcvtime);
        retrans = Direct::get(tp, off.tp_total_retrans)?;
    }

    match rec {
        Some(rec) if off.stream_all == 0 => {
            // SAFETY: live map value; the index is masked into the array.
            unsafe {
                if (*rec).steps_len as usize >= MAX_STEPS {
                    ship::<Direct>(rec, key, tp, &off, false)?;
                }
                let i = ((*rec).steps_len as usize) & (MAX_STEPS - 1);
                let step = &mut (*rec).steps[i];
                step.ts_ns = aya_ebpf::helpers::bpf_ktime_get_ns();
                step.send_idle_jiffies = send_idle;
                step.recv_idle_jiffies = recv_idle;
                step.retrans = retrans;
                step.old_state = old as u8;
                step.new_state = new as u8;
                (*rec).steps_len = i as u32 + 1;
                // The 4-tuple, for userspace's reads of open sockets: set while the
                // connection opens (a shipped record refills it; it does not change).
                if !had_data(old) {
                    (*rec).head.sock = key;
                    fill_sock::<Direct>(&mut (*rec).head, tp, &off)?;
                }
            }
            if new == TCP_CLOSE || ships_now(old, new, send_idle, recv_idle, &off) {
                ship::<Direct>(rec, key, tp, &off, new == TCP_CLOSE)?;
            }
        }
        _ => {
            // Every transition its own event: `--every-transition`, or a socket the
            // full map could not take.
            let mut ev = new_event(kind::STATE, key);
            ev.old_state = old as u8;
            ev.new_state = new as u8;
            fill_sock::<Direct>(&mut ev, tp, &off)?;
            set_owner(&mut ev, key, in_task);
            ev.send_idle_jiffies = send_idle;
            ev.recv_idle_jiffies = recv_idle;
            ev.retrans = retrans;
            emit(&ev);
        }
    }

    // Without the connect() hooks: a connect that found no free local port fails
    // between ->SYN_SENT and port assignment (inet_hash_connect), in the caller's
    // context, with no port; that is connect()'s EADDRNOTAVAIL.
    if off.infer_port_exhaustion != 0 && old == TCP_SYN_SENT && new == TCP_CLOSE {
        let sport: u16 = Direct::get(tp, off.inet_sport)?;
        if sport == 0 {
            let mut ev = new_event(kind::CONNECT_ERROR, key);
            fill_sock::<Direct>(&mut ev, tp, &off)?;
            set_owner(&mut ev, key, true);
            ev.old_state = old as u8;
            ev.new_state = new as u8;
            ev.errno = EADDRNOTAVAIL;
            emit(&ev);
        }
    }

    // The socket is done: its entry goes (later events of it are matched by 4-tuple
    // in userspace).
    if new == TCP_CLOSE {
        if old == TCP_LISTEN {
            let sport: u16 = Direct::get(tp, off.inet_sport)?;
            let _ = LISTENERS.remove(listener_key(tp, u16::from_be(sport), &off)?);
        }
        let _ = SOCKS.remove(key);
    }
    Ok(())
}

const ZERO_OWNER: Owner = Owner {
    cgroup_id: 0,
    pid: 0,
    tid: 0,
    comm: [0; 16],
};

/// `trace_inet_sk_error_report(const struct sock *sk)`: `sk_err` is already set.
#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: BtfTracePointContext) -> i32 {
    report(try_sock_event(&ctx, kind::SOCK_ERROR))
}

/// `trace_tcp_receive_reset(struct sock *sk)`: fires before the state changes.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    report(try_sock_event(&ctx, kind::RESET_RECEIVED))
}

/// `trace_tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, ...)`.
/// Retransmits are rare on a healthy node; one event each.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    report(try_sock_event(&ctx, kind::RETRANSMIT))
}

fn try_sock_event(ctx: &BtfTracePointContext, kind: u8) -> Result<(), i64> {
    let off = offsets();
    if off.ready == 0 {
        return Ok(());
    }
    let sk: *const u8 = ctx.arg(0);
    let tp = tcp_sock(sk);
    if tp.is_null() {
        return Ok(());
    }
    let key = sk as u64;
    ship_pending::<Direct>(key, tp, &off)?;
    let mut ev = new_event(kind, key);
    fill_sock::<Direct>(&mut ev, tp, &off)?;
    let state: u8 = Direct::get(tp, off.skc_state)?;
    ev.new_state = state;
    ev.old_state = state;
    if kind == kind::SOCK_ERROR {
        let err: i32 = Direct::get(tp, off.sk_err)?;
        ev.errno = err;
    }
    set_owner(&mut ev, key, false);
    fill_sock_state::<Direct>(&mut ev, tp, &off)?;
    emit(&ev);
    Ok(())
}

/// Classic `tcp/tcp_send_reset`: skaddr, state, the addresses, and from Linux 6.10 the
/// reason. Two record layouts ([`rst_layout`]): 6.10+ carries `sockaddr`s and fires
/// also with no socket (taken from the segment); before, the `tcp_event_sk_skb` class
/// carries ports and v4-mapped IPv6 addresses and fires only for full sockets.
#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    report(try_tcp_send_reset(&ctx)) as u32
}

fn try_tcp_send_reset(ctx: &TracePointContext) -> Result<(), i64> {
    let off = offsets();
    if off.ready == 0 {
        return Ok(());
    }
    // SAFETY: offsets come from this tracepoint's own format file.
    let (sk, state) = unsafe {
        (
            ctx.read_at::<u64>(off.rst_skaddr as usize)
                .map_err(i64::from)?,
            ctx.read_at::<i32>(off.rst_state as usize)
                .map_err(i64::from)?,
        )
    };
    if sk != 0 {
        ship_pending::<Probe>(sk, sk as *const u8, &off)?;
    }
    let mut ev = new_event(kind::RESET_SENT, sk);
    if off.rst_has_reason != 0 {
        // SAFETY: offset from the format file.
        ev.reason = unsafe { ctx.read_at::<u32>(off.rst_reason as usize) }.map_err(i64::from)?;
    }
    // SAFETY: offset from the format file.
    let skb =
        unsafe { ctx.read_at::<u64>(off.rst_skbaddr as usize) }.map_err(i64::from)? as *const u8;
    if !skb.is_null() {
        // The TCP header of the segment being answered; flags are its 14th byte.
        let th: *const u8 = read(skb, off.skb_data)?;
        ev.seg_flags = read(th, 13).unwrap_or(0);
    }
    ev.new_state = state as u8;
    ev.old_state = state as u8;
    if off.rst_layout == rst_layout::SPLIT {
        // SAFETY: offsets from the format file.
        unsafe {
            ev.sport = ctx
                .read_at::<u16>(off.rst_sport as usize)
                .map_err(i64::from)?;
            ev.dport = ctx
                .read_at::<u16>(off.rst_dport as usize)
                .map_err(i64::from)?;
            ev.saddr = ctx
                .read_at::<[u8; 16]>(off.rst_saddr as usize)
                .map_err(i64::from)?;
            ev.daddr = ctx
                .read_at::<[u8; 16]>(off.rst_daddr as usize)
                .map_err(i64::from)?;
        }
        // IPv4 is stored v4-mapped; userspace shows it as IPv4.
        ev.family = AF_INET6 as u8;
    } else {
        let record = ctx.as_ptr_u8();
        // SAFETY: the record lives for the program's run; reads go through the helper.
        let local = unsafe { read_sockaddr(record.add(off.rst_saddr as usize), false)? };
        let remote = unsafe { read_sockaddr(record.add(off.rst_daddr as usize), false)? };
        ev.family = local.0;
        ev.sport = local.1;
        ev.saddr = local.2;
        ev.dport = remote.1;
        ev.daddr = remote.2;
    }
    set_owner(&mut ev, sk, false);
    if sk == 0 {
        // No socket: the reset answers a segment nobody owns; the current task is noise.
        ev.pid = 0;
        ev.tid = 0;
        ev.cgroup_id = 0;
        ev.comm = [0; 16];
    }
    emit(&ev);
    Ok(())
}

trait RecordPtr {
    fn as_ptr_u8(&self) -> *const u8;
}

impl RecordPtr for TracePointContext {
    fn as_ptr_u8(&self) -> *const u8 {
        use aya_ebpf::EbpfContext as _;
        self.as_ptr() as *const u8
    }
}

/// `sys_enter_connect(int fd, struct sockaddr *uservaddr, int addrlen)`.
#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    // SAFETY: fixed syscall tracepoint layout: fd at 16, uservaddr at 24.
    let args = unsafe {
        match (ctx.read_at::<u64>(16), ctx.read_at::<u64>(24)) {
            (Ok(fd), Ok(uservaddr)) => ConnectArgs { fd, uservaddr },
            _ => return 0,
        }
    };
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    if CONNECTS.insert(tid, args, 0).is_err() {
        count_loss(LOSS_CONNECT_MAP);
    }
    0
}

/// `sys_exit_connect`: `ret` at 16. Only failures other than EINPROGRESS are events;
/// successful connects show as state changes.
#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    report(try_sys_exit_connect(&ctx)) as u32
}

fn try_sys_exit_connect(ctx: &TracePointContext) -> Result<(), i64> {
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    // SAFETY: copied out at once, then removed.
    let Some(args) = (unsafe { CONNECTS.get(tid) }).copied() else {
        return Ok(());
    };
    let _ = CONNECTS.remove(tid);
    // SAFETY: fixed syscall tracepoint layout.
    let ret = unsafe { ctx.read_at::<i64>(16) }.map_err(i64::from)?;
    if ret >= 0 || ret == -EINPROGRESS {
        return Ok(());
    }
    let off = offsets();
    if off.ready == 0 {
        return Ok(());
    }
    let sk = fd_to_sock(args.fd, &off)?;
    if sk.is_null() || !is_tcp(sk, &off)? {
        return Ok(());
    }
    let mut ev = new_event(kind::CONNECT_ERROR, sk as u64);
    fill_sock::<Probe>(&mut ev, sk, &off)?;
    // The destination as the caller asked for it; the socket may never have had it.
    // SAFETY: user pointer read through the helper.
    let remote = unsafe { read_sockaddr(args.uservaddr as *const u8, true)? };
    if remote.0 != 0 {
        ev.family = remote.0;
        ev.dport = remote.1;
        ev.daddr = remote.2;
    }
    ev.errno = (-ret) as i32;
    let state: u8 = read(sk, off.skc_state)?;
    ev.new_state = state;
    let owner = current_owner();
    ev.owner_src = owner_src::SOCKET;
    ev.pid = owner.pid;
    ev.tid = owner.tid;
    ev.cgroup_id = owner.cgroup_id;
    ev.comm = owner.comm;
    emit(&ev);
    Ok(())
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    report(try_sys_exit_accept(&ctx)) as u32
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    report(try_sys_exit_accept(&ctx)) as u32
}

/// The accepted socket comes from the returned fd; the accepting task is its owner.
fn try_sys_exit_accept(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: fixed syscall tracepoint layout: ret at 16.
    let ret = unsafe { ctx.read_at::<i64>(16) }.map_err(i64::from)?;
    if ret < 0 {
        return Ok(());
    }
    let off = offsets();
    if off.ready == 0 {
        return Ok(());
    }
    let sk = fd_to_sock(ret as u64, &off)?;
    if sk.is_null() || !is_tcp(sk, &off)? {
        return Ok(());
    }
    let key = sk as u64;
    let owner = current_owner();
    match SOCKS.get_ptr_mut(key) {
        Some(rec) => set_entry_owner(rec, &owner, owner_src::SOCKET),
        None => {
            let _ = track(key, &owner, owner_src::SOCKET);
        }
    }
    if off.stream_all == 0 {
        // The owner travels with the socket's record.
        return Ok(());
    }
    let mut ev = new_event(kind::ACCEPT, key);
    fill_sock::<Probe>(&mut ev, sk, &off)?;
    let state: u8 = read(sk, off.skc_state)?;
    ev.new_state = state;
    set_owner(&mut ev, key, true);
    emit(&ev);
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
