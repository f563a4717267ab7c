//! The live pipeline shared by `record`, `watch` and the UI: kernel events and
//! periodic node samples, filtered, fed to the engine and handed to a [`Sink`]
//! through [`dispatch`], the path a log's records take too.

use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::{
    engine::{Config, Engine},
    event::{EventKind, Record, Sockstat, TcpState},
    kernel::records::KernelRecords,
    kernel::session::{EventStream, KernelSession},
    kernel::sockstat,
    kernel::time::{monotonic_now, KernelClock},
    pipeline::{dispatch, filter::Filter, Sink},
};

/// How a live run traces and what it serves (the command line's live flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub attach: crate::kernel::session::Attach,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Report connections awaiting a reply this long (`None`: no inspection).
    pub await_after: Option<Duration>,
}

/// Counters printed at exit.
#[derive(Debug, Default, Clone, Copy)]
pub struct LiveStats {
    pub delivered: u64,
    pub filtered: u64,
    pub undecodable: u64,
    /// Failed reads of the node's TCP memory (/proc/net/sockstat).
    pub sample_errors: u64,
    /// Owners of closed connections forgotten early ([`crate::pipeline::recent`]).
    pub closed_owners: u64,
    /// DNAT translations not looked up for the budget ([`crate::pipeline::tuples`]).
    pub conntrack_skipped: u64,
}

/// How often node samples are taken (also the engine's tick for leak ages).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often the ring buffer is drained when the kernel did not wake the reader.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// How often new findings are looked for.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// How often the kernel's per-socket records are read for connections whose
/// transitions have waited there longer than [`OPEN_AFTER`].
const OPEN_EVERY: Duration = Duration::from_secs(2);
const OPEN_AFTER: Duration = Duration::from_secs(1);

fn sample_now(clock: &KernelClock) -> Result<Sockstat> {
    let mono = u64::try_from(monotonic_now().as_nanos()).unwrap_or(u64::MAX);
    sockstat::read(mono, clock.wall(mono))
}

/// Records from every live source through attribution and the filters into the
/// engine and the sink: the kernel's ([`KernelRecords`]), the inspection's, the
/// node sampler's, the pod watcher's.
struct Pipeline<'a> {
    kernel: KernelRecords,
    attributor: crate::k8s::Attributor,
    /// Pod names from the API, when in a cluster.
    pods: Option<std::sync::mpsc::Receiver<Result<Vec<crate::k8s::api::PodInfo>, String>>>,
    pod_names: std::collections::HashMap<String, crate::k8s::api::PodInfo>,
    api_warned: bool,
    metrics: Option<crate::output::metrics::Metrics>,
    filter: &'a Filter,
    recent: crate::pipeline::recent::RecentOwners,
    /// The kernel's tables (time-wait holders, conntrack) for the events that need them.
    tuple_facts: crate::pipeline::tuples::TupleFacts,
    /// The inspection thread's passes.
    inspection: Option<std::sync::mpsc::Receiver<crate::kernel::inspect::Pass>>,
    /// The last awaiting-reply snapshot delivered had connections in it.
    waits_shown: bool,
    namespaces_warned: bool,
    last_losses: crate::event::Losses,
    /// When an EADDRNOTAVAIL last made the pipeline read every open socket.
    last_full_read: Option<Duration>,
    reads: Vec<Record>,
    engine: Engine,
    stats: LiveStats,
    failure: Option<anyhow::Error>,
}

impl<'a> Pipeline<'a> {
    /// A pipeline with the kernel's records as its only source; [`run`] adds the others.
    fn new(kernel: KernelRecords, filter: &'a Filter) -> Self {
        Self {
            kernel,
            attributor: crate::k8s::Attributor::new(),
            pods: None,
            pod_names: std::collections::HashMap::new(),
            api_warned: false,
            metrics: None,
            filter,
            recent: crate::pipeline::recent::RecentOwners::default(),
            tuple_facts: crate::pipeline::tuples::TupleFacts::default(),
            inspection: None,
            waits_shown: false,
            namespaces_warned: false,
            last_losses: crate::event::Losses::default(),
            last_full_read: None,
            reads: Vec::new(),
            engine: Engine::new(Config::default()),
            stats: LiveStats::default(),
            failure: None,
        }
    }
}

