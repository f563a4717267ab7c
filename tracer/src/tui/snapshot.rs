//! What the UI draws: a self-contained snapshot built on the engine thread, so
//! rendering needs no engine, no lock and no I/O.

use std::{
    collections::{HashMap, VecDeque},
    fmt::Write as _,
    net::SocketAddr,
};

use crate::{
    engine::{endpoints::EndpointStats, Engine, Finding, Kind, Role, Tracked},
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
    /// Awaiting a reply this long (we spoke last), from the periodic inspection.
    pub waiting_ms: Option<u64>,
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
    #[must_use]
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
    /// Events missing from what was seen (the ring buffer full, a kernel read that
    /// failed, skipped nested runs, undecodable records).
    pub lost: u64,
    /// Seen, but not kept whole: socket owners the bounded owner maps had no room
    /// for, and engine table entries dropped early (tables full).
    pub not_kept: u64,
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
            orphan,
            ..
        } => {
            let _ = write!(s, "rto#{rto_count} no ack {ack_idle_ms}ms");
            if *orphan {
                s.push_str(" orphaned");
            }
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
    // Names and reasons come from the kernel or a log: shown, never sent raw.
    crate::text::printable(&s).into_owned()
}

/// A finding with every string that may come from the kernel or a log (summary,
/// fix, evidence values, pod) escaped for the terminal.
fn printable_finding(mut f: Finding) -> Finding {
    fn value(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => {
                if let std::borrow::Cow::Owned(p) = crate::text::printable(s) {
                    *s = p;
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(value),
            serde_json::Value::Object(o) => o.values_mut().for_each(value),
            _ => {}
        }
    }
    f.summary = crate::text::printable(&f.summary).into_owned();
    f.recommendation = crate::text::printable(&f.recommendation).into_owned();
    f.endpoint = crate::text::printable(&f.endpoint).into_owned();
    f.evidence.values_mut().for_each(value);
    if let Some(p) = f.process.as_mut() {
        for s in [&mut p.pod, &mut p.container, &mut p.cgroup]
            .into_iter()
            .flatten()
        {
            *s = crate::text::printable(s).into_owned();
        }
    }
    f
}

fn matches_filter(text: &str, filter: &str) -> bool {
    filter.is_empty() || text.to_lowercase().contains(&filter.to_lowercase())
}

/// Recent events of the connections a finding counted (or, when it names none, of
/// its process and endpoint).
fn timelines(findings: &[Finding], tail: &VecDeque<Event>) -> Vec<Vec<String>> {
    findings
        .iter()
        .take(TIMELINE_FINDINGS)
        .map(|f| {
            let pid = f.process.as_ref().map(|p| p.pid);
            let endpoint: Option<SocketAddr> = f.endpoint.parse().ok();
            let involved = |e: &Event| {
                if f.socks.is_empty() {
                    endpoint.is_some_and(|ep| e.local == ep || e.remote == ep)
                        && pid.is_none_or(|p| p == e.pid)
                } else {
                    f.socks.iter().any(|(sock, local)| {
                        *sock == e.sock
                            && (e.local == *local || e.local.port() == 0 || local.port() == 0)
                    })
                }
            };
            let mut lines: Vec<String> = tail
                .iter()
                .rev()
                .filter(|e| involved(e))
                .take(TIMELINE)
                .map(event_line)
                .collect();
            lines.reverse();
            lines
        })
        .collect()
}

fn endpoint_rows(engine: &Engine, findings: &[Finding], filter: &str) -> Vec<EndpointRow> {
    let mut open: HashMap<SocketAddr, u32> = HashMap::new();
    for c in engine
        .conns()
        .iter()
        .filter(|c| c.is_open() && c.established)
    {
        *open.entry(c.server_endpoint()).or_default() += 1;
    }
    let estimates: HashMap<&str, u64> = findings
        .iter()
        .filter(|f| f.kind == Kind::IdleCloseTimeout)
        .filter_map(|f| {
            Some((
                f.endpoint.as_str(),
                f.evidence.get("idle_timeout_ms")?.as_u64()?,
            ))
        })
        .collect();
    let mut rows: Vec<EndpointRow> = engine
        .endpoints()
        .by_endpoint
        .iter()
        .map(|(e, s)| (e, e.to_string(), s))
        .filter(|(_, name, _)| matches_filter(name, filter))
        .map(|(e, name, s)| EndpointRow {
            open: open.get(e).copied().unwrap_or(0),
            stats: s.clone(),
            idle_timeout_ms: estimates.get(name.as_str()).copied(),
            endpoint: name,
        })
        .collect();
    let weight = |r: &EndpointRow| {
        let s = &r.stats;
        s.resets_sent
            + s.resets_received
            + s.connect_errors
            + s.retransmits
            + s.idle_closes.iter().map(|n| u64::from(*n)).sum::<u64>()
    };
    rows.sort_by(|a, b| {
        weight(b)
            .cmp(&weight(a))
            .then_with(|| a.endpoint.cmp(&b.endpoint))
    });
    rows.truncate(MAX_ROWS);
    rows
}

/// Open connections matching the filter, sorted, the first [`MAX_ROWS`] as rows;
/// and how many matched. Only the rows shipped are formatted.
fn connection_rows(engine: &Engine, filter: &str, sort: SortKey) -> (Vec<ConnRow>, usize) {
    let (now, _) = engine.now();
    let mut conns: Vec<&Tracked> = engine
        .conns()
        .iter()
        .filter(|c| c.is_open() && c.role != Role::Listener)
        .filter(|c| {
            filter.is_empty()
                || matches_filter(
                    &format!("{} {} {} {} {}", c.comm, c.pid, c.local, c.remote, c.state),
                    filter,
                )
        })
        .collect();
    let total = conns.len();
    let order = |a: &&Tracked, b: &&Tracked| {
        let by = match sort {
            SortKey::Age => a.opened_ns.cmp(&b.opened_ns),
            SortKey::Idle => a.last_ns.cmp(&b.last_ns),
            SortKey::Retransmits => b.retransmits.cmp(&a.retransmits),
            SortKey::State => a.state.as_str().cmp(b.state.as_str()),
            SortKey::Owner => a.comm.cmp(&b.comm).then(a.pid.cmp(&b.pid)),
        };
        by.then_with(|| a.local.cmp(&b.local))
            .then(a.sock.cmp(&b.sock))
    };
    if conns.len() > MAX_ROWS {
        conns.select_nth_unstable_by(MAX_ROWS, order);
        conns.truncate(MAX_ROWS);
    }
    conns.sort_unstable_by(order);
    let rows = conns
        .into_iter()
        .map(|c| ConnRow {
            pid: c.pid,
            comm: crate::text::printable(c.comm.as_str()).into_owned(),
            local: c.local.to_string(),
            remote: c.remote.to_string(),
            state: c.state,
            age_ms: now.saturating_sub(c.opened_ns) / 1_000_000,
            idle_ms: now.saturating_sub(c.last_ns) / 1_000_000,
            retransmits: c.retransmits,
            waiting_ms: engine.waiting_ms(c.local, c.remote),
            closed_by: if c.peer_fin.is_some() {
                "peer"
            } else if matches!(
                c.state,
                TcpState::FinWait1 | TcpState::FinWait2 | TcpState::Closing | TcpState::TimeWait
            ) {
                "local"
            } else {
                ""
            },
        })
        .collect();
    (rows, total)
}

/// Builds a snapshot from the engine and the recent-event tail.
pub fn build(
    engine: &Engine,
    tail: &VecDeque<Event>,
    filter: &str,
    sort: SortKey,
    header: Header,
) -> Snapshot {
    let findings: Vec<Finding> = engine
        .findings()
        .into_iter()
        .filter(|f| {
            filter.is_empty()
                || matches_filter(
                    &format!("{} {} {}", f.kind.as_str(), f.endpoint, f.summary),
                    filter,
                )
        })
        .map(printable_finding)
        .collect();
    let timelines = timelines(&findings, tail);
    let endpoints = endpoint_rows(engine, &findings, filter);
    let (connections, connections_total) = connection_rows(engine, filter, sort);
    let events: Vec<String> = tail
        .iter()
        .rev()
        .map(event_line)
        .filter(|l| matches_filter(l, filter))
        .take(MAX_ROWS)
        .collect();
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
