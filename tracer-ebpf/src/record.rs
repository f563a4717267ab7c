//! A socket's entry in [`SOCKS`]: started, given its owner, and shipped as one
//! [`ConnRecord`]; and what every program's event starts from.

use crate::maps::{count_loss, emit, offsets, BLANK, SOCKS};
use crate::sock::{current_owner, fill_sock, fill_sock_state, tcp_sock, Direct, Mem};
use aya_ebpf::helpers::generated::bpf_jiffies64;
use aya_ebpf::programs::BtfTracePointContext;
use aya_ebpf::EbpfContext;
use aya_log_ebpf::warn;
use tracer_common::{
    flags, kind, owner_src, ConnRecord, Offsets, Owner, RawEvent, LOSS_OWNER_MAP, LOSS_READ,
    MAX_STEPS,
};

/// Starts (or restarts: the memory may have held an older socket) `sk`'s entry with
/// `owner`; the entry, or `None` when the map is full (counted).
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the map copies the 360-byte entry from the blank slot; a by-value argument would copy it onto the 512-byte BPF stack first"
)]
pub fn track(sk: u64, owner: &Owner, src: u8) -> Option<*mut ConnRecord> {
    let blank = BLANK.get_ptr(0)?;
    // SAFETY: the blank entry is a live map value no program writes; the map copies it.
    if SOCKS.insert(sk, unsafe { &*blank }, 0).is_err() {
        count_loss(LOSS_OWNER_MAP);
        return None;
    }
    // Its birth (`born_ns`) is its first step's time, set with that step.
    let rec = SOCKS.get_ptr_mut(sk)?;
    set_entry_owner(rec, owner, src);
    Some(rec)
}

/// Replaces an entry's (or the scratch entry's) owner.
pub fn set_entry_owner(rec: *mut ConnRecord, owner: &Owner, src: u8) {
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
pub fn set_owner(ev: &mut RawEvent, sk: u64, in_task: bool) {
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
pub fn ship<M: Mem>(
    rec: *mut ConnRecord,
    sk: u64,
    tp: *const u8,
    off: &Offsets,
    last: bool,
) -> Result<(), i64> {
    // SAFETY: `rec` points at a live map value; `tp` is read through `M`.
    unsafe {
        // The record's time is its last step's (userspace reads the steps' times
        // only): no clock read here.
        let n = (*rec).steps_len as usize;
        let last_ts = (*rec).steps[n.wrapping_sub(1) & (MAX_STEPS - 1)].ts_ns;
        let head = &mut (*rec).head;
        head.ts_ns = last_ts;
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
pub fn ship_pending<M: Mem>(sk: u64, tp: *const u8, off: &Offsets) -> Result<(), i64> {
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

pub fn new_event(kind: u8, sk: u64) -> RawEvent {
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

/// A program's end: a failed kernel read drops its event, counted (`LOSS_READ`)
/// and, with `-v` (aya-log at warn level), said with the program and the helper's
/// error. The log statement sits on this failure path only: never the event path.
#[inline(always)]
pub fn report<C: EbpfContext>(ctx: &C, program: &str, result: Result<(), i64>) -> i32 {
    if let Err(e) = result {
        count_loss(LOSS_READ);
        warn!(
            ctx,
            "{}: a kernel read failed (error {}); its event is dropped and counted as a kernel read loss",
            program,
            e
        );
    }
    0
}

pub const ZERO_OWNER: Owner = Owner {
    cgroup_id: 0,
    pid: 0,
    tid: 0,
    comm: [0; 16],
};

pub fn try_sock_event(ctx: &BtfTracePointContext, kind: u8) -> Result<(), i64> {
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
    ship_pending::<Direct>(key, tp, off)?;
    let mut ev = new_event(kind, key);
    fill_sock::<Direct>(&mut ev, tp, off)?;
    let state: u8 = Direct::get(tp, off.skc_state)?;
    ev.new_state = state;
    ev.old_state = state;
    if kind == kind::SOCK_ERROR {
        let err: i32 = Direct::get(tp, off.sk_err)?;
        ev.errno = err;
    }
    set_owner(&mut ev, key, false);
    fill_sock_state::<Direct>(&mut ev, tp, off)?;
    emit(&ev);
    Ok(())
}
