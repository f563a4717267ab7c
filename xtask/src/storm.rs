//! A loopback connection storm: connect, one small write, server closes, client
//! closes, as fast as the machine allows, for a fixed time. Used to measure what `record` sustains.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// Runs `clients` connecting threads against one accepting server for `secs`;
/// returns (connections completed, elapsed).
pub fn run(clients: usize, secs: f64) -> Result<(u64, Duration)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let server_stop = Arc::clone(&stop);
    listener.set_nonblocking(false)?;
    let server = thread::spawn(move || {
        for conn in listener.incoming() {
            if server_stop.load(Ordering::Relaxed) {
                break;
            }
            if let Ok(mut conn) = conn {
                let mut b = [0u8; 8];
                let _ = conn.read(&mut b);
            }
        }
    });
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let done = Arc::clone(&done);
            thread::spawn(move || {
                while Instant::now() < deadline {
                    // The server closes first, so TIME_WAIT lands on its side and the
                    // storm does not exhaust its own ephemeral ports.
                    if let Ok(mut s) = TcpStream::connect(addr) {
                        let _ = s.write_all(b"x");
                        let mut b = [0u8; 8];
                        while matches!(s.read(&mut b), Ok(n) if n > 0) {}
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = TcpStream::connect(addr);
    let _ = server.join();
    Ok((done.load(Ordering::Relaxed), elapsed))
}
