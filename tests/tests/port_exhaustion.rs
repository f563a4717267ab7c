//! EADDRNOTAVAIL from connect() when the ephemeral port range is exhausted, in a
//! network namespace with a three-port `ip_local_port_range`: from the connect()
//! system-call hooks, and inferred by the state tracker with `--no-syscall-hooks`.

use tests::{Netns, Python, Recorder};
use tracer::event::EventKind;

const CLIENT: &str = r"
import socket, errno
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('127.0.0.1', 8080)); srv.listen(64)
held = []
for i in range(10):
    s = socket.socket()
    try:
        s.connect(('127.0.0.1', 8080))
        held.append(s)
    except OSError as e:
        print(len(held), errno.errorcode[e.errno])
        break
else:
    print(len(held), 'none')
";

#[test]
fn exhausted_port_range_gives_eaddrnotavail_with_the_destination() {
    exhaust(&[]);
}

#[test]
fn without_syscall_hooks_eaddrnotavail_is_inferred_once() {
    exhaust(&["--no-syscall-hooks"]);
}

fn exhaust(flags: &[&str]) {
    let ns = Netns::new();
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40002");
    let rec = Recorder::start(flags);
    let mut client = Python::spawn(Some(&ns.name), CLIENT, &[]);
    let line = client.line();
    let pid = client.pid();
    client.wait();
    let recording = rec.stop();
    let (held, err) = line.split_once(' ').expect("count and errno");
    assert_eq!(err, "EADDRNOTAVAIL", "the client saw the range run out");
    let held: usize = held.parse().expect("count");
    assert!(
        (1..=3).contains(&held),
        "{held} connections before exhaustion"
    );

    let errors: Vec<_> = recording
        .events()
        .into_iter()
        .filter(|e| e.pid == pid && matches!(e.kind, EventKind::Connect { .. }))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "one failed connect:\n{}",
        recording.dump(&errors)
    );
    let EventKind::Connect { errno, .. } = &errors[0].kind else {
        unreachable!()
    };
    assert_eq!(errno.name(), "EADDRNOTAVAIL");
    assert_eq!(errors[0].remote.to_string(), "127.0.0.1:8080");
    // The connections that did succeed used ports of the range (the kernel may skip
    // one for port parity), one each.
    let mut ports: Vec<u16> = recording
        .events()
        .into_iter()
        .filter(|e| {
            e.pid == pid
                && e.remote.port() == 8080
                && tests::is_transition(e, "SYN_SENT", "ESTABLISHED")
        })
        .map(|e| e.local.port())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), held, "one port per held connection: {ports:?}");
    assert!(
        ports.iter().all(|p| (40000..=40002).contains(p)),
        "{ports:?}"
    );
}
