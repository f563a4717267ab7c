//! A connection opened before conntrace started has no known owner. Its transitions
//! raised in softirq (the peer's FIN) run on whichever task the interrupt landed on —
//! on loopback often the peer process closing its end — so the kernel programs never
//! take an owner from them. What a transition is attributed to is the socket's
//! owner as known when it is shipped:
//! - a peer FIN after idling ships at once, before any system call of ours on the
//!   socket: it names nobody (pid 0);
//! - a prompt peer FIN waits in the socket's record until our close(), whose task
//!   names the socket (owner learned from a task, `owner_known: false`), and the
//!   record carries that owner for every step — the client, its true holder.
//!
//! Either way no event of the client's socket names the server process.

use std::{io::Read as _, net::TcpStream, time::Duration};

use tests::{is_transition, Python, Recorder, Recording};

const SERVER: &str = r"
import socket, sys
s = socket.socket()
s.bind(('127.0.0.1', 0)); s.listen(4)
print(s.getsockname()[1])
c, _ = s.accept()
cmd = sys.stdin.readline().strip()
if cmd == 'prompt':
    c.sendall(b'x')
c.close()
print('closed')
sys.stdin.readline()
";

/// A client connected before the trace; the server closes (after sending a byte
/// when `prompt`), the client reads EOF and closes. Returns the recording, our
/// client's local port, and the server's pid and port.
fn run(prompt: bool) -> (Recording, u16, u32, u16) {
    tests::require_root();
    let mut server = Python::spawn(None, SERVER, &[]);
    let port: u16 = server.line().parse().expect("port");
    // Connected before the trace: conntrace never saw connect() or accept().
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let client_port = stream.local_addr().expect("addr").port();
    let rec = Recorder::start(&[]);
    if !prompt {
        // Idle well past the quarter second after which a peer FIN ships at once.
        std::thread::sleep(Duration::from_millis(600));
    }
    server.send(if prompt { "prompt" } else { "idle" });
    assert_eq!(server.line(), "closed");
    let mut buf = [0u8; 16];
    while stream.read(&mut buf).expect("read to EOF") != 0 {}
    drop(stream);
    let server_pid = server.pid();
    server.send("exit");
    server.wait();
    (rec.stop(), client_port, server_pid, port)
}

fn check_server_never_named(recording: &Recording, client_port: u16, server_pid: u32) {
    let client = recording.by_local_port(client_port);
    assert!(
        client.iter().all(|e| e.pid != server_pid),
        "an event of the client's socket names the server process:\n{}",
        recording.dump(&client)
    );
    let our_close = client
        .iter()
        .find(|e| is_transition(e, "CLOSE_WAIT", "LAST_ACK"))
        .unwrap_or_else(|| panic!("no CLOSE_WAIT -> LAST_ACK:\n{}", recording.dump(&client)));
    assert_eq!(
        our_close.pid,
        std::process::id(),
        "close() runs in our task:\n{}",
        recording.dump(&client)
    );
}

fn check_server_close_is_its_own(recording: &Recording, port: u16, server_pid: u32) {
    let server_side = recording.by_local_port(port);
    let active_close = server_side
        .iter()
        .find(|e| is_transition(e, "ESTABLISHED", "FIN_WAIT1"))
        .unwrap_or_else(|| panic!("no server FIN_WAIT1:\n{}", recording.dump(&server_side)));
    assert_eq!(active_close.pid, server_pid);
}

/// The client's ESTABLISHED -> CLOSE_WAIT, and the client's events for messages.
fn peer_fin(recording: &Recording, client_port: u16) -> (tracer::event::Event, String) {
    let client = recording.by_local_port(client_port);
    let dump = recording.dump(&client);
    let fin = client
        .iter()
        .find(|e| is_transition(e, "ESTABLISHED", "CLOSE_WAIT"))
        .map_or_else(
            || panic!("no ESTABLISHED -> CLOSE_WAIT:\n{dump}"),
            |e| (*e).clone(),
        );
    (fin, dump)
}

#[test]
fn a_peer_fin_after_idling_names_nobody() {
    let (recording, client_port, server_pid, port) = run(false);
    let (peer_fin, dump) = peer_fin(&recording, client_port);
    assert!(!peer_fin.owner_known, "{dump}");
    assert_eq!(
        (peer_fin.pid, peer_fin.comm.as_str()),
        (0, ""),
        "shipped at once, before any system call of ours named the socket:\n{dump}"
    );
    check_server_never_named(&recording, client_port, server_pid);
    check_server_close_is_its_own(&recording, port, server_pid);
}

#[test]
fn a_prompt_peer_fin_names_the_socket_holder_learned_at_its_close() {
    let (recording, client_port, server_pid, port) = run(true);
    let (peer_fin, dump) = peer_fin(&recording, client_port);
    assert!(
        !peer_fin.owner_known,
        "learned from a task, not from connect():\n{dump}"
    );
    assert_eq!(
        peer_fin.pid,
        std::process::id(),
        "the record carries the owner its close() named (ours, the client's):\n{dump}"
    );
    check_server_never_named(&recording, client_port, server_pid);
    check_server_close_is_its_own(&recording, port, server_pid);
}
