//! The event log: JSON Lines, a header line then one record per line.
//!
//! ```text
//! {"conntrace_log":5,"host":"node-1","kernel":"6.18.44","hz":250,"boot_time":"...","started":"..."}
//! {"conn":"SS E+41 ...","ns":123,"sk":"0x...","pid":7,"comm":"curl","l":"...","r":"...","end":[...]}
//! {"t":"...","ns":124,"type":"reset","direction":"received",...,"sk":"0x...","pid":7,...}
//! {"finding":{...}}
//! ```
//!
//! Readers accept older versions and skip unknown fields; a bad line is reported with
//! its number and every good line is kept.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::Path,
    time::SystemTime,
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::event::Event;
pub use crate::event::Record;

pub mod jsonl;
pub mod store;

/// The log format version this build writes.
///
/// - 1: one line per event (every state transition its own line).
/// - 2: adds `{"conn": ...}` lines, one per connection (plus one per moment it had
///   to be seen live), standing for the state transitions they list; the default.
///   A version 2 log written with `--every-transition` has version 1's lines only.
/// - 3: one style: every line names the time, the socket, its owner and its ends as
///   a `conn` line does (`t`, `ns`, `sk`, `pid`, `tid`, `comm`, `cg`, `own`, `l`, `r`),
///   with the same defaults left out. Versions 1 and 2 still read.
/// - 4: `conn` lines (most of a log) no longer carry `t`: their wall time is the
///   header's `boot_time`, now written to the nanosecond, plus their `ns`. Other
///   lines keep `t`. Versions 1 to 3 still read.
/// - 5: a `conn` line is flat, its first key `conn` holding the history (was `h`,
///   in a `{"conn": {…}}` object); its totals `end` are `[tx, rx, rtt_us, rtx, rto]`
///   (was an object), and its history leaves out what the previous step gives: the
///   first step's usual old state (`SS` for `C>SS`, `SR` for `L>SR`) and idle times
///   repeated unchanged (a bare `~`). 40–50 bytes less per connection. Versions 1
///   to 4 still read.
pub const LOG_VERSION: u32 = 5;

/// First line of a log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub conntrace_log: u32,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub kernel: String,
    #[serde(default)]
    pub hz: u32,
    /// Wall time at monotonic zero, to the nanosecond (from version 4: a `conn`
    /// line's wall time is this plus its `ns`).
    #[serde(with = "crate::event::rfc3339::nanos")]
    pub boot_time: SystemTime,
    #[serde(with = "crate::event::rfc3339")]
    pub started: SystemTime,
    #[serde(default)]
    pub conntrace_version: String,
    /// Kernel programs attached (live runs; written once they are).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<String>,
    /// Facts this recording could not see on its kernel (see [`crate::kernel::support`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub degraded: Vec<crate::kernel::support::Degraded>,
}

impl Header {
    /// What the kernel programs of a live run could and could not attach, and the
    /// clock its decoder maps kernel times with: a connection line's wall
    /// time is `boot_time` plus its `ns`, so the header must carry the very boot time
    /// the live run used (each reading of the clocks gives one a few µs apart).
    #[must_use]
    pub fn with_probes(mut self, probes: &crate::kernel::session::KernelSession) -> Self {
        self.boot_time = probes.decoder.clock.boot;
        self.hz = probes.decoder.clock.hz;
        self.programs = probes.attached.iter().map(|&p| p.to_owned()).collect();
        self.degraded.clone_from(&probes.degraded);
        self
    }

    /// A header for this host now. Its clock (`boot_time`, `hz`) is the kernel
    /// session's, given by [`Header::with_probes`] before the header is written.
    pub fn for_this_host() -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        Self {
            conntrace_log: LOG_VERSION,
            host: read("/proc/sys/kernel/hostname"),
            kernel: read("/proc/sys/kernel/osrelease"),
            hz: 0,
            boot_time: std::time::UNIX_EPOCH,
            started: SystemTime::now(),
            conntrace_version: env!("CARGO_PKG_VERSION").to_owned(),
            programs: Vec::new(),
            degraded: Vec::new(),
        }
    }
}

