//! What the UI draws: a self-contained snapshot built on the engine thread, so
//! rendering needs no engine, no lock and no I/O.

use std::{collections::VecDeque, fmt::Write as _};

use crate::{
    engine::{endpoints::EndpointStats, Engine, Finding},
    event::{Event, EventKind, TcpState},
};

/// One row of the endpoints view.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointRow {
    pub endpoint: String,
    pub open: u32,
    pub stats: EndpointStats,
    /// The idle-close timeout the engine concluded, if any.
    pub idle_timeout_ms: Option<u64>,
}

/// One row of the connections view.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnRow {
    pub pid: u32,
    pub comm: String,
    pub local: String,
    pub remote: String,
    pub state: TcpState,
    pub age_ms: u64,
    pub idle_ms: u64,
    pub retransmits: u32,
    pub closed_by: &'static str,
}

/// How the connections view is sorted (`s` cycles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    #[default]
    Age,
    Idle,
    Retransmits,
    State,
    Owner,
}

impl SortKey {
    pub fn next(self) -> Self {
        match self {
            Self::Age => Self::Idle,
            Self::Idle => Self::Retransmits,
            Self::Retransmits => Self::State,
            Self::State => Self::Owner,
            Self::Owner => Self::Age,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Age => "age",
            Self::Idle => "idle",
            Self::Retransmits => "retrans",
            Self::State => "state",
            Self::Owner => "owner",
        }
    }
}

/// The numbers in the header.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    /// `live on HOST` or `replay FILE`.
    pub source: String,
    /// Playback state for a replay (`▶ 4x 56%`), empty when live.
    pub playback: String,
    pub events: u64,
    pub events_per_sec: f64,
    pub lost: u64,
    pub programs: usize,
    /// Share of one CPU spent in conntrace's kernel programs (BPF run time).
    pub bpf_cpu_pct: Option<f64>,
}

/// Everything one frame shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub header: Header,
    pub findings: Vec<Finding>,
    /// Per finding (same order): recent events of the connections involved.
    pub timelines: Vec<Vec<String>>,
    pub endpoints: Vec<EndpointRow>,
    pub connections: Vec<ConnRow>,
    pub connections_total: usize,
    pub events: Vec<String>,
    pub status: Option<String>,
}

/// At most this many rows are shipped per table.
pub const MAX_ROWS: usize = 500;
const TIMELINE: usize = 12;
const TIMELINE_FINDINGS: usize = 50;

/// One event as a line: `12:03:01.114 state ESTABLISHED>CLOSE_WAIT python3/4242 ...`.
pub fn event_line(e: &Event) -> String {
    let t = humantime::format_rfc3339_millis(e.time).to_string();
    let clock = t.get(11..23).unwrap_or(&t);
    let mut s = format!("{clock} {:<10} ", e.kind.name());
    match &e.kind {
        EventKind::State {
            old,
            new,
            idle_ms,
            closed_by,
            ..
        } => {
            let _ = write!(s, "{old}>{new} idle {idle_ms}ms");
            if let Some(c) = closed_by {
                let _ = write!(s, " ({c:?} closed)");
            }
        }
        EventKind::Connect { errno, .. } | EventKind::Error { errno, .. } => {
            let _ = write!(s, "{errno}");
        }
        EventKind::Reset {
            direction,
            state,
            reason,
            ..
        } => {
            let _ = write!(
                s,
                "{direction:?} in {} {}",
                state.map_or("-", TcpState::as_str),
                reason.as_deref().unwrap_or("")
            );
        }
        EventKind::Retransmit {
            rto_count,
            ack_idle_ms,
            ..
        } => {
            let _ = write!(s, "rto#{rto_count} no ack {ack_idle_ms}ms");
        }
        EventKind::Accept { .. } => {}
    }
    let _ = write!(
        s,
        "  {}/{} {} -> {}",
        if e.comm.is_empty() { "?" } else { &e.comm },
        e.pid,
        e.local,
        e.remote
    );
    s
}

fn matches_filter(text: &str, filter: &str) -> bool {
    filter.is_empty() || text.to_lowercase().contains(&filter.to_lowercase())
}

