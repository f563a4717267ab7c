//! conntrace kernel programs: TCP connection life cycle from stable tracepoints only.
//!
//! | program | hook | what it yields | first kernel |
//! |---|---|---|---|
//! | `inet_sock_set_state` | tp_btf `inet_sock_set_state(sk, old, new)` | state changes with idle times; socket owners; socket errors from `sk_err` where the error report is missing | 5.5 (tp_btf) |
//! | `inet_sk_error_report` | tp_btf `inet_sk_error_report(sk)` | asynchronous socket errors (`sk_err`) | 5.12 |
//! | `tcp_receive_reset` | tp_btf `tcp_receive_reset(sk)` | resets received, with the state | 5.5 |
//! | `tcp_retransmit_skb` | tp_btf `tcp_retransmit_skb(sk, skb, ...)` | retransmits, with time since the last ACK | 5.5 |
//! | `tcp_send_reset` | tracepoint `tcp/tcp_send_reset` | resets sent; with reason and also with no socket from 6.10 | 4.15 |
//! | `sys_enter_connect`/`sys_exit_connect` | tracepoints `syscalls/*_connect` | synchronous connect errors | any |
//! | `sys_exit_accept`/`sys_exit_accept4` | tracepoints `syscalls/*_accept*` | the accepting process of a socket | any |
//!
//! Helpers used: `bpf_skc_to_tcp_sock` (5.9), ring buffer and `bpf_ringbuf_query`
//! (5.8), `bpf_jiffies64` (5.5): every program loads from 5.10 on, checked by the
//! kernel matrix (`cargo xtask matrix`) on 5.10, 6.1, 6.12 and the host's kernel.
//!
//! No program runs per packet on the data path: idle times are read from the socket's
//! own timestamps at the state change. Struct offsets come from userspace (BTF).
//!
//! A socket's transitions are kept in its [`SOCKS`] entry and shipped together as one
//! [`ConnRecord`]: at ->CLOSE (the connection record, with its totals), and earlier
//! only when they must be seen live ([`ships_now`], and before any other event of the
//! socket so that order holds). `--every-transition` (`Offsets::stream_all`) ships
//! each transition as its own event instead.
#![no_std]
#![no_main]
// Kernel code, by design rather than by accident:
#![allow(
    // the BPF verifier must see typed socket pointers through every helper (5.10
    // verifies subprogram arguments as plain scalars): they are inlined, always.
    clippy::inline_always,
    // kernel integers (states, families, errno, jiffies deltas) narrowed into the
    // wire format's fields; the kernel bounds every one of them.
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    // aya's program macros hand each program its context by value.
    clippy::needless_pass_by_value
)]

mod maps;
mod programs;
mod record;
mod sock;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
