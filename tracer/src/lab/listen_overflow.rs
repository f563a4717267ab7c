//! Incident 3's silent form: a server (its namespace, 192.0.2.2:18095) listens with
//! a backlog of 4 and has stopped accepting; 30 clients in another namespace connect
//! with a 1.5 s timeout. The kernel queues five handshakes and drops every later SYN:
//! no reset, no state change on the server — the clients time out.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::mpsc,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use super::{
    netns::{client_and_database, join},
    say, Outcome,
};

const SERVER: &str = "192.0.2.2:18095";
const BACKLOG: i32 = 4;
const CLIENTS: usize = 30;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

pub fn run() -> Result<Outcome> {
    let name = "listen-overflow";
    let (a, b, _) = client_and_database("cto")?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let server = b.spawn("stalled-srv", move || {
        let listener = TcpListener::bind(SERVER)?;
        // listen() again sets the backlog (std's is 128).
        // SAFETY: a listening socket we own.
        if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
            bail!("listen: {}", std::io::Error::last_os_error());
        }
        ready_tx.send(())?;
        // The accept loop is stuck (a blocked event loop): nothing is accepted.
        let _ = done_rx.recv_timeout(Duration::from_secs(30));
        drop(listener);
        Ok(())
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the lab server did not start")?;
    say(
        name,
        &format!("{SERVER} listens with a backlog of {BACKLOG} and never accepts; {CLIENTS} clients connect with a {:.1} s timeout", CONNECT_TIMEOUT.as_secs_f64()),
    );
    let addr: SocketAddr = SERVER.parse()?;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(a.spawn("lab-client", move || {
            Ok(TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map(|c| {
                // Connected into the queue: hold it as a client waiting for the
                // server would, then let go.
                std::thread::sleep(CONNECT_TIMEOUT);
                drop(c);
            }))
        })?);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut failed = 0;
    for c in clients {
        failed += u64::from(join(c)?.is_err());
    }
    // Stay so an inspection pass sees the full queue and the counters: passes come
    // every 2 s, later when a dump is slow (a loaded node, a TCG guest, where 3 s
    // was once too short for one of three recordings).
    std::thread::sleep(Duration::from_secs(5));
    let _ = done_tx.send(());
    let _ = join(server);
    say(
        name,
        &format!(
            "{failed} of {CLIENTS} connects timed out: their SYNs were dropped at the full queue"
        ),
    );
    Ok(Outcome {
        endpoint: SERVER.to_owned(),
        count: failed,
    })
}
