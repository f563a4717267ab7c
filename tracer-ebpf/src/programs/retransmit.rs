//! `tcp_retransmit_skb`: retransmitted segments.

use crate::record::{report, try_sock_event};
use aya_ebpf::macros::btf_tracepoint;
use aya_ebpf::programs::BtfTracePointContext;
use tracer_common::kind;

/// `trace_tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, ...)`.
/// Retransmits are rare on a healthy node; one event each.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    report(
        &ctx,
        "tcp_retransmit_skb",
        try_sock_event(&ctx, kind::RETRANSMIT),
    )
}
