//! Prometheus metrics (`--metrics-addr`): counters kept from the live event stream,
//! gauges read from the engine at scrape time, in the text exposition format.
//!
//! Every label set is bounded: states (13×13), reset directions × kernel reasons (an
//! enum), errno names, finding kinds × severities, loss causes — and per server
//! endpoint only for the first [`MAX_ENDPOINTS`] endpoints, the rest counted in
//! `conntrace_metrics_endpoints_dropped_total`. No per-connection labels.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::SocketAddr,
};

use crate::{
    engine::Engine,
    event::{Direction, Event, EventKind, TcpState},
};

/// Server endpoints that get their own idle-close histogram.
pub const MAX_ENDPOINTS: usize = 64;
/// Histogram bucket bounds, seconds.
const BUCKETS: [f64; 9] = [0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum_ms: u64,
}

/// Counters from the event stream.
#[derive(Debug, Default)]
pub struct Metrics {
    events: u64,
    transitions: BTreeMap<(&'static str, &'static str), u64>,
    resets: BTreeMap<(&'static str, String), u64>,
    connect_errors: BTreeMap<String, u64>,
    idle: HashMap<SocketAddr, Histogram>,
    endpoints_dropped: u64,
    /// Sockets that went SYN_SENT -> CLOSE lately, whose error is a connect error.
    unconnected: std::collections::VecDeque<u64>,
}

/// Loss counters and programs, from the probes at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Probed {
    pub programs: usize,
    pub losses: crate::event::Losses,
    /// The HTTP server's own counters.
    pub scrapes: u64,
    pub scrapes_refused: u64,
    pub accept_errors: u64,
}

fn state_name(s: TcpState) -> &'static str {
    s.as_str()
}

impl Metrics {
    pub fn observe(&mut self, e: &Event) {
        self.events += 1;
        match &e.kind {
            EventKind::State {
                old, new, idle_ms, ..
            } => {
                // A connect that never got through: its error (reported after
                // ->CLOSE without the system-call hooks) is a connect error.
                if *old == TcpState::SynSent && *new == TcpState::Close {
                    if self.unconnected.len() >= 4096 {
                        self.unconnected.pop_front();
                    }
                    self.unconnected.push_back(e.sock);
                }
                *self
                    .transitions
                    .entry((state_name(*old), state_name(*new)))
                    .or_default() += 1;
                // The server side closed first: the idle time it closed at.
                let endpoint = match (old, new) {
                    (TcpState::Established, TcpState::CloseWait) => Some(e.remote),
                    _ => None,
                };
                if let Some(ep) = endpoint {
                    self.observe_idle(ep, *idle_ms);
                }
            }
            EventKind::Reset {
                direction, reason, ..
            } => {
                let dir = match direction {
                    Direction::Sent => "sent",
                    Direction::Received => "received",
                };
                let reason = reason.clone().unwrap_or_else(|| "none".to_owned());
                *self.resets.entry((dir, reason)).or_default() += 1;
            }
            EventKind::Connect { errno, .. } => {
                *self.connect_errors.entry(errno.name()).or_default() += 1;
            }
            EventKind::Error { errno, .. } => {
                if let Some(i) = self.unconnected.iter().rposition(|s| *s == e.sock) {
                    self.unconnected.remove(i);
                    *self.connect_errors.entry(errno.name()).or_default() += 1;
                }
            }
            EventKind::Retransmit { .. } | EventKind::Accept { .. } => {}
        }
    }

    fn observe_idle(&mut self, endpoint: SocketAddr, idle_ms: u64) {
        if !self.idle.contains_key(&endpoint) && self.idle.len() >= MAX_ENDPOINTS {
            self.endpoints_dropped += 1;
            return;
        }
        let h = self.idle.entry(endpoint).or_default();
        #[expect(clippy::cast_precision_loss, reason = "bucket comparison")]
        let secs = idle_ms as f64 / 1000.0;
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum_ms += idle_ms;
    }