impl Pipeline<'_> {
    /// One ring-buffer record.
    fn ring(&mut self, bytes: &[u8], sink: &mut dyn Sink) {
        let Some(record) = self.kernel.from_ring(bytes) else {
            return;
        };
        // Out of local ports: every open connection is a holder the finding names, so
        // all of them are read from the kernel first (once a second at most), not
        // only those open longer than OPEN_AFTER.
        if let Record::Event(e) = &record {
            if matches!(e.kind, EventKind::Connect { errno, .. } if errno.0 == libc::EADDRNOTAVAIL)
            {
                let now = monotonic_now();
                if self
                    .last_full_read
                    .is_none_or(|t| now.saturating_sub(t) >= Duration::from_secs(1))
                {
                    self.last_full_read = Some(now);
                    self.open_conns(Duration::ZERO, sink);
                }
            }
        }
        self.traffic(record, sink);
    }

    /// Connections whose transitions have waited in the kernel past `after` (open
    /// connections: a pool's idle sockets, a hung worker's query, a port held),
    /// delivered now; the kernel's later record of the same steps is not delivered
    /// twice.
    fn open_conns(&mut self, after: Duration, sink: &mut dyn Sink) {
        let mut reads = std::mem::take(&mut self.reads);
        self.kernel.open_conns(after, &mut reads);
        for record in reads.drain(..) {
            self.traffic(record, sink);
        }
        self.reads = reads;
    }

    /// A kernel event or connection: owners of resets from recently closed sockets
    /// restored (before the filters), filtered, the kernel's tables asked where it
    /// needs them, dispatched.
    fn traffic(&mut self, mut record: Record, sink: &mut dyn Sink) {
        // Of a connection record only the transitions needed here become events: its
        // close (whose owner the tuple's time-wait resets take) before the filters,
        // the close of an established connection (an idle close the kernel's tables may
        // translate) after them.
        let (pid, comm, local, remote, cgroup) = match &mut record {
            Record::Event(e) => {
                self.recent.observe(e);
                (e.pid, e.comm, e.local, e.remote, e.cgroup)
            }
            Record::Conn(c) => {
                // This side closed right after activity, under the engine's idle
                // minimum (a churning server's every connection): kept apart from the
                // idle closes the race needs. Asked only of a record that closes.
                let idle_min_ms = self.engine.config().idle_min_ms;
                let mut prompt = None;
                for s in c.steps.iter().filter(|s| s.new == TcpState::Close) {
                    let prompt = *prompt.get_or_insert_with(|| {
                        c.steps.iter().any(|s| {
                            s.closer() == Some(crate::event::Closer::Local)
                                && s.send_idle_ms.min(s.recv_idle_ms) < idle_min_ms
                        })
                    });
                    self.recent.observe_close(&mut c.event(s), prompt);
                }
                (c.pid, c.comm, c.local, c.remote, c.cgroup)
            }
            _ => return,
        };
        if !self.admit(pid, &comm, local, remote, cgroup, sink) {
            return;
        }
        match &record {
            Record::Event(e) => {
                self.stats.delivered += 1;
                self.tuple_facts_of(e, sink);
            }
            Record::Conn(c) => {
                self.stats.delivered += c.steps.len() as u64;
                for s in c.steps.iter().filter(|s| s.closer().is_some()) {
                    self.tuple_facts_of(&c.event(s), sink);
                }
            }
            _ => {}
        }
        self.dispatch(&record, sink);
    }

    /// What the kernel's tables add to `e`, dispatched before it.
    fn tuple_facts_of(&mut self, e: &crate::event::Event, sink: &mut dyn Sink) {
        if let Some(info) = self.tuple_facts.of(e, &mut self.recent) {
            self.dispatch(&Record::Tuple(info), sink);
        }
    }

    fn dispatch(&mut self, record: &Record, sink: &mut dyn Sink) {
        if let Err(e) = dispatch::dispatch(&mut self.engine, self.metrics.as_mut(), record, sink) {
            self.failure.get_or_insert(e);
        }
    }

    /// The filters, and the container's first sight: whether an event or
    /// connection of this owner and 4-tuple is kept (else counted as filtered).
    fn admit(
        &mut self,
        pid: u32,
        comm: &str,
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
        cgroup: u64,
        sink: &mut dyn Sink,
    ) -> bool {
        if !self.filter.matches_conn(pid, comm, local, remote) {
            self.stats.filtered += 1;
            return false;
        }
        if let Some(info) = self.attributor.first_sight(cgroup) {
            self.dispatch(&Record::Cgroup(info), sink);
        }
        if !self.container_matches(cgroup) {
            self.stats.filtered += 1;
            return false;
        }
        true
    }

    /// Whether an owner and 4-tuple pass the filters (`--pid`, `--comm`, `--port`,
    /// `--cidr`, and the container's).
    fn keeps(
        &self,
        p: &crate::event::Process,
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
    ) -> bool {
        self.filter.matches_conn(p.pid, &p.comm, local, remote) && self.container_matches(p.cgroup)
    }

    /// An inspection's record, trimmed to what the filters keep: whether anything is
    /// left to deliver. Namespace counters are node facts, like TCP memory: no filter
    /// removes them. An empty awaiting-reply snapshot is delivered only when it ends
    /// waits the last one showed.
    fn trim(&mut self, record: &mut Record) -> bool {
        match record {
            Record::Waiting(w) => {
                w.conns
                    .retain(|c| self.keeps(&c.process, c.local, c.remote));
                let shown = !w.conns.is_empty();
                std::mem::replace(&mut self.waits_shown, shown) || shown
            }
            Record::Reuses(r) => {
                r.reuses
                    .retain(|r| self.keeps(&r.process, r.local, r.remote));
                !r.reuses.is_empty()
            }
            Record::Listeners(l) => {
                l.queues
                    .retain(|q| self.keeps(&q.process, q.local, q.local));
                !l.queues.is_empty() || !l.namespaces.is_empty()
            }
            _ => true,
        }
    }

    /// A record of the inspection: owners the trace saw given to it, trimmed to the
    /// filters, dispatched.
    fn inspected(&mut self, mut record: Record, sink: &mut dyn Sink) {
        self.engine.attribute(&mut record);
        if self.trim(&mut record) {
            self.dispatch(&record, sink);
        }
    }

    /// Takes the inspection's passes.
    fn inspection(&mut self, sink: &mut dyn Sink) {
        let Some(rx) = &self.inspection else {
            return;
        };
        let passes: Vec<crate::kernel::inspect::Pass> = rx.try_iter().collect();
        for pass in passes {
            if pass.namespace_errors > 0 && !std::mem::replace(&mut self.namespaces_warned, true) {
                sink.warn("the inspection of open sockets could not enter some network namespaces (it needs CAP_SYS_ADMIN for setns and CAP_SYS_PTRACE for /proc/PID/ns): awaiting-reply covers the namespaces it could enter");
            }
            for record in pass.records {
                self.inspected(record, sink);
            }
        }
    }

    /// A node sample. A failed read of /proc is counted and said once, not fatal.
    fn sample(&mut self, sink: &mut dyn Sink) {
        match sample_now(&self.kernel.decoder().clock) {
            Ok(s) => self.dispatch(&Record::Sockstat(s), sink),
            Err(e) => {
                self.stats.sample_errors += 1;
                if self.stats.sample_errors == 1 {
                    sink.warn(&format!("reading node TCP memory failed: {e:#}; tcp-memory-pressure pauses until it reads again"));
                }
            }
        }
    }

    /// What was lost so far, written when it changed.
    fn losses(&mut self, probes: &KernelSession, sink: &mut dyn Sink, always: bool) {
        let now = losses_of(probes, self.stats_now(), &self.engine);
        if always || now != self.last_losses {
            self.last_losses = now;
            self.dispatch(&Record::Losses(now), sink);
        }
    }

    /// The run's counters, the kernel reader's undecodable records included.
    fn stats_now(&self) -> LiveStats {
        LiveStats {
            undecodable: self.kernel.undecodable,
            closed_owners: self.recent.evicted(),
            conntrack_skipped: self.tuple_facts.skipped,
            ..self.stats
        }
    }

    fn metrics_text(
        &self,
        probes: &KernelSession,
        server: &crate::output::metrics_http::Counters,
    ) -> String {
        let Some(m) = &self.metrics else {
            return String::new();
        };
        let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let kernel = crate::output::metrics::Probed {
            programs: probes.attached.len(),
            losses: losses_of(probes, self.stats_now(), &self.engine),
            scrapes: n(&server.scrapes),
            scrapes_refused: n(&server.refused),
            scrapes_reclaimed: n(&server.reclaimed),
            accept_errors: n(&server.accept_errors),
        };
        m.render(&self.engine, kernel)
    }

    /// Takes what the Kubernetes API watcher found since the last look.
    fn pods(&mut self, sink: &mut dyn Sink) {
        let Some(rx) = &self.pods else {
            return;
        };
        let updates: Vec<_> = rx.try_iter().collect();
        for update in updates {
            match update {
                Ok(pods) => {
                    for p in pods {
                        if self.pod_names.get(&p.uid) != Some(&p) {
                            self.pod_names.insert(p.uid.clone(), p.clone());
                            self.dispatch(&Record::Pod(p), sink);
                        }
                    }
                }
                Err(e) if !std::mem::replace(&mut self.api_warned, true) => {
                    sink.warn(&format!(
                        "Kubernetes API unavailable ({e}); pods are named by UID"
                    ));
                }
                Err(_) => {}
            }
        }
    }

    /// `--pod`, `--container`, `--namespace` against the container of `cgroup`.
    fn container_matches(&self, cgroup: u64) -> bool {
        if !self.filter.by_container() {
            return true;
        }
        let container = self.attributor.container(cgroup);
        let namespace = container
            .and_then(|c| c.pod_uid.as_ref())
            .and_then(|uid| self.pod_names.get(uid))
            .map(|p| p.namespace.as_str());
        self.filter.matches_container(container, namespace)
    }

    fn poll(&mut self, sink: &mut dyn Sink) -> Result<()> {
        self.pods(sink);
        self.inspection(sink);
        for f in self.engine.poll_new() {
            sink.finding(&f)?;
        }
        Ok(())
    }
}

