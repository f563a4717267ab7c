//! Incident 1: a keep-alive server with a 2 s idle timeout (as uvicorn's 5 s) and a
//! connection pool that hands out connections the server already closed.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::{say, spawn, Outcome};

pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
const POOL: usize = 4;
const ROUNDS: usize = 3;
pub(super) const PAUSE: Duration = Duration::from_millis(2500);
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok";

/// Waits until `conn` is readable or `timeout` passes. poll(2) sleeps on a
/// high-resolution timer, as an event loop's keep-alive timer does (SO_RCVTIMEO would
/// round 2 s up to the timer wheel's 32 ms granularity).
fn readable_within(conn: &TcpStream, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: conn.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&raw mut pfd, 1, ms) > 0 }
}

/// One connection of the server: answers requests, closes after 2 s of quiet.
pub(super) fn serve(mut conn: TcpStream) {
    let mut buf = [0u8; 1024];
    let mut pending = Vec::new();
    loop {
        if !readable_within(&conn, IDLE_TIMEOUT) {
            return; // idle timeout: close
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            pending.drain(..end + 4);
            if conn.write_all(RESPONSE).is_err() {
                return;
            }
        }
    }
}

/// The server listens from its own thread, so every server socket carries the
/// `ka-server` name: `record --comm ka-server` sees the race from the server's side
/// only, as on the server's node.
fn server() -> Result<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    spawn("ka-server", move || {
        let listener = match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let _ = tx.send(listener.local_addr());
        for conn in listener.incoming().flatten() {
            let _ = spawn("ka-worker", move || serve(conn));
        }
    })?;
    rx.recv()
        .context("the lab server thread ended")?
        .context("binding the lab server")
}

fn request(conn: &mut TcpStream) -> std::io::Result<()> {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < RESPONSE.len() {
        match conn.read(&mut buf)? {
            0 => return Err(ErrorKind::UnexpectedEof.into()),
            n => got.extend_from_slice(&buf[..n]),
        }
    }
    Ok(())
}

/// A pooled connection is alive unless the server's FIN (EOF) is already queued.
fn still_open(conn: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    let _ = conn.set_nonblocking(true);
    let alive = matches!(conn.peek(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock);
    let _ = conn.set_nonblocking(false);
    alive
}

/// The pool client; returns the requests that failed on a reused connection.
pub(super) fn client(addr: SocketAddr, validate: bool) -> Result<(u64, u64)> {
    let mut pool: Vec<TcpStream> = Vec::new();
    let (mut failed, mut reused) = (0, 0);
    for round in 0..ROUNDS {
        let mut busy = Vec::new();
        for _ in 0..POOL {
            let pooled = pool.pop().filter(|c| !validate || still_open(c));
            let mut conn = match pooled {
                Some(c) => {
                    reused += 1;
                    c
                }
                None => TcpStream::connect(addr)?,
            };
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            if request(&mut conn).is_err() {
                // The naive pool's request died on a connection the server had closed:
                // count it, and retry on a fresh one as pools do.
                failed += 1;
                conn = TcpStream::connect(addr)?;
                request(&mut conn).context("retry on a fresh connection")?;
            }
            busy.push(conn);
        }
        pool.extend(busy);
        if round + 1 < ROUNDS {
            std::thread::sleep(PAUSE);
        }
    }
    Ok((failed, reused))
}

pub fn run(validate: bool) -> Result<Outcome> {
    let name = if validate {
        "healthy-keepalive"
    } else {
        "keepalive-race"
    };
    let addr = server()?;
    say(name, &format!(
        "server {addr} closes idle keep-alive connections after {:.2} s; a pool of {POOL} {} reuses them after {:.2} s idle",
        IDLE_TIMEOUT.as_secs_f64(),
        if validate { "that validates on borrow" } else { "that never validates" },
        PAUSE.as_secs_f64()
    ));
    let (failed, reused) = spawn("pool-client", move || client(addr, validate))?
        .join()
        .map_err(|_| anyhow::anyhow!("the pool client panicked"))??;
    say(
        name,
        &format!("client saw {failed} failed requests on reused connections ({reused} reused)"),
    );
    Ok(Outcome {
        endpoint: addr.to_string(),
        count: failed,
    })
}
