//! A connection opened before conntrace started has no known owner. Its events raised
//! in softirq (the peer's FIN, the final ACK) must not name whichever task the
//! interrupt landed on — on loopback that is the peer process — but nobody (pid 0);
//! its system-call transitions (close) name the process that made them.

use std::{io::Read as _, net::TcpStream};

use tests::{is_transition, Python, Recorder};

const SERVER: &str = r"
import socket, sys
s = socket.socket()
s.bind(('127.0.0.1', 0)); s.listen(4)
print(s.getsockname()[1])
c, _ = s.accept()
sys.stdin.readline()
c.close()
print('closed')
sys.stdin.readline()
";

#[test]
fn softirq_events_of_a_socket_older_than_the_trace_name_nobody() {
    tests::require_root();
    let mut server = Python::spawn(None, SERVER, &[]);
    let port: u16 = server.line().parse().expect("port");
    // Connected before the trace: conntrace never saw connect() or accept().
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let client_port = stream.local_addr().expect("addr").port();
    let rec = Recorder::start(&[]);
    server.send("close");
    assert_eq!(server.line(), "closed");
    // Wait for the server's FIN (EOF), then close our end.
    let mut buf = [0u8; 16];
    assert_eq!(stream.read(&mut buf).expect("read EOF"), 0);
    drop(stream);
    let server_pid = server.pid();
    server.send("exit");
    server.wait();
    let recording = rec.stop();

    let client = recording.by_local_port(client_port);
    let dump = recording.dump(&client);
    let peer_fin = client
        .iter()
        .find(|e| is_transition(e, "ESTABLISHED", "CLOSE_WAIT"))
        .unwrap_or_else(|| panic!("no ESTABLISHED -> CLOSE_WAIT:\n{dump}"));
    assert!(!peer_fin.owner_known, "{dump}");
    assert_eq!(
        (peer_fin.pid, peer_fin.comm.as_str()),
        (0, ""),
        "the peer's FIN arrives in softirq on the server's task; it must not be \
         attributed to it:\n{dump}"
    );
    let our_close = client
        .iter()
        .find(|e| is_transition(e, "CLOSE_WAIT", "LAST_ACK"))
        .unwrap_or_else(|| panic!("no CLOSE_WAIT -> LAST_ACK:\n{dump}"));
    assert_eq!(
        our_close.pid,
        std::process::id(),
        "close() runs in our task:\n{dump}"
    );
    assert!(
        client.iter().all(|e| e.pid != server_pid),
        "an event of the client's socket names the server process:\n{dump}"
    );

    let server_side = recording.by_local_port(port);
    let active_close = server_side
        .iter()
        .find(|e| is_transition(e, "ESTABLISHED", "FIN_WAIT1"))
        .unwrap_or_else(|| panic!("no server FIN_WAIT1:\n{}", recording.dump(&server_side)));
    assert_eq!(active_close.pid, server_pid);
}