fn after_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The outcome of a live run.
pub struct LiveRun {
    pub engine: Engine,
    pub stats: LiveStats,
    pub probes: KernelSession,
}

/// The headless commands' start line on stderr, after the kernel's degraded facts:
/// `conntrace: 5 programs attached in 212 ms; recording to f.jsonl (Ctrl-C to stop)`.
pub fn announce(probes: &KernelSession, doing: &str) {
    for warning in probes.warnings() {
        crate::errln!("conntrace: warning: {warning}");
    }
    crate::errln!(
        "conntrace: {} programs attached in {} ms; {doing} (Ctrl-C to stop)",
        probes.attached.len(),
        probes.attach_time.as_millis(),
    );
}

/// Runs until SIGINT (Ctrl-C), SIGTERM, SIGHUP, a closed output pipe or `duration`;
/// `on_attached` is called once every program is attached.
pub fn run(
    filter: &Filter,
    duration: Option<f64>,
    live: Options,
    sink: &mut dyn Sink,
    on_attached: impl FnOnce(&KernelSession),
) -> Result<LiveRun> {
    let metrics_addr = live.metrics_addr;
    let mut probes = KernelSession::load(live.attach)?;
    if sink.shows_bpf_run_time() {
        probes.enable_run_time_stats();
    }
    // Servers that were listening before the trace: their connections get an owner
    // from their first event. Best effort: nothing is lost without it.
    let listeners = crate::kernel::listeners::scan(
        std::path::Path::new("/proc"),
        std::path::Path::new("/sys/fs/cgroup"),
    );
    let _ = probes.seed_listeners(&listeners);
    let ring = probes.take_ring()?;
    let kernel = KernelRecords::new(probes.decoder.clone(), probes.take_socks().ok());
    let clock = probes.decoder.clock;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let mut pipe = Pipeline::new(kernel, filter);
    pipe.metrics = metrics_addr.map(|_| crate::output::metrics::Metrics::default());
    pipe.pods = crate::k8s::api::ApiConfig::from_env()
        .map(|cfg| crate::k8s::api::spawn_watcher(cfg, crate::k8s::api::REFRESH));
    pipe.inspection = crate::kernel::inspect::spawn(live.await_after.map(after_ms), clock).ok();
    runtime.block_on(async {
        let mut stream = EventStream::new(ring)?;
        // Served from its own thread, from the page published here 5 times a second.
        let server = metrics_addr
            .map(crate::output::metrics_http::serve)
            .transpose()?;
        let publish = |pipe: &Pipeline, probes: &KernelSession| {
            if let Some(s) = &server {
                s.publish(pipe.metrics_text(probes, &s.counters));
            }
        };
        // A year stands in for "no deadline" (tokio's timer cannot take Duration::MAX).
        let forever = Duration::from_hours(24 * 365);
        let deadline = duration
            .map_or(forever, Duration::from_secs_f64)
            .min(forever);
        let stop = tokio::time::sleep(deadline);
        tokio::pin!(stop);
        let mut samples = tokio::time::interval(SAMPLE_EVERY);
        let mut polls = tokio::time::interval(POLL_EVERY);
        // The kernel side wakes the reader only past 1 MiB unread (see tracer-ebpf's
        // emit); below that the ring is drained on this timer.
        let mut drains = tokio::time::interval(DRAIN_EVERY);
        let mut open_reads = tokio::time::interval(OPEN_EVERY);
        sink.attached(&probes)?;
        on_attached(&probes);
        publish(&pipe, &probes);
        loop {
            tokio::select! {
                r = stream.drain_with(|b| pipe.ring(b, sink)) => { r?; }
                _ = drains.tick() => {
                    stream.drain_now(|b| pipe.ring(b, sink));
                    probes.flush_kernel_log();
                    // SIGINT, SIGTERM, SIGHUP or a closed output pipe (crate::signals).
                    if crate::signals::requested().is_some() {
                        break;
                    }
                }
                _ = open_reads.tick() => {
                    // What the ring holds first: the kernel's records are older.
                    stream.drain_now(|b| pipe.ring(b, sink));
                    pipe.open_conns(OPEN_AFTER, sink);
                }
                _ = samples.tick() => {
                    pipe.sample(sink);
                    pipe.losses(&probes, sink, false);
                }
                _ = polls.tick() => {
                    pipe.poll(sink)?;
                    publish(&pipe, &probes);
                    if sink.tick(&pipe.engine, &probes)? {
                        break;
                    }
                }
                () = &mut stop => break,
            }
            if let Some(e) = pipe.failure.take() {
                return Err(e);
            }
        }
        // Everything still in the ring reaches the log before it closes.
        while stream.drain_now(|b| pipe.ring(b, sink)) == crate::kernel::session::MAX_PER_DRAIN {}
        probes.flush_kernel_log();
        // A last sample closes the run, so a replay ends on the same clock; the
        // losses line is always written at the end.
        pipe.sample(sink);
        pipe.poll(sink)?;
        pipe.losses(&probes, sink, true);
        Ok::<_, anyhow::Error>(())
    })?;
    let stats = pipe.stats_now();
    let Pipeline {
        engine, failure, ..
    } = pipe;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(LiveRun {
        engine,
        stats,
        probes,
    })
}

