//! The cost of one `--await-after` inspection pass (sock_diag dump of every namespace
//! plus the "awaiting a reply" selection) at N open sockets: N/2 loopback connections
//! are opened in this process, then passes are timed (CPU time of this process, and
//! wall time). Run by `cargo xtask bench`; alone: `cargo run --release --example
//! inspect_cost -- 10000 100000` (as root for more than ~1k sockets: it raises
//! RLIMIT_NOFILE).

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut ru) };
    let t = |tv: libc::timeval| {
        Duration::from_secs(u64::try_from(tv.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(tv.tv_usec).unwrap_or(0))
    };
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn raise_nofile(n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: a valid rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) };
}

/// `pairs` connections to a listener on 127.0.1.`host`: (clients, accepted).
fn open(pairs: usize, host: u8) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(pairs * 2);
    let ip = Ipv4Addr::new(127, 0, 1, host);
    let l = TcpListener::bind(SocketAddr::new(ip.into(), 0)).expect("bind");
    let addr = l.local_addr().expect("addr");
    for _ in 0..pairs {
        held.push(TcpStream::connect(addr).expect("connect"));
        held.push(l.accept().expect("accept").0);
    }
    held
}

/// Connections per holder process: a process may hold fewer than 20,000 files here.
const PAIRS_PER_PROCESS: usize = 9_000;

/// Child processes holding `sockets` open sockets between them, until dropped.
fn hold(sockets: usize) -> Vec<std::process::Child> {
    use std::io::BufRead as _;
    let exe = std::env::current_exe().expect("own path");
    let mut children = Vec::new();
    let mut left = sockets / 2;
    let mut host = 1u8;
    while left > 0 {
        let pairs = left.min(PAIRS_PER_PROCESS);
        let mut child = std::process::Command::new(&exe)
            .env("INSPECT_HOLD", format!("{pairs},{host}"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn holder");
        let mut line = String::new();
        let out = child.stdout.as_mut().expect("stdout");
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("ready");
        assert_eq!(line.trim(), "ready", "holder failed");
        children.push(child);
        left -= pairs;
        host += 1;
    }
    children
}

fn main() {
    if let Ok(spec) = std::env::var("INSPECT_HOLD") {
        let (pairs, host) = spec.split_once(',').expect("pairs,host");
        raise_nofile(20_000);
        let _held = open(pairs.parse().expect("pairs"), host.parse().expect("host"));
        println!("ready");
        let mut s = String::new();
        let _ = std::io::stdin().read_line(&mut s);
        return;
    }
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 100_000]
    } else {
        sizes
    };
    for sockets in sizes {
        let mut holders = hold(sockets);
        // The whole pass as the inspection thread makes it: the dumps, waits, each
        // client connection's reuse bookkeeping, listeners and their counters.
        let mut inspection = tracer::kernel::inspect::Inspection::new(
            Some(30_000),
            tracer::kernel::time::KernelClock::detect().expect("clock"),
        );
        let _ = inspection.pass(); // namespaces found, sockets made
        let passes = 5;
        let (cpu0, wall0) = (cpu_time(), Instant::now());
        let mut waiting = 0;
        for _ in 0..passes {
            waiting = inspection
                .pass()
                .records
                .iter()
                .map(|r| match r {
                    tracer::event::Record::Waiting(w) => w.conns.len(),
                    _ => 0,
                })
                .sum();
        }
        let cpu = cpu_time().saturating_sub(cpu0) / passes;
        let wall = wall0.elapsed() / passes;
        println!(
            "inspect: {sockets} sockets open ({waiting} waiting): {:.1} ms CPU, {:.1} ms wall per pass; every 2 s that is {:.2} % of one CPU",
            cpu.as_secs_f64() * 1e3,
            wall.as_secs_f64() * 1e3,
            cpu.as_secs_f64() / 2.0 * 100.0,
        );
        for h in &mut holders {
            drop(h.stdin.take());
            let _ = h.wait();
        }
    }
}
