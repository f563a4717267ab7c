//! Bad input a user will hit gets one clear line naming the cause and the remedy,
//! and a non-zero exit.

use std::process::{Command, Output};

use tests::{conntrace_bin, one_clear_error, require_root, run_conntrace as run};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unwritable_output_names_the_path_and_the_remedy() {
    let out = run(&[
        "record",
        "-o",
        "/nonexistent-dir/x.jsonl",
        "--duration",
        "1",
    ]);
    one_clear_error(&out, &["/nonexistent-dir/x.jsonl", "writable"]);
}

#[test]
fn bad_cidr_filter_is_rejected_before_loading() {
    let out = run(&["record", "-o", "/tmp/never.jsonl", "--cidr", "10.0.0.0/40"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("--cidr") && err.contains("prefix length"),
        "{err}"
    );
    let out = run(&["record", "-o", "/tmp/never.jsonl", "--port", "70000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--port"));
}

#[test]
fn not_root_says_what_privilege_is_missing() {
    require_root();
    // Drop to nobody with no capabilities, as an operator who forgot sudo.
    let path = std::env::temp_dir().join(tests::unique("conntrace-noroot-"));
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(conntrace_bin())
        .args(["record", "--duration", "1", "-o"])
        .arg(&path)
        .output()
        .expect("run setpriv");
    let _ = std::fs::remove_file(&path);
    one_clear_error(&out, &["needs root", "CAP_BPF"]);
}