/// The userspace half of a live run without a kernel: ring-buffer records as the
/// programs write them through the decoder, the filters and the engine to a sink, as
/// [`run`] takes them. For `cargo bench --bench pipeline`: the process' own cost per
/// connection on one core, free of a loaded machine's scheduling noise.
pub struct Replay<'a>(Pipeline<'a>);

impl<'a> Replay<'a> {
    pub fn new(decoder: crate::kernel::decode::Decoder, filter: &'a Filter) -> Self {
        Self(Pipeline::new(KernelRecords::new(decoder, None), filter))
    }

    /// One ring-buffer record.
    pub fn ring(&mut self, bytes: &[u8], sink: &mut dyn Sink) -> Result<()> {
        self.0.ring(bytes, sink);
        self.0.failure.take().map_or(Ok(()), Err)
    }

    /// The engine's new findings to `sink` (the live run's 200 ms poll).
    pub fn poll(&mut self, sink: &mut dyn Sink) -> Result<()> {
        self.0.poll(sink)
    }

    pub fn stats(&self) -> LiveStats {
        self.0.stats_now()
    }
}

/// The losses of a run so far: kernel counters, undecodable records, engine evictions.
pub fn losses_of(
    probes: &KernelSession,
    stats: LiveStats,
    engine: &Engine,
) -> crate::event::Losses {
    crate::event::Losses {
        undecodable: stats.undecodable,
        engine_evicted: engine.stats().evicted,
        closed_owners: stats.closed_owners,
        conntrack_skipped: stats.conntrack_skipped,
        ..probes.losses().unwrap_or_default()
    }
}

