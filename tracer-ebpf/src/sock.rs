//! Reading `struct sock` and friends through BTF-derived offsets.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user,
    generated::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_jiffies64},
};
use tracer_common::{flags, Offsets, Owner, RawEvent, AF_INET, AF_INET6};

const IPPROTO_TCP: u16 = 6;
/// `enum sock_flags`: SOCK_DEAD, SOCK_DONE, SOCK_URGINLINE, SOCK_KEEPOPEN, ...
const SOCK_DEAD: u64 = 0;
const SOCK_KEEPOPEN: u64 = 3;

/// Reads a `T` at `base + off` from kernel memory.
#[inline(always)]
pub fn read<T>(base: *const u8, off: u32) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel copes with any address; a bad one is an error.
    unsafe { bpf_probe_read_kernel(base.add(off as usize).cast::<T>()) }.map_err(i64::from)
}

/// How a program reaches socket memory.
pub trait Mem {
    fn get<T: Copy>(base: *const u8, off: u32) -> Result<T, i64>;
}

/// Through `bpf_probe_read_kernel`: any pointer (a socket found through a file
/// descriptor or a classic tracepoint's record).
pub struct Probe;

impl Mem for Probe {
    #[inline(always)]
    fn get<T: Copy>(base: *const u8, off: u32) -> Result<T, i64> {
        read(base, off)
    }
}

/// Plain loads from a BTF-typed `struct tcp_sock *` (from `bpf_skc_to_tcp_sock` on a
/// tp_btf argument). The verifier checks each access against the type: the offsets
/// are constants to it, read from the frozen read-only `OFFSETS`. A helper call per
/// field cost ~80 ns here, two thirds of a state change's run time.
pub struct Direct;

impl Mem for Direct {
    #[inline(always)]
    fn get<T: Copy>(base: *const u8, off: u32) -> Result<T, i64> {
        // SAFETY: `base` is a verifier-tracked BTF pointer (faulting loads are caught
        // and read as zero) and `off` a field offset of its type from BTF.
        Ok(unsafe { core::ptr::read_volatile(base.add(off as usize).cast::<T>()) })
    }
}

#[inline(always)]
pub fn is_tcp(sk: *const u8, off: &Offsets) -> Result<bool, i64> {
    let proto: u16 = read(sk, off.sk_protocol)?;
    Ok(proto == IPPROTO_TCP)
}

/// The TCP socket behind a tp_btf `struct sock *` argument, as a BTF-typed pointer for
/// [`Direct`] loads; null when it is not a full TCP socket.
#[inline(always)]
pub fn tcp_sock(sk: *const u8) -> *const u8 {
    // SAFETY: the helper takes any socket pointer the verifier knows as BTF-typed.
    unsafe { aya_ebpf::helpers::generated::bpf_skc_to_tcp_sock(sk as *mut _) as *const u8 }
}

