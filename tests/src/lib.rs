//! Helpers for conntrace's root integration tests: run the real `conntrace record`,
//! create network namespaces that clean up after themselves, and drive Python peers.
//!
//! Every test records the whole node, so each one picks out its own connections by
//! port and pid; names of namespaces and links are unique per process and test.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use tracer::{
    event::{Event, EventKind},
    eventlog::Log,
};

pub mod peers;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, at most `prefix.len() + 9` characters.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:05}{n:03}", std::process::id() % 100_000)
}

/// The conntrace binary: `$CONNTRACE_BIN`, else `target/debug/conntrace`.
pub fn conntrace_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CONNTRACE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test> -> target/debug/conntrace
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("conntrace");
    assert!(
        bin.exists(),
        "{} not built: run the tests with `cargo xtask test`",
        bin.display()
    );
    bin
}

/// Panics unless running as root (the kernel programs need it).
/// Runs conntrace with `args` to completion (no input).
pub fn run_conntrace(args: &[&str]) -> Output {
    Command::new(conntrace_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run conntrace")
}

/// Runs a command that must succeed (its stderr shown when it does not); its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A failed run's stderr, asserted to be one line naming each of `parts`.
pub fn one_clear_error(out: &Output, parts: &[&str]) -> String {
    assert!(!out.status.success(), "it succeeded");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(parts.iter().all(|p| err.contains(p)), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

/// A Python client's script: it connects to `host`:`port` (Python expressions),
/// sends `hello` first if given, prints its local port, then runs `body` with the
/// socket as `s` (socket, sys and time imported).
pub fn python_client(
    host: &str,
    port: &str,
    timeout: u32,
    hello: Option<&str>,
    body: &str,
) -> String {
    let hello = hello
        .map(|h| format!("s.sendall(b'{h}')\n"))
        .unwrap_or_default();
    format!(
        "import socket, sys, time\ns = socket.create_connection(({host}, {port}), timeout={timeout})\n{hello}print(s.getsockname()[1])\n{}",
        body.trim_start()
    )
}

/// A port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The body of `GET path` on 127.0.0.1:`port` (HTTP/1.1, one request).
pub fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or(out)
}

pub fn require_root() {
    // SAFETY: plain syscall.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the integration tests load eBPF programs: run them as root (`sudo cargo xtask test`)"
    );
}

/// A running `conntrace record`.
pub struct Recorder {
    child: Child,
    pub path: PathBuf,
    /// What conntrace printed on stdout (the findings at exit).
    pub stdout: PathBuf,
    stderr_lines: std::sync::mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Recorder {
    /// Starts recording with extra flags, and waits until every program is attached.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_env(extra, &[])
    }

    /// [`Recorder::start`] with extra environment variables.
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let path = std::env::temp_dir().join(format!("{}.jsonl", unique("conntrace-test-")));
        Self::start_at(&path, extra, env)
    }

    /// [`Recorder::start_env`], writing the log at `path`.
    pub fn start_at(path: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_with(path, extra, env, None)
    }

    /// [`Recorder::start`] under a file limit of `nofile` (soft and hard), as a
    /// process of a node with a small `LimitNOFILE` runs.
    pub fn start_with_nofile(extra: &[&str], nofile: u64) -> Self {
        let path = std::env::temp_dir().join(format!("{}.jsonl", unique("conntrace-test-")));
        Self::start_with(&path, extra, &[], Some(nofile))
    }

    fn start_with(
        path: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Self {
        require_root();
        let path = path.to_path_buf();
        let stdout = std::env::temp_dir().join(format!("{}.out", unique("conntrace-test-")));
        let mut cmd = Command::new(conntrace_bin());
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .args(["record", "-o"])
            .arg(&path)
            .args(["--duration", "120"])
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn conntrace record");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut rec = Self {
            child,
            path,
            stdout,
            stderr_lines: rx,
            stderr_seen: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rec.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let attached = line.contains("programs attached");
                    rec.stderr_seen.push(line);
                    if attached {
                        return rec;
                    }
                }
                Err(e) => panic!(
                    "conntrace record did not attach within 30 s ({e}); stderr: {:?}",
                    rec.stderr_seen
                ),
            }
        }
    }

    /// SIGINT and wait: the exit status and every line conntrace wrote on stderr.
    pub fn stop_raw(mut self) -> (std::process::ExitStatus, Vec<String>) {
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(i32::try_from(self.child.id()).expect("pid"), libc::SIGINT) };
        let status = self.child.wait().expect("wait for conntrace");
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_secs(2)) {
            self.stderr_seen.push(line);
        }
        (status, std::mem::take(&mut self.stderr_seen))
    }

    /// SIGINT, wait for a clean exit, and read the log back.
    pub fn stop(mut self) -> Recording {
        // Let the last events reach the ring buffer reader.
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(i32::try_from(self.child.id()).expect("pid"), libc::SIGINT) };
        let status = self.child.wait().expect("wait for conntrace");
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_secs(2)) {
            self.stderr_seen.push(line);
        }
        assert!(
            status.success(),
            "conntrace record exited with {status}; stderr: {:?}",
            self.stderr_seen
        );
        let log = Log::read(&self.path).expect("read the recorded log");
        assert!(
            log.errors.is_empty(),
            "bad lines in the log: {:?}",
            log.errors
        );
        Recording {
            log,
            stderr: self.stderr_seen.clone(),
            path: self.path.clone(),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stdout);
    }
}