/// The exit line about what was delivered and lost.
pub fn loss_line(run: &LiveRun) -> String {
    format!(
        "{}; filtered out {}",
        losses_of(&run.probes, run.stats, &run.engine).counts(),
        run.stats.filtered,
    )
}

#[cfg(test)]
mod tests {
    use tracer_common::{flags, kind, AsBytes as _, ConnRecord, RawEvent, Step, MAX_STEPS};

    use super::*;
    use crate::{
        engine::testing::{listeners, waiting, waiting_conn, Sock},
        event::TcpState,
    };

    /// What reached the sink.
    #[derive(Default)]
    struct Kept(Vec<Record>);

    impl Sink for Kept {
        fn record(&mut self, record: &Record) -> Result<()> {
            self.0.push(record.clone());
            Ok(())
        }
        fn finding(&mut self, _: &crate::engine::Finding) -> Result<()> {
            Ok(())
        }
    }

    impl Kept {
        fn events(&self) -> Vec<crate::event::Event> {
            self.0.iter().flat_map(Record::events).collect()
        }
    }

    /// A pipeline with no kernel and the filters `set` sets, and a sink.
    fn pipeline(set: impl FnOnce(&mut Filter)) -> (Pipeline<'static>, Kept) {
        let mut filter = Filter::default();
        set(&mut filter);
        let kernel = KernelRecords::new(crate::kernel::decode::Decoder::sample(), None);
        (
            Pipeline::new(kernel, Box::leak(Box::new(filter))),
            Kept::default(),
        )
    }

