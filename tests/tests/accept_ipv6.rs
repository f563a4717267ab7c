//! Accepted connections are attributed to the accepting process, and IPv6 addresses
//! come out right.

use std::{io::Write as _, net::TcpStream};

use tests::{is_transition, Python, Recorder};
use tracer::event::EventKind;

const SERVER: &str = r"
import socket
s = socket.socket(socket.AF_INET6)
s.bind(('::1', 0)); s.listen(4)
print(s.getsockname()[1])
c, _ = s.accept()
c.recv(100)
c.close()
print('done')
";

#[test]
fn accepted_ipv6_connection_belongs_to_the_accepting_process() {
    let rec = Recorder::start(&[]);
    let mut server = Python::spawn(None, SERVER, &[]);
    let port: u16 = server.line().parse().expect("port");
    let mut stream = TcpStream::connect(("::1", port)).expect("connect");
    let client_port = stream.local_addr().expect("addr").port();
    stream.write_all(b"hi").expect("write");
    assert_eq!(server.line(), "done");
    let (pid, comm) = (server.pid(), server.comm());
    server.wait();
    drop(stream);
    let recording = rec.stop();

    let on_server = recording.by_local_port(port);
    let accept = on_server
        .iter()
        .find(|e| matches!(e.kind, EventKind::Accept { .. }))
        .unwrap_or_else(|| panic!("no accept:\n{}", recording.dump(&on_server)));
    assert_eq!(accept.pid, pid);
    assert_eq!(accept.comm, comm);
    assert_eq!(accept.local.to_string(), format!("[::1]:{port}"));
    assert_eq!(accept.remote.to_string(), format!("[::1]:{client_port}"));

    // Every later event of the accepted socket carries the accepting process, even
    // those raised in softirq context.
    let later: Vec<_> = on_server.iter().filter(|e| e.sock == accept.sock).collect();
    assert!(later
        .iter()
        .any(|e| is_transition(e, "ESTABLISHED", "FIN_WAIT1")));
    for e in later {
        assert_eq!(e.pid, pid, "event {:?}", e.kind);
    }
    let client_side = recording.by_local_port(client_port);
    let connect = client_side
        .iter()
        .find(|e| is_transition(e, "SYN_SENT", "ESTABLISHED"))
        .unwrap_or_else(|| panic!("no client ESTABLISHED"));
    assert_eq!(connect.pid, std::process::id());
    assert_eq!(connect.remote.to_string(), format!("[::1]:{port}"));
}
