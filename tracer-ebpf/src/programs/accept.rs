//! `syscalls/sys_exit_accept{,4}` (with `--syscall-hooks`): the accepting task.

use crate::maps::{emit, offsets, SOCKS};
use crate::record::{new_event, report, set_entry_owner, set_owner, track};
use crate::sock::{current_owner, fd_to_sock, fill_sock, is_tcp, read, Probe};
use aya_ebpf::macros::tracepoint;
use aya_ebpf::programs::TracePointContext;
use tracer_common::{kind, owner_src};

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    report(&ctx, "sys_exit_accept4", try_sys_exit_accept(&ctx)) as u32
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    report(&ctx, "sys_exit_accept", try_sys_exit_accept(&ctx)) as u32
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
    let sk = fd_to_sock(ret as u64, off)?;
    if sk.is_null() || !is_tcp(sk, off)? {
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
    fill_sock::<Probe>(&mut ev, sk, off)?;
    let state: u8 = read(sk, off.skc_state)?;
    ev.new_state = state;
    set_owner(&mut ev, key, true);
    emit(&ev);
    Ok(())
}
