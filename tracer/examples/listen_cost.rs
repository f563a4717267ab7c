//! The cost of reading every network namespace's listen counters once (an
//! inspection pass's `TcpExt` reads, `/proc/thread-self/net/netstat` opened inside
//! each namespace and re-read from its start): N namespaces are made (`ip netns add`,
//! removed at the end), then reads are timed in CPU time. As root:
//! `cargo run --release --example listen_cost -- 100 1000`.

use std::{path::Path, process::Command};

const ROUNDS: u32 = 20;

fn main() {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    for n in if counts.is_empty() { vec![100] } else { counts } {
        let names: Vec<String> = (0..n)
            .map(|i| format!("ctcost-{}-{i}", std::process::id()))
            .collect();
        for name in &names {
            let _ = Command::new("ip").args(["netns", "add", name]).status();
        }
        let mut inspector = tracer::kernel::diag::Inspector::new(Path::new("/proc"));
        let _ = inspector.pass();
        let started = tracer::kernel::diag::thread_cpu_time();
        let mut seen = 0;
        for _ in 0..ROUNDS {
            seen = inspector.listen_counters().len();
        }
        let per = tracer::kernel::diag::thread_cpu_time().saturating_sub(started) / ROUNDS;
        println!(
            "{seen} namespaces: {:.2} ms of CPU per read of every namespace's counters ({:.1} µs each)",
            per.as_secs_f64() * 1000.0,
            per.as_secs_f64() * 1e6 / f64::from(u32::try_from(seen.max(1)).unwrap_or(u32::MAX))
        );
        for name in &names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}
