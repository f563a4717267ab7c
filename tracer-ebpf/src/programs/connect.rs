//! `syscalls/sys_{enter,exit}_connect` (with `--syscall-hooks`): connect() errors
//! returned at once.

use crate::maps::{count_loss, emit, offsets, CONNECTS};
use crate::record::{new_event, report};
use crate::sock::{current_owner, fd_to_sock, fill_sock, is_tcp, read, read_sockaddr, Probe};
use aya_ebpf::macros::tracepoint;
use aya_ebpf::programs::TracePointContext;
use tracer_common::errno::EINPROGRESS;
use tracer_common::{kind, owner_src, ConnectArgs, LOSS_CONNECT_MAP};

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
    report(&ctx, "sys_exit_connect", try_sys_exit_connect(&ctx)) as u32
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
    if ret >= 0 || ret == -i64::from(EINPROGRESS) {
        return Ok(());
    }
    let off = offsets();
    if off.ready == 0 {
        return Ok(());
    }
    let sk = fd_to_sock(args.fd, off)?;
    if sk.is_null() || !is_tcp(sk, off)? {
        return Ok(());
    }
    let mut ev = new_event(kind::CONNECT_ERROR, sk as u64);
    fill_sock::<Probe>(&mut ev, sk, off)?;
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
