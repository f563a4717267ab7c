//! Everything that touches the running kernel: what it offers ([`support`], [`btf`],
//! [`tracefs`]), the programs' object as this kernel loads it ([`object`]), loading and
//! attaching the programs and reading their ring buffer and
//! socket map ([`session`]), turning their bytes into [`crate::event::Record`]s
//! ([`decode`]; [`records`] with the socket map's early reads, each step delivered
//! once by [`delivered`]), and the kernel's own tables read from userspace: listening sockets
//! ([`listeners`]), open connections through `sock_diag` ([`diag`]) with their
//! keepalive settings ([`keepalive`]), DNAT translations ([`conntrack`]), drop
//! counters ([`netstat`]), TCP memory ([`sockstat`]) and its clocks ([`time`]).

pub mod btf;
pub mod conntrack;
pub mod decode;
pub mod delivered;
pub mod diag;
pub mod inspect;
pub mod keepalive;
pub mod listeners;
pub mod netstat;
pub mod object;
pub mod records;
pub mod session;
pub mod sockstat;
pub mod support;
pub mod time;
pub mod tracefs;
