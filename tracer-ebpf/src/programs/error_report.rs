//! `inet_sk_error_report`: asynchronous socket errors.

use crate::record::{report, try_sock_event};
use aya_ebpf::macros::btf_tracepoint;
use aya_ebpf::programs::BtfTracePointContext;
use tracer_common::kind;

/// `trace_inet_sk_error_report(const struct sock *sk)`: `sk_err` is already set.
#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: BtfTracePointContext) -> i32 {
    report(
        &ctx,
        "inet_sk_error_report",
        try_sock_event(&ctx, kind::SOCK_ERROR),
    )
}
