//! `inet_sock_set_state`: every TCP state change.

use crate::maps::{count_loss, emit, listener_key, offsets, LISTENERS, SOCKS};
use crate::record::{new_event, report, set_entry_owner, set_owner, ship, track, ZERO_OWNER};
use crate::sock::{current_owner, fill_sock, tcp_sock, Direct, Mem};
use aya_ebpf::helpers::generated::bpf_jiffies64;
use aya_ebpf::macros::btf_tracepoint;
use aya_ebpf::programs::BtfTracePointContext;
use tracer_common::errno::EADDRNOTAVAIL;
use tracer_common::tcp_state::had_data;
use tracer_common::tcp_state::{
    CLOSE as TCP_CLOSE, CLOSE_WAIT as TCP_CLOSE_WAIT, ESTABLISHED as TCP_ESTABLISHED,
    FIN_WAIT1 as TCP_FIN_WAIT1, LAST_ACK as TCP_LAST_ACK, LISTEN as TCP_LISTEN,
    SYN_RECV as TCP_SYN_RECV, SYN_SENT as TCP_SYN_SENT,
};
use tracer_common::{kind, owner_src, Offsets, LOSS_OWNER_MAP, MAX_STEPS};

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
    report(&ctx, "inet_sock_set_state", try_inet_sock_set_state(&ctx))
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

#[expect(
    clippy::too_many_lines,
    reason = "one state change, in the order the verifier checks it: owner, entry, step, ship"
)]
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
                .insert(listener_key(tp, u16::from_be(sport), off)?, owner, 0)
                .is_err()
            {
                count_loss(LOSS_OWNER_MAP);
            }
        }
        track(key, &owner, owner_src::SOCKET)
    } else if old == TCP_LISTEN && new == TCP_SYN_RECV {
        let sport: u16 = Direct::get(tp, off.inet_sport)?;
        let key_l = listener_key(tp, u16::from_be(sport), off)?;
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
                    ship::<Direct>(rec, key, tp, off, false)?;
                }
            }
            let mut ev = new_event(kind::SOCK_ERROR, key);
            fill_sock::<Direct>(&mut ev, tp, off)?;
            set_owner(&mut ev, key, in_task);
            ev.errno = err;
            ev.old_state = old as u8;
            ev.new_state = old as u8;
            emit(&ev);
        }
    }

    let (mut send_idle, mut recv_idle, mut retrans) = (0u32, 0u32, 0u32);
    // Idle times mean something only once the connection carried data.
    if had_data(old) {
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_jiffies64() } as u32;
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
                    ship::<Direct>(rec, key, tp, off, false)?;
                }
                let i = ((*rec).steps_len as usize) & (MAX_STEPS - 1);
                let step = &mut (*rec).steps[i];
                let ts = aya_ebpf::helpers::bpf_ktime_get_ns();
                step.ts_ns = ts;
                // A new entry's birth: its first step (one clock read a run).
                if (*rec).born_ns == 0 {
                    (*rec).born_ns = ts;
                }
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
                    fill_sock::<Direct>(&mut (*rec).head, tp, off)?;
                }
            }
            if new == TCP_CLOSE || ships_now(old, new, send_idle, recv_idle, off) {
                ship::<Direct>(rec, key, tp, off, new == TCP_CLOSE)?;
            }
        }
        _ => {
            // Every transition its own event: `--every-transition`, or a socket the
            // full map could not take.
            let mut ev = new_event(kind::STATE, key);
            ev.old_state = old as u8;
            ev.new_state = new as u8;
            fill_sock::<Direct>(&mut ev, tp, off)?;
            set_owner(&mut ev, key, in_task);
            ev.send_idle_jiffies = send_idle;
            ev.recv_idle_jiffies = recv_idle;
            ev.retrans = retrans;
            emit(&ev);
        }
    }

    // Without the connect() hooks: tcp_v4_connect()/tcp_v6_connect() move the socket
    // to SYN_SENT, then inet_hash_connect() picks a local port or, for a port the
    // caller bound, checks that the 4-tuple is free (a time-wait or live socket may
    // hold it); when that fails the socket goes back to CLOSE in the caller's
    // context before any SYN: with no port (the range is used up) or, bound, with
    // no segment ever sent. That is connect()'s EADDRNOTAVAIL. A SYN that was
    // refused or timed out, or a close() of a connecting socket, sent one.
    if off.infer_port_exhaustion != 0 && old == TCP_SYN_SENT && new == TCP_CLOSE {
        let sport: u16 = Direct::get(tp, off.inet_sport)?;
        let segs_out: u32 = Direct::get(tp, off.tp_segs_out)?;
        if sport == 0 || segs_out == 0 {
            let mut ev = new_event(kind::CONNECT_ERROR, key);
            fill_sock::<Direct>(&mut ev, tp, off)?;
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
            let _ = LISTENERS.remove(listener_key(tp, u16::from_be(sport), off)?);
        }
        let _ = SOCKS.remove(key);
    }
    Ok(())
}
