//! `tcp/tcp_send_reset`: resets sent by this node, with the kernel's reason.

use crate::maps::{emit, offsets};
use crate::record::{new_event, report, set_owner, ship_pending};
use crate::sock::{read, read_sockaddr, Probe};
use aya_ebpf::macros::tracepoint;
use aya_ebpf::programs::TracePointContext;
use tracer_common::{kind, rst_layout, AF_INET6};

/// Classic `tcp/tcp_send_reset`: skaddr, state, the addresses, and from Linux 6.10 the
/// reason. Two record layouts ([`rst_layout`]): 6.10+ carries `sockaddr`s and fires
/// also with no socket (taken from the segment); before, the `tcp_event_sk_skb` class
/// carries ports and v4-mapped IPv6 addresses and fires only for full sockets.
#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    report(&ctx, "tcp_send_reset", try_tcp_send_reset(&ctx)) as u32
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
        ship_pending::<Probe>(sk, sk as *const u8, off)?;
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
