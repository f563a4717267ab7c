//! [`Record`]: the one thing that flows from a source to the engine and a sink. Every
//! live source produces records (the ring buffer and the socket-map reads, the
//! inspection of open sockets and listeners, the node sampler, the cgroup and pod
//! attribution), and a log is read back as the same records, so live and replayed
//! runs take one path.

use serde::{Deserialize, Serialize};

use super::{Conn, Event, Listeners, Losses, Reuses, Sockstat, TupleInfo, Waiting};
use crate::k8s::{api::PodInfo, CgroupInfo};

/// One record. In the log: an event is a line of its own fields, a connection is
/// `{"conn": HISTORY, ...}` (written and read by the hot-path encoder), every other record
/// `{"KEY": VALUE}` with the key named here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// One kernel event (a version 1 log's every line; resets, errors, accepts).
    #[serde(skip)]
    Event(Event),
    /// A socket's transitions shipped together (`{"conn": ...}`, from version 2).
    #[serde(skip)]
    Conn(Conn),
    /// A node TCP memory sample.
    #[serde(rename = "sockstat")]
    Sockstat(Sockstat),
    /// Connections awaiting a reply at one inspection.
    #[serde(rename = "waiting")]
    Waiting(Waiting),
    /// What the kernel's tables said of one 4-tuple.
    #[serde(rename = "tuple")]
    Tuple(TupleInfo),
    /// Listeners' accept queues and listen-drop counters.
    #[serde(rename = "listeners")]
    Listeners(Listeners),
    /// Pooled connections reused after idling.
    #[serde(rename = "reuse")]
    Reuses(Reuses),
    /// What the recording had lost so far.
    #[serde(rename = "losses")]
    Losses(Losses),
    /// A cgroup seen for the first time, with its container and pod.
    #[serde(rename = "cgroup")]
    Cgroup(CgroupInfo),
    /// A pod's name and namespace from the Kubernetes API.
    #[serde(rename = "pod")]
    Pod(PodInfo),
    /// A finding as the engine wrote it (read back, never fed to the engine: it finds
    /// them again from the records).
    #[serde(rename = "finding")]
    Finding(serde_json::Value),
    /// Every finding of the live engine when recording stopped, the last line of a
    /// complete log.
    #[serde(rename = "findings")]
    FinalFindings(Vec<serde_json::Value>),
}

impl Record {
    /// The keys of `{"KEY": VALUE}` records.
    pub const KEYS: [&'static str; 10] = [
        "sockstat",
        "waiting",
        "tuple",
        "listeners",
        "reuse",
        "losses",
        "cgroup",
        "pod",
        "finding",
        "findings",
    ];

    /// CLOCK_MONOTONIC time of the record, where it has one.
    pub fn mono_ns(&self) -> Option<u64> {
        match self {
            Self::Event(e) => Some(e.mono_ns),
            Self::Conn(c) => Some(c.mono_ns),
            Self::Sockstat(s) => Some(s.mono_ns),
            Self::Waiting(w) => Some(w.mono_ns),
            Self::Tuple(t) => Some(t.mono_ns),
            Self::Listeners(l) => Some(l.mono_ns),
            Self::Reuses(r) => Some(r.mono_ns),
            Self::Losses(_)
            | Self::Cgroup(_)
            | Self::Pod(_)
            | Self::Finding(_)
            | Self::FinalFindings(_) => None,
        }
    }

    /// The kernel events this record stands for: itself, or a connection's
    /// transitions; none for the others.
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        let (event, conn) = match self {
            Self::Event(e) => (Some(e.clone()), None),
            Self::Conn(c) => (None, Some(c)),
            _ => (None, None),
        };
        event
            .into_iter()
            .chain(conn.into_iter().flat_map(Conn::events))
    }
}
