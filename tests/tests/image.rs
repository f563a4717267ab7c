//! Issue 27: the container image the DaemonSet runs (`cargo xtask image`: the static
//! binary `FROM scratch`), started as the DaemonSet starts it — the host's PID and
//! network namespaces, only the manifest's capabilities, a read-only root, the
//! manifest's read-only mounts — `check` passes, and `watch --json` inside the
//! container names a `lab` scenario run on the host, with the host process's pid and
//! cgroup.
//!
//! `cargo xtask test` builds the image and names it in `CONNTRACE_IMAGE`. Where that
//! is not set (the kernel matrix's guests run the static binary itself, with no
//! container runtime of their own) the test says so and checks nothing.

use std::process::{Command, Stdio};

use serde_json::Value;
use tests::{conntrace_bin, require_root};

/// The DaemonSet's container settings (deploy/daemonset.yaml), as podman flags.
const AS_THE_DAEMONSET: &[&str] = &[
    "--pid=host",
    "--net=host",
    "--cap-drop=ALL",
    "--cap-add=BPF,PERFMON,SYS_RESOURCE,SYS_ADMIN,SYS_PTRACE,NET_ADMIN",
    // Kubernetes runs a pod without a seccomp profile unless told (no RuntimeDefault
    // in the manifest); podman's default would be stricter than the node.
    "--security-opt=seccomp=unconfined",
    "--read-only",
    "--volume=/sys/kernel/btf:/sys/kernel/btf:ro",
    "--volume=/sys/kernel/tracing:/sys/kernel/tracing:ro",
    "--volume=/sys/fs/cgroup:/sys/fs/cgroup:ro",
    "--volume=/boot:/boot:ro",
    "--tmpfs=/tmp",
];

fn image() -> Option<String> {
    match std::env::var("CONNTRACE_IMAGE") {
        Ok(i) if !i.is_empty() => Some(i),
        _ => {
            eprintln!(
                "skipped: CONNTRACE_IMAGE is not set (no image built: run `sudo cargo xtask test`, which builds it with `cargo xtask image`; the kernel matrix's guests have no container runtime of their own)"
            );
            None
        }
    }
}

fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .arg("--runtime=runc")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run podman")
}

/// A container removed on drop.
struct Remove(String);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", &self.0]);
    }
}

#[test]
fn the_image_runs_as_the_daemonset_and_names_the_hosts_incident() {
    let Some(image) = image() else {
        return;
    };
    require_root();
    let mut run = vec!["run", "--rm"];
    run.extend_from_slice(AS_THE_DAEMONSET);
    run.extend_from_slice(&[&image, "check"]);
    let check = podman(&run);
    let said = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "check in the container: {said}");
    assert!(said.contains("ok conntrace runs on this kernel"), "{said}");

    let name = tests::unique("ctimg");
    let mut watch = vec!["run", "--detach", "--name", &name];
    watch.extend_from_slice(AS_THE_DAEMONSET);
    watch.extend_from_slice(&[&image, "watch", "--json"]);
    let started = podman(&watch);
    assert!(
        started.status.success(),
        "watch in the container: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    // Removed even if the test fails below.
    let _container = Remove(name.clone());
    // The programs attach within a second or two (more in a slow guest).
    std::thread::sleep(std::time::Duration::from_secs(3));
    let lab = Command::new(conntrace_bin())
        .args(["lab", "refused"])
        .output()
        .expect("lab");
    let lab_out = String::from_utf8_lossy(&lab.stdout).into_owned();
    let pid: u64 = lab_out
        .lines()
        .find_map(|l| l.strip_prefix("lab: result "))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("pid=")))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("lab result line: {lab_out}"));
    std::thread::sleep(std::time::Duration::from_secs(2));
    let _ = podman(&["stop", "--time", "5", &name]);
    let logs = podman(&["logs", &name]);
    let lines = String::from_utf8_lossy(&logs.stdout).into_owned();
    let findings: Vec<Value> = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("finding").cloned())
        .collect();
    let refused = findings
        .iter()
        .rev()
        .find(|f| f["kind"] == "connection-refused" && f["process"]["pid"] == pid)
        .unwrap_or_else(|| {
            panic!(
                "the container names the host's refused connects (pid {pid}):\n{lines}\n{}",
                String::from_utf8_lossy(&logs.stderr)
            )
        });
    assert_eq!(refused["count"], 5, "{refused:#}");
    assert_eq!(refused["process"]["comm"], "lab-client");
    assert!(
        refused["process"]["cgroup"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "the host process's cgroup: {refused:#}"
    );
}
