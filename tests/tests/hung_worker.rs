//! Issue 15: workers waiting forever on a peer that vanished after acknowledging
//! their requests. Nothing is outstanding, so the kernel raises no event; conntrace's
//! inspection of the open sockets (`--await-after 3s` here) names them — also in the
//! common shape (issue 20) where each request leaves in the same clock tick as the
//! previous answer. In the same recording, connections that are not waiting do not
//! raise it: an idle pooled connection (the peer answered last), a long-poll that
//! keeps receiving data, and the server's own sockets; keepalive ranks a wait by when
//! its probes end it (the kernel's 2 h default: a hang; 20 s + 3 x 5 s: info).

use serde_json::Value;
use tests::{evidence_u64, findings_for, Python, Recorder, VethPair};

/// The database in namespace b: answers three statements, then takes a query and
/// never answers it (ports 5432, 5433, 5434).
const DATABASE: &str = r"
import socket, threading, time
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('0.0.0.0', port)); s.listen(8)
    held = []
    while True:
        c, _ = s.accept()
        for _ in range(3):
            c.recv(100); c.sendall(b'OK')
        c.recv(100); held.append(c)
for p in (5432, 5433, 5434):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
print('listening')
time.sleep(60)
";

/// The application in namespace a: three workers query the database as a worker
/// loop does (each statement sent the moment the previous answer arrived, in the
/// same clock tick); one with libpq's default keepalive (the kernel's 2 h idle) and
/// one with short keepalive timers; an idle pooled connection and a long-poll talk to
/// a local service.
const APP: &str = r"
import socket, threading, time
def local_service():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('127.0.0.1', 7000)); s.listen(8)
    def one(c):
        req = c.recv(100)
        if req == b'ping':
            c.sendall(b'pong'); time.sleep(60)
        else:
            for _ in range(30):
                c.sendall(b'tick'); time.sleep(1)
    while True:
        c, _ = s.accept()
        threading.Thread(target=one, args=(c,), daemon=True).start()
threading.Thread(target=local_service, daemon=True).start()
time.sleep(0.2)
held = []
def query(port, keepalive=None):
    c = socket.create_connection(('192.0.2.2', port))
    if keepalive is not None:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if keepalive:
            idle, intvl, cnt = keepalive
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, intvl)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, cnt)
    for stmt in (b'BEGIN', b'UPDATE a', b'UPDATE b'):
        c.sendall(stmt); c.recv(100)
    c.sendall(b'SELECT * FROM orders FOR UPDATE')
    held.append(c)
for _ in range(3):
    query(5432)
query(5433, ())
query(5434, (20, 5, 3))
pooled = socket.create_connection(('127.0.0.1', 7000))
pooled.sendall(b'ping'); pooled.recv(100)
poll = socket.create_connection(('127.0.0.1', 7000))
poll.sendall(b'poll'); poll.recv(100)
def keep_reading():
    while poll.recv(100):
        pass
threading.Thread(target=keep_reading, daemon=True).start()
print('ready', flush=True)
time.sleep(60)
";

fn one<'a>(report: &'a [Value], endpoint: &str) -> &'a Value {
    let found = findings_for(report, "awaiting-reply", endpoint);
    assert_eq!(
        found.len(),
        1,
        "one awaiting-reply for {endpoint}:\n{report:#?}"
    );
    found[0]
}

#[test]
fn workers_waiting_on_a_vanished_peer_are_named_and_nothing_else_is() {
    let pair = VethPair::new();
    let rec = Recorder::start(&["--await-after", "3s"]);
    let mut db = Python::spawn(Some(&pair.b.name), DATABASE, &[]);
    assert_eq!(db.line(), "listening");
    let mut app = Python::spawn(Some(&pair.a.name), APP, &[]);
    assert_eq!(app.line(), "ready");
    // The database's node goes away after acknowledging every query.
    std::thread::sleep(std::time::Duration::from_millis(300));
    pair.b.exec(&["ip", "link", "set", &pair.link_b, "down"]);
    // Inspections run every 2 s; waits pass 3 s about 3.3 s in.
    std::thread::sleep(std::time::Duration::from_secs(8));
    let recording = rec.stop();
    let app_pid = app.pid();
    drop(app);
    drop(db);

    let report = recording.replayed_report();
    let hung = one(&report, "192.0.2.2:5432");
    assert_eq!(hung["severity"], "critical", "{hung:#}");
    assert_eq!(hung["count"], 3);
    assert_eq!(hung["process"]["pid"], app_pid);
    assert_eq!(hung["evidence"]["silent_together"], 3);
    assert_eq!(hung["evidence"]["keepalive"], false);
    assert!(
        hung["evidence"]["waiting_ms"].as_u64() >= Some(3000),
        "{hung:#}"
    );
    // Keepalive with the kernel's defaults ends the wait only after 2 h 11 min:
    // a hang, ranked as one (a lone wait: warning), with when it would end.
    let default_keepalive = one(&report, "192.0.2.2:5433");
    assert_eq!(
        default_keepalive["severity"], "warning",
        "{default_keepalive:#}"
    );
    assert_eq!(default_keepalive["evidence"]["keepalive"], true);
    assert_eq!(
        default_keepalive["evidence"]["keepalive_idle_ms"],
        7_200_000
    );
    assert_eq!(
        default_keepalive["evidence"]["keepalive_settings_from"],
        "socket"
    );
    let ends = evidence_u64(default_keepalive, "keepalive_ends_in_ms");
    assert!(
        (7_860_000..=7_875_000).contains(&ends),
        "7200 s + 9 x 75 s less the wait: {ends}"
    );
    // Short timers end it within a minute: the probes will settle it.
    let short = one(&report, "192.0.2.2:5434");
    assert_eq!(short["severity"], "info", "{short:#}");
    assert_eq!(short["evidence"]["keepalive_idle_ms"], 20_000);
    assert_eq!(short["evidence"]["keepalive_probes"], 3);
    assert!(
        short["evidence"]["keepalive_ends_in_ms"].as_u64() <= Some(35_000),
        "{short:#}"
    );
    let others: Vec<&Value> = report
        .iter()
        .filter(|f| f["kind"] == "awaiting-reply")
        .filter(|f| {
            !f["endpoint"]
                .as_str()
                .is_some_and(|e| e.starts_with("192.0.2.2:"))
        })
        .collect();
    assert!(
        others.is_empty(),
        "the idle pooled connection, the long-poll and the servers are not waiting: {others:#?}"
    );
}
