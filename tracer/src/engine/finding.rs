//! Findings: what the engine concluded, with evidence and a fix. The JSON shape is
//! the stable one of DESIGN.md (`report --format json`).

use std::{collections::BTreeMap, time::SystemTime};

use serde::{Deserialize, Serialize};

/// How bad it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// The stable finding kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    KeepaliveReuseRace,
    IdleCloseTimeout,
    CloseWaitLeak,
    TcpMemoryPressure,
    ConnectErrors,
    ConnectionRefused,
    StalledPeer,
    AwaitingReply,
    RstStorm,
    ListenOverflow,
    ConnectTimeout,
    ConntrackFull,
    KeepaliveNearMiss,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeepaliveReuseRace => "keepalive-reuse-race",
            Self::IdleCloseTimeout => "idle-close-timeout",
            Self::CloseWaitLeak => "close-wait-leak",
            Self::TcpMemoryPressure => "tcp-memory-pressure",
            Self::ConnectErrors => "connect-errors",
            Self::ConnectionRefused => "connection-refused",
            Self::StalledPeer => "stalled-peer",
            Self::AwaitingReply => "awaiting-reply",
            Self::RstStorm => "rst-storm",
            Self::ListenOverflow => "listen-overflow",
            Self::ConnectTimeout => "connect-timeout",
            Self::ConntrackFull => "conntrack-full",
            Self::KeepaliveNearMiss => "keepalive-near-miss",
        }
    }
}

/// The process a finding is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    pub cgroup: Option<String>,
    pub container: Option<String>,
    pub pod: Option<String>,
}

impl Process {
    /// The name is stored printable (control characters escaped, see
    /// [`crate::text::printable`]): it goes into summaries read on terminals.
    pub fn new(pid: u32, comm: &str, cgroup: u64) -> Self {
        Self {
            pid,
            comm: crate::text::printable(comm).into_owned(),
            cgroup: (cgroup != 0).then(|| cgroup.to_string()),
            container: None,
            pod: None,
        }
    }

    /// `comm (pid N)`, or `an unknown process` when nothing is known.
    pub fn describe(&self) -> String {
        if self.pid == 0 {
            "an unknown process".to_owned()
        } else {
            format!("{} (pid {})", self.comm, self.pid)
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: Kind,
    pub severity: Severity,
    pub summary: String,
    /// The server-side `ip:port` the finding is about (or `node` for node-wide ones).
    pub endpoint: String,
    pub process: Option<Process>,
    /// The occurrences the summary counts.
    pub count: u64,
    #[serde(with = "crate::event::rfc3339")]
    pub first_seen: SystemTime,
    #[serde(with = "crate::event::rfc3339")]
    pub last_seen: SystemTime,
    /// Kind-specific; durations end in `_ms`, errnos are names.
    pub evidence: BTreeMap<String, serde_json::Value>,
    pub recommendation: String,
    /// Sockets of the connections involved (the last few), for timelines; not part
    /// of the stable JSON.
    #[serde(skip)]
    pub socks: Vec<(u64, std::net::SocketAddr)>,
}

/// Keeps the last `N` socket ids involved in a finding.
#[derive(Debug, Clone, Default)]
pub struct Involved(std::collections::VecDeque<(u64, std::net::SocketAddr)>);

impl Involved {
    const N: usize = 8;

    /// A connection, by socket and local address (the kernel reuses socket memory).
    pub fn add(&mut self, sock: u64, local: std::net::SocketAddr) {
        if sock == 0 || self.0.contains(&(sock, local)) {
            return;
        }
        if self.0.len() == Self::N {
            self.0.pop_front();
        }
        self.0.push_back((sock, local));
    }

    pub fn to_vec(&self) -> Vec<(u64, std::net::SocketAddr)> {
        self.0.iter().copied().collect()
    }
}

/// Builds the evidence map.
#[macro_export]
macro_rules! evidence {
    ($($key:literal => $value:expr),* $(,)?) => {{
        let mut map = std::collections::BTreeMap::new();
        $( map.insert($key.to_owned(), serde_json::json!($value)); )*
        map
    }};
}

/// A long duration as a person reads it: `2 h 10 min`, `4 min 5 s`, `45 s`.
pub fn span(ms: u64) -> String {
    let s = ms / 1000;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, 0) => format!("{m} min"),
        (0, m, s) => format!("{m} min {s} s"),
        (h, 0, _) => format!("{h} h"),
        (h, m, _) => format!("{h} h {m} min"),
    }
}

/// Seconds with two decimals, as the summaries print durations (`5.00 s`).
pub fn secs(ms: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "durations for display")]
    let s = ms as f64 / 1000.0;
    format!("{s:.2} s")
}