    /// The exposition text.
    pub fn render(&self, engine: &Engine, probed: Probed) -> String {
        let mut s = String::with_capacity(4096);
        let family = |s: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut s,
            "conntrace_events_total",
            "counter",
            "Kernel events delivered to the engine.",
        );
        let _ = writeln!(s, "conntrace_events_total {}", self.events);
        family(
            &mut s,
            "conntrace_tcp_state_transitions_total",
            "counter",
            "TCP state transitions, by old and new state.",
        );
        for ((old, new), n) in &self.transitions {
            let _ = writeln!(
                s,
                "conntrace_tcp_state_transitions_total{{old=\"{old}\",new=\"{new}\"}} {n}"
            );
        }
        family(
            &mut s,
            "conntrace_tcp_resets_total",
            "counter",
            "TCP resets, by direction and kernel reset reason.",
        );
        for ((dir, reason), n) in &self.resets {
            let _ = writeln!(
                s,
                "conntrace_tcp_resets_total{{direction=\"{dir}\",reason=\"{reason}\"}} {n}"
            );
        }
        family(
            &mut s,
            "conntrace_connect_errors_total",
            "counter",
            "Failed connect() calls, by errno.",
        );
        for (errno, n) in &self.connect_errors {
            let _ = writeln!(s, "conntrace_connect_errors_total{{errno=\"{errno}\"}} {n}");
        }
        self.render_rest(&mut s, engine, probed);
        s
    }

    /// The idle-close histograms and the gauges read at scrape time.
    fn render_rest(&self, s: &mut String, engine: &Engine, probed: Probed) {
        let family = |s: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            s,
            "conntrace_idle_before_close_seconds",
            "histogram",
            "Idle time at which a server endpoint closed a connection first (peer FIN seen by a client on this node).",
        );
        let mut endpoints: Vec<_> = self.idle.iter().collect();
        endpoints.sort_by_key(|(e, _)| **e);
        for (ep, h) in endpoints {
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(s, "conntrace_idle_before_close_seconds_bucket{{endpoint=\"{ep}\",le=\"{le}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(
                s,
                "conntrace_idle_before_close_seconds_bucket{{endpoint=\"{ep}\",le=\"+Inf\"}} {}",
                h.count
            );
            #[expect(clippy::cast_precision_loss, reason = "seconds")]
            let sum = h.sum_ms as f64 / 1000.0;
            let _ = writeln!(
                s,
                "conntrace_idle_before_close_seconds_sum{{endpoint=\"{ep}\"}} {sum}"
            );
            let _ = writeln!(
                s,
                "conntrace_idle_before_close_seconds_count{{endpoint=\"{ep}\"}} {}",
                h.count
            );
        }
        family(
            s,
            "conntrace_metrics_endpoints_dropped_total",
            "counter",
            "Idle-close observations not kept because the endpoint cap was reached.",
        );
        let _ = writeln!(
            s,
            "conntrace_metrics_endpoints_dropped_total {}",
            self.endpoints_dropped
        );
        family(
            s,
            "conntrace_findings_active",
            "gauge",
            "Current findings, by kind and severity.",
        );
        let mut active: BTreeMap<(&str, String), u64> = BTreeMap::new();
        for f in engine.findings() {
            let sev = serde_json::to_value(f.severity)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            *active.entry((f.kind.as_str(), sev)).or_default() += 1;
        }
        for ((kind, sev), n) in &active {
            let _ = writeln!(
                s,
                "conntrace_findings_active{{kind=\"{kind}\",severity=\"{sev}\"}} {n}"
            );
        }
        family(
            s,
            "conntrace_events_lost_total",
            "counter",
            "Events lost, by cause.",
        );
        for (cause, n) in [
            ("ringbuf_full", probed.losses.ringbuf_full),
            ("owner_map", probed.losses.owner_map),
            ("connect_map", probed.losses.connect_map),
            ("kernel_read", probed.losses.kernel_read),
            ("undecodable", probed.losses.undecodable),
            ("engine_evicted", probed.losses.engine_evicted),
        ] {
            let _ = writeln!(s, "conntrace_events_lost_total{{cause=\"{cause}\"}} {n}");
        }
        family(
            s,
            "conntrace_programs_attached",
            "gauge",
            "Kernel programs attached.",
        );
        let _ = writeln!(s, "conntrace_programs_attached {}", probed.programs);
        render_server(s, probed);
        family(
            s,
            "conntrace_connections_tracked",
            "gauge",
            "Connections in the engine's table.",
        );
        let _ = writeln!(s, "conntrace_connections_tracked {}", engine.conns.len());
    }
}

