//! connect() to a port with no listener: ECONNREFUSED for the client's pid, and the
//! reset the node sent for it with its kernel reason (NO_SOCKET). Before Linux 6.10
//! the kernel does not trace resets sent for no socket: the recording says so, and
//! the test checks that no such reset is invented.

use std::net::TcpListener;

use tests::{Python, Recorder};
use tracer::event::EventKind;

const CLIENT: &str = r"
import socket, sys, errno
s = socket.socket()
try:
    s.connect(('127.0.0.1', int(sys.argv[1])))
    print('connected')
except OSError as e:
    print(s.getsockname()[1], errno.errorcode[e.errno])
";

/// The refused connect as a finding: the engine names the client and the errno,
/// with and without the system-call hooks (where connect() itself returns it).
#[test]
fn refused_connect_is_a_connection_refused_finding_either_way() {
    for flags in [&[][..], &["--syscall-hooks"][..]] {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let rec = Recorder::start(flags);
        let client = Python::spawn(None, CLIENT, &[&port.to_string()]);
        let pid = client.pid();
        client.wait();
        let recording = rec.stop();
        let report = recording.report_json();
        let found = report.iter().any(|f| {
            f["kind"] == "connection-refused"
                && f["process"]["pid"] == pid
                && f["endpoint"] == format!("127.0.0.1:{port}")
        });
        assert!(found, "{flags:?}: {report:#?}");
    }
}

#[test]
fn refused_connect_is_an_econnrefused_for_the_client_and_a_no_socket_reset() {
    // A port that was just free: bind, note it, release it.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let rec = Recorder::start(&[]);
    let mut client = Python::spawn(None, CLIENT, &[&port.to_string()]);
    let line = client.line();
    let (pid, comm) = (client.pid(), client.comm());
    client.wait();
    let recording = rec.stop();
    let (client_port, err) = line.split_once(' ').expect("port and errno");
    assert_eq!(err, "ECONNREFUSED");
    let client_port: u16 = client_port.parse().expect("port");

    // By default the refusal is the socket's error (reported by the kernel as the
    // reset closes it); with --syscall-hooks connect() returns it (see below).
    let connect = recording
        .events()
        .into_iter()
        .find(|e| {
            e.pid == pid && matches!(e.kind, EventKind::Connect { .. } | EventKind::Error { .. })
        })
        .unwrap_or_else(|| panic!("no connect error:\n{}", recording.dump(&recording.events())));
    let (EventKind::Connect { errno, .. } | EventKind::Error { errno, .. }) = &connect.kind else {
        unreachable!()
    };
    assert_eq!(errno.name(), "ECONNREFUSED");
    assert_eq!(connect.remote.port(), port);
    assert_eq!(connect.comm, comm);

    let Some(reset) = recording.reset_sent_for_no_full_socket(port, client_port) else {
        return;
    };
    let EventKind::Reset {
        reason, state, syn, ..
    } = &reset.kind
    else {
        unreachable!()
    };
    assert_eq!(reason.as_deref(), Some("NO_SOCKET"));
    assert_eq!(*state, None, "no socket owned the port");
    assert!(*syn, "the reset answered the client's SYN");
}
