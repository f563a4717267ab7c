//! Two servers listen on the same port in two network namespaces, as pods do. A
//! connection accepted by each belongs to that server from its first (softirq) event:
//! listeners are known by namespace and port. Run with `--no-syscall-hooks`, where
//! no accept() hook corrects the owner later, so the inherited owner is all there is;
//! and a listener older than the trace, found in `/proc`.

use tests::{is_transition, Netns, Python, Recorder};

const SERVER: &str = r"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', 8080)); s.listen(4)
print('ready')
c, _ = s.accept()
c.recv(10)
c.close()
print('done')
";

const CLIENT: &str = r"
import socket, sys
c = socket.socket()
c.bind(('127.0.0.1', int(sys.argv[1])))
c.connect(('127.0.0.1', 8080))
c.sendall(b'hi')
c.recv(10)
c.close()
print('done')
";

#[test]
fn same_port_in_two_namespaces_keeps_each_servers_connections_apart() {
    let (ns_a, ns_b) = (Netns::new(), Netns::new());
    let rec = Recorder::start(&["--no-syscall-hooks"]);
    let mut servers = Vec::new();
    for (ns, client_port) in [(&ns_a, 41001u16), (&ns_b, 41002)] {
        let mut server = Python::spawn(Some(&ns.name), SERVER, &[]);
        assert_eq!(server.line(), "ready");
        servers.push((server, client_port));
    }
    // Both listeners exist before either connection: a port-only key would hand
    // the first namespace's connection to the second server.
    for ((_, client_port), ns) in servers.iter().zip([&ns_a, &ns_b]) {
        let port = client_port.to_string();
        let mut client = Python::spawn(Some(&ns.name), CLIENT, &[&port]);
        assert_eq!(client.line(), "done");
        client.wait();
    }
    let mut pids = Vec::new();
    for (mut server, client_port) in servers {
        assert_eq!(server.line(), "done");
        pids.push((server.pid(), server.comm(), client_port));
        server.wait();
    }
    let recording = rec.stop();

    for (pid, comm, client_port) in pids {
        assert_accepted_by(&recording, client_port, pid, &comm);
    }
}

/// The server side of the connection from `client_port` belongs to `pid`/`comm` from
/// its first event on.
fn assert_accepted_by(recording: &tests::Recording, client_port: u16, pid: u32, comm: &str) {
    let child: Vec<_> = recording
        .by_local_port(8080)
        .into_iter()
        .filter(|e| e.remote.port() == client_port)
        .collect();
    let dump = recording.dump(&child);
    let established = child
        .iter()
        .find(|e| is_transition(e, "SYN_RECV", "ESTABLISHED"))
        .unwrap_or_else(|| panic!("no accepted connection from :{client_port}:\n{dump}"));
    assert!(established.owner_known, "{dump}");
    assert_eq!(
        (established.pid, established.comm.as_str()),
        (pid, comm),
        "the connection from :{client_port} belongs to the server in its own namespace:\n{dump}"
    );
    assert!(
        child.iter().all(|e| e.pid == pid),
        "every event of that connection names its server:\n{dump}"
    );
}

/// A server listening before conntrace started (the usual incident): its listener is
/// found in `/proc` (in its own namespace), so even with `--no-syscall-hooks` the
/// connections it accepts belong to it from their first event.
#[test]
fn a_listener_older_than_the_trace_is_found_in_proc() {
    let ns = Netns::new();
    let mut server = Python::spawn(Some(&ns.name), SERVER, &[]);
    assert_eq!(server.line(), "ready");
    let rec = Recorder::start(&["--no-syscall-hooks"]);
    let mut client = Python::spawn(Some(&ns.name), CLIENT, &["41003"]);
    assert_eq!(client.line(), "done");
    client.wait();
    assert_eq!(server.line(), "done");
    let (pid, comm) = (server.pid(), server.comm());
    server.wait();
    let recording = rec.stop();
    assert_accepted_by(&recording, 41003, pid, &comm);
}
