//! The live pipeline shared by `record`, `watch` and the UI: kernel events and
//! periodic node samples, filtered, fed to the engine and handed to a [`Sink`]
//! through [`dispatch`], the path a log's records take too.

use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::{
    engine::{Config, Engine},
    event::{Event, EventKind, Sockstat},
    kernel::decode::Decoded,
    kernel::probes::{EventStream, Probes},
    kernel::sockstat,
    kernel::time::{monotonic_now, KernelClock},
    pipeline::{dispatch, filter::Filter, Sink},
};

/// How a live run traces and what it serves (the command line's live flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub attach: crate::kernel::probes::Attach,
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
}

/// How often node samples are taken (also the engine's tick for leak ages).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often the ring buffer is drained when the kernel did not wake the reader.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// How often new findings are looked for.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// How often the kernel's per-socket records are read for connections whose
/// transitions have waited there longer than [`SIGHT_AFTER`].
const SIGHT_EVERY: Duration = Duration::from_secs(2);
const SIGHT_AFTER: Duration = Duration::from_secs(1);

fn sample_now(clock: &KernelClock) -> Result<Sockstat> {
    let mono = u64::try_from(monotonic_now().as_nanos()).unwrap_or(u64::MAX);
    sockstat::read(mono, clock.wall(mono))
}

/// Decoded events through the filter into the engine and the sink.
struct Pipeline<'a> {
    decoder: &'a crate::kernel::decode::Decoder,
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
    /// Connections awaiting a reply, from the inspection thread; and its threshold.
    waiting: Option<std::sync::mpsc::Receiver<crate::kernel::inspect::Pass>>,
    await_after_ms: u64,
    /// Each namespace's listen counters as last written, and the previous pass's time.
    listen_counters: std::collections::HashMap<u32, crate::event::ListenCounters>,
    last_listen_pass: Option<u64>,
    /// The last snapshot delivered had connections in it.
    waits_shown: bool,
    namespaces_warned: bool,
    last_losses: crate::event::Losses,
    /// What reads of the kernel's records ([`Pipeline::sight`]) delivered early.
    sighted: crate::kernel::sighted::Sighted,
    sight_buf: Vec<tracer_common::ConnRecord>,
    socks: Option<crate::kernel::probes::Socks>,
    /// When an EADDRNOTAVAIL last made the pipeline read every open socket.
    last_full_sight: Option<Duration>,
    engine: Engine,
    stats: LiveStats,
    failure: Option<anyhow::Error>,
}