/// A line that could not be read, by number (the header is line 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Writes a log.
pub struct LogWriter<W: store::Truncate> {
    out: store::Store<W>,
    /// The last losses written, resent with the log's own count when its disk
    /// comes back.
    last_losses: crate::event::Losses,
    line: Vec<u8>,
    times: crate::eventlog::jsonl::TimeCache,
    pub events: u64,
    /// Bytes written so far.
    pub bytes: u64,
    /// The header of a live recording, written once the programs are attached and
    /// complete with what they could not see ([`LogWriter::with_header`]).
    pub pending_header: Option<Header>,
}

/// Creates `path` for conntrace's output: mode 0600 (it names every connection on
/// the node), never through a symbolic link planted at `path` (`O_NOFOLLOW`), and —
/// unless `overwrite` — never over an existing file (`O_EXCL`). Errors name the cause
/// and the remedy.
pub fn create_private(path: &Path, overwrite: bool) -> Result<File> {
    open_private(path, overwrite, false)
}

/// [`create_private`], also readable (a spool read back for export).
pub fn create_private_rw(path: &Path) -> Result<File> {
    open_private(path, false, true)
}

fn open_private(path: &Path, overwrite: bool, read: bool) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.read(read)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if overwrite {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    opts.open(path).map_err(|e| {
        let shown = path.display();
        let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        match e.raw_os_error() {
            Some(libc::EEXIST | libc::ELOOP) if is_link => anyhow::anyhow!(
                "{shown} is a symbolic link: conntrace does not write through links (it runs as root); name the file itself"
            ),
            Some(libc::EEXIST) => anyhow::anyhow!(
                "{shown} already exists: choose another name, or pass --force to overwrite it"
            ),
            Some(libc::ELOOP) => anyhow::anyhow!(
                "{shown} is a symbolic link: conntrace does not write through links (it runs as root); name the file itself"
            ),
            _ => anyhow::Error::new(e).context(format!(
                "cannot write {shown}: check the directory exists and is writable"
            )),
        }
    })
}

impl LogWriter<File> {
    /// Creates `path` (see [`create_private`]).
    pub fn create(path: &Path, overwrite: bool) -> Result<Self> {
        Ok(Self::new(create_private(path, overwrite)?))
    }
}

