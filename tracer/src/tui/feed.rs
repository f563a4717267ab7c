//! The engine thread: live kernel events (through [`crate::pipeline::live`]) or a replayed log
//! go through the engine and a spool file; snapshots go to the UI, commands come back.

use std::{
    collections::VecDeque,
    fs::File,
    path::{Path, PathBuf},
    sync::mpsc::{Receiver, SyncSender, TryRecvError},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    app::UiCommand,
    snapshot::{self, Header, SortKey},
};
use crate::{
    engine::{Config, Engine, Finding},
    event::Event,
    event::Record,
    eventlog::{self, LogReader, LogWriter},
    kernel::session::KernelSession,
    output::report,
    pipeline::{dispatch, Sink},
};

/// Events kept for the Events view and the finding timelines.
const TAIL: usize = 5000;
/// The spool holds at most this much; beyond, records are counted, not kept, and the
/// export says so.
const SPOOL_MAX: u64 = 1 << 30;

/// Everything the engine thread keeps beside the engine.
pub struct TuiSink {
    tail: VecDeque<Event>,
    spool: LogWriter<File>,
    /// Written before the first record: a live run first adds its programs and
    /// degraded facts ([`Sink::attached`]).
    unwritten_header: Option<eventlog::Header>,
    /// The spool file has no name (unlinked at once): it disappears with the process
    /// on every exit path. Export reads it through this second handle.
    spool_reader: File,
    /// Records not spooled because the spool was full.
    spool_dropped: u64,
    /// The last `losses` the pipeline handed over (live: counted now; replayed: the
    /// recording's `losses` lines).
    losses: crate::event::Losses,
    filter: String,
    sort: SortKey,
    pub paused: bool,
    status: Option<String>,
    snapshots: SyncSender<super::snapshot::Snapshot>,
    commands: Receiver<UiCommand>,
    source: String,
    events: u64,
    rate: (Instant, u64, f64),
    bpf: (Instant, Duration),
    export_dir: PathBuf,
}

