//! What the running kernel offers conntrace, decided before anything loads: which
//! hooks exist, which record layouts they use, and which facts are degraded without
//! them. Every degraded fact has a stable name; it is printed at start, written to the
//! log header, and shown by `report`.
//!
//! | fact | first kernel | without it |
//! |---|---|---|
//! | `tcp_send_reset` reason field | 6.10 | resets sent carry no reason |
//! | `tcp_send_reset` for segments with no full socket | 6.10 | refusals and writes after close seen only from the connecting side |
//! | `sock:inet_sk_error_report` | 5.12 | asynchronous connect errors read from `sk_err` at close |
//! | everything else conntrace hooks | 5.10 or older | — |

use serde::{Deserialize, Serialize};

use crate::{
    kernel::btf::Btf,
    kernel::tracefs::{self, Field},
};

/// The degraded fact of the system-call hooks left off (the default).
pub const SYSCALL_HOOKS_OFF: &str = "syscall hooks";

/// A fact this kernel cannot give, by stable name, with what it means for findings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Degraded {
    pub fact: String,
    pub detail: String,
}

impl Degraded {
    pub fn new(fact: &str, detail: impl Into<String>) -> Self {
        Self {
            fact: fact.to_owned(),
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Degraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.fact, self.detail)
    }
}

/// Resets sent carry no `enum sk_rst_reason` (Linux < 6.10).
pub const RESET_REASON: &str = "reset-reason";
/// Resets answering segments for no socket are not traced (Linux < 6.10).
pub const RESET_NO_SOCKET: &str = "reset-sent-no-socket";
/// `sock:inet_sk_error_report` is missing (Linux < 5.12).
pub const ERROR_REPORT: &str = "socket-error-report";

/// How the classic `tcp:tcp_send_reset` record of this kernel is read.
/// All zero (`Default`) when the tracepoint is missing: its program is not attached then.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResetRecord {
    pub layout: u32,
    pub skaddr: u32,
    pub skbaddr: u32,
    pub state: u32,
    pub reason: Option<u32>,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u32,
    pub dport: u32,
}

impl ResetRecord {
    /// Reads the layout from the tracepoint's format fields: 6.10+ has `reason` and
    /// `sockaddr`-sized `saddr`/`daddr`; older kernels the `tcp_event_sk_skb` class.
    pub fn from_fields(fields: &[Field]) -> anyhow::Result<Self> {
        const NAME: &str = "tcp/tcp_send_reset";
        let off = |name| tracefs::offset_of(fields, NAME, name);
        let size = |name: &str| fields.iter().find(|f| f.name == name).map(|f| f.size);
        let reason = off("reason").ok();
        let common = |layout, saddr, daddr, sport, dport| -> anyhow::Result<Self> {
            Ok(Self {
                layout,
                skaddr: off("skaddr")?,
                skbaddr: off("skbaddr")?,
                state: off("state")?,
                reason,
                saddr,
                daddr,
                sport,
                dport,
            })
        };
        if size("saddr").is_some_and(|s| s >= 16) {
            common(
                tracer_common::rst_layout::SOCKADDR,
                off("saddr")?,
                off("daddr")?,
                0,
                0,
            )
        } else {
            common(
                tracer_common::rst_layout::SPLIT,
                off("saddr_v6")?,
                off("daddr_v6")?,
                off("sport")?,
                off("dport")?,
            )
        }
    }
}

/// What this kernel supports, and what is degraded.
#[derive(Debug, Clone)]
pub struct KernelSupport {
    /// tp_btf hooks (tracepoint names) that exist in this kernel's BTF.
    pub btf_hooks: Vec<&'static str>,
    /// The reset record, when `tcp:tcp_send_reset` exists.
    pub reset: Option<ResetRecord>,
    /// Whether `sock:inet_sk_error_report` exists.
    pub error_report: bool,
    pub degraded: Vec<Degraded>,
}

impl KernelSupport {
    /// Looks at BTF (`btf_trace_<tracepoint>` typedefs: what tp_btf can attach to) and
    /// the tracefs formats.
    pub fn detect(btf: &Btf, tracefs: &std::path::Path, btf_hooks: &[&'static str]) -> Self {
        let present: Vec<&'static str> = btf_hooks
            .iter()
            .copied()
            .filter(|tp| btf.has_trace_hook(tp))
            .collect();
        let reset = tracefs::tracepoint_fields(tracefs, "tcp", "tcp_send_reset")
            .and_then(|fields| ResetRecord::from_fields(&fields))
            .ok();
        let error_report = present.contains(&"inet_sk_error_report");
        let mut degraded = Vec::new();
        if let Some(r) = reset {
            if r.reason.is_none() {
                degraded.push(Degraded::new(
                    RESET_REASON,
                    "resets sent carry no reason (needs Linux 6.10): rst-storm counts them without why",
                ));
            }
            if r.layout == tracer_common::rst_layout::SPLIT {
                degraded.push(Degraded::new(
                    RESET_NO_SOCKET,
                    "resets answering segments that reach no full socket (SYNs to a closed port, \
                     data for a closed connection's time-wait socket) are not traced (needs Linux \
                     6.10): refusals and writes after close are seen from the connecting side only",
                ));
            }
        }
        if !error_report {
            degraded.push(Degraded::new(
                ERROR_REPORT,
                "sock:inet_sk_error_report is missing (needs Linux 5.12): asynchronous connect \
                 errors (ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH) are read from the socket when it \
                 closes; errors that do not close it are not seen",
            ));
        }
        Self {
            btf_hooks: present,
            reset,
            error_report,
            degraded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tracefs::parse_format;

    // The formats as those kernels print them (the fuzzing corpus keeps them).
    const LINUX_5_10: &str = include_str!("../../fuzz/corpus/tracefs/tcp_send_reset-5.10");
    const LINUX_6_18: &str = include_str!("../../fuzz/corpus/tracefs/tcp_send_reset-6.18");

    #[test]
    fn reset_record_before_6_10_is_the_split_layout_without_reason() {
        let r = ResetRecord::from_fields(&parse_format(LINUX_5_10)).unwrap();
        assert_eq!(r.layout, tracer_common::rst_layout::SPLIT);
        assert_eq!(r.reason, None);
        assert_eq!((r.sport, r.dport, r.saddr, r.daddr), (28, 30, 40, 56));
        assert_eq!((r.skbaddr, r.skaddr, r.state), (8, 16, 24));
    }

    #[test]
    fn reset_record_from_6_10_has_sockaddrs_and_reason() {
        let r = ResetRecord::from_fields(&parse_format(LINUX_6_18)).unwrap();
        assert_eq!(r.layout, tracer_common::rst_layout::SOCKADDR);
        assert_eq!(r.reason, Some(28));
        assert_eq!((r.saddr, r.daddr), (32, 60));
    }

    #[test]
    fn a_record_missing_its_addresses_is_an_error() {
        let fields = parse_format("\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n");
        assert!(ResetRecord::from_fields(&fields).is_err());
    }
}