impl<W: store::Truncate> LogWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out: store::Store::new(out),
            last_losses: crate::event::Losses::default(),
            line: Vec::with_capacity(512),
            times: crate::eventlog::jsonl::TimeCache::default(),
            events: 0,
            bytes: 0,
            pending_header: None,
        }
    }

    /// A log whose header is written when the live run's programs are attached
    /// (the pipeline's `Sink::attached`), with their names and degraded facts.
    #[must_use]
    pub fn with_header(mut self, header: Header) -> Self {
        self.pending_header = Some(header);
        self
    }

    pub fn header(&mut self, header: &Header) -> Result<()> {
        self.write_line(header)
    }

    pub fn event(&mut self, event: &Event) -> Result<()> {
        self.events += 1;
        self.line.clear();
        crate::eventlog::jsonl::write_event(&mut self.line, event, &mut self.times);
        self.line.push(b'\n');
        self.put()
    }

    /// A connection record: one line for all of its transitions.
    pub fn conn(&mut self, conn: &crate::event::Conn) -> Result<()> {
        self.events += conn.steps.len() as u64;
        self.line.clear();
        crate::eventlog::jsonl::write_conn(&mut self.line, conn);
        self.line.push(b'\n');
        self.put()
    }

    /// One record, as its line: events and connections through the hot-path encoder,
    /// the others as `{"KEY": VALUE}`.
    pub fn record(&mut self, record: &Record) -> Result<()> {
        match record {
            Record::Event(e) => self.event(e),
            Record::Conn(c) => self.conn(c),
            Record::Losses(l) => self.losses(l),
            other => self.write_line(other),
        }
    }

    /// What the recording lost so far, with the records the log itself could not
    /// take.
    pub fn losses(&mut self, losses: &crate::event::Losses) -> Result<()> {
        self.last_losses = crate::event::Losses {
            log_unwritten: self.out.unwritten,
            ..*losses
        };
        self.write_line(&Record::Losses(self.last_losses))
    }

    /// What the log lacks (its disk full or failing), if anything.
    pub fn incomplete(&self) -> Option<String> {
        self.out.incomplete()
    }

    /// The live engine's findings at exit.
    pub fn final_findings<T: Serialize>(&mut self, findings: &[T]) -> Result<()> {
        self.write_keyed("findings", &findings)
    }

    /// A finding as the engine made it (`{"finding": ...}`).
    pub fn finding(&mut self, finding: &impl Serialize) -> Result<()> {
        self.write_keyed("finding", finding)
    }

    /// `{"KEY": VALUE}` (a finding keeps its fields in the engine's order).
    fn write_keyed(&mut self, key: &str, value: &impl Serialize) -> Result<()> {
        self.line.clear();
        self.line.extend_from_slice(b"{\"");
        self.line.extend_from_slice(key.as_bytes());
        self.line.extend_from_slice(b"\":");
        serde_json::to_writer(&mut self.line, value)?;
        self.line.extend_from_slice(b"}\n");
        self.put()
    }

    fn write_line(&mut self, value: &impl Serialize) -> Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, value)?;
        self.line.push(b'\n');
        self.put()
    }

    /// The line built in `self.line`, to the store; a log whose disk came back says
    /// first what it is missing.
    fn put(&mut self) -> Result<()> {
        self.bytes += self.line.len() as u64;
        self.out.push(&self.line);
        if self.out.recovered() {
            let line = std::mem::take(&mut self.line);
            let losses = self.last_losses;
            let r = self.losses(&losses);
            self.line = line;
            r?;
        }
        Ok(())
    }

    /// Writes what is buffered. A failing disk is not an error here: see
    /// [`LogWriter::incomplete`].
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush();
        Ok(())
    }
}

impl LogWriter<File> {
    /// Flushes and fsyncs: the log is on disk when `record` says it was written.
    pub fn finish(&mut self) -> Result<()> {
        self.flush()?;
        if self.out.error.is_some() {
            // Said by `incomplete`; an fsync would only repeat the error.
            return Ok(());
        }
        self.out
            .get_ref()
            .sync_all()
            .context("syncing the log to disk")
    }
}

/// Longest line a log may hold (the last line lists every finding; a finding is a
/// few hundred bytes and the engine's tables are bounded). Longer lines are an
/// error, skipped without being kept: memory stays bounded whatever the input.
pub const MAX_LINE: usize = 16 << 20;

/// Reads one line of at most `max` bytes into `buf` (newline excluded). Returns the
/// bytes consumed (0 at the end) and whether the line was longer than `max` (its
/// rest is consumed and dropped, or with `give_up` left unread: a stream with no
/// newline, such as /dev/zero, must not be read forever).
fn read_bounded_line<R: BufRead>(
    input: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
    give_up: bool,
) -> std::io::Result<(usize, bool)> {
    let (mut consumed, mut too_long) = (0, false);
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            return Ok((consumed, too_long));
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let data = &chunk[..if done { take - 1 } else { take }];
        if buf.len() + data.len() > max {
            too_long = true;
            buf.clear();
            if give_up {
                return Ok((consumed.max(1), true));
            }
        } else if !too_long {
            buf.extend_from_slice(data);
        }
        input.consume(take);
        consumed += take;
        if done {
            return Ok((consumed, too_long));
        }
    }
}

/// Reads a log line by line.
pub struct LogReader<R: BufRead> {
    input: R,
    pub header: Header,
    line_no: usize,
    buf: Vec<u8>,
    /// Bytes read so far, header included.
    pub bytes: u64,
}