pub fn current_owner() -> Owner {
    let pid_tgid = bpf_get_current_pid_tgid();
    Owner {
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// Family, addresses and ports of a socket. The local port comes from
/// `inet_sock.inet_sport`: `skc_num` is already zero when the ->CLOSE event fires.
#[inline(always)]
pub fn fill_sock<M: Mem>(ev: &mut RawEvent, sk: *const u8, off: &Offsets) -> Result<(), i64> {
    let family: u16 = M::get(sk, off.skc_family)?;
    ev.family = family as u8;
    if family == AF_INET {
        let saddr: u32 = M::get(sk, off.skc_rcv_saddr)?;
        let daddr: u32 = M::get(sk, off.skc_daddr)?;
        ev.saddr[..4].copy_from_slice(&saddr.to_ne_bytes());
        ev.daddr[..4].copy_from_slice(&daddr.to_ne_bytes());
    } else if family == AF_INET6 {
        // Four 32-bit loads: the in6_addr union's `u6_addr32` elements.
        for i in 0..4u32 {
            let a: u32 = M::get(sk, off.skc_v6_rcv_saddr + 4 * i)?;
            let b: u32 = M::get(sk, off.skc_v6_daddr + 4 * i)?;
            let at = 4 * i as usize;
            ev.saddr[at..at + 4].copy_from_slice(&a.to_ne_bytes());
            ev.daddr[at..at + 4].copy_from_slice(&b.to_ne_bytes());
        }
    }
    let sport: u16 = M::get(sk, off.inet_sport)?;
    let dport: u16 = M::get(sk, off.skc_dport)?;
    ev.sport = u16::from_be(sport);
    ev.dport = u16::from_be(dport);
    Ok(())
}

/// Idle times from the socket's own jiffies timestamps, and its retransmit total:
/// what a state change needs.
#[inline(always)]
pub fn fill_idle<M: Mem>(ev: &mut RawEvent, sk: *const u8, off: &Offsets) -> Result<(), i64> {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_jiffies64() } as u32;
    let lsndtime: u32 = M::get(sk, off.tp_lsndtime)?;
    let lrcvtime: u32 = M::get(sk, off.icsk_lrcvtime)?;
    ev.send_idle_jiffies = now.wrapping_sub(lsndtime);
    ev.recv_idle_jiffies = now.wrapping_sub(lrcvtime);
    ev.retrans = M::get(sk, off.tp_total_retrans)?;
    Ok(())
}

/// Idle times and the full retransmit state: resets, errors, retransmits.
#[inline(always)]
pub fn fill_sock_state<M: Mem>(ev: &mut RawEvent, sk: *const u8, off: &Offsets) -> Result<(), i64> {
    fill_idle::<M>(ev, sk, off)?;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_jiffies64() } as u32;
    let rcv_tstamp: u32 = M::get(sk, off.tp_rcv_tstamp)?;
    ev.ack_idle_jiffies = now.wrapping_sub(rcv_tstamp);
    ev.packets_out = M::get(sk, off.tp_packets_out)?;
    ev.user_timeout_ms = M::get(sk, off.icsk_user_timeout)?;
    ev.rto_count = M::get(sk, off.icsk_retransmits)?;
    let sk_flags: u64 = M::get(sk, off.sk_flags)?;
    if sk_flags & (1 << SOCK_KEEPOPEN) != 0 {
        ev.flags |= flags::KEEPALIVE;
    }
    if sk_flags & (1 << SOCK_DEAD) != 0 {
        ev.flags |= flags::ORPHAN;
    }
    Ok(())
}

/// The `struct sock *` behind file descriptor `fd` of the current task:
/// `current->files->fdt->fd[fd]->private_data` (a `struct socket *`) `->sk`.
#[inline(always)]
pub fn fd_to_sock(fd: u64, off: &Offsets) -> Result<*const u8, i64> {
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files: *const u8 = read(task, off.task_files)?;
    let fdt: *const u8 = read(files, off.files_fdt)?;
    let max_fds: u32 = read(fdt, off.fdt_max_fds)?;
    if fd >= u64::from(max_fds) {
        return Ok(core::ptr::null());
    }
    let fds: *const u8 = read(fdt, off.fdt_fd)?;
    let file: *const u8 = read(fds, (fd * 8) as u32)?;
    if file.is_null() {
        return Ok(core::ptr::null());
    }
    let socket: *const u8 = read(file, off.file_private_data)?;
    if socket.is_null() {
        return Ok(core::ptr::null());
    }
    read(socket, off.socket_sk)
}

/// `(family, port, address)` of a `sockaddr_in`/`sockaddr_in6`, from kernel or user memory.
///
/// # Safety
/// `addr` is only read through the probe-read helpers.
#[inline(always)]
pub unsafe fn read_sockaddr(addr: *const u8, user: bool) -> Result<(u8, u16, [u8; 16]), i64> {
    // sa_family (u16), port (be16), then sin_addr at 4 or sin6_flowinfo + sin6_addr at 8.
    let head: [u8; 4] = unsafe { probe(addr, user)? };
    let family = u16::from_ne_bytes([head[0], head[1]]);
    let port = u16::from_be_bytes([head[2], head[3]]);
    let mut out = [0u8; 16];
    if family == AF_INET {
        let a: [u8; 4] = unsafe { probe(addr.add(4), user)? };
        out[..4].copy_from_slice(&a);
    } else if family == AF_INET6 {
        out = unsafe { probe(addr.add(8), user)? };
    } else {
        return Ok((0, 0, out));
    }
    Ok((family as u8, port, out))
}

#[inline(always)]
unsafe fn probe<T>(addr: *const u8, user: bool) -> Result<T, i64> {
    let r = if user {
        unsafe { bpf_probe_read_user(addr.cast::<T>()) }
    } else {
        unsafe { bpf_probe_read_kernel(addr.cast::<T>()) }
    };
    r.map_err(i64::from)
}
