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

/// How a lab pool uses its connections.
#[derive(Debug, Clone, Copy)]
pub(super) struct PoolStyle {
    /// Check a pooled connection before reuse (drop it if the server closed it).
    pub validate: bool,
    /// Quiet time between rounds of requests.
    pub pause: Duration,
    pub rounds: usize,
    /// Retire idle connections itself after this long (a pool's own idle timeout).
    pub retire_after: Option<Duration>,
}

/// A pool that reuses whatever it holds after 2.5 s: the race.
pub(super) const NAIVE: PoolStyle = PoolStyle {
    validate: false,
    pause: PAUSE,
    rounds: ROUNDS,
    retire_after: None,
};

/// The pool client; returns the requests that failed on a reused connection.
pub(super) fn client(addr: SocketAddr, style: PoolStyle) -> Result<(u64, u64)> {
    let mut pool: Vec<TcpStream> = Vec::new();
    let (mut failed, mut reused) = (0, 0);
    for round in 0..style.rounds {
        let mut busy = Vec::new();
        for _ in 0..POOL {
            let pooled = pool.pop().filter(|c| !style.validate || still_open(c));
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
        if round + 1 < style.rounds {
            match style.retire_after {
                // The pool's own idle timeout: idle connections closed, new ones next.
                Some(retire) if retire < style.pause => {
                    std::thread::sleep(retire);
                    pool.clear();
                    std::thread::sleep(style.pause.saturating_sub(retire));
                }
                _ => std::thread::sleep(style.pause),
            }
        }
    }
    Ok((failed, reused))
}

/// Three connections that make one request each and stay idle until the server
/// closes them (its idle timeout, seen as their peer's FIN).
fn idle_until_closed(addr: SocketAddr) -> Result<()> {
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(addr)?;
        request(&mut c)?;
        conns.push(c);
    }
    for mut c in conns {
        c.set_read_timeout(Some(IDLE_TIMEOUT * 3))?;
        let mut b = [0u8; 16];
        let _ = c.read(&mut b);
    }
    Ok(())
}

/// The keep-alive scenarios: the race, its healthy control, a near miss that has
/// not failed yet, and a pool that retires idle connections first.
pub fn run(name: &str) -> Result<Outcome> {
    let (style, how) = match name {
        "healthy-keepalive" => (
            PoolStyle {
                validate: true,
                ..NAIVE
            },
            "that validates on borrow",
        ),
        "keepalive-near-miss" => (
            PoolStyle {
                pause: Duration::from_millis(1700),
                rounds: 7,
                ..NAIVE
            },
            "that never validates, but pauses only 1.70 s",
        ),
        "keepalive-safe" => (
            PoolStyle {
                pause: Duration::from_millis(1500),
                rounds: 5,
                retire_after: Some(Duration::from_secs(1)),
                ..NAIVE
            },
            "that retires connections idle for 1.00 s itself",
        ),
        _ => (NAIVE, "that never validates"),
    };
    let addr = server()?;
    say(name, &format!(
        "server {addr} closes idle keep-alive connections after {:.2} s; a pool of {POOL} {how} reuses them after {:.2} s idle",
        IDLE_TIMEOUT.as_secs_f64(),
        style.pause.as_secs_f64()
    ));
    // Other clients' connections left idle show the server's timeout (as a node's
    // other traffic does): the near-miss and safe pools never let it close theirs.
    let monitors = if name == "keepalive-near-miss" || name == "keepalive-safe" {
        Some(spawn("lab-monitor", move || idle_until_closed(addr))?)
    } else {
        None
    };
    let (failed, reused) = spawn("pool-client", move || client(addr, style))?
        .join()
        .map_err(|_| anyhow::anyhow!("the pool client panicked"))??;
    if let Some(m) = monitors {
        m.join()
            .map_err(|_| anyhow::anyhow!("the monitor panicked"))??;
    }
    say(
        name,
        &format!("client saw {failed} failed requests on reused connections ({reused} reused)"),
    );
    Ok(Outcome {
        endpoint: addr.to_string(),
        count: failed,
    })
}