impl LogReader<BufReader<File>> {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self> {
        let file =
            File::open(path).with_context(|| format!("cannot open log {}", path.display()))?;
        Self::new(BufReader::with_capacity(1 << 20, file))
            .with_context(|| format!("{} is not a conntrace log", path.display()))
    }
}

impl<R: BufRead> LogReader<R> {
    /// Reads the header; fails when the first line is not one.
    pub fn new(mut input: R) -> Result<Self> {
        let mut buf = Vec::new();
        // A header is a few hundred bytes: a longer first line is not a log.
        let (bytes, too_long) = read_bounded_line(&mut input, &mut buf, 64 * 1024, true)
            .context("reading the header line")?;
        if too_long {
            bail!("line 1 is longer than 64 KiB: not a conntrace log header");
        }
        let text = String::from_utf8_lossy(&buf);
        if text.trim().is_empty() {
            bail!("the file is empty (no header line)");
        }
        let header: Header = serde_json::from_str(text.trim())
            .context("line 1 is not a conntrace log header ({\"conntrace_log\": N, ...})")?;
        let bytes = bytes as u64;
        Ok(Self {
            input,
            header,
            line_no: 1,
            buf,
            bytes,
        })
    }

    /// Whether this log was written by a newer format than this build knows.
    pub fn is_newer_version(&self) -> bool {
        self.header.conntrace_log > LOG_VERSION
    }
}

impl<R: BufRead> Iterator for LogReader<R> {
    type Item = Result<Record, LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            let too_long = match read_bounded_line(&mut self.input, &mut self.buf, MAX_LINE, false)
            {
                Ok((0, _)) => return None,
                Ok((n, too_long)) => {
                    self.bytes += n as u64;
                    too_long
                }
                Err(e) => {
                    self.line_no += 1;
                    return Some(Err(LineError {
                        line: self.line_no,
                        message: format!("unreadable: {e}"),
                    }));
                }
            };
            self.line_no += 1;
            if too_long {
                return Some(Err(LineError {
                    line: self.line_no,
                    message: format!("longer than {} MiB, not kept", MAX_LINE >> 20),
                }));
            }
            let Ok(line) = std::str::from_utf8(&self.buf) else {
                return Some(Err(LineError {
                    line: self.line_no,
                    message: "not UTF-8 text".to_owned(),
                }));
            };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            return Some(
                parse_record(line, &self.header).map_err(|message| LineError {
                    line: self.line_no,
                    message,
                }),
            );
        }
    }
}

fn parse_record(line: &str, header: &Header) -> Result<Record, String> {
    let key = line
        .strip_prefix("{\"")
        .and_then(|rest| rest.split_once('"'))
        .map(|(k, _)| k);
    match key {
        // The bulk of a log: parsed without an intermediate value.
        Some("conn") => {
            crate::eventlog::jsonl::parse_conn_line(line, header.boot_time).map(Record::Conn)
        }
        // `{"KEY": VALUE, ...}`: the value under the key; other keys (from a newer
        // version) are skipped.
        Some(k) if Record::KEYS.contains(&k) => {
            let mut map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).map_err(|e| describe(&e))?;
            let value = map
                .remove(k)
                .ok_or_else(|| format!("corrupt line (no {k})"))?;
            let one = serde_json::Map::from_iter([(k.to_owned(), value)]);
            serde_json::from_value(serde_json::Value::Object(one))
                .map_err(|e| format!("corrupt line ({e})"))
        }
        _ => serde_json::from_str::<Event>(line)
            .map(Record::Event)
            .map_err(|e| describe(&e)),
    }
}

/// A line serde could not read: truncated (it ended early) or corrupt.
pub(crate) fn describe(e: &serde_json::Error) -> String {
    if e.is_eof() {
        format!("truncated line ({e})")
    } else {
        format!("corrupt line ({e})")
    }
}