    /// The kernel's record of an IPv4 socket of `curl` to 10.0.0.9:80, with `steps`
    /// (timestamp ms, old, new state).
    fn conn_record(sock: u64, steps: &[(u64, u8, u8)], last: bool) -> ConnRecord {
        let mut head = RawEvent::ZERO;
        head.kind = kind::CONN;
        head.flags = if last { flags::FINAL } else { 0 };
        head.sock = sock;
        head.family = 2;
        head.pid = 7;
        head.comm[..4].copy_from_slice(b"curl");
        head.owner_src = tracer_common::owner_src::SOCKET;
        head.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        head.daddr[..4].copy_from_slice(&[10, 0, 0, 9]);
        head.sport = 40_000;
        head.dport = 80;
        let mut rec = ConnRecord {
            head,
            steps_len: u32::try_from(steps.len()).expect("steps"),
            srtt_us: 0,
            bytes_acked: 0,
            bytes_received: 0,
            born_ns: 1,
            steps: [Step::ZERO; MAX_STEPS],
        };
        for (step, &(ms, old, new)) in rec.steps.iter_mut().zip(steps) {
            step.ts_ns = ms * 1_000_000;
            step.old_state = old;
            step.new_state = new;
        }
        rec
    }

    #[test]
    fn the_filters_keep_events_by_owner_and_count_the_rest() {
        let (mut pipe, mut sink) = pipeline(|f| f.comm = Some("curl".into()));
        let curl = Sock::new(1, 7, "curl", "10.0.0.1:40000", "10.0.0.9:80");
        let wget = Sock::new(2, 8, "wget", "10.0.0.1:40001", "10.0.0.9:80");
        for e in curl.connect(0).into_iter().chain(wget.connect(0)) {
            pipe.traffic(Record::Event(e), &mut sink);
        }
        let kept = sink.events();
        assert!(!kept.is_empty());
        assert!(kept.iter().all(|e| e.comm == "curl"), "{kept:?}");
        assert_eq!(pipe.stats.delivered, kept.len() as u64);
        assert_eq!(pipe.stats.filtered, wget.connect(0).len() as u64);
        // The engine saw what the sink saw, nothing filtered.
        assert_eq!(pipe.engine.stats().events, kept.len() as u64);
    }