impl TuiSink {
    pub fn new(
        source: String,
        header: &eventlog::Header,
        snapshots: SyncSender<super::snapshot::Snapshot>,
        commands: Receiver<UiCommand>,
        export_dir: PathBuf,
    ) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let spool_path = std::env::temp_dir().join(format!(
            "conntrace-tui-{}-{nanos:09}.jsonl",
            std::process::id()
        ));
        let file = eventlog::create_private_rw(&spool_path)?;
        let spool_reader = file.try_clone().context("opening the spool twice")?;
        std::fs::remove_file(&spool_path)
            .with_context(|| format!("unlinking the spool {}", spool_path.display()))?;
        let spool = LogWriter::new(file);
        Ok(Self {
            tail: VecDeque::with_capacity(TAIL),
            spool,
            unwritten_header: Some(header.clone()),
            spool_reader,
            spool_dropped: 0,
            losses: crate::event::Losses::default(),
            filter: String::new(),
            sort: SortKey::default(),
            paused: false,
            status: None,
            snapshots,
            commands,
            source,
            events: 0,
            rate: (Instant::now(), 0, 0.0),
            bpf: (Instant::now(), Duration::ZERO),
            export_dir,
        })
    }

    /// Applies UI commands; returns those the caller acts on (playback), or `None`
    /// when the UI has gone.
    pub fn commands(&mut self, engine: &Engine) -> Option<Vec<UiCommand>> {
        let mut playback = Vec::new();
        loop {
            match self.commands.try_recv() {
                Ok(UiCommand::Filter(f)) => self.filter = f,
                Ok(UiCommand::Sort(s)) => self.sort = s,
                Ok(UiCommand::Export) => {
                    self.status = Some(match self.export(engine) {
                        Ok(msg) => msg,
                        Err(e) => format!("export failed: {e:#}"),
                    });
                }
                Ok(UiCommand::Pause(p)) => {
                    self.paused = p;
                    playback.push(UiCommand::Pause(p));
                }
                Ok(c) => playback.push(c),
                Err(TryRecvError::Empty) => return Some(playback),
                Err(TryRecvError::Disconnected) => return None,
            }
        }
    }

    /// Writes the log of everything seen so far and the findings report beside it.
    fn export(&mut self, engine: &Engine) -> Result<String> {
        if let Some(spool) = self.spool()? {
            spool.flush()?;
        }
        self.spool.flush()?;
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .replace([':', '-'], "")
            .replace('T', "-")
            .trim_end_matches('Z')
            .to_owned();
        let log_path = self.export_dir.join(format!("conntrace-{stamp}.jsonl"));
        let report_path = self.export_dir.join(format!("conntrace-{stamp}.md"));
        let mut out = eventlog::create_private(&log_path, false)?;
        copy_spool(&self.spool_reader, &mut out)
            .with_context(|| format!("writing {}", log_path.display()))?;
        let findings = engine.findings();
        {
            let mut log = LogWriter::new(out);
            log.final_findings(&findings)?;
            log.finish()?;
        }
        let mut report_file = eventlog::create_private(&report_path, false)?;
        std::io::Write::write_all(
            &mut report_file,
            report::render(&findings, report::Format::Markdown)?.as_bytes(),
        )
        .with_context(|| format!("writing {}", report_path.display()))?;
        Ok(format!(
            "exported {} events to {} and {} findings to {}{}",
            self.events,
            log_path.display(),
            findings.len(),
            report_path.display(),
            match (self.spool_dropped, self.spool.incomplete()) {
                (_, Some(what)) => format!(" (the spool is incomplete: {what})"),
                (0, None) => String::new(),
                (n, None) => format!(" ({n} records after the first GiB were not kept)"),
            }
        ))
    }

    /// Builds and hands a snapshot to the UI (dropped if the UI is behind).
    pub fn publish(&mut self, engine: &Engine, playback: String, probes: Option<&KernelSession>) {
        let now = Instant::now();
        let (t0, n0, rate) = self.rate;
        let dt = now.duration_since(t0).as_secs_f64();
        if dt >= 1.0 {
            #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
            let r = (self.events - n0) as f64 / dt;
            self.rate = (now, self.events, r);
        } else if rate == 0.0 && dt > 0.2 {
            #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
            let r = (self.events - n0) as f64 / dt;
            self.rate.2 = r;
        }
        let mut header = Header {
            source: self.source.clone(),
            playback,
            events: self.events,
            events_per_sec: self.rate.2,
            // The events missing, as the pipeline last handed its losses to the sink
            // (live), or as the recording says (replayed); apart, what was seen but
            // not kept whole: owners, DNAT backends not looked up, and this engine's
            // early-dropped entries (live: as the pipeline counted them; replayed:
            // this replay's own).
            lost: self.losses.events(),
            not_kept: self
                .losses
                .owners_not_kept()
                .saturating_add(self.losses.conntrack_skipped)
                .saturating_add(if probes.is_some() {
                    self.losses.engine_evicted
                } else {
                    engine.stats().evicted
                }),
            programs: 0,
            bpf_cpu_pct: None,
        };
        if let Some(probes) = probes {
            header.programs = probes.attached.len();
            let run = probes.bpf_run_time();
            let (t, r) = self.bpf;
            let wall = now.duration_since(t).as_secs_f64();
            if wall > 0.0 && r > Duration::ZERO {
                header.bpf_cpu_pct = Some(run.saturating_sub(r).as_secs_f64() * 100.0 / wall);
            }
            if wall >= 1.0 || r == Duration::ZERO {
                self.bpf = (now, run);
            }
        }
        let mut snap = snapshot::build(engine, &self.tail, &self.filter, self.sort, header);
        snap.status.clone_from(&self.status);
        let _ = self.snapshots.try_send(snap);
    }
}

/// Copies the whole spool (read at offsets: the writer's position is untouched).
/// When the export's disk fills, the export is cut back to its last whole record
/// and the error says so.
fn copy_spool(spool: &File, out: &mut File) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let mut buf = vec![0u8; 256 * 1024];
    let mut at = 0u64;
    // Bytes of the export that end on a whole record.
    let mut whole = 0u64;
    loop {
        let n = spool.read_at(&mut buf, at)?;
        if n == 0 {
            return Ok(());
        }
        if let Err(e) = std::io::Write::write_all(out, &buf[..n]) {
            let _ = crate::eventlog::store::Truncate::truncate_to(out, whole);
            return Err(std::io::Error::new(
                e.kind(),
                format!("{e}; the export was cut back to its last whole record ({whole} bytes)"),
            ));
        }
        if let Some(last) = buf[..n].iter().rposition(|b| *b == b'\n') {
            whole = at + last as u64 + 1;
        }
        at += n as u64;
    }
}

impl TuiSink {
    /// The spool, its header written first; `None` once it is full.
    /// Hands a record to the spool, unless the spool is full (then counted).
    fn spooled(&mut self, write: impl FnOnce(&mut LogWriter<File>) -> Result<()>) -> Result<()> {
        match self.spool()? {
            Some(spool) => write(spool),
            None => Ok(()),
        }
    }

