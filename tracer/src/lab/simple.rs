//! Loopback scenarios: a CLOSE_WAIT leak, and refused connects.

use std::{
    io::Write as _,
    net::{TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::{say, spawn, Outcome};

const LEAKED: usize = 12;
/// Long enough for the 5 s age threshold and a sample after it.
const HOLD: Duration = Duration::from_secs(7);

/// Incident 2: a worker that never closes connections its clients closed.
pub fn close_wait_leak() -> Result<Outcome> {
    let name = "close-wait-leak";
    // The server listens from its own thread: without the system-call hooks an
    // accepted socket carries its listener's thread until the process closes it.
    let (tx, rx) = std::sync::mpsc::channel();
    let server = spawn("leaky-server", move || {
        let listener = match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(e));
                return 0;
            }
        };
        let _ = tx.send(listener.local_addr());
        let mut held = Vec::new();
        for conn in listener.incoming().take(LEAKED).flatten() {
            held.push(conn); // never read, never closed: the leak
        }
        std::thread::sleep(HOLD);
        held.len()
    })?;
    let addr = rx
        .recv()
        .context("the lab server thread ended")?
        .context("binding the lab server")?;
    say(
        name,
        &format!("server {addr} will hold every connection its clients close"),
    );
    spawn("lab-client", move || -> Result<()> {
        for _ in 0..LEAKED {
            let mut c = TcpStream::connect(addr)?;
            c.write_all(b"job\n")?;
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("client panicked"))??;
    say(
        name,
        &format!(
            "{LEAKED} clients closed; the server keeps their sockets in CLOSE_WAIT for {} s",
            HOLD.as_secs()
        ),
    );
    let held = server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))?;
    Ok(Outcome {
        endpoint: addr.to_string(),
        count: held as u64,
    })
}

const ATTEMPTS: u64 = 5;

/// Incident 3: connects to a port nothing listens on.
pub fn refused() -> Result<Outcome> {
    let name = "refused";
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    say(
        name,
        &format!("connecting {ATTEMPTS} times to {addr}, where nothing listens"),
    );
    let target = addr.clone();
    let refused = spawn("lab-client", move || {
        let mut refused = 0;
        for _ in 0..ATTEMPTS {
            if matches!(TcpStream::connect(&target), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused) {
                refused += 1;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        refused
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("client panicked"))?;
    say(
        name,
        &format!("{refused} of {ATTEMPTS} connects refused (ECONNREFUSED)"),
    );
    Ok(Outcome {
        endpoint: addr,
        count: refused,
    })
}