    /// Owners of closed connections the bounded memory forgot early are counted in
    /// the run's losses (as socket owners not kept).
    #[test]
    fn closed_connections_owners_forgotten_early_are_counted() {
        let (mut pipe, mut sink) = pipeline(|f| f.comm = Some("proxy".into()));
        let n = crate::pipeline::recent::CAP as u64 + 3;
        for i in 0..n {
            let s = Sock::new(
                i + 1,
                7,
                "proxy",
                &format!("10.0.3.{}:{}", i / 60_000, 1024 + i % 60_000),
                "10.0.0.9:80",
            );
            let mut e = s.state(1_000, TcpState::FinWait2, TcpState::Close, 0);
            e.mono_ns += i * 1_000;
            pipe.traffic(Record::Event(e), &mut sink);
        }
        assert_eq!(pipe.stats_now().closed_owners, 3);
    }

    #[test]
    fn a_connection_read_early_from_the_map_is_not_delivered_twice() {
        let (mut pipe, mut sink) = pipeline(|_| {});
        // SYN_SENT and ESTABLISHED read from the map while the connection is open...
        let open = conn_record(0xffff_0001, &[(1_000, 7, 2), (1_001, 2, 1)], false);
        let read = pipe.kernel.from_map(open).expect("new steps");
        pipe.traffic(read, &mut sink);
        // ...then the kernel ships its whole life at the close.
        let life = [
            (1_000, 7, 2),
            (1_001, 2, 1),
            (6_000, 1, 4),
            (6_001, 4, 5),
            (6_002, 5, 7),
        ];
        pipe.ring(conn_record(0xffff_0001, &life, true).as_bytes(), &mut sink);
        let news: Vec<TcpState> = sink
            .events()
            .iter()
            .map(|e| match e.kind {
                EventKind::State { new, .. } => new,
                _ => panic!("not a transition: {e:?}"),
            })
            .collect();
        assert_eq!(
            news,
            [
                TcpState::SynSent,
                TcpState::Established,
                TcpState::FinWait1,
                TcpState::FinWait2,
                TcpState::Close
            ],
            "each step once"
        );
        assert_eq!(pipe.stats.delivered, 5);
        // A record whose steps were all delivered is not delivered at all.
        let again = conn_record(0xffff_0002, &[(7_000, 7, 2)], false);
        let read = pipe.kernel.from_map(again).expect("new steps");
        pipe.traffic(read, &mut sink);
        let records = sink.0.len();
        pipe.ring(
            conn_record(0xffff_0002, &[(7_000, 7, 2)], false).as_bytes(),
            &mut sink,
        );
        assert_eq!(sink.0.len(), records);
        // Bytes that are no record are counted, not delivered.
        pipe.ring(&[1, 2, 3], &mut sink);
        assert_eq!(pipe.stats_now().undecodable, 1);
        assert_eq!(sink.0.len(), records);
    }

