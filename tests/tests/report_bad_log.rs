//! `conntrace report` on bad logs: a truncated last line or a corrupt line is
//! reported by number and every good event still counts; an unreadable file or a
//! file that is not a log is one clear error.

use std::process::{Command, Output};

use tests::{conntrace_bin, unique};

const HEADER: &str = r#"{"conntrace_log":1,"host":"node-1","kernel":"6.18.0","hz":250,"boot_time":"2026-11-23T00:00:00.000Z","started":"2026-11-23T01:00:00.000Z"}"#;

fn refused(n: u32) -> String {
    format!(
        r#"{{"time":"2026-11-23T01:00:0{n}.000Z","mono_ns":{n}000000000,"type":"connect","errno":"ECONNREFUSED","state":"CLOSE","pid":42,"tid":42,"comm":"curl","cgroup":1,"owner_known":true,"sock":"0xffff88810000{n}000","local":"127.0.0.1:4000{n}","remote":"127.0.0.1:9"}}"#
    )
}

fn report(contents: &str, format: &str) -> Output {
    let path = std::env::temp_dir().join(format!("{}.jsonl", unique("conntrace-bad-")));
    std::fs::write(&path, contents).expect("write log");
    let out = Command::new(conntrace_bin())
        .args(["report", "--format", format])
        .arg(&path)
        .output()
        .expect("run report");
    let _ = std::fs::remove_file(&path);
    out
}

#[test]
fn truncated_and_corrupt_lines_are_named_and_good_events_kept() {
    let log = format!(
        "{HEADER}\n{}\n{{\"time\": garbage\n{}\n{}\n{}",
        refused(1),
        refused(2),
        refused(3),
        &refused(4)[..60]
    );
    let out = report(&log, "json");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3: corrupt line"), "{err}");
    assert!(err.contains("line 6: truncated line"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let f = &v["findings"][0];
    assert_eq!(f["kind"], "connection-refused");
    assert_eq!(f["count"], 3, "the three good events count");
}

#[test]
fn a_file_that_is_not_a_log_is_one_clear_error() {
    let out = report("hello\n", "text");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a conntrace log") && err.contains("line 1"),
        "{err}"
    );
    let out = Command::new(conntrace_bin())
        .args(["report", "/nonexistent/log.jsonl"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open log /nonexistent/log.jsonl"));
}

#[test]
fn newer_log_version_is_read_with_a_warning() {
    let log = format!(
        "{}\n{}\n",
        HEADER.replace("\"conntrace_log\":1", "\"conntrace_log\":7"),
        refused(1)
    );
    let out = report(&log, "markdown");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("log version 7"));
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        md.contains("# conntrace findings") && md.contains("`connection-refused`"),
        "{md}"
    );
}
