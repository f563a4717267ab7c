//! A client that writes on a connection the server already closed (CLOSE_WAIT on the
//! client) gets a reset: recorded as received in CLOSE_WAIT, owned by the client
//! process, with the matching reset the server side sent and its reason.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
};

use tests::{Python, Recorder};
use tracer::event::{Direction, EventKind, TcpState};

const CLIENT: &str = r"
s.sendall(b'first')
s.recv(100)
sys.stdin.readline()
time.sleep(0.2)
try:
    s.sendall(b'reused after the server closed')
    time.sleep(0.2)
    s.sendall(b'again')
except OSError as e:
    pass
try:
    s.recv(100)
except OSError:
    pass
print('done')
";

fn client() -> String {
    tests::python_client("'127.0.0.1'", "int(sys.argv[1])", 30, None, CLIENT)
}

#[test]
fn write_in_close_wait_gets_a_reset_attributed_to_the_client() {
    let rec = Recorder::start(&[]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut client = Python::spawn(None, &client(), &[&port.to_string()]);
    let (mut conn, _) = listener.accept().expect("accept");
    let client_port: u16 = client.line().parse().expect("port");
    let mut buf = [0u8; 64];
    let _ = conn.read(&mut buf).expect("request");
    conn.write_all(b"reply").expect("reply");
    drop(conn);
    client.send("go");
    assert_eq!(client.line(), "done");
    let (pid, comm) = (client.pid(), client.comm());
    client.wait();
    let recording = rec.stop();

    let on_client = recording.by_local_port(client_port);
    let reset = on_client
        .iter()
        .find(|e| {
            matches!(
                e.kind,
                EventKind::Reset {
                    direction: Direction::Received,
                    ..
                }
            )
        })
        .unwrap_or_else(|| panic!("no reset received:\n{}", recording.dump(&on_client)));
    let EventKind::Reset { state, .. } = &reset.kind else {
        unreachable!()
    };
    assert_eq!(*state, Some(TcpState::CloseWait));
    assert_eq!(reset.pid, pid);
    assert_eq!(reset.comm, comm);
    assert!(reset.owner_known);

    // Before Linux 6.10 the server's time-wait socket answers untraced.
    let Some(sent) = recording.reset_sent_for_no_full_socket(port, client_port) else {
        return;
    };
    let EventKind::Reset { reason, .. } = &sent.kind else {
        unreachable!()
    };
    let reason = reason.as_deref().unwrap_or("");
    assert!(
        !reason.is_empty()
            && reason
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit()),
        "reason {reason:?}"
    );
}