    fn spool(&mut self) -> Result<Option<&mut LogWriter<File>>> {
        if let Some(header) = self.unwritten_header.take() {
            self.spool.header(&header)?;
        }
        if self.spool.bytes >= SPOOL_MAX {
            self.spool_dropped += 1;
            return Ok(None);
        }
        Ok(Some(&mut self.spool))
    }
}

impl Sink for TuiSink {
    /// The header shows the programs' share of a CPU.
    fn shows_bpf_run_time(&self) -> bool {
        true
    }

    fn attached(&mut self, probes: &KernelSession) -> Result<()> {
        if let Some(header) = self.unwritten_header.take() {
            self.unwritten_header = Some(header.with_probes(probes));
        }
        self.spool().map(|_| ())
    }

    fn record(&mut self, record: &Record) -> Result<()> {
        for event in record.events() {
            self.events += 1;
            if self.tail.len() == TAIL {
                self.tail.pop_front();
            }
            self.tail.push_back(event);
        }
        if let Record::Losses(l) = record {
            self.losses = *l;
        }
        self.spooled(|spool| spool.record(record))
    }

    fn finding(&mut self, finding: &Finding) -> Result<()> {
        self.spooled(|spool| spool.finding(finding))
    }

    fn warn(&mut self, message: &str) {
        self.status = Some(format!("warning: {message}"));
    }

    fn tick(&mut self, engine: &Engine, probes: &KernelSession) -> Result<bool> {
        if self.commands(engine).is_none() {
            return Ok(true);
        }
        self.publish(engine, String::new(), Some(probes));
        Ok(false)
    }
}

/// Plays a log back through the engine at `speed` times real time.
pub fn replay(path: &Path, mut sink: TuiSink) -> Result<()> {
    let mut reader = LogReader::open(path)?;
    let total = std::fs::metadata(path).map_or(1, |m| m.len().max(1));
    let mut engine = Engine::new(Config::default());
    let mut speed = 1.0f64;
    let mut to_end = false;
    let mut done = false;
    let mut first_mono: Option<u64> = None;
    // Replay clock: the log's monotonic time that maps to `anchor`.
    let mut anchor = (Instant::now(), 0u64);
    let mut pending: Option<Record> = None;
    let mut bad = 0u64;
    let mut last_publish = Instant::now()
        .checked_sub(Duration::from_secs(1))
        .unwrap_or_else(Instant::now);
    loop {
        let Some(commands) = sink.commands(&engine) else {
            return Ok(());
        };
        for c in commands {
            match c {
                UiCommand::Speed(f) => {
                    let at = log_now(anchor, speed);
                    speed = (speed * f).clamp(0.125, 1024.0);
                    anchor = (Instant::now(), at);
                }
                UiCommand::JumpToEnd => to_end = true,
                UiCommand::Pause(false) => anchor = (Instant::now(), anchor.1),
                _ => {}
            }
        }
        let budget = Instant::now() + Duration::from_millis(50);
        while !done && !sink.paused && Instant::now() < budget {
            let record = match pending.take() {
                Some(r) => r,
                None => match reader.next() {
                    None => {
                        done = true;
                        break;
                    }
                    Some(Err(_)) => {
                        bad += 1;
                        continue;
                    }
                    Some(Ok(r)) => r,
                },
            };
            if let Some(m) = record.mono_ns() {
                first_mono.get_or_insert_with(|| {
                    anchor = (Instant::now(), m);
                    m
                });
                if !to_end && m > log_now(anchor, speed) {
                    pending = Some(record);
                    break;
                }
            }
            dispatch::dispatch(&mut engine, None, &record, &mut sink)?;
        }
        if last_publish.elapsed() >= Duration::from_millis(100) {
            let pct = if done {
                100
            } else {
                (reader.bytes * 100 / total).min(99)
            };
            let state = if done {
                "■ end".to_owned()
            } else if sink.paused {
                "⏸ paused".to_owned()
            } else if to_end {
                "⏭ to end".to_owned()
            } else {
                format!("▶ {speed}x")
            };
            let bad_note = if bad > 0 {
                format!(" │ {bad} bad lines")
            } else {
                String::new()
            };
            sink.publish(&engine, format!("{state} {pct}%{bad_note}"), None);
            last_publish = Instant::now();
        }
        if done || sink.paused || pending.is_some() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The log time that corresponds to now at `speed`.
fn log_now(anchor: (Instant, u64), speed: f64) -> u64 {
    let elapsed = anchor.0.elapsed().as_secs_f64() * speed * 1e9;
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "nanoseconds, positive"
    )]
    let elapsed = elapsed as u64;
    anchor.1.saturating_add(elapsed)
}
