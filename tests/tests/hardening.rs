//! Issue 12: conntrace runs as root on other people's nodes. Its output files are
//! private and never written through a planted link or over an existing file; every
//! way a session ends leaves a complete log; bad input gets one clear error with
//! bounded memory; names from the kernel reach the terminal escaped.

use std::{
    fmt::Write as _,
    io::Read as _,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    process::{Command, Output, Stdio},
    time::Duration,
};

use tests::{
    conntrace_bin, one_clear_error, require_root, run_conntrace as run, unique, Python, Recorder,
};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A path in the temp dir, removed when dropped.
struct TempPath(std::path::PathBuf);

impl TempPath {
    fn new(prefix: &str) -> Self {
        Self(std::env::temp_dir().join(unique(prefix)))
    }
    fn s(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_symlink_planted_at_the_output_is_refused_and_its_target_untouched() {
    require_root();
    let target = TempPath::new("ct-precious-");
    std::fs::write(&target.0, "precious").expect("write target");
    let link = TempPath::new("ct-link-");
    std::os::unix::fs::symlink(&target.0, &link.0).expect("symlink");
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec!["record", "-o", link.s(), "--duration", "1"];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert!(!out.status.success(), "{extra:?}");
        let err = stderr(&out);
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    assert_eq!(
        std::fs::read_to_string(&target.0).expect("target"),
        "precious"
    );
}

#[test]
fn an_existing_file_needs_force_and_logs_are_private() {
    require_root();
    let path = TempPath::new("ct-existing-");
    std::fs::write(&path.0, "earlier recording").expect("write");
    let out = run(&["record", "-o", path.s(), "--duration", "1"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&path.0).expect("kept"),
        "earlier recording"
    );
    let out = run(&["record", "-o", path.s(), "--duration", "1", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&path.0).expect("log");
    assert!(text.starts_with("{\"conntrace_log\""), "{text}");
    // A fresh file is created 0600 whatever the umask.
    let fresh = TempPath::new("ct-fresh-");
    let out = run(&["record", "-o", fresh.s(), "--duration", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = std::fs::metadata(&fresh.0)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    assert_eq!(std::fs::metadata(&fresh.0).expect("meta").uid(), 0);
}

/// `kill -SIG` a recording at `after`, then read its log.
fn stopped_by(sig: i32, after: Duration) -> (String, String) {
    let path = TempPath::new("ct-sig-");
    let mut child = Command::new(conntrace_bin())
        .args(["record", "-o", path.s()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(after);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(i32::try_from(child.id()).expect("pid"), sig) };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}: {err}");
    (std::fs::read_to_string(&path.0).expect("log"), err)
}

#[test]
fn sighup_and_sigterm_leave_a_complete_log_also_while_loading() {
    require_root();
    for (sig, name, after) in [
        (libc::SIGHUP, "SIGHUP", Duration::from_secs(2)),
        (libc::SIGTERM, "SIGTERM", Duration::from_secs(2)),
        // Before the programs are attached: the run still ends cleanly.
        (libc::SIGHUP, "SIGHUP", Duration::from_millis(30)),
    ] {
        let (log, err) = stopped_by(sig, after);
        let lines: Vec<&str> = log.lines().collect();
        assert!(
            lines
                .first()
                .is_some_and(|l| l.starts_with("{\"conntrace_log\"")),
            "{name} after {after:?}: header first: {log}"
        );
        assert!(
            lines.last().is_some_and(|l| l.starts_with("{\"findings\"")),
            "{name} after {after:?}: the final findings line ends the log: {log}"
        );
        assert!(err.contains(&format!("stopped by {name}")), "{err}");
    }
}

#[test]
fn bad_durations_are_refused_before_loading() {
    for bad in ["nan", "1e30", "0", "-1", "inf", "soon"] {
        let out = run(&[
            "record",
            "-o",
            "/tmp/never.jsonl",
            &format!("--duration={bad}"),
        ]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = stderr(&out);
        assert!(err.contains("--duration"), "{bad}: {err}");
        assert!(!err.contains("panicked"), "{bad}: {err}");
    }
    assert!(!std::path::Path::new("/tmp/never.jsonl").exists());
}

#[test]
fn an_endless_line_is_one_clear_error_with_bounded_memory() {
    let out = run(&["report", "/dev/zero"]);
    assert_eq!(out.status.code(), Some(1));
    one_clear_error(&out, &["longer than", "/dev/zero"]);
}

#[test]
fn a_closed_pipe_ends_report_quietly() {
    let log = TempPath::new("ct-bad-");
    let mut text = String::from("{\"conntrace_log\":1,\"host\":\"h\",\"kernel\":\"k\",\"hz\":250,\"boot_time\":\"2026-11-23T00:00:00.000Z\",\"started\":\"2026-11-23T00:00:01.000Z\",\"conntrace_version\":\"0\"}\n");
    for i in 0..5000 {
        let _ = writeln!(text, "garbage {i}");
    }
    std::fs::write(&log.0, text).expect("write");
    // `conntrace report bad.jsonl 2>&1 | head -1`: both outputs closed early.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} report {} 2>&1 | head -1; echo \"rc=${{PIPESTATUS:-}}\"",
            conntrace_bin().display(),
            log.s()
        ))
        .output()
        .expect("sh");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.starts_with("conntrace: warning"), "{shown}");
    assert!(!shown.contains("panicked"), "{shown}");
    let mut child = Command::new(conntrace_bin())
        .args(["report", log.s()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(0),
        "no panic on a closed pipe: {status}"
    );
}

/// Sets its name to an escape sequence, then is refused (5 connects to a closed port).
const EVIL: &str = r"
import ctypes, socket
ctypes.CDLL(None).prctl(15, b'\x1b[2J\x1b]0;pwn\x07', 0, 0, 0)
for _ in range(5):
    try:
        socket.create_connection(('127.0.0.1', 9), timeout=1)
    except OSError:
        pass
print('done')
";

#[test]
fn a_process_named_with_escape_sequences_reaches_the_terminal_escaped() {
    let rec = Recorder::start(&[]);
    let mut evil = Python::spawn(None, EVIL, &[]);
    assert_eq!(evil.line(), "done");
    let pid = evil.pid();
    evil.wait();
    let recording = rec.stop();
    for format in ["text", "markdown"] {
        let out = run(&[
            "report",
            "--format",
            format,
            recording.path.to_str().expect("path"),
        ]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("\\x1b[2J\\x1b]0;pwn\\x07 (pid {pid})")),
            "{format}: {text}"
        );
        assert!(
            !out.stdout.iter().any(|&b| b == 0x1b || b == 0x07),
            "{format}: no raw control byte reaches the terminal"
        );
    }
}

#[test]
fn a_lossy_recording_says_so_in_report() {
    require_root();
    // A real recording ends with its losses (here none), then the findings.
    let path = TempPath::new("ct-losses-");
    let out = run(&["record", "-o", path.s(), "--duration", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = std::fs::read_to_string(&path.0).expect("log");
    let lines: Vec<&str> = log.lines().collect();
    let n = lines.len();
    assert!(n >= 3, "{log}");
    assert!(lines[n - 2].starts_with("{\"losses\""), "{log}");
    assert!(lines[n - 1].starts_with("{\"findings\""), "{log}");
    let clean = run(&["report", path.s()]);
    // (Unless the kernel skipped a nested program run while recording: counted, and
    // then rightly reported.)
    if !log.contains("\"kernel_nested\"") {
        assert!(!String::from_utf8_lossy(&clean.stdout).contains("lost"));
    }
    // The same log as if the ring buffer had overflowed: report says what is missing.
    let lossy = TempPath::new("ct-lossy-");
    let mut text = lines[..n - 2].join("\n");
    text.push_str("\n{\"losses\":{\"ringbuf_full\":1200,\"owner_map\":0,\"connect_map\":0,\"kernel_read\":3,\"undecodable\":0,\"engine_evicted\":7}}\n");
    std::fs::write(&lossy.0, text).expect("write");
    let out = run(&["report", lossy.s()]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(
            "this recording lost 1203 events (ring buffer full 1200, kernel read failures 3"
        ) && shown.contains("7 engine table entries: findings may be incomplete"),
        "{shown}"
    );
    let out = run(&["report", "--format", "json", lossy.s()]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["losses"]["ringbuf_full"], 1200);
}

#[test]
fn ctrl_c_in_lab_removes_its_namespaces() {
    require_root();
    let child = Command::new(conntrace_bin())
        .args(["lab", "hung-peer"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lab");
    let pid = child.id();
    let ours = || tracer::lab::netns::of_process(pid);
    // Wait until the scenario has made its namespaces, then interrupt it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ours().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the lab made no namespaces"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(i32::try_from(pid).expect("pid"), libc::SIGINT) };
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    // The scenario's own drops may race the signal thread for one of them.
    assert!(
        stderr(&out).contains("lab stopped by SIGINT; removed"),
        "{}",
        stderr(&out)
    );
    assert!(ours().is_empty(), "left behind: {:?}", ours());
}