/// The metrics endpoint's own counters.
fn render_server(s: &mut String, probed: Probed) {
    let family = |s: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        s,
        "conntrace_metrics_scrapes_total",
        "counter",
        "Scrapes answered by this endpoint.",
    );
    let _ = writeln!(s, "conntrace_metrics_scrapes_total {}", probed.scrapes);
    family(
        s,
        "conntrace_metrics_connections_refused_total",
        "counter",
        "Metrics connections closed at once: the connection limit was reached.",
    );
    let _ = writeln!(
        s,
        "conntrace_metrics_connections_refused_total {}",
        probed.scrapes_refused
    );
    family(
        s,
        "conntrace_metrics_accept_errors_total",
        "counter",
        "Failed accepts of metrics connections (e.g. out of file descriptors).",
    );
    let _ = writeln!(
        s,
        "conntrace_metrics_accept_errors_total {}",
        probed.accept_errors
    );
}

/// `PORT` alone means `127.0.0.1:PORT`: metrics stay on loopback unless told.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("'{s}' is not an address (expected PORT, IP:PORT or [IPv6]:PORT)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        engine::{testing::Sock, Config},
        event::TcpState::*,
    };

    #[test]
    fn exposition_has_every_family_with_bounded_labels() {
        let mut m = Metrics::default();
        let mut engine = Engine::new(Config::default());
        for i in 0..70u16 {
            let c = Sock::new(
                u64::from(i) + 1,
                9,
                "client",
                "10.0.0.1:40000",
                &format!("10.0.0.5:{}", 8000 + i),
            );
            for e in c
                .connect(0)
                .into_iter()
                .chain([c.state(2000, Established, CloseWait, 2000)])
            {
                m.observe(&e);
                engine.ingest(&e);
            }
        }
        let refused = Sock::new(99, 9, "client", "10.0.0.1:40001", "10.0.0.5:9");
        m.observe(&refused.connect_error(1, libc::EADDRNOTAVAIL));
        m.observe(&refused.reset_sent(2, None, "NO_SOCKET"));
        let text = m.render(
            &engine,
            Probed {
                programs: 9,
                ..Probed::default()
            },
        );
        assert!(
            text.contains(
                "conntrace_tcp_state_transitions_total{old=\"ESTABLISHED\",new=\"CLOSE_WAIT\"} 70"
            ),
            "{text}"
        );
        assert!(text.contains("conntrace_connect_errors_total{errno=\"EADDRNOTAVAIL\"} 1"));
        assert!(
            text.contains("conntrace_tcp_resets_total{direction=\"sent\",reason=\"NO_SOCKET\"} 1")
        );
        assert!(text.contains(
            "conntrace_idle_before_close_seconds_bucket{endpoint=\"10.0.0.5:8000\",le=\"2\"} 1"
        ));
        assert!(
            text.contains("conntrace_idle_before_close_seconds_sum{endpoint=\"10.0.0.5:8000\"} 2")
        );
        assert_eq!(text.matches("le=\"+Inf\"").count(), MAX_ENDPOINTS, "capped");
        assert!(text.contains("conntrace_metrics_endpoints_dropped_total 6"));
        assert!(text.contains("conntrace_programs_attached 9"));
    }

    #[test]
    fn metrics_address_defaults_to_loopback() {
        assert_eq!(parse_addr("9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(
            parse_addr("0.0.0.0:9464").unwrap().to_string(),
            "0.0.0.0:9464"
        );
        assert!(parse_addr("nope").unwrap_err().contains("not an address"));
    }
}
