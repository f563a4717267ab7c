//! Issue 16: a peer vanishes (its address is removed in its namespace, so nothing
//! answers, not even a reset). One client gives up: it closes its socket and exits,
//! leaving an orphan that retransmits its close — nobody waits on it. Another process,
//! a worker, stays blocked on the same peer with its request unanswered. In one
//! recording: the worker is a critical `stalled-peer` naming it; the orphan is an
//! informational one with no process, naming who closed it; nothing critical names the
//! client that exited.

use serde_json::Value;
use tests::{findings_for, summary_has, Python, Recorder, VethPair};

const SERVER: &str = r"
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 9000)); s.listen(4)
print('listening')
held = []
for _ in range(2):
    c, _ = s.accept(); c.recv(100); held.append(c)
print('accepted')
time.sleep(60)
";

/// Sends its request when told, then either gives up after 0.5 s (closes and exits)
/// or waits for the answer (argv[1] == 'wait') until the test stops it.
const CLIENT: &str = r"
sys.stdin.readline()
s.sendall(b'x' * 1000)
if sys.argv[1] == 'wait':
    print('waiting')
    try:
        s.recv(100)
    except OSError:
        pass
    time.sleep(60)
else:
    time.sleep(0.5)
    s.close()
    print('gave up')
";

fn client() -> String {
    tests::python_client("'192.0.2.2'", "9000", 30, Some("hello"), CLIENT)
}

fn stalled(report: &[Value]) -> Vec<&Value> {
    findings_for(report, "stalled-peer", "192.0.2.2:9000")
}

#[test]
fn an_orphan_retransmitting_its_close_is_info_and_a_blocked_worker_critical() {
    let pair = VethPair::new();
    let rec = Recorder::start(&[]);
    let mut server = Python::spawn(Some(&pair.b.name), SERVER, &[]);
    assert_eq!(server.line(), "listening");
    let mut quitter = Python::spawn(Some(&pair.a.name), &client(), &["quit"]);
    let _ = quitter.line();
    let mut worker = Python::spawn(Some(&pair.a.name), &client(), &["wait"]);
    let _ = worker.line();
    assert_eq!(server.line(), "accepted");
    // The peer vanishes: its address is gone, segments to it are dropped unanswered.
    pair.b.exec(&[
        "ip",
        "addr",
        "del",
        &format!("{}/24", VethPair::ADDR_B),
        "dev",
        &pair.link_b,
    ]);
    let (quitter_pid, worker_pid) = (quitter.pid(), worker.pid());
    quitter.send("go");
    worker.send("go");
    assert_eq!(worker.line(), "waiting");
    assert_eq!(quitter.line(), "gave up");
    quitter.wait();
    // Retransmits back off 0.2, 0.4, 0.8, 1.6, 3.2 s: by 7 s both sockets have been
    // retransmitting with no ACK for more than the 3 s stall threshold.
    std::thread::sleep(std::time::Duration::from_secs(7));
    let recording = rec.stop();
    drop(worker);
    drop(server);

    let report = recording.report_json();
    let found = stalled(&report);
    let critical: Vec<_> = found
        .iter()
        .filter(|f| f["severity"] == "critical")
        .collect();
    assert_eq!(
        critical.len(),
        1,
        "only the worker is critical:\n{report:#?}"
    );
    assert_eq!(critical[0]["process"]["pid"], worker_pid);
    assert_eq!(critical[0]["count"], 1);
    let orphans: Vec<_> = found.iter().filter(|f| f["severity"] == "info").collect();
    assert_eq!(orphans.len(), 1, "one orphan group:\n{report:#?}");
    let o = orphans[0];
    assert!(o["process"].is_null(), "nobody holds an orphan: {o:#}");
    assert_eq!(o["count"], 1);
    assert_eq!(o["evidence"]["orphaned"], true);
    assert!(o["evidence"]["no_ack_ms"].as_u64() >= Some(3000), "{o:#}");
    assert_eq!(
        o["evidence"]["closed_by"][0],
        format!("python3 (pid {quitter_pid})")
    );
    summary_has(o, "nobody waits on it");
    assert!(
        report
            .iter()
            .filter(|f| f["severity"] == "critical")
            .all(|f| f["process"]["pid"] != quitter_pid),
        "nothing critical names the client that exited:\n{report:#?}"
    );
}