/// A whole log in memory: the records that read, and the lines that did not.
pub struct Log {
    pub header: Header,
    pub records: Vec<Record>,
    pub errors: Vec<LineError>,
    /// Every event, connection records expanded.
    events: Vec<Event>,
}

impl Log {
    /// Reads all of `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let mut reader = LogReader::open(path)?;
        let mut records = Vec::new();
        let mut errors = Vec::new();
        for record in &mut reader {
            match record {
                Ok(r) => records.push(r),
                Err(e) => errors.push(e),
            }
        }
        let events = records.iter().flat_map(Record::events).collect();
        Ok(Self {
            header: reader.header,
            records,
            errors,
            events,
        })
    }

    /// The events, in log order; a connection record as the transitions it lists.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }

    /// The connection records, in log order.
    pub fn conns(&self) -> impl Iterator<Item = &crate::event::Conn> {
        self.records.iter().filter_map(|r| match r {
            Record::Conn(c) => Some(c),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::SocketAddr,
        time::{Duration, UNIX_EPOCH},
    };

    use super::*;
    use crate::event::{Direction, Errno, EventKind, TcpState};

    fn header() -> Header {
        Header {
            conntrace_log: LOG_VERSION,
            host: "node-1".into(),
            kernel: "6.18.0".into(),
            hz: 250,
            boot_time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            started: UNIX_EPOCH + Duration::new(1_700_000_100, 0),
            conntrace_version: "0.1.0".into(),
            programs: vec!["inet_sock_set_state".into()],
            degraded: vec![crate::kernel::support::Degraded::new(
                crate::kernel::support::RESET_REASON,
                "resets sent carry no reason",
            )],
        }
    }

    fn events() -> Vec<Event> {
        let base = |kind, ms: u64| Event {
            time: UNIX_EPOCH + Duration::from_millis(1_700_000_100_000 + ms),
            mono_ns: ms * 1_000_000,
            kind,
            pid: 7,
            tid: 8,
            comm: "curl".into(),
            cgroup: 1,
            owner_known: true,
            sock: 0xffff_8881_0000_0040,
            local: "127.0.0.1:40000".parse::<SocketAddr>().unwrap(),
            remote: "[::1]:80".parse::<SocketAddr>().unwrap(),
        };
        vec![
            base(
                EventKind::State {
                    old: TcpState::Established,
                    new: TcpState::CloseWait,
                    idle_ms: 5000,
                    send_idle_ms: 5004,
                    recv_idle_ms: 5000,
                    closed_by: Some(crate::event::Closer::Peer),
                    retrans: 0,
                },
                1,
            ),
            base(
                EventKind::Reset {
                    direction: Direction::Received,
                    state: Some(TcpState::CloseWait),
                    reason: None,
                    idle_ms: 10,
                    recv_idle_ms: 10,
                    syn: false,
                },
                2,
            ),
            base(
                EventKind::Connect {
                    errno: Errno(libc::ECONNREFUSED),
                    state: TcpState::Close,
                },
                3,
            ),
        ]
    }

    fn written() -> Vec<u8> {
        let mut w = LogWriter::new(Vec::new());
        w.header(&header()).unwrap();
        for e in events() {
            w.event(&e).unwrap();
        }
        w.finding(&serde_json::json!({"kind": "idle-close-timeout"}))
            .unwrap();
        w.flush().unwrap();
        w.out.get_ref().clone()
    }

    #[test]
    fn writer_and_reader_round_trip() {
        let bytes = written();
        let mut reader = LogReader::new(bytes.as_slice()).unwrap();
        assert_eq!(reader.header, header());
        let records: Vec<_> = (&mut reader).collect::<Result<_, _>>().unwrap();
        let mut expected: Vec<Record> = events().into_iter().map(Record::Event).collect();
        expected.push(Record::Finding(
            serde_json::json!({"kind": "idle-close-timeout"}),
        ));
        assert_eq!(records, expected);
    }

    /// A log of `records` after the test header, as text.
    fn written_records(records: &[Record]) -> String {
        let mut w = LogWriter::new(Vec::new());
        w.header(&header()).unwrap();
        for r in records {
            w.record(r).unwrap();
        }
        w.flush().unwrap();
        String::from_utf8(w.out.get_ref().clone()).unwrap()
    }

    #[test]
    fn every_kind_of_record_reads_back_as_written() {
        use crate::engine::testing::{listeners, sockstat, waiting, waiting_conn, wall, T0};
        let mut reuse_of = waiting_conn(9, "10.0.0.1:40001", "10.0.0.7:80", 0, false);
        reuse_of.process.cgroup = 42;
        let records = vec![
            Record::Sockstat(sockstat(1_000, 10, [1, 2, 3])),
            Record::Waiting(waiting(2_000, vec![reuse_of.clone()])),
            Record::Listeners(listeners(3_000, "10.0.0.5:80", (5, 4), 7)),
            Record::Reuses(crate::event::Reuses {
                time: wall(T0),
                mono_ns: T0,
                reuses: vec![crate::event::Reuse {
                    process: reuse_of.process.clone(),
                    local: reuse_of.local,
                    remote: reuse_of.remote,
                    gap_ms: 4_000,
                    exact: true,
                }],
            }),
            Record::Tuple(crate::event::TupleInfo {
                time: wall(T0),
                mono_ns: T0,
                local: reuse_of.local,
                remote: reuse_of.remote,
                holder: Some(crate::event::TupleHolder {
                    state: TcpState::TimeWait,
                    process: reuse_of.process.clone(),
                    closed_ago_ms: Some(5),
                    first_fin: Some("local".into()),
                    released_in_ms: Some(59_995),
                }),
                backend: Some("10.0.0.8:8080".parse().unwrap()),
            }),
            Record::Cgroup(crate::k8s::CgroupInfo {
                id: 42,
                path: "/kubepods/pod1/abc".into(),
                container: crate::k8s::ContainerRef {
                    runtime: Some("containerd".into()),
                    container_id: Some("abc".into()),
                    pod_uid: Some("1".into()),
                    qos: None,
                },
            }),
            Record::Pod(crate::k8s::api::PodInfo {
                uid: "1".into(),
                namespace: "default".into(),
                name: "web-1".into(),
            }),
            Record::Losses(crate::event::Losses {
                ringbuf_full: 3,
                conntrack_skipped: 4,
                ..Default::default()
            }),
        ];
        let text = written_records(&records);
        // The process of a snapshot is flat in its line, keyed as in a conn line.
        assert!(
            text.contains("\"pid\":9,\"comm\":\"worker\",\"cg\":42"),
            "{text}"
        );
        let back: Vec<Record> = LogReader::new(text.as_bytes())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, records);
    }

    #[test]
    fn truncated_last_line_keeps_every_good_line() {
        let mut bytes = written();
        bytes.truncate(bytes.len() - 15);
        let reader = LogReader::new(bytes.as_slice()).unwrap();
        let (ok, bad): (Vec<_>, Vec<_>) = reader.partition(Result::is_ok);
        assert_eq!(ok.len(), 3);
        let bad: Vec<LineError> = bad.into_iter().map(Result::unwrap_err).collect();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].line, 5);
        assert!(bad[0].message.contains("truncated"), "{}", bad[0]);
    }

    #[test]
    fn corrupt_middle_line_is_reported_by_number() {
        let text = String::from_utf8(written()).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines[2] = "{\"time\": not json";
        let joined = lines.join("\n");
        let reader = LogReader::new(joined.as_bytes()).unwrap();
        let results: Vec<_> = reader.collect();
        assert_eq!(results.len(), 4);
        assert_eq!(results[1].as_ref().unwrap_err().line, 3);
        assert!(results[0].is_ok() && results[2].is_ok() && results[3].is_ok());
    }

    #[test]
    fn unknown_fields_are_skipped_and_newer_versions_flagged() {
        let text = String::from_utf8(written()).unwrap();
        let text = text
            .replacen(
                &format!("\"conntrace_log\":{LOG_VERSION}"),
                &format!("\"conntrace_log\":{},\"future\":true", LOG_VERSION + 1),
                1,
            )
            .replace("\"comm\":\"curl\"", "\"comm\":\"curl\",\"pod\":\"web-1\"");
        let reader = LogReader::new(text.as_bytes()).unwrap();
        assert!(reader.is_newer_version());
        assert!(reader.into_iter().all(|r| r.is_ok()));
    }

    #[test]
    fn version_1_logs_still_read() {
        let text = String::from_utf8(written()).unwrap().replacen(
            &format!("\"conntrace_log\":{LOG_VERSION}"),
            "\"conntrace_log\":1",
            1,
        );
        let reader = LogReader::new(text.as_bytes()).unwrap();
        assert!(!reader.is_newer_version());
        let records: Vec<Record> = reader.map(Result::unwrap).collect();
        let expected: Vec<Record> = events().into_iter().map(Record::Event).collect();
        assert_eq!(records[..expected.len()], expected[..]);
    }

    /// Lines as versions 1 and 2 wrote them (long keys, every field) read as the
    /// same records as this version's.
    #[test]
    fn older_versions_long_keys_read_as_today() {
        let old = r#"{"conntrace_log":2,"host":"h","kernel":"k","hz":250,"boot_time":"2023-11-14T22:13:20.000Z","started":"2023-11-14T22:15:00.000Z"}
{"time":"2023-11-14T22:13:21.001Z","mono_ns":1000000,"type":"connect","errno":"ECONNREFUSED","state":"CLOSE","pid":7,"tid":8,"comm":"curl","cgroup":1,"owner_known":true,"sock":"0xffff888100000040","local":"127.0.0.1:40000","remote":"[::1]:80"}
{"time":"2023-11-14T22:13:21.002Z","mono_ns":2000000,"type":"reset","direction":"received","state":null,"idle_ms":0,"recv_idle_ms":0,"syn":false,"pid":0,"tid":0,"comm":"","cgroup":0,"owner_known":false,"sock":"0x1","local":"127.0.0.1:40000","remote":"127.0.0.1:80"}
{"waiting":{"time":"2023-11-14T22:13:22.000Z","mono_ns":3000000,"after_ms":30000,"conns":[{"pid":9,"comm":"worker","cgroup":4,"local":"10.0.0.1:40001","remote":"10.0.0.7:80","waiting_ms":31000,"last_recv_ms":31050,"keepalive":false}]}}
"#;
        let records: Vec<Record> = LogReader::new(old.as_bytes())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let text = written_records(&records);
        for long in [
            "\"mono_ns\"",
            "\"sock\"",
            "\"local\"",
            "\"cgroup\"",
            "\"owner_known\"",
        ] {
            assert!(!text.contains(long), "{long} in {text}");
        }
        let again: Vec<Record> = LogReader::new(text.as_bytes())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(again, records);
        let Record::Event(e) = &records[0] else {
            panic!("{records:?}")
        };
        assert_eq!((e.pid, e.tid, e.cgroup, e.owner_known), (7, 8, 1, true));
        let Record::Event(rst) = &records[1] else {
            panic!("{records:?}")
        };
        assert_eq!((rst.pid, rst.tid, rst.owner_known), (0, 0, false));
        let Record::Waiting(w) = &records[2] else {
            panic!("{records:?}")
        };
        assert_eq!((w.conns[0].process.cgroup, w.mono_ns), (4, 3_000_000));
    }

    #[test]
    fn not_a_log_is_one_clear_error() {
        let err = LogReader::new("hello world\n".as_bytes()).err().unwrap();
        assert!(format!("{err:#}").contains("not a conntrace log header"));
        let err = LogReader::new("".as_bytes()).err().unwrap();
        assert!(format!("{err:#}").contains("empty"));
    }
}
