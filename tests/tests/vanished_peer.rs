//! A peer that vanishes (its veth link goes down in its namespace) while the client
//! has data in flight: the client's retransmissions are recorded for that
//! connection, owned by the client process though they fire from a timer. (10 s: on
//! 5.10 the first retransmissions after the local carrier loss can fail in the kernel
//! and are never traced: in a 5.10 guest, 2 runs in 4 after the real-peers tests
//! retransmitted first at 3.4 s with 4 timeouts behind it, the socket's own count of
//! retransmits 1; the next comes 3.2 s later.)

use tests::{Python, Recorder, VethPair};
use tracer::event::EventKind;

const SERVER: &str = r"
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 9000)); s.listen(4)
print('listening')
c, _ = s.accept()
c.recv(100)
time.sleep(30)
";

const CLIENT: &str = r"
sys.stdin.readline()
s.sendall(b'x' * 1000)
time.sleep(10)
print('done')
";

fn client() -> String {
    tests::python_client("'192.0.2.2'", "9000", 5, Some("hello"), CLIENT)
}

#[test]
fn vanished_peer_shows_retransmits_for_the_connection() {
    let pair = VethPair::new();
    let rec = Recorder::start(&[]);
    let mut server = Python::spawn(Some(&pair.b.name), SERVER, &[]);
    assert_eq!(server.line(), "listening");
    let mut client = Python::spawn(Some(&pair.a.name), &client(), &[]);
    let client_port: u16 = client.line().parse().expect("port");
    pair.b.exec(&["ip", "link", "set", &pair.link_b, "down"]);
    client.send("go");
    assert_eq!(client.line(), "done");
    let pid = client.pid();
    drop(client);
    drop(server);
    let recording = rec.stop();

    let retransmits: Vec<_> = recording
        .by_local_port(client_port)
        .into_iter()
        .filter(|e| {
            e.remote.to_string() == "192.0.2.2:9000"
                && matches!(e.kind, EventKind::Retransmit { .. })
        })
        .collect();
    assert!(
        retransmits.len() >= 2,
        "expected repeated retransmits in 10 s:\n{}",
        recording.dump(&recording.by_local_port(client_port))
    );
    let counts: Vec<u8> = retransmits
        .iter()
        .map(|e| match e.kind {
            EventKind::Retransmit { rto_count, .. } => rto_count,
            _ => unreachable!(),
        })
        .collect();
    assert!(
        counts.windows(2).all(|w| w[1] > w[0]),
        "timeouts in a row grow: {counts:?}"
    );
    for e in &retransmits {
        assert_eq!(
            e.pid, pid,
            "retransmits are the client's, not the timer's task"
        );
        let EventKind::Retransmit {
            ack_idle_ms,
            keepalive,
            ..
        } = e.kind
        else {
            unreachable!()
        };
        assert!(!keepalive);
        assert!(ack_idle_ms < 15_000);
    }
    let EventKind::Retransmit { ack_idle_ms, .. } = retransmits[retransmits.len() - 1].kind else {
        unreachable!()
    };
    assert!(
        ack_idle_ms >= 500,
        "last ACK long ago by the last retransmit: {ack_idle_ms} ms"
    );
}