impl Pipeline<'_> {
    fn handle(&mut self, bytes: &[u8], sink: &mut dyn Sink) {
        if bytes.len() == tracer_common::ConnRecord::SIZE {
            match crate::kernel::decode::parse_conn(bytes) {
                Ok(mut rec) => {
                    if self.sighted.shipped(&mut rec) {
                        self.handle_conn(&rec, sink);
                    }
                }
                Err(_) => self.stats.undecodable += 1,
            }
            return;
        }
        match self.decoder.decode(bytes) {
            Ok(Decoded::Event(mut event)) => {
                // Out of local ports: every open connection is a holder the finding
                // names, so all of them are read from the kernel first (once a
                // second at most), not only those open longer than SIGHT_AFTER.
                if matches!(event.kind, EventKind::Connect { errno, .. } if errno.0 == libc::EADDRNOTAVAIL)
                {
                    let now = monotonic_now();
                    if self
                        .last_full_sight
                        .is_none_or(|t| now.saturating_sub(t) >= Duration::from_secs(1))
                    {
                        self.last_full_sight = Some(now);
                        self.sight(Duration::ZERO, sink);
                    }
                }
                // Before the filters: a time-wait socket's reset takes its connection's owner.
                self.recent.observe(&mut event);
                if self.admit(
                    event.pid,
                    &event.comm,
                    event.local,
                    event.remote,
                    event.cgroup,
                    sink,
                ) {
                    self.stats.delivered += 1;
                    self.tuple_facts_of(std::slice::from_ref(&event), sink);
                    let r = dispatch::event(&mut self.engine, self.metrics.as_mut(), &event, sink);
                    if let Err(e) = r {
                        self.failure.get_or_insert(e);
                    }
                }
            }
            Ok(Decoded::Conn(_)) => unreachable!("connection records are parsed above"),
            Err(_) => self.stats.undecodable += 1,
        }
    }

    /// Connections whose transitions have waited in the kernel past [`SIGHT_AFTER`]
    /// (open connections: a pool's idle sockets, a hung worker's query, a port
    /// held): delivered now as the kernel would ship them, and remembered so the
    /// kernel's later record of the same steps is not delivered twice.
    fn sight(&mut self, after: Duration, sink: &mut dyn Sink) {
        let Some(socks) = &self.socks else {
            return;
        };
        let now = monotonic_now();
        let before = u64::try_from(now.saturating_sub(after).as_nanos()).unwrap_or(0);
        let mut buf = std::mem::take(&mut self.sight_buf);
        buf.clear();
        crate::kernel::probes::waiting_records(socks, before, &mut buf);
        for rec in &mut buf {
            if self.sighted.read(rec) {
                self.handle_conn(rec, sink);
            }
        }
        self.sight_buf = buf;
    }

    fn handle_conn(&mut self, rec: &tracer_common::ConnRecord, sink: &mut dyn Sink) {
        match self.decoder.convert_conn(rec) {
            Ok(conn) => {
                let mut events: Vec<Event> = conn.events().collect();
                for e in &mut events {
                    self.recent.observe(e);
                }
                if self.admit(
                    conn.pid,
                    &conn.comm,
                    conn.local,
                    conn.remote,
                    conn.cgroup,
                    sink,
                ) {
                    self.stats.delivered += events.len() as u64;
                    self.tuple_facts_of(&events, sink);
                    let metrics = self.metrics.as_mut();
                    if let Err(e) = dispatch::conn(&mut self.engine, metrics, &conn, &events, sink)
                    {
                        self.failure.get_or_insert(e);
                    }
                }
            }
            Err(_) => self.stats.undecodable += 1,
        }
    }

    /// What the kernel's tables add to these events, dispatched before them.
    fn tuple_facts_of(&mut self, events: &[Event], sink: &mut dyn Sink) {
        for e in events {
            if let Some(info) = self.tuple_facts.of(e, &mut self.recent) {
                if let Err(err) = dispatch::tuple(&mut self.engine, &info, sink) {
                    self.failure.get_or_insert(err);
                }
            }
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
            if let Err(e) = dispatch::cgroup(&mut self.engine, &info, sink) {
                self.failure.get_or_insert(e);
            }
        }
        if !self.container_matches(cgroup) {
            self.stats.filtered += 1;
            return false;
        }
        true
    }

    /// A node sample. A failed read of /proc is counted and said once, not fatal.
    fn sample(&mut self, sink: &mut dyn Sink) -> Result<()> {
        match sample_now(&self.decoder.clock) {
            Ok(s) => dispatch::sockstat(&mut self.engine, &s, sink),
            Err(e) => {
                self.stats.sample_errors += 1;
                if self.stats.sample_errors == 1 {
                    sink.warn(&format!("reading node TCP memory failed: {e:#}; tcp-memory-pressure pauses until it reads again"));
                }
                Ok(())
            }
        }
    }

    /// What was lost so far, written when it changed.
    fn losses(&mut self, probes: &Probes, sink: &mut dyn Sink, always: bool) -> Result<()> {
        let now = losses_of(probes, self.stats, &self.engine);
        if always || now != self.last_losses {
            self.last_losses = now;
            sink.losses(&now)?;
        }
        Ok(())
    }

    fn metrics_text(
        &self,
        probes: &Probes,
        server: &crate::output::metrics_http::Counters,
    ) -> String {
        let Some(m) = &self.metrics else {
            return String::new();
        };
        let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let kernel = crate::output::metrics::Probed {
            programs: probes.attached.len(),
            losses: losses_of(probes, self.stats, &self.engine),
            scrapes: n(&server.scrapes),
            scrapes_refused: n(&server.refused),
            scrapes_reclaimed: n(&server.reclaimed),
            accept_errors: n(&server.accept_errors),
        };
        m.render(&self.engine, kernel)
    }

    /// Takes what the Kubernetes API watcher found since the last look.
    fn pods(&mut self, sink: &mut dyn Sink) -> Result<()> {
        let Some(rx) = &self.pods else {
            return Ok(());
        };
        while let Ok(update) = rx.try_recv() {
            match update {
                Ok(pods) => {
                    for p in pods {
                        if self.pod_names.get(&p.uid) != Some(&p) {
                            dispatch::pod(&mut self.engine, &p, sink)?;
                            self.pod_names.insert(p.uid.clone(), p);
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
        Ok(())
    }

    /// `--pod`, `--container`, `--namespace` against the container of `cgroup`.
    fn container_matches(&self, cgroup: u64) -> bool {
        let container = self.attributor.container(cgroup);
        let namespace = container
            .and_then(|c| c.pod_uid.as_ref())
            .and_then(|uid| self.pod_names.get(uid))
            .map(|p| p.namespace.as_str());
        self.filter.matches_container(container, namespace)
    }

    /// One pass's listeners: the queues whose listener the filters keep, and every
    /// namespace's counters that moved since the previous pass (all of them the first
    /// time: the engine's baseline) — written when either is not empty. Namespace
    /// counters are node facts, like TCP memory: no filter removes them.
    fn listen_pass(
        &mut self,
        mono_ns: u64,
        queues: Vec<crate::event::ListenQueue>,
        namespaces: Vec<crate::event::NamespaceListen>,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        let queues: Vec<_> = queues
            .into_iter()
            .map(|mut q| {
                // The thread that called listen(), where the trace saw it.
                if let Some(l) = self
                    .engine
                    .conns
                    .listener_at(q.local)
                    .filter(|l| l.owner_known)
                {
                    q.pid = l.pid;
                    q.comm = l.comm.to_string();
                    q.cgroup = l.cgroup;
                }
                q
            })
            .filter(|q| {
                self.filter.matches_conn(q.pid, &q.comm, q.local, q.local)
                    && self.container_matches(q.cgroup)
            })
            .collect();
        let moved: Vec<_> = namespaces
            .into_iter()
            .filter(|n| n.new || self.listen_counters.get(&n.netns) != Some(&n.counters))
            .collect();
        if self.listen_counters.len() > 65_536 {
            self.listen_counters.clear();
        }
        for n in &moved {
            self.listen_counters.insert(n.netns, n.counters);
        }
        let interval_ms = self
            .last_listen_pass
            .replace(mono_ns)
            .map_or(0, |before| mono_ns.saturating_sub(before) / 1_000_000);
        if queues.is_empty() && moved.is_empty() {
            return Ok(());
        }
        let l = crate::event::Listeners {
            time: self.decoder.clock.wall(mono_ns),
            mono_ns,
            interval_ms,
            queues,
            namespaces: moved,
        };
        dispatch::listeners(&mut self.engine, &l, sink)
    }

    /// The owner of a connection this node opened, where the trace saw it open (it
    /// names the thread); the inspection's /proc holder stands otherwise.
    fn traced_owner(
        &self,
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
    ) -> Option<(u32, String, u64)> {
        self.engine
            .conns
            .client_conn(local, remote)
            .filter(|t| t.owner_known)
            .map(|t| (t.pid, t.comm.to_string(), t.cgroup))
    }

    /// One pass's reuses of idle pooled connections: the owner the trace saw open
    /// the connection (its thread), else /proc's holder; those the filters keep.
    fn reuse_pass(
        &mut self,
        mono_ns: u64,
        mut reuses: Vec<crate::event::Reuse>,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        for r in &mut reuses {
            if let Some((pid, comm, cgroup)) = self.traced_owner(r.local, r.remote) {
                (r.pid, r.comm, r.cgroup) = (pid, comm, cgroup);
            }
        }
        reuses.retain(|r| {
            self.filter.matches_conn(r.pid, &r.comm, r.local, r.remote)
                && self.container_matches(r.cgroup)
        });
        if reuses.is_empty() {
            return Ok(());
        }
        let r = crate::event::Reuses {
            time: self.decoder.clock.wall(mono_ns),
            mono_ns,
            reuses,
        };
        dispatch::reuses(&mut self.engine, &r, sink)
    }

    /// Takes the inspection's passes: connections the filters keep, into the engine
    /// and the sink (snapshots with none are not written).
    fn waiting(&mut self, sink: &mut dyn Sink) -> Result<()> {
        let Some(rx) = &self.waiting else {
            return Ok(());
        };
        let passes: Vec<crate::kernel::inspect::Pass> = rx.try_iter().collect();
        for crate::kernel::inspect::Pass {
            mono_ns,
            mut conns,
            reuses,
            queues,
            namespaces,
            namespace_errors,
        } in passes
        {
            self.listen_pass(mono_ns, queues, namespaces, sink)?;
            self.reuse_pass(mono_ns, reuses, sink)?;
            if namespace_errors > 0 && !std::mem::replace(&mut self.namespaces_warned, true) {
                sink.warn("the inspection of open sockets could not enter some network namespaces (it needs CAP_SYS_ADMIN for setns and CAP_SYS_PTRACE for /proc/PID/ns): awaiting-reply covers the namespaces it could enter");
            }
            for c in &mut conns {
                if let Some((pid, comm, cgroup)) = self.traced_owner(c.local, c.remote) {
                    (c.pid, c.comm, c.cgroup) = (pid, comm, cgroup);
                }
            }
            conns.retain(|c| {
                self.filter.matches_conn(c.pid, &c.comm, c.local, c.remote)
                    && self.container_matches(c.cgroup)
            });
            // An empty pass is written only when it ends waits the last one showed.
            if conns.is_empty() && !std::mem::take(&mut self.waits_shown) {
                continue;
            }
            self.waits_shown = !conns.is_empty();
            let w = crate::event::Waiting {
                time: self.decoder.clock.wall(mono_ns),
                mono_ns,
                after_ms: self.await_after_ms,
                conns,
            };
            dispatch::waiting(&mut self.engine, &w, sink)?;
        }
        Ok(())
    }

    fn poll(&mut self, sink: &mut dyn Sink) -> Result<()> {
        self.pods(sink)?;
        self.waiting(sink)?;
        for f in self.engine.poll_new() {
            sink.finding(&f)?;
        }
        Ok(())
    }
}

fn after_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<'a> Pipeline<'a> {
    fn new(decoder: &'a crate::kernel::decode::Decoder, filter: &'a Filter, live: Options) -> Self {
        Self {
            decoder,
            attributor: crate::k8s::Attributor::new(),
            pods: crate::k8s::api::ApiConfig::from_env()
                .map(|cfg| crate::k8s::api::spawn_watcher(cfg, crate::k8s::api::REFRESH)),
            pod_names: std::collections::HashMap::new(),
            api_warned: false,
            metrics: live
                .metrics_addr
                .map(|_| crate::output::metrics::Metrics::default()),
            filter,
            recent: crate::pipeline::recent::RecentOwners::default(),
            tuple_facts: crate::pipeline::tuples::TupleFacts::default(),
            waiting: live
                .await_after
                .map_or(Some(None), |after| Some(Some(after_ms(after))))
                .and_then(|after| crate::kernel::inspect::spawn(after).ok()),
            await_after_ms: live.await_after.map_or(0, after_ms),
            waits_shown: false,
            listen_counters: std::collections::HashMap::new(),
            last_listen_pass: None,
            namespaces_warned: false,
            last_losses: crate::event::Losses::default(),
            sighted: crate::kernel::sighted::Sighted::default(),
            sight_buf: Vec::new(),
            socks: None,
            last_full_sight: None,
            engine: Engine::new(Config::default()),
            stats: LiveStats::default(),
            failure: None,
        }
    }
}

/// The outcome of a live run.
pub struct LiveRun {
    pub engine: Engine,
    pub stats: LiveStats,
    pub probes: Probes,
}

/// The headless commands' start line on stderr, after the kernel's degraded facts:
/// `conntrace: 5 programs attached in 212 ms; recording to f.jsonl (Ctrl-C to stop)`.
pub fn announce(probes: &Probes, doing: &str) {
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
    on_attached: impl FnOnce(&Probes),
) -> Result<LiveRun> {
    let metrics_addr = live.metrics_addr;
    let mut probes = Probes::load(live.attach)?;
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
    let decoder = probes.decoder.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let mut pipe = Pipeline::new(&decoder, filter, live);
    pipe.socks = probes.take_socks().ok();
    runtime.block_on(async {
        let mut stream = EventStream::new(ring)?;
        // Served from its own thread, from the page published here 5 times a second.
        let server = metrics_addr
            .map(crate::output::metrics_http::serve)
            .transpose()?;
        let publish = |pipe: &Pipeline, probes: &Probes| {
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
        let mut sights = tokio::time::interval(SIGHT_EVERY);
        sink.attached(&probes)?;
        on_attached(&probes);
        publish(&pipe, &probes);
        loop {
            tokio::select! {
                r = stream.drain_with(|b| pipe.handle(b, sink)) => { r?; }
                _ = drains.tick() => {
                    stream.drain_now(|b| pipe.handle(b, sink));
                    probes.flush_kernel_log();
                    // SIGINT, SIGTERM, SIGHUP or a closed output pipe (crate::signals).
                    if crate::signals::requested().is_some() {
                        break;
                    }
                }
                _ = sights.tick() => {
                    // What the ring holds first: the kernel's records are older.
                    stream.drain_now(|b| pipe.handle(b, sink));
                    pipe.sight(SIGHT_AFTER, sink);
                }
                _ = samples.tick() => {
                    pipe.sample(sink)?;
                    pipe.losses(&probes, sink, false)?;
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
        while stream.drain_now(|b| pipe.handle(b, sink)) == crate::kernel::probes::MAX_PER_DRAIN {}
        probes.flush_kernel_log();
        // A last sample closes the run, so a replay ends on the same clock; the
        // losses line is always written at the end.
        pipe.sample(sink)?;
        pipe.poll(sink)?;
        pipe.losses(&probes, sink, true)
    })?;
    let Pipeline {
        engine,
        stats,
        failure,
        ..
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

/// The losses of a run so far: kernel counters, undecodable records, engine evictions.
pub fn losses_of(probes: &Probes, stats: LiveStats, engine: &Engine) -> crate::event::Losses {
    crate::event::Losses {
        undecodable: stats.undecodable,
        engine_evicted: engine.stats.evicted,
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