    #[test]
    fn an_inspection_is_trimmed_to_the_filters() {
        let (mut pipe, mut sink) = pipeline(|f| f.port = Some(5432));
        let db = waiting_conn(9, "10.0.0.1:40001", "10.0.0.7:5432", 31_000, false);
        let web = waiting_conn(9, "10.0.0.1:40002", "10.0.0.8:80", 31_000, false);
        pipe.inspected(
            Record::Waiting(waiting(40_000, vec![db.clone(), web.clone()])),
            &mut sink,
        );
        let Some(Record::Waiting(w)) = sink.0.last() else {
            panic!("no snapshot: {:?}", sink.0);
        };
        assert_eq!(w.conns, [db]);
        // Nothing kept: delivered once, to end the waits shown, then no more.
        for at in [42_000, 44_000] {
            pipe.inspected(Record::Waiting(waiting(at, vec![web.clone()])), &mut sink);
        }
        let snapshots: Vec<usize> = sink
            .0
            .iter()
            .filter_map(|r| match r {
                Record::Waiting(w) => Some(w.conns.len()),
                _ => None,
            })
            .collect();
        assert_eq!(snapshots, [1, 0]);
        // A listener the filters remove goes; its namespace's counters stay.
        let mut l = listeners(46_000, "10.0.0.5:8080", (5, 4), 3);
        pipe.inspected(Record::Listeners(l.clone()), &mut sink);
        let Some(Record::Listeners(kept)) = sink.0.last() else {
            panic!("no listeners: {:?}", sink.0);
        };
        assert!(kept.queues.is_empty());
        assert_eq!(kept.namespaces, l.namespaces);
        l.namespaces.clear();
        let records = sink.0.len();
        pipe.inspected(Record::Listeners(l), &mut sink);
        assert_eq!(sink.0.len(), records, "nothing left to deliver");
    }

    #[test]
    fn the_inspection_names_the_thread_the_trace_saw_and_filters_by_it() {
        let (mut pipe, mut sink) = pipeline(|f| f.pid = Some(41));
        let worker = Sock::new(1, 41, "worker", "10.0.0.1:40001", "10.0.0.7:5432");
        for e in worker.connect(0) {
            pipe.traffic(Record::Event(e), &mut sink);
        }
        // /proc names the process (pid 40); the trace saw thread 41 open it.
        let seen = waiting_conn(40, "10.0.0.1:40001", "10.0.0.7:5432", 31_000, false);
        pipe.inspected(Record::Waiting(waiting(40_000, vec![seen])), &mut sink);
        let Some(Record::Waiting(w)) = sink.0.last() else {
            panic!("no snapshot: {:?}", sink.0);
        };
        assert_eq!(w.conns.len(), 1);
        assert_eq!(w.conns[0].process.pid, 41);
    }
}
