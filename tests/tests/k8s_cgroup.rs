//! A process placed in a real cgroup with kubelet-style naming (systemd driver,
//! containerd) makes connections; the log's cgroup record and the findings carry
//! its pod UID and container id, and the pod's name from a Kubernetes API (a local
//! server answering in the API's format).

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    path::PathBuf,
};

use tests::{findings_for, Python, Recorder};

/// A cgroup v2 hierarchy `kubepods.slice/.../cri-containerd-<id>.scope`, removed on drop.
struct KubeCgroup {
    dirs: Vec<PathBuf>,
    pod_uid: String,
    container_id: String,
}

impl KubeCgroup {
    fn new() -> Self {
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists())
            .expect("a cgroup2 mount");
        let n = std::process::id();
        let pod_uid = format!("{n:08x}-1b2c-4d3e-8f40-a1b2c3d4e5f6");
        let container_id = format!("{n:08x}{}", "c0ffee".repeat(9))
            .chars()
            .take(64)
            .collect::<String>();
        let uid_ = pod_uid.replace('-', "_");
        let names = [
            "kubepods.slice".to_owned(),
            "kubepods-burstable.slice".to_owned(),
            format!("kubepods-burstable-pod{uid_}.slice"),
            format!("cri-containerd-{container_id}.scope"),
        ];
        let mut dirs = Vec::new();
        let mut dir = root;
        for name in names {
            dir = dir.join(name);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                dirs.push(dir.clone());
            }
        }
        Self {
            dirs,
            pod_uid,
            container_id,
        }
    }

    fn leaf(&self) -> PathBuf {
        self.dirs.last().cloned().expect("leaf")
    }
}

impl Drop for KubeCgroup {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

const CLIENT: &str = r"
import socket, sys
sys.stdin.readline()
for _ in range(3):
    s = socket.socket()
    try:
        s.connect(('127.0.0.1', int(sys.argv[1])))
    except OSError:
        pass
print('done')
";

/// Answers every request with a `PodList` holding `uid` as `shop/web-0`.
fn fake_api(uid: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let body = format!(
        r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"1"}},"items":[{{"metadata":{{"name":"web-0","namespace":"shop","uid":"{uid}"}},"spec":{{"nodeName":"node-1"}},"status":{{"phase":"Running","qosClass":"Burstable"}}}}]}}"#
    );
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    base
}

#[test]
fn connections_from_a_kubelet_cgroup_carry_pod_and_container() {
    let cg = KubeCgroup::new();
    let api = fake_api(&cg.pod_uid);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let rec = Recorder::start_env(
        &[],
        &[
            ("NODE_NAME", "node-1"),
            ("CONNTRACE_KUBE_API", api.as_str()),
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut client = Python::spawn(None, CLIENT, &[&port.to_string()]);
    std::fs::write(cg.leaf().join("cgroup.procs"), client.pid().to_string())
        .expect("move the client into the pod cgroup");
    client.send("go");
    assert_eq!(client.line(), "done");
    let pid = client.pid();
    client.wait();
    let recording = rec.stop();

    let record = recording
        .log
        .records
        .iter()
        .find_map(|r| match r {
            tracer::event::Record::Cgroup(c)
                if c.container.pod_uid.as_deref() == Some(cg.pod_uid.as_str()) =>
            {
                Some(c.clone())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no cgroup record for the pod"));
    assert_eq!(
        record.container.container_id.as_deref(),
        Some(cg.container_id.as_str())
    );
    assert_eq!(record.container.runtime.as_deref(), Some("containerd"));
    assert_eq!(record.container.qos.as_deref(), Some("burstable"));
    assert!(
        recording
            .events()
            .iter()
            .any(|e| e.pid == pid && e.cgroup == record.id),
        "events carry the cgroup id"
    );

    let report = recording.report_json();
    let refused = findings_for(&report, "connection-refused", &format!("127.0.0.1:{port}"));
    assert_eq!(refused.len(), 1, "{report:#?}");
    assert_eq!(refused[0]["process"]["pid"], pid);
    assert_eq!(
        refused[0]["process"]["pod"], "shop/web-0",
        "named by the API"
    );
    assert!(recording
        .log
        .records
        .iter()
        .any(|r| matches!(r, tracer::event::Record::Pod(p) if p.uid == cg.pod_uid)));
    assert_eq!(refused[0]["process"]["container"], cg.container_id.as_str());
}
