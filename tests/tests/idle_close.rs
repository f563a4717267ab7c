//! A server that goes quiet and closes an idle keep-alive connection after 1.5 s:
//! the client's ESTABLISHED -> CLOSE_WAIT carries the idle time and says the peer
//! closed first; the server's ESTABLISHED -> FIN_WAIT1 says it closed locally.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    time::Duration,
};

use tests::{Python, Recorder};
use tracer::event::{Closer, EventKind};

const CLIENT: &str = r"
s.sendall(b'GET / HTTP/1.1\r\n\r\n')
s.recv(100)
while s.recv(100):
    pass
s.close()
";

fn client() -> String {
    tests::python_client("'127.0.0.1'", "int(sys.argv[1])", 30, None, CLIENT)
}

/// A transition's idle time and who closed first.
fn idle_and_closer(e: &tracer::event::Event) -> (u64, Option<Closer>) {
    match e.kind {
        EventKind::State {
            idle_ms, closed_by, ..
        } => (idle_ms, closed_by),
        _ => unreachable!("a transition"),
    }
}

#[test]
fn idle_close_after_1500ms_is_measured_to_the_tick() {
    let rec = Recorder::start(&[]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut client = Python::spawn(None, &client(), &[&port.to_string()]);
    let (mut conn, _) = listener.accept().expect("accept");
    let client_port: u16 = client.line().parse().expect("port");
    let mut buf = [0u8; 64];
    let _ = conn.read(&mut buf).expect("request");
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .expect("response");
    std::thread::sleep(Duration::from_millis(1500));
    drop(conn);
    let client_pid = client.pid();
    client.wait();
    let recording = rec.stop();

    let tick = recording.tick_ms();
    let close_wait = recording.transition(client_port, None, "ESTABLISHED", "CLOSE_WAIT");
    let (idle_ms, closed_by) = idle_and_closer(close_wait);
    // Exact to the jiffies from below; later by this thread's wake-up from its sleep
    // (up to ~16 ms in a 2-CPU TCG guest of the kernel matrix).
    assert!(
        idle_ms + 2 * tick >= 1500 && idle_ms <= 1500 + 2 * tick + 50,
        "client idle {idle_ms} ms, expected 1500 ms (- {} ms, + {} ms and 50 ms wake-up)",
        2 * tick,
        2 * tick
    );
    assert_eq!(closed_by, Some(Closer::Peer));
    assert_eq!(
        close_wait.pid, client_pid,
        "owner is the connecting process"
    );
    assert!(close_wait.owner_known);
    assert_eq!(close_wait.remote.port(), port);

    let fin_wait = recording.transition(port, Some(client_port), "ESTABLISHED", "FIN_WAIT1");
    let (idle_ms, closed_by) = idle_and_closer(fin_wait);
    assert!(
        idle_ms + 2 * tick >= 1500 && idle_ms <= 1500 + 2 * tick + 50,
        "server idle {idle_ms} ms"
    );
    assert_eq!(closed_by, Some(Closer::Local));
    assert_eq!(
        fin_wait.pid,
        std::process::id(),
        "owner is the accepting process"
    );
}
