//! Incident 5's own mechanism: a proxy that keeps a fixed source port (as a
//! transparent proxy keeps its client's) closed its previous connection to the
//! server first, so its own time-wait socket holds the 4-tuple for 60 s; the next
//! `connect()` from that port fails with EADDRNOTAVAIL although the port range is
//! nearly empty. Two namespaces (the proxy's, the server's). In the proxy's, TCP
//! timestamps are off, as with the many peers and middleboxes that do not keep them:
//! with timestamps on both ends the kernel lets a bound connect take its own
//! time-wait tuple over (`tcp_twsk_unique`), without them it refuses.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{FromRawFd as _, OwnedFd},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::{
    netns::{client_and_database, join},
    say, Outcome,
};

const SOURCE: &str = "192.0.2.1:45000";
const SERVER: &str = "192.0.2.2:8080";
/// Connects tried from the held tuple.
const ATTEMPTS: u64 = 3;

/// A connection from the fixed source address and port (`SO_REUSEADDR`, as proxies
/// set it, so bind() itself succeeds beside the time-wait socket).
fn bound_connect() -> io::Result<TcpStream> {
    let source: SocketAddr = SOURCE.parse().map_err(io::Error::other)?;
    let server: SocketAddr = SERVER.parse().map_err(io::Error::other)?;
    // SAFETY: plain socket(2); owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let one: libc::c_int = 1;
    let sin = |a: SocketAddr| -> libc::sockaddr_in {
        let SocketAddr::V4(v4) = a else {
            unreachable!("the lab's addresses are IPv4")
        };
        libc::sockaddr_in {
            sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        }
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap_or(16);
    let (src, dst) = (sin(source), sin(server));
    // SAFETY: valid option value and addresses for the calls.
    unsafe {
        if libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4),
        ) != 0
            || libc::bind(raw, (&raw const src).cast(), len) != 0
            || libc::connect(raw, (&raw const dst).cast(), len) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(TcpStream::from(fd))
}

pub fn run() -> Result<Outcome> {
    let name = "bound-port";
    let (a, b, _) = client_and_database("ctp")?;
    a.exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_timestamps=0"])?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = b.spawn("lab-server", move || {
        let listener = TcpListener::bind(SERVER)?;
        ready_tx.send(())?;
        let (mut conn, _) = listener.accept()?;
        let mut buf = [0u8; 256];
        let _ = conn.read(&mut buf)?;
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")?;
        // Until the proxy closes; then this side closes too (it never closes first).
        while conn.read(&mut buf)? > 0 {}
        Ok(())
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("lab server did not start")?;
    let failed = a
        .spawn("lab-proxy", move || {
            let mut first = bound_connect().context("the first connect from the bound port")?;
            first.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")?;
            let mut buf = [0u8; 256];
            let _ = first.read(&mut buf)?;
            // The proxy closes first: its side keeps the 4-tuple in TIME_WAIT.
            drop(first);
            std::thread::sleep(Duration::from_millis(300));
            let mut failed = 0;
            for _ in 0..ATTEMPTS {
                match bound_connect() {
                    Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => failed += 1,
                    Err(e) => return Err(e.into()),
                    Ok(_) => {}
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(failed)
        })
        .and_then(join)?;
    let _ = join(server);
    say(
        name,
        &format!("the proxy closed its connection {SOURCE} -> {SERVER} first; {failed} of {ATTEMPTS} connects from the same source port failed with EADDRNOTAVAIL (its own TIME_WAIT holds the 4-tuple for 60 s)"),
    );
    Ok(Outcome {
        endpoint: SERVER.to_owned(),
        count: failed,
    })
}
