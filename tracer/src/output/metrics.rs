//! Prometheus metrics (`--metrics-addr`): counters kept from the live event stream,
//! gauges read from the engine at scrape time, exposed as OpenMetrics text through
//! the `prometheus-client` crate (the ecosystem's maintained encoder).
//!
//! Every label set is bounded: states (13×13), reset directions × kernel reasons (an
//! enum), errno names, finding kinds × severities, loss causes — and per server
//! endpoint only for the first [`MAX_ENDPOINTS`] endpoints, the rest counted in
//! `conntrace_metrics_endpoints_dropped_total`. No per-connection labels.

use std::{collections::VecDeque, net::SocketAddr};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{
    engine::Engine,
    event::{Direction, Event, EventKind, TcpState},
};

/// Server endpoints that get their own idle-close histogram.
pub const MAX_ENDPOINTS: usize = 64;
/// Histogram bucket bounds, seconds.
const BUCKETS: [f64; 9] = [0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Transition {
    old: &'static str,
    new: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResetLabels {
    direction: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Errno {
    errno: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Endpoint {
    endpoint: Addr,
}

/// An `ip:port` label value, formatted only when a page is rendered.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Addr(SocketAddr);

impl EncodeLabelValue for Addr {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        write!(encoder, "{}", self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Listener {
    listener: Addr,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    kind: &'static str,
    severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cause {
    cause: &'static str,
}

fn idle_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Every metric family, registered once; counters from the event stream are
/// incremented as events come, the rest set from the engine and the probes when a
/// page is rendered.
pub struct Metrics {
    registry: Registry,
    events: Counter,
    transitions: Family<Transition, Counter>,
    resets: Family<ResetLabels, Counter>,
    connect_errors: Family<Errno, Counter>,
    idle: Family<Endpoint, Histogram, fn() -> Histogram>,
    /// Endpoints with a histogram (at most [`MAX_ENDPOINTS`]).
    endpoints: std::collections::HashSet<SocketAddr>,
    endpoints_dropped: Counter,
    findings_active: Family<FindingLabels, Gauge>,
    lost: Family<Cause, Counter>,
    programs: Gauge,
    scrapes: Counter,
    scrapes_refused: Counter,
    scrapes_reclaimed: Counter,
    accept_errors: Counter,
    tracked: Gauge,
    listen_queue: Family<Listener, Gauge>,
    listen_backlog: Family<Listener, Gauge>,
    listen_drops: Family<Listener, Counter>,
    listeners_omitted: Gauge,
    keepalive_timeout: Family<Endpoint, Gauge<f64, std::sync::atomic::AtomicU64>>,
    max_reuse_gap: Family<Endpoint, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Sockets that went SYN_SENT -> CLOSE lately, whose error is a connect error.
    unconnected: VecDeque<u64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Loss counters and programs, from the probes at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Probed {
    pub programs: usize,
    pub losses: crate::event::Losses,
    /// The HTTP server's own counters.
    pub scrapes: u64,
    pub scrapes_refused: u64,
    pub scrapes_reclaimed: u64,
    pub accept_errors: u64,
}

impl Metrics {
    fn register_listeners(&self, r: &mut Registry) {
        r.register(
            "conntrace_metrics_connections_reclaimed",
            "Metrics connections cut to make room: they had sent no request",
            self.scrapes_reclaimed.clone(),
        );
        r.register(
            "conntrace_keepalive_server_timeout_seconds",
            "An endpoint's idle-close timeout, where pools reuse connections to it",
            self.keepalive_timeout.clone(),
        );
        r.register(
            "conntrace_keepalive_max_reuse_gap_seconds",
            "The longest idle time after which a pool reused a connection to the endpoint",
            self.max_reuse_gap.clone(),
        );
        r.register(
            "conntrace_listen_queue",
            "Connections waiting in a listener's accept queue (listeners seen queueing)",
            self.listen_queue.clone(),
        );
        r.register(
            "conntrace_listen_backlog",
            "A listener's accept queue limit (its backlog, clamped by somaxconn)",
            self.listen_backlog.clone(),
        );
        r.register(
            "conntrace_listen_drops",
            "Connection attempts dropped at a full accept queue, attributed to the listener",
            self.listen_drops.clone(),
        );
        r.register(
            "conntrace_listen_listeners_omitted",
            "Listeners seen queueing beyond the label cap, not exported",
            self.listeners_omitted.clone(),
        );
    }
}

/// Sets a counter that mirrors a total kept elsewhere (kernel, server, engine).
fn mirror(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            events: Counter::default(),
            transitions: Family::default(),
            resets: Family::default(),
            connect_errors: Family::default(),
            idle: Family::new_with_constructor(idle_histogram),
            endpoints: std::collections::HashSet::new(),
            endpoints_dropped: Counter::default(),
            findings_active: Family::default(),
            lost: Family::default(),
            programs: Gauge::default(),
            scrapes: Counter::default(),
            scrapes_refused: Counter::default(),
            scrapes_reclaimed: Counter::default(),
            accept_errors: Counter::default(),
            tracked: Gauge::default(),
            listen_queue: Family::default(),
            listen_backlog: Family::default(),
            listen_drops: Family::default(),
            listeners_omitted: Gauge::default(),
            keepalive_timeout: Family::default(),
            max_reuse_gap: Family::default(),
            unconnected: VecDeque::new(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "conntrace_events",
            "Kernel events delivered to the engine",
            m.events.clone(),
        );
        r.register(
            "conntrace_tcp_state_transitions",
            "TCP state transitions, by old and new state",
            m.transitions.clone(),
        );
        r.register(
            "conntrace_tcp_resets",
            "TCP resets, by direction and kernel reset reason",
            m.resets.clone(),
        );
        r.register(
            "conntrace_connect_errors",
            "Failed connect() calls, by errno",
            m.connect_errors.clone(),
        );
        r.register(
            "conntrace_idle_before_close_seconds",
            "Idle time at which a server endpoint closed a connection first, after at least the engine's minimum idle (500 ms): seen from the client's node or the server's, once per connection, under the address the client dialled",
            m.idle.clone(),
        );
        r.register(
            "conntrace_metrics_endpoints_dropped",
            "Idle-close observations not kept because the endpoint cap was reached",
            m.endpoints_dropped.clone(),
        );
        m.register_listeners(r);
        r.register(
            "conntrace_findings_active",
            "Current findings, by kind and severity",
            m.findings_active.clone(),
        );
        r.register(
            "conntrace_events_lost",
            "Events lost, by cause",
            m.lost.clone(),
        );
        r.register(
            "conntrace_programs_attached",
            "Kernel programs attached",
            m.programs.clone(),
        );
        r.register(
            "conntrace_metrics_scrapes",
            "Scrapes answered by this endpoint",
            m.scrapes.clone(),
        );
        r.register(
            "conntrace_metrics_connections_refused",
            "Metrics connections closed at once: the limit was reached and every connection was a live scrape",
            m.scrapes_refused.clone(),
        );
        r.register(
            "conntrace_metrics_accept_errors",
            "Failed accepts of metrics connections (e.g. out of file descriptors)",
            m.accept_errors.clone(),
        );
        r.register(
            "conntrace_connections_tracked",
            "Connections in the engine's table",
            m.tracked.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// One kernel event, with the idle-close sample the engine took from it
    /// ([`Engine::record_observed`]).
    pub fn observe(&mut self, e: &Event, idle: Option<crate::engine::IdleSample>) {
        self.events.inc();
        if let Some((endpoint, idle_ms)) = idle {
            self.observe_idle(endpoint, idle_ms);
        }
        match &e.kind {
            EventKind::State { old, new, .. } => {
                // A connect that never got through: its error (reported after
                // ->CLOSE without the system-call hooks) is a connect error.
                if *old == TcpState::SynSent && *new == TcpState::Close {
                    if self.unconnected.len() >= 4096 {
                        self.unconnected.pop_front();
                    }
                    self.unconnected.push_back(e.sock);
                }
                self.transitions
                    .get_or_create(&Transition {
                        old: old.as_str(),
                        new: new.as_str(),
                    })
                    .inc();
            }
            EventKind::Reset {
                direction, reason, ..
            } => {
                let direction = match direction {
                    Direction::Sent => "sent",
                    Direction::Received => "received",
                };
                let reason = reason.clone().unwrap_or_else(|| "none".to_owned());
                self.resets
                    .get_or_create(&ResetLabels { direction, reason })
                    .inc();
            }
            EventKind::Connect { errno, .. } => {
                self.connect_error(errno.name());
            }
            // A connecting socket's error: reported while it still connects (an ICMP
            // error; Linux < 5.12, where conntrace reads the error at the close and
            // reports it first), or after its SYN_SENT -> CLOSE.
            EventKind::Error {
                errno,
                state: TcpState::SynSent,
            } => self.connect_error(errno.name()),
            EventKind::Error { errno, .. } => {
                if let Some(i) = self.unconnected.iter().rposition(|s| *s == e.sock) {
                    self.unconnected.remove(i);
                    self.connect_error(errno.name());
                }
            }
            EventKind::Retransmit { .. } | EventKind::Accept { .. } => {}
        }
    }

    fn connect_error(&self, errno: String) {
        self.connect_errors.get_or_create(&Errno { errno }).inc();
    }

    /// An idle close the engine sampled: `endpoint` (a server, as its clients
    /// dialled it) closed first after `idle_ms` idle. The engine decides, from
    /// either end: a server's own socket seeing its client hang up is not one, and
    /// a connection with both ends on this node counts once.
    fn observe_idle(&mut self, endpoint: SocketAddr, idle_ms: u64) {
        if !self.endpoints.contains(&endpoint) {
            if self.endpoints.len() >= MAX_ENDPOINTS {
                self.endpoints_dropped.inc();
                return;
            }
            self.endpoints.insert(endpoint);
        }
        #[expect(clippy::cast_precision_loss, reason = "seconds")]
        let secs = idle_ms as f64 / 1000.0;
        self.idle
            .get_or_create(&Endpoint {
                endpoint: Addr(endpoint),
            })
            .observe(secs);
    }

    /// The exposition page (OpenMetrics text), with the gauges and mirrored totals
    /// read now from the engine and the probes.
    pub fn render(&self, engine: &Engine, probed: Probed) -> String {
        self.findings_active.clear();
        for f in engine.findings() {
            let severity = serde_json::to_value(f.severity)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            self.findings_active
                .get_or_create(&FindingLabels {
                    kind: f.kind.as_str(),
                    severity,
                })
                .inc();
        }
        let l = probed.losses;
        for (cause, n) in [
            ("ringbuf_full", l.ringbuf_full),
            ("owner_map", l.owner_map),
            ("connect_map", l.connect_map),
            ("kernel_read", l.kernel_read),
            ("kernel_nested", l.kernel_nested),
            ("undecodable", l.undecodable),
            ("engine_evicted", l.engine_evicted),
            ("closed_owners", l.closed_owners),
            ("conntrack_skipped", l.conntrack_skipped),
        ] {
            mirror(&self.lost.get_or_create(&Cause { cause }), n);
        }
        self.programs
            .set(i64::try_from(probed.programs).unwrap_or(i64::MAX));
        mirror(&self.scrapes, probed.scrapes);
        mirror(&self.scrapes_refused, probed.scrapes_refused);
        mirror(&self.scrapes_reclaimed, probed.scrapes_reclaimed);
        mirror(&self.accept_errors, probed.accept_errors);
        self.tracked
            .set(i64::try_from(engine.conns().len()).unwrap_or(i64::MAX));
        let mut gaps: Vec<(SocketAddr, u64)> = engine.max_reuse_gaps().into_iter().collect();
        gaps.sort_by_key(|(e, g)| (std::cmp::Reverse(*g), *e));
        for (endpoint, gap) in gaps.into_iter().take(MAX_ENDPOINTS) {
            let label = Endpoint {
                endpoint: Addr(endpoint),
            };
            #[expect(clippy::cast_precision_loss, reason = "seconds for display")]
            self.max_reuse_gap
                .get_or_create(&label)
                .set(gap as f64 / 1000.0);
            if let Some(t) = engine.idle_timeout_ms(&endpoint) {
                #[expect(clippy::cast_precision_loss, reason = "seconds for display")]
                self.keepalive_timeout
                    .get_or_create(&label)
                    .set(t as f64 / 1000.0);
            }
        }
        let mut listeners = engine.listener_states();
        // The ones that dropped most, then the fullest, keep their labels.
        listeners.sort_by_key(|(a, q, _, d)| (std::cmp::Reverse((*d, *q)), *a));
        let omitted = listeners.len().saturating_sub(MAX_ENDPOINTS);
        self.listeners_omitted
            .set(i64::try_from(omitted).unwrap_or(i64::MAX));
        for (addr, queued, backlog, drops) in listeners.into_iter().take(MAX_ENDPOINTS) {
            let label = Listener {
                listener: Addr(addr),
            };
            self.listen_queue
                .get_or_create(&label)
                .set(i64::from(queued));
            self.listen_backlog
                .get_or_create(&label)
                .set(i64::from(backlog));
            mirror(&self.listen_drops.get_or_create(&label), drops);
        }
        let mut s = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
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

    /// An event through the engine to the metrics, as the pipeline's dispatch does.
    fn feed(engine: &mut Engine, m: &mut Metrics, e: Event) {
        engine.record_observed(&crate::event::Record::Event(e), |e, idle| {
            m.observe(e, idle);
        });
    }

    fn idle_series(text: &str) -> Vec<&str> {
        let mut series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("conntrace_idle_before_close_seconds_count"))
            .collect();
        series.sort_unstable();
        series
    }

    /// A server's socket whose client hangs up first (ESTABLISHED -> CLOSE_WAIT) is no
    /// idle close of a server: before, each made a series named after the client's
    /// ephemeral port, and 64 of them filled the endpoint cap. The server's own idle
    /// close is one, from the server's node as from the client's, and a connection
    /// with both ends here counts once.
    #[test]
    fn idle_closes_are_the_servers_from_either_end_once() {
        let server = "10.0.0.5:8000";
        let mut m = Metrics::default();
        let mut engine = Engine::new(Config::default());
        let listener = Sock::new(1, 7, "srv", server, "0.0.0.0:0");
        feed(&mut engine, &mut m, listener.state(0, Close, Listen, 0));
        for i in 0..80u16 {
            // Clients on other nodes hang up after 3 s idle.
            let c = Sock::new(
                100 + u64::from(i),
                7,
                "srv",
                server,
                &format!("10.0.0.9:{}", 40_000 + i),
            );
            for e in c.accepted(10).into_iter().chain([
                c.state(3000, Established, CloseWait, 3000),
                c.state(3001, CloseWait, LastAck, 0),
                c.state(3002, LastAck, Close, 0),
            ]) {
                feed(&mut engine, &mut m, e);
            }
        }
        let probed = Probed::default();
        let text = m.render(&engine, probed);
        assert!(idle_series(&text).is_empty(), "{text}");
        assert!(text.contains("conntrace_metrics_endpoints_dropped_total 0"));

        // The server closes three connections idle 5 s: a client here for one of them
        // (both ends on this node), on other nodes for the others.
        for i in 0..3u16 {
            let client = format!("10.0.0.5:{}", 50_000 + i);
            let s = Sock::new(200 + u64::from(i), 7, "srv", server, &client);
            let mut events = s.accepted(20_000);
            events.push(s.state(25_000, Established, FinWait1, 5000));
            if i == 0 {
                let c = Sock::new(300, 9, "pool", &client, server);
                events.splice(0..0, c.connect(19_999));
                events.push(c.state(25_001, Established, CloseWait, 5000));
            }
            for e in events {
                feed(&mut engine, &mut m, e);
            }
        }
        let text = m.render(&engine, probed);
        assert_eq!(
            idle_series(&text),
            ["conntrace_idle_before_close_seconds_count{endpoint=\"10.0.0.5:8000\"} 3"],
            "{text}"
        );
    }

    /// Connections that predate the trace (role unknown) serve by their ports: the
    /// end on a port outside Linux's ephemeral range.
    #[test]
    fn connections_older_than_the_trace_serve_by_their_ports() {
        let mut m = Metrics::default();
        let mut engine = Engine::new(Config::default());
        // The server's end of an old connection (8000, its client's 45000 is
        // ephemeral), a pool's end of one (45001 is ephemeral, 61500 is not), and a
        // server's idle close of another old connection.
        let old_server_side = Sock::new(1, 7, "srv", "10.0.0.5:8000", "10.0.0.9:45000");
        let old_client_side = Sock::new(2, 9, "pool", "10.0.0.1:45001", "10.0.0.6:61500");
        feed(
            &mut engine,
            &mut m,
            old_server_side.state(3000, Established, CloseWait, 3000),
        );
        feed(
            &mut engine,
            &mut m,
            old_client_side.state(3000, Established, CloseWait, 3000),
        );
        let older = Sock::new(3, 7, "srv", "10.0.0.5:8000", "10.0.0.9:45002");
        feed(
            &mut engine,
            &mut m,
            older.state(4000, Established, FinWait1, 4000),
        );
        let text = m.render(&engine, Probed::default());
        assert_eq!(
            idle_series(&text),
            [
                "conntrace_idle_before_close_seconds_count{endpoint=\"10.0.0.5:8000\"} 1",
                "conntrace_idle_before_close_seconds_count{endpoint=\"10.0.0.6:61500\"} 1",
            ],
            "{text}"
        );
    }

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
                feed(&mut engine, &mut m, e);
            }
        }
        for (at, overflows) in [(3000, 0), (5000, 25)] {
            engine.record(&crate::event::Record::Listeners(
                crate::engine::testing::listeners(at, "10.0.0.7:18095", (5, 4), overflows),
            ));
        }
        let refused = Sock::new(99, 9, "client", "10.0.0.1:40001", "10.0.0.5:9");
        m.observe(&refused.connect_error(1, libc::EADDRNOTAVAIL), None);
        m.observe(&refused.reset_sent(2, None, "NO_SOCKET"), None);
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
        assert!(
            text.contains(
                "conntrace_idle_before_close_seconds_bucket{le=\"2.0\",endpoint=\"10.0.0.5:8000\"} 1"
            ),
            "{text}"
        );
        assert!(text
            .contains("conntrace_idle_before_close_seconds_sum{endpoint=\"10.0.0.5:8000\"} 2.0"));
        assert_eq!(text.matches("le=\"+Inf\"").count(), MAX_ENDPOINTS, "capped");
        assert!(text.contains("conntrace_metrics_endpoints_dropped_total 6"));
        assert!(text.contains("conntrace_programs_attached 9"));
        assert!(
            text.contains("conntrace_listen_drops_total{listener=\"10.0.0.7:18095\"} 25"),
            "{text}"
        );
        assert!(text.contains("conntrace_listen_queue{listener=\"10.0.0.7:18095\"} 5"));
        assert!(text.contains("conntrace_listen_backlog{listener=\"10.0.0.7:18095\"} 4"));
        assert!(text.contains("conntrace_events_lost_total{cause=\"ringbuf_full\"} 0"));
        assert!(
            text.ends_with("# EOF\n"),
            "OpenMetrics text ends with # EOF"
        );
    }

    #[test]
    fn a_refused_connect_counts_once_whichever_comes_first_its_error_or_its_close() {
        let mut m = Metrics::default();
        let engine = Engine::new(Config::default());
        // Linux >= 5.12: the error report after SYN_SENT -> CLOSE.
        let after = Sock::new(1, 9, "client", "10.0.0.1:40000", "10.0.0.5:9");
        m.observe(&after.state(0, SynSent, Close, 0), None);
        m.observe(&after.error(1, libc::ECONNREFUSED), None);
        // Linux < 5.12: the error read at the close and reported first, while the
        // socket is still SYN_SENT.
        let before = Sock::new(2, 9, "client", "10.0.0.1:40001", "10.0.0.5:9");
        let mut error = before.error(0, libc::ECONNREFUSED);
        error.kind = crate::event::EventKind::Error {
            errno: crate::event::Errno(libc::ECONNREFUSED),
            state: SynSent,
        };
        m.observe(&error, None);
        m.observe(&before.state(1, SynSent, Close, 0), None);
        let text = m.render(&engine, Probed::default());
        assert!(
            text.contains("conntrace_connect_errors_total{errno=\"ECONNREFUSED\"} 2"),
            "{text}"
        );
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
