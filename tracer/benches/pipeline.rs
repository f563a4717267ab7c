//! The process' own cost per connection, without the kernel: the records a loopback
//! churn run's programs write (wrk against nginx with `Connection: close`: a client
//! and a server socket a connection, each shipped whole at its close) replayed
//! through the live pipeline — decoder, filters, engine, findings, the JSON log
//! written to a file — on one core. `cargo xtask bench` measures the same path live,
//! where the machine's scheduling noise moves it by ±10 %; here a change to the
//! userspace path shows in one run.
//!
//! `cargo bench -p tracer --bench pipeline [-- CONNECTIONS]` (default 400,000).

use std::time::{Duration, Instant, UNIX_EPOCH};

use tracer::{
    eventlog::{Header, LogWriter},
    kernel::{decode::Decoder, diag::thread_cpu_time, time::KernelClock},
    pipeline::{filter::Filter, live},
};
use tracer_common::{flags, kind, owner_src, AsBytes as _, ConnRecord, RawEvent, Step, MAX_STEPS};

const CLOSE: u8 = 7;
const SYN_SENT: u8 = 2;
const SYN_RECV: u8 = 3;
const ESTABLISHED: u8 = 1;
const FIN_WAIT1: u8 = 4;
const FIN_WAIT2: u8 = 5;
const CLOSE_WAIT: u8 = 8;
const LAST_ACK: u8 = 9;
const LISTEN: u8 = 10;

/// One socket's record: `steps` as (µs after `t0`, old, new state).
#[expect(clippy::too_many_arguments, reason = "one record's fields")]
fn record(
    sock: u64,
    comm: &[u8],
    pid: u32,
    src: u8,
    local: u16,
    remote: u16,
    t0_ns: u64,
    steps: &[(u64, u8, u8)],
    last: bool,
) -> ConnRecord {
    let mut head = RawEvent::ZERO;
    head.kind = kind::CONN;
    head.flags = if last { flags::FINAL } else { 0 };
    head.sock = sock;
    head.family = 2;
    head.pid = pid;
    head.tid = pid;
    head.cgroup_id = 1234;
    head.comm[..comm.len()].copy_from_slice(comm);
    head.owner_src = src;
    head.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    head.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    head.sport = local;
    head.dport = remote;
    head.new_state = CLOSE;
    let mut rec = ConnRecord {
        steps_len: u32::try_from(steps.len()).unwrap_or(0),
        srtt_us: 8 * 40,
        head,
        bytes_acked: if last { 120 } else { 0 },
        bytes_received: if last { 240 } else { 0 },
        born_ns: t0_ns,
        steps: [Step::ZERO; MAX_STEPS],
    };
    for (step, &(us, old, new)) in rec.steps.iter_mut().zip(steps) {
        step.ts_ns = t0_ns + us * 1_000;
        step.old_state = old;
        step.new_state = new;
    }
    rec
}

/// Socket addresses a side, reused in turn.
const SOCKET_SLOTS: u64 = 110;

/// A listener, then `n` connections 43 µs apart (23k a second, as the live bench).
fn churn(n: u64) -> Vec<ConnRecord> {
    let mut out = Vec::with_capacity(usize::try_from(2 * n + 1).unwrap_or(0));
    let t0 = 1_000_000_000_000;
    out.push(record(
        0xffff_8881_0000_0000,
        b"nginx",
        100,
        owner_src::SOCKET,
        18081,
        0,
        t0,
        &[(0, CLOSE, LISTEN)],
        false,
    ));
    for i in 0..n {
        let t = t0 + 1_000_000 + i * 43_000;
        // Freed sockets' addresses come back at once (the slab's per-CPU free lists
        // are LIFO): a 5 s live churn run's 228,413 records came from 219 socket
        // addresses, half of them back within 118 records. 110 a side in turn.
        let slot = i % SOCKET_SLOTS;
        let client = 0xffff_8882_0000_0000 + slot * 0x900;
        let server = 0xffff_8883_0000_0000 + slot * 0x900;
        let port = u16::try_from(32768 + i % 28232).unwrap_or(32768);
        // nginx answers and closes first; its full socket goes at the client's FIN.
        out.push(record(
            server,
            b"nginx",
            101 + u32::try_from(i % 2).unwrap_or(0),
            owner_src::SOCKET,
            18081,
            port,
            t,
            &[
                (10, LISTEN, SYN_RECV),
                (30, SYN_RECV, ESTABLISHED),
                (160, ESTABLISHED, FIN_WAIT1),
                (170, FIN_WAIT1, FIN_WAIT2),
                (230, FIN_WAIT2, CLOSE),
            ],
            true,
        ));
        out.push(record(
            client,
            b"wrk",
            200,
            owner_src::SOCKET,
            port,
            18081,
            t,
            &[
                (0, CLOSE, SYN_SENT),
                (25, SYN_SENT, ESTABLISHED),
                (175, ESTABLISHED, CLOSE_WAIT),
                (220, CLOSE_WAIT, LAST_ACK),
                (240, LAST_ACK, CLOSE),
            ],
            true,
        ));
    }
    out
}

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(400_000);
    let records = churn(n);
    let decoder = Decoder {
        clock: KernelClock {
            boot: UNIX_EPOCH + Duration::from_secs(1_790_000_000),
            hz: 250,
        },
        reset_reasons: vec!["NOT_SPECIFIED".into(), "NO_SOCKET".into()],
    };
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-pipeline.jsonl");
    let filter = Filter::default();
    let mut log = LogWriter::create(&path, true)?.with_header(Header::for_this_host());
    let mut replay = live::Replay::new(decoder, &filter);
    // The first quarter fills the tables (a live run's first seconds); the rest is
    // timed: a long run's steady state.
    let warm = records.len() / 4;
    let mut timed = (Duration::ZERO, Instant::now(), 0u64);
    for (i, r) in records.iter().enumerate() {
        if i == warm {
            log.flush()?;
            timed = (
                thread_cpu_time(),
                Instant::now(),
                std::fs::metadata(&path)?.len(),
            );
        }
        replay.ring(r.as_bytes(), &mut log)?;
        // The live run polls for findings every 200 ms: 4,600 connections here.
        if i % 9_200 == 0 {
            replay.poll(&mut log)?;
        }
    }
    log.flush()?;
    let (cpu, wall) = (thread_cpu_time().saturating_sub(timed.0), timed.1.elapsed());
    let bytes = std::fs::metadata(&path)?.len() - timed.2;
    log.finish()?;
    let _ = std::fs::remove_file(&path);
    let stats = replay.stats();
    let n = n - n / 4;
    #[expect(clippy::cast_precision_loss, reason = "display")]
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    #[expect(clippy::cast_precision_loss, reason = "display")]
    let log_per = bytes as f64 / n as f64;
    println!(
        "pipeline: {n} connections timed ({} steps delivered in all): {:.3} µs of CPU per connection \
         ({:.3} µs wall), log {log_per:.1} B per connection",
        stats.delivered,
        per(cpu),
        per(wall)
    );
    Ok(())
}