/// What a recorder saw; the log file is removed on drop.
pub struct Recording {
    pub log: Log,
    pub stderr: Vec<String>,
    pub path: PathBuf,
}

impl Drop for Recording {
    /// Removes the log, or with `CONNTRACE_KEEP_LOGS=DIR` moves it there (to look at
    /// what a failed test recorded).
    fn drop(&mut self) {
        if let Some(dir) = std::env::var_os("CONNTRACE_KEEP_LOGS") {
            if let Some(name) = self.path.file_name() {
                let _ = std::fs::copy(&self.path, std::path::Path::new(&dir).join(name));
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Recording {
    /// What the recording said it lost (its last `losses` line).
    pub fn losses(&self) -> tracer::event::Losses {
        self.log
            .records
            .iter()
            .rev()
            .find_map(|r| match r {
                tracer::event::Record::Losses(l) => Some(*l),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// Whether the recording's kernel lacked `fact` (the header's degraded facts, see
    /// `tracer::kernel::support`): tests expect what the kernel can give, and say so.
    pub fn degraded(&self, fact: &str) -> bool {
        self.log.header.degraded.iter().any(|d| d.fact == fact)
    }

    /// The reset this node sent from local `port` to remote `peer_port`. `None` when
    /// the recording's kernel does not trace resets sent without a full socket (before
    /// 6.10) — and then the test asserts that none was invented either.
    pub fn reset_sent_for_no_full_socket(&self, port: u16, peer_port: u16) -> Option<&Event> {
        let mut sent = self.by_local_port(port).into_iter().filter(|e| {
            e.remote.port() == peer_port
                && matches!(
                    e.kind,
                    EventKind::Reset {
                        direction: tracer::event::Direction::Sent,
                        ..
                    }
                )
        });
        if self.degraded(tracer::kernel::support::RESET_NO_SOCKET) {
            assert!(sent.next().is_none(), "this kernel cannot see it");
            return None;
        }
        let found = sent.next();
        assert!(
            found.is_some(),
            "no reset sent:\n{}",
            self.dump(&self.by_local_port(port))
        );
        found
    }

    /// `conntrace report FILE --format json`, parsed: the findings array.
    pub fn report_json(&self) -> Vec<serde_json::Value> {
        let out = run_ok(
            Command::new(conntrace_bin())
                .args(["report", "--format", "json"])
                .arg(&self.path),
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report is JSON");
        v["findings"].as_array().expect("findings array").clone()
    }

    /// The report, checked to be what the live engine had at exit: a replay of the
    /// log gives the live run's findings.
    pub fn replayed_report(&self) -> Vec<serde_json::Value> {
        let report = self.report_json();
        assert_eq!(
            report,
            self.final_findings(),
            "replaying the log gives the live run's findings"
        );
        report
    }

    /// The live engine's findings at exit (the log's last line).
    pub fn final_findings(&self) -> Vec<serde_json::Value> {
        self.log
            .records
            .iter()
            .rev()
            .find_map(|r| match r {
                tracer::event::Record::FinalFindings(f) => Some(f.clone()),
                _ => None,
            })
            .expect("the log ends with the live findings")
    }

    pub fn events(&self) -> Vec<&Event> {
        self.log.events().collect()
    }

    /// Events on a connection with this local port (either side of loopback).
    pub fn by_local_port(&self, port: u16) -> Vec<&Event> {
        self.log
            .events()
            .filter(|e| e.local.port() == port)
            .collect()
    }

    /// The first `old -> new` of a socket on local port `port` (with remote port
    /// `peer`, if given); fails showing that port's events when there is none.
    pub fn transition(&self, port: u16, peer: Option<u16>, old: &str, new: &str) -> &Event {
        let on_port = self.by_local_port(port);
        on_port
            .iter()
            .copied()
            .find(|e| peer.is_none_or(|p| e.remote.port() == p) && is_transition(e, old, new))
            .unwrap_or_else(|| panic!("no {old} -> {new} on :{port}:\n{}", self.dump(&on_port)))
    }

    /// One clock tick in milliseconds, from the log header.
    pub fn tick_ms(&self) -> u64 {
        1000 / u64::from(self.log.header.hz.max(1))
    }

    /// A summary for assertion messages.
    pub fn dump(&self, events: &[&Event]) -> String {
        events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Whether `e` is a state change `old -> new`.
pub fn is_transition(e: &Event, old: &str, new: &str) -> bool {
    matches!(&e.kind, EventKind::State { old: o, new: n, .. } if o.as_str() == old && n.as_str() == new)
}

/// A Python 3 peer running an inline script, talking over stdin/stdout lines.
pub struct Python {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Python {
    /// `python3 -c script`, optionally inside a network namespace.
    pub fn spawn(netns: Option<&str>, script: &str, args: &[&str]) -> Self {
        let mut cmd = if let Some(ns) = netns {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "python3", "-u", "-c", script]);
            c
        } else {
            let mut c = Command::new("python3");
            c.args(["-u", "-c", script]);
            c
        };
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// The next line the script prints (panics at EOF).
    pub fn line(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_line(&mut s).expect("read from python");
        assert!(!s.is_empty(), "python peer exited early");
        s.trim().to_owned()
    }

    /// Sends a line to the script.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to python");
        stdin.flush().expect("flush");
    }

    /// The script's pid as the kernel sees it: `ip netns exec` execs python in place.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/proc/<pid>/comm` of the script.
    pub fn comm(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid()))
            .expect("read comm")
            .trim()
            .to_owned()
    }

    /// Waits for exit and asserts success.
    pub fn wait(mut self) {
        drop(self.stdin.take());
        let st = self.child.wait().expect("wait python");
        assert!(st.success(), "python peer failed: {st}");
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with loopback up, deleted on drop (also when a test fails).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        let name = unique("ctns");
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace and asserts success.
    pub fn exec(&self, cmd: &[&str]) {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        ip(&args);
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces joined by a veth pair: `a` is 192.0.2.1/24, `b` is 192.0.2.2/24
/// (TEST-NET-1; the addresses exist only inside these namespaces).
pub struct VethPair {
    pub a: Netns,
    pub b: Netns,
    pub link_a: String,
    pub link_b: String,
}

impl VethPair {
    pub const ADDR_A: &'static str = "192.0.2.1";
    pub const ADDR_B: &'static str = "192.0.2.2";

    pub fn new() -> Self {
        let a = Netns::new();
        let b = Netns::new();
        let link_a = unique("ctva");
        let link_b = unique("ctvb");
        ip(&[
            "link", "add", &link_a, "netns", &a.name, "type", "veth", "peer", "name", &link_b,
            "netns", &b.name,
        ]);
        a.exec(&["ip", "addr", "add", "192.0.2.1/24", "dev", &link_a]);
        b.exec(&["ip", "addr", "add", "192.0.2.2/24", "dev", &link_b]);
        a.exec(&["ip", "link", "set", &link_a, "up"]);
        b.exec(&["ip", "link", "set", &link_b, "up"]);
        Self {
            a,
            b,
            link_a,
            link_b,
        }
    }
}

impl Default for VethPair {
    fn default() -> Self {
        Self::new()
    }
}

/// What `conntrace lab` reported on its result line.
#[derive(Debug)]
pub struct LabResult {
    pub endpoint: String,
    pub count: u64,
    pub pid: u32,
    pub stdout: String,
}

/// Runs `conntrace lab NAME` to completion.
pub fn run_lab(name: &str) -> LabResult {
    let out = Command::new(conntrace_bin())
        .args(["lab", name])
        .stdin(Stdio::null())
        .output()
        .expect("run conntrace lab");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lab {name} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("lab: result "))
        .unwrap_or_else(|| panic!("no result line: {stdout}"));
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {line}"))
            .to_owned()
    };
    LabResult {
        endpoint: field("endpoint"),
        count: field("count").parse().expect("count"),
        pid: field("pid").parse().expect("pid"),
        stdout,
    }
}

/// Findings of one kind for one endpoint.
/// A finding's evidence `key`, a number.
pub fn evidence_u64(finding: &serde_json::Value, key: &str) -> u64 {
    finding["evidence"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {finding:#}"))
}

/// Asserts a finding's summary contains `part`, showing the finding when not.
pub fn summary_has(finding: &serde_json::Value, part: &str) {
    assert!(
        finding["summary"]
            .as_str()
            .is_some_and(|s| s.contains(part)),
        "{finding:#}"
    );
}

pub fn findings_for<'a>(
    findings: &'a [serde_json::Value],
    kind: &str,
    endpoint: &str,
) -> Vec<&'a serde_json::Value> {
    findings
        .iter()
        .filter(|f| f["kind"] == kind && f["endpoint"] == endpoint)
        .collect()
}