/// Builds a snapshot from the engine and the recent-event tail.
pub fn build(
    engine: &Engine,
    tail: &VecDeque<Event>,
    filter: &str,
    sort: SortKey,
    header: Header,
) -> Snapshot {
    let cfg = &engine.cfg;
    let (now, _) = engine.now();
    let findings: Vec<Finding> = engine
        .findings()
        .into_iter()
        .filter(|f| {
            matches_filter(
                &format!("{} {} {}", f.kind.as_str(), f.endpoint, f.summary),
                filter,
            )
        })
        .collect();
    let timelines = findings
        .iter()
        .take(TIMELINE_FINDINGS)
        .map(|f| {
            let pid = f.process.as_ref().map(|p| p.pid);
            let mut lines: Vec<String> = tail
                .iter()
                .rev()
                .filter(|e| {
                    // The connections the finding counted when it names them, else any
                    // connection of that process to that endpoint.
                    if f.socks.is_empty() {
                        (e.local.to_string() == f.endpoint || e.remote.to_string() == f.endpoint)
                            && pid.is_none_or(|p| p == e.pid)
                    } else {
                        f.socks.iter().any(|(sock, local)| {
                            *sock == e.sock
                                && (e.local == *local || e.local.port() == 0 || local.port() == 0)
                        })
                    }
                })
                .take(TIMELINE)
                .map(event_line)
                .collect();
            lines.reverse();
            lines
        })
        .collect();

    let mut open: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    for c in engine.conns.iter().filter(|c| c.is_open() && c.established) {
        *open.entry(c.server_endpoint().to_string()).or_default() += 1;
    }
    let estimates: std::collections::HashMap<&str, u64> = findings
        .iter()
        .filter(|f| f.kind == crate::engine::Kind::IdleCloseTimeout)
        .filter_map(|f| {
            Some((
                f.endpoint.as_str(),
                f.evidence.get("idle_timeout_ms")?.as_u64()?,
            ))
        })
        .collect();
    let mut endpoints: Vec<EndpointRow> = engine
        .endpoints
        .by_endpoint
        .iter()
        .filter(|(e, _)| matches_filter(e, filter))
        .map(|(e, s)| EndpointRow {
            endpoint: e.clone(),
            open: open.get(e).copied().unwrap_or(0),
            stats: s.clone(),
            idle_timeout_ms: estimates.get(e.as_str()).copied(),
        })
        .collect();
    endpoints.sort_by(|a, b| {
        let weight = |r: &EndpointRow| {
            r.stats.resets_sent
                + r.stats.resets_received
                + r.stats.connect_errors
                + r.stats.retransmits
                + r.stats
                    .idle_closes
                    .iter()
                    .map(|n| u64::from(*n))
                    .sum::<u64>()
        };
        weight(b)
            .cmp(&weight(a))
            .then_with(|| a.endpoint.cmp(&b.endpoint))
    });
    endpoints.truncate(MAX_ROWS);

    let mut connections: Vec<ConnRow> = engine
        .conns
        .iter()
        .filter(|c| c.is_open() && c.role != crate::engine::Role::Listener)
        .map(|c| ConnRow {
            pid: c.pid,
            comm: c.comm.clone(),
            local: c.local.to_string(),
            remote: c.remote.to_string(),
            state: c.state,
            age_ms: now.saturating_sub(c.opened_ns) / 1_000_000,
            idle_ms: now.saturating_sub(c.last_ns) / 1_000_000,
            retransmits: c.retransmits,
            closed_by: match c.peer_fin {
                Some(_) => "peer",
                None if matches!(
                    c.state,
                    TcpState::FinWait1
                        | TcpState::FinWait2
                        | TcpState::Closing
                        | TcpState::TimeWait
                ) =>
                {
                    "local"
                }
                None => "",
            },
        })
        .filter(|r| {
            matches_filter(
                &format!("{} {} {} {} {}", r.comm, r.pid, r.local, r.remote, r.state),
                filter,
            )
        })
        .collect();
    let connections_total = connections.len();
    match sort {
        SortKey::Age => {
            connections.sort_by(|a, b| b.age_ms.cmp(&a.age_ms).then_with(|| a.local.cmp(&b.local)))
        }
        SortKey::Idle => connections.sort_by(|a, b| {
            b.idle_ms
                .cmp(&a.idle_ms)
                .then_with(|| a.local.cmp(&b.local))
        }),
        SortKey::Retransmits => connections.sort_by(|a, b| {
            b.retransmits
                .cmp(&a.retransmits)
                .then_with(|| a.local.cmp(&b.local))
        }),
        SortKey::State => connections.sort_by(|a, b| {
            a.state
                .as_str()
                .cmp(b.state.as_str())
                .then_with(|| a.local.cmp(&b.local))
        }),
        SortKey::Owner => connections.sort_by(|a, b| {
            a.comm
                .cmp(&b.comm)
                .then(a.pid.cmp(&b.pid))
                .then_with(|| a.local.cmp(&b.local))
        }),
    }
    connections.truncate(MAX_ROWS);

    let events: Vec<String> = tail
        .iter()
        .rev()
        .map(event_line)
        .filter(|l| matches_filter(l, filter))
        .take(MAX_ROWS)
        .collect();
    let _ = cfg;
    Snapshot {
        header,
        findings,
        timelines,
        endpoints,
        connections,
        connections_total,
        events,
        status: None,
    }
}
