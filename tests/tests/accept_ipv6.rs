//! Accepted connections are attributed to the process that accepted them, and IPv6
//! addresses come out right. The listener belongs to one process and a forked
//! worker accepts and closes (as prefork servers do): by default (no system-call
//! hooks) the worker's close names it, and the connection is one record; with
//! `--syscall-hooks --every-transition` accept() names it at once.

use std::{io::Write as _, net::TcpStream};

use tests::{is_transition, Python, Recorder};
use tracer::event::{EventKind, TcpState};

const SERVER: &str = r"
import os, socket
s = socket.socket(socket.AF_INET6)
s.bind(('::1', 0)); s.listen(4)
print(s.getsockname()[1], flush=True)
child = os.fork()
if child == 0:
    c, _ = s.accept()
    c.recv(100)
    c.close()
    print(os.getpid(), flush=True)
    os._exit(0)
os.waitpid(child, 0)
print('done', flush=True)
";

struct Run {
    recording: tests::Recording,
    port: u16,
    client_port: u16,
    listener_pid: u32,
    worker_pid: u32,
}

fn run(flags: &[&str]) -> Run {
    let rec = Recorder::start(flags);
    let mut server = Python::spawn(None, SERVER, &[]);
    let port: u16 = server.line().parse().expect("port");
    let mut stream = TcpStream::connect(("::1", port)).expect("connect");
    let client_port = stream.local_addr().expect("addr").port();
    stream.write_all(b"hi").expect("write");
    let worker_pid: u32 = server.line().parse().expect("worker pid");
    drop(stream);
    assert_eq!(server.line(), "done");
    let listener_pid = server.pid();
    server.wait();
    Run {
        recording: rec.stop(),
        port,
        client_port,
        listener_pid,
        worker_pid,
    }
}

/// Every event of the accepted socket from `from` on carries the worker, even those
/// raised in softirq context; the client's side carries this process.
fn check_owners(r: &Run, from: fn(&tracer::event::Event) -> bool) -> u64 {
    let on_server = r.recording.by_local_port(r.port);
    let close = on_server
        .iter()
        .find(|e| is_transition(e, "ESTABLISHED", "FIN_WAIT1"))
        .unwrap_or_else(|| panic!("no server close:\n{}", r.recording.dump(&on_server)));
    assert_eq!(close.local.to_string(), format!("[::1]:{}", r.port));
    assert_eq!(close.remote.to_string(), format!("[::1]:{}", r.client_port));
    let accepted: Vec<_> = on_server.iter().filter(|e| e.sock == close.sock).collect();
    assert!(accepted
        .iter()
        .any(|e| is_transition(e, "LISTEN", "SYN_RECV")));
    let start = accepted
        .iter()
        .position(|e| from(e))
        .expect("the first event checked");
    for e in &accepted[start..] {
        assert_eq!(
            e.pid, r.worker_pid,
            "{:?} is not the worker's (listener {})",
            e.kind, r.listener_pid
        );
        assert!(e.owner_known);
    }
    let client_side = r.recording.by_local_port(r.client_port);
    let connect = client_side
        .iter()
        .find(|e| is_transition(e, "SYN_SENT", "ESTABLISHED"))
        .unwrap_or_else(|| panic!("no client ESTABLISHED"));
    assert_eq!(connect.pid, std::process::id());
    assert_eq!(connect.remote.to_string(), format!("[::1]:{}", r.port));
    close.sock
}

#[test]
fn accepted_connection_is_one_record_owned_by_the_worker_that_closed_it() {
    let r = run(&[]);
    // Without the hooks the worker's close names it for the whole connection.
    let sock = check_owners(&r, |_| true);
    assert_ne!(r.worker_pid, r.listener_pid);
    // A short connection is one record from the listener to CLOSE with its totals;
    // should it outlast a read of the kernel's open sockets (a slow machine), the
    // steps already shown are not shipped twice: together they are the connection.
    // The same socket memory may serve a parallel test's connection: by 4-tuple too.
    let records: Vec<_> = r
        .recording
        .log
        .conns()
        .filter(|c| c.sock == sock && c.local.port() == r.port && c.remote.port() == r.client_port)
        .collect();
    assert!((1..=2).contains(&records.len()), "{records:#?}");
    let steps: Vec<(TcpState, TcpState)> = records
        .iter()
        .flat_map(|c| c.steps.iter().map(|s| (s.old, s.new)))
        .collect();
    assert_eq!(
        steps,
        [
            (TcpState::Listen, TcpState::SynRecv),
            (TcpState::SynRecv, TcpState::Established),
            (TcpState::Established, TcpState::FinWait1),
            (TcpState::FinWait1, TcpState::FinWait2),
            (TcpState::FinWait2, TcpState::Close)
        ],
        "{records:#?}"
    );
    let last = records.last().unwrap();
    assert!(records[..records.len() - 1]
        .iter()
        .all(|c| c.totals.is_none()));
    let totals = last.totals.expect("the last record has the totals");
    // Sequence space, as the kernel counts it: the client's "hi", and its FIN when
    // that came before the socket's end.
    assert!(
        (2..=3).contains(&totals.bytes_received),
        "the client's 'hi': {totals:?}"
    );
    assert!(
        !r.recording
            .events()
            .iter()
            .any(|e| matches!(e.kind, EventKind::Accept { .. })),
        "no accept events without the hooks"
    );
}

#[test]
fn with_the_hooks_accept_names_the_worker_at_once() {
    let r = run(&["--syscall-hooks", "--every-transition"]);
    // The transitions before accept() belong to the listener.
    check_owners(&r, |e| matches!(e.kind, EventKind::Accept { .. }));
    let on_server = r.recording.by_local_port(r.port);
    let accept = on_server
        .iter()
        .find(|e| matches!(e.kind, EventKind::Accept { .. }))
        .unwrap_or_else(|| panic!("no accept:\n{}", r.recording.dump(&on_server)));
    assert_eq!(accept.pid, r.worker_pid);
    assert_eq!(accept.local.to_string(), format!("[::1]:{}", r.port));
    assert_eq!(
        r.recording.log.conns().count(),
        0,
        "--every-transition writes no connection records"
    );
}
