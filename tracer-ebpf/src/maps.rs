//! The maps every program shares, the loss counters and the ring-buffer output.

use crate::sock::{Direct, Mem};
use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, HashMap, PerCpuArray, RingBuf};
use tracer_common::{ConnRecord, ConnectArgs, Offsets, Owner, LOSS_COUNTERS, LOSS_RINGBUF_FULL};

/// Kernel field offsets, filled by userspace at load time.
#[unsafe(no_mangle)]
pub static OFFSETS: Offsets = Offsets::ZERO;

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Socket -> its [`ConnRecord`]: owner (connect, listen, accept, or the listener it
/// was cloned from) and the transitions not yet shipped; removed at ->CLOSE. A plain
/// hash map, not LRU: when it is full an insert fails and is counted
/// (`LOSS_OWNER_MAP`), where an LRU map would evict a live socket's owner without a
/// trace. Not preallocated (`BPF_F_NO_PREALLOC`): 360 bytes a socket are taken as
/// sockets come — from Linux 6.1; before it userspace clears the flag at load
/// (`tracer/src/kernel/object.rs`: the verifier there warns, tainting the kernel,
/// when a classic tracepoint program uses a map that allocates). What comes after
/// ->CLOSE (the error report, a reset sent by close()) carries the socket's
/// 4-tuple; userspace hands it the owner of the connection that closed on it.
#[map]
pub static SOCKS: HashMap<u64, ConnRecord> = HashMap::with_max_entries(131_072, BPF_F_NO_PREALLOC);

pub const BPF_F_NO_PREALLOC: u32 = 1;

/// An all-zero [`ConnRecord`] a new [`SOCKS`] entry is inserted from (too big for
/// the stack), never written; the owner is written into the new entry itself. A
/// run interrupted on its CPU by another (softirq over a system call: older
/// kernels, 5.10 and 5.15 among them, run the nested program where newer ones skip
/// and count it) would otherwise hand the interrupting socket's owner to the
/// interrupted one's entry through a shared scratch slot.
#[map]
pub static BLANK: Array<ConnRecord> = Array::with_max_entries(1, 0);

/// Network namespace and local port of a listening socket ([`listener_key`]) -> its
/// owner, so an accepted child has an owner from its first event (softirq) until
/// `accept()` names the exact process. Pods listen on the same ports in their own
/// namespaces: the port alone would hand one pod's connections to another.
/// Removed when the listener closes; full: the insert fails and is counted.
#[map]
pub static LISTENERS: HashMap<u64, Owner> = HashMap::with_max_entries(16_384, 0);

/// [`tracer_common::listener_key`] of a typed TCP socket's namespace and `port`.
pub fn listener_key(tp: *const u8, port: u16, off: &Offsets) -> Result<u64, i64> {
    let net: *const u8 = Direct::get(tp, off.skc_net)?;
    let inum: u32 = Direct::get(net, off.net_inum)?;
    Ok(tracer_common::listener_key(inum, port))
}

/// Thread id -> `connect()` arguments, between syscall entry and exit.
#[map]
pub static CONNECTS: HashMap<u64, ConnectArgs> = HashMap::with_max_entries(16384, 0);

/// Every event that could not be delivered, by cause (`LOSS_*`).
#[map]
pub static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_COUNTERS, 0);

/// The offsets, read field by field where used. The pointer goes through a
/// volatile read so the compiler cannot fold the all-zero default that userspace
/// replaces at load time; the verifier still sees each field as a constant (a
/// frozen read-only map). Copying the whole struct instead cost ~10 ns a run.
#[inline(always)]
pub fn offsets() -> &'static Offsets {
    let at = &raw const OFFSETS;
    // SAFETY: `at` is a valid pointer on the stack; OFFSETS is never written by
    // the program (it is read-only once loaded).
    unsafe { &*core::ptr::read_volatile(&raw const at) }
}

pub fn count_loss(index: u32) {
    if let Some(counter) = LOSSES.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

/// Unread bytes past which the reader is woken at once; below, it drains on its
/// own timer. One wakeup per event would cost more than the event itself.
pub const WAKEUP_BYTES: u64 = 1 << 20;
pub const BPF_RB_NO_WAKEUP: u64 = 1;
pub const BPF_RB_FORCE_WAKEUP: u64 = 2;
pub const BPF_RB_AVAIL_DATA: u64 = 0;

/// Puts an event or a connection record on the ring buffer; a full ring is counted.
pub fn emit<T>(record: &T) {
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<T>(record, flags).is_err() {
        count_loss(LOSS_RINGBUF_FULL);
    }
}
