//! Scenarios in network namespaces: port exhaustion, and a peer that vanishes.
//! Namespaces are named `ctlab-<pid>-<n>` and removed on every exit path.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::Command,
    sync::mpsc,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use super::{say, spawn, Outcome};

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes every namespace this process made (on a signal, from another thread:
/// the scenario's own drops will not run); returns how many.
pub fn remove_all() -> usize {
    of_process(std::process::id())
        .iter()
        .filter(|n| ip(&["netns", "del", n]).is_ok())
        .count()
}

/// The named namespaces the lab of process `pid` made and has not removed yet.
pub fn of_process(pid: u32) -> Vec<String> {
    let prefix = format!("ctlab-{pid}-");
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// A network namespace with loopback up; deleted on drop.
pub(super) struct Netns {
    pub(super) name: String,
}

impl Netns {
    pub(super) fn new(n: u32) -> Result<Self> {
        let name = format!("ctlab-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]).context("creating a network namespace (needs root)")?;
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub(super) fn exec(&self, cmd: &[&str]) -> Result<()> {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        ip(&args)
    }

    /// Runs `f` on a named thread that has entered this namespace.
    pub(super) fn spawn<T: Send + 'static>(
        &self,
        thread: &str,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Result<T>>> {
        let path = format!("/run/netns/{}", self.name);
        spawn(thread, move || {
            let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: a valid namespace fd; setns affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns into {path}: {}", std::io::Error::last_os_error());
            }
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

pub(super) fn join<T>(h: std::thread::JoinHandle<Result<T>>) -> Result<T> {
    h.join()
        .map_err(|_| anyhow::anyhow!("lab thread panicked"))?
}

const EXTRA_ATTEMPTS: u64 = 4;

/// Incident 5: a client holding connections to one destination until the
/// namespace's ten-port ephemeral range runs out.
pub fn port_exhaustion() -> Result<Outcome> {
    let name = "port-exhaustion";
    let ns = Netns::new(0)?;
    ns.exec(&[
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ip_local_port_range=40000 40009",
    ])?;
    say(
        name,
        &format!("namespace {} has ip_local_port_range 40000-40009", ns.name),
    );
    let failed = ns
        .spawn("lab-proxy", || {
            let listener = TcpListener::bind("127.0.0.1:8080")?;
            let mut held = Vec::new();
            let mut failed = 0u64;
            loop {
                match TcpStream::connect("127.0.0.1:8080") {
                    Ok(c) => held.push((c, listener.accept()?)),
                    Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                        failed += 1;
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
                if held.len() > 100 {
                    bail!("the port range did not run out");
                }
            }
            for _ in 0..EXTRA_ATTEMPTS {
                if matches!(TcpStream::connect("127.0.0.1:8080"), Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL)) {
                    failed += 1;
                }
            }
            crate::outln!(
                "lab port-exhaustion: {} connections to 127.0.0.1:8080 hold the range; {failed} connects failed with EADDRNOTAVAIL",
                held.len()
            );
            std::thread::sleep(Duration::from_millis(500));
            Ok(failed)
        })
        .and_then(join)?;
    Ok(Outcome {
        endpoint: "127.0.0.1:8080".to_owned(),
        count: failed,
    })
}

const STALL: Duration = Duration::from_secs(5);

/// Two namespaces joined by a veth pair: the client's (192.0.2.1) and the
/// database's (192.0.2.2); also the name of the database's end, to take it down.
/// The links are named `<tag>a<pid>` / `<tag>b<pid>` (gone with their namespaces).
pub(super) fn client_and_database(tag: &str) -> Result<(Netns, Netns, String)> {
    let a = Netns::new(1)?;
    let b = Netns::new(2)?;
    let (va, vb) = (
        format!("{tag}a{}", std::process::id()),
        format!("{tag}b{}", std::process::id()),
    );
    ip(&[
        "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns", &b.name,
    ])?;
    a.exec(&["ip", "addr", "add", "192.0.2.1/24", "dev", &va])?;
    b.exec(&["ip", "addr", "add", "192.0.2.2/24", "dev", &vb])?;
    a.exec(&["ip", "link", "set", &va, "up"])?;
    b.exec(&["ip", "link", "set", &vb, "up"])?;
    Ok((a, b, vb))
}

/// Incident 4: a worker waiting on a database peer whose host vanished without FIN
/// or RST (its link goes down), with keepalive and TCP_USER_TIMEOUT off.
pub fn silent_peer() -> Result<Outcome> {
    let name = "silent-peer";
    let (a, b, vb) = client_and_database("ctl")?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = b.spawn("lab-db", move || {
        let listener = TcpListener::bind("192.0.2.2:5432")?;
        ready_tx.send(())?;
        let (mut conn, _) = listener.accept()?;
        let mut buf = [0u8; 64];
        let _ = conn.read(&mut buf);
        std::thread::sleep(STALL + Duration::from_secs(1));
        Ok(())
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("lab database did not start")?;
    let (sent_tx, sent_rx) = mpsc::channel();
    let (gone_tx, gone_rx) = mpsc::channel::<()>();
    let worker = a.spawn("lab-worker", move || {
        let mut conn = TcpStream::connect("192.0.2.2:5432")?;
        conn.write_all(b"BEGIN;")?;
        std::thread::sleep(Duration::from_millis(300));
        sent_tx.send(())?;
        gone_rx.recv()?;
        conn.write_all(b"SELECT 1;")?;
        conn.set_read_timeout(Some(STALL))?;
        let mut buf = [0u8; 64];
        let answered = matches!(conn.read(&mut buf), Ok(n) if n > 0);
        Ok(answered)
    })?;
    sent_rx
        .recv_timeout(Duration::from_secs(5))
        .context("worker did not connect")?;
    b.exec(&["ip", "link", "set", &vb, "down"])?;
    say(name, &format!("the database 192.0.2.2:5432 vanished (link down, no FIN/RST); the worker waits {} s for an answer", STALL.as_secs()));
    gone_tx.send(())?;
    let answered = join(worker)?;
    let _ = join(server);
    say(
        name,
        if answered {
            "the worker got an answer (unexpected)"
        } else {
            "the worker never got an answer"
        },
    );
    Ok(Outcome {
        endpoint: "192.0.2.2:5432".to_owned(),
        count: u64::from(!answered),
    })
}

/// Workers blocked on the hung peer at once, and how long each waits for its answer.
const HUNG_WORKERS: usize = 3;
const HUNG_WAIT: Duration = Duration::from_secs(10);
/// Statements each worker has answered before the one that hangs.
const HUNG_ROUNDS: usize = 4;

/// Incident 4's silent half: a database (two namespaces) receives three workers'
/// queries — its kernel acknowledges them — and vanishes (link down) before
/// answering. Nothing is outstanding, so nothing is retransmitted: the workers wait in
/// `recv()` with keepalive off; only an inspection of their sockets shows it. Each
/// worker runs as a real one does: a few statements, each sent the moment the
/// previous answer arrived (within the same clock tick).
pub fn hung_peer() -> Result<Outcome> {
    let name = "hung-peer";
    let (a, b, vb) = client_and_database("cth")?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let (got_tx, got_rx) = mpsc::channel();
    let server = b.spawn("lab-db", move || {
        let listener = TcpListener::bind("192.0.2.2:5432")?;
        ready_tx.send(())?;
        let mut held = Vec::new();
        for _ in 0..HUNG_WORKERS {
            let (mut conn, _) = listener.accept()?;
            let mut buf = [0u8; 64];
            for _ in 0..HUNG_ROUNDS {
                let _ = conn.read(&mut buf)?;
                conn.write_all(b"OK")?;
            }
            let _ = conn.read(&mut buf)?;
            got_tx.send(())?;
            held.push(conn);
        }
        std::thread::sleep(HUNG_WAIT + Duration::from_secs(1));
        Ok(())
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("lab database did not start")?;
    let mut workers = Vec::new();
    for _ in 0..HUNG_WORKERS {
        workers.push(a.spawn("lab-worker", move || {
            let mut conn = TcpStream::connect("192.0.2.2:5432")?;
            let mut buf = [0u8; 64];
            conn.write_all(b"BEGIN;")?;
            for _ in 0..HUNG_ROUNDS - 1 {
                let _ = conn.read(&mut buf)?;
                conn.write_all(b"UPDATE orders SET state = 1;")?;
            }
            let _ = conn.read(&mut buf)?;
            conn.write_all(b"SELECT * FROM orders FOR UPDATE;")?;
            conn.set_read_timeout(Some(HUNG_WAIT))?;
            Ok(matches!(conn.read(&mut buf), Ok(n) if n > 0))
        })?);
    }
    for _ in 0..HUNG_WORKERS {
        got_rx
            .recv_timeout(Duration::from_secs(5))
            .context("the database did not receive every query")?;
    }
    // The queries are delivered and acknowledged; the database's node goes away.
    std::thread::sleep(Duration::from_millis(200));
    b.exec(&["ip", "link", "set", &vb, "down"])?;
    say(name, &format!("the database 192.0.2.2:5432 took {HUNG_WORKERS} queries and vanished (link down, no FIN/RST); the workers wait {} s with keepalive off", HUNG_WAIT.as_secs()));
    let mut hung = 0;
    for w in workers {
        hung += u64::from(!join(w)?);
    }
    let _ = join(server);
    say(
        name,
        &format!("{hung} of {HUNG_WORKERS} workers never got an answer"),
    );
    Ok(Outcome {
        endpoint: "192.0.2.2:5432".to_owned(),
        count: hung,
    })
}
