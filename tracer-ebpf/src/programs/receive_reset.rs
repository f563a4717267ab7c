//! `tcp_receive_reset`: resets received by a local socket.

use crate::record::{report, try_sock_event};
use aya_ebpf::macros::btf_tracepoint;
use aya_ebpf::programs::BtfTracePointContext;
use tracer_common::kind;

/// `trace_tcp_receive_reset(struct sock *sk)`: fires before the state changes.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    report(
        &ctx,
        "tcp_receive_reset",
        try_sock_event(&ctx, kind::RESET_RECEIVED),
    )
}
