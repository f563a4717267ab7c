//! Mutation fuzzing of every parser of outside input: the event log (read and
//! replayed through the engine and the report, as `conntrace report` does), the
//! ring-buffer decoder, the BTF reader, tracefs `format` files (and the reset-record
//! layout read from them), `/proc/net/tcp`, `/proc/net/sockstat`, cgroup paths, the
//! Kubernetes pod list, `sock_diag` messages, and `--cidr`.
//!
//! Inputs start from seeds — the committed corpus in `tracer/fuzz/corpus/<target>/`
//! (real files from this project's recordings and a 6.18 and a 5.10 kernel) and seeds
//! built in code — and are mutated (bit flips, interesting bytes and integers, inserted,
//! deleted, duplicated and spliced runs, truncation) by a seeded xorshift generator,
//! so a run is reproducible. A target fails when it panics; the input is saved to
//! `target/fuzz-crashes/`. The unit tests run every target briefly (CI's smoke run);
//! `cargo run --release --features fuzz --example fuzz -- SECS [TARGET]` runs them for longer.

use std::{
    io::Cursor,
    panic::{catch_unwind, AssertUnwindSafe},
    path::Path,
    time::{Duration, Instant},
};

/// One parser under test.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// Seeds built in code (binary formats with no file in the corpus).
    pub builtin: fn() -> Vec<Vec<u8>>,
}

fn none() -> Vec<Vec<u8>> {
    Vec::new()
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn log_target(b: &[u8]) {
    let Ok(reader) = crate::eventlog::LogReader::new(Cursor::new(b)) else {
        return;
    };
    let header = reader.header.clone();
    let mut engine = crate::engine::Engine::new(crate::engine::Config::default());
    let mut sink = crate::pipeline::dispatch::LastLosses::default();
    for record in reader.flatten() {
        let _ = crate::pipeline::dispatch::dispatch(&mut engine, None, &record, &mut sink);
    }
    let losses = sink.losses;
    let findings = engine.findings();
    for format in [
        crate::output::report::Format::Text,
        crate::output::report::Format::Markdown,
        crate::output::report::Format::Json,
    ] {
        let _ = crate::output::report::render_limited(&findings, &header, losses.as_ref(), format);
    }
}

fn decoder_target(b: &[u8]) {
    let decoder = crate::kernel::decode::Decoder::sample();
    let mut line = Vec::new();
    let mut times = crate::eventlog::jsonl::TimeCache::default();
    match decoder.decode(b) {
        Ok(crate::event::Record::Event(e)) => {
            crate::eventlog::jsonl::write_event(&mut line, &e, &mut times);
        }
        Ok(crate::event::Record::Conn(c)) => {
            // What the log writes must read back as what was decoded.
            crate::eventlog::jsonl::write_conn(&mut line, &c);
            let text = std::str::from_utf8(&line).expect("UTF-8");
            let back = crate::eventlog::jsonl::parse_conn_line(text, decoder.clock.boot)
                .expect("reads back");
            assert_eq!(back, c, "{}", String::from_utf8_lossy(&line));
        }
        Ok(other) => panic!("the decoder made a {other:?}"),
        Err(_) => {}
    }
}

fn raw_events() -> Vec<Vec<u8>> {
    (1..=7u8)
        .map(|kind| {
            let mut ev = tracer_common::RawEvent::ZERO;
            ev.kind = kind;
            ev.family = 2;
            ev.old_state = 1;
            ev.new_state = 8;
            ev.sport = 40000;
            ev.dport = 8080;
            ev.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
            ev.daddr[..4].copy_from_slice(&[10, 0, 0, 7]);
            ev.comm[..5].copy_from_slice(b"nginx");
            ev.ts_ns = 1_000_000_000;
            ev.jiffies = 4_295_000_000;
            ev.send_idle_jiffies = 1250;
            ev.reason = 1;
            ev.errno = 111;
            tracer_common::AsBytes::as_bytes(&ev).to_vec()
        })
        .chain(std::iter::once(conn_record()))
        .collect()
}

/// A whole connection's record: SYN_SENT, ESTABLISHED, CLOSE_WAIT, LAST_ACK, CLOSE.
fn conn_record() -> Vec<u8> {
    let mut rec = tracer_common::ConnRecord {
        head: tracer_common::RawEvent::ZERO,
        steps_len: 5,
        srtt_us: 800,
        bytes_acked: 100,
        bytes_received: 2000,
        born_ns: 1,
        steps: [tracer_common::Step::ZERO; tracer_common::MAX_STEPS],
    };
    rec.head.kind = tracer_common::kind::CONN;
    rec.head.family = 2;
    rec.head.sport = 40000;
    rec.head.dport = 8080;
    rec.head.sock = 0xffff_8881_0000_0000;
    rec.head.comm[..4].copy_from_slice(b"curl");
    rec.head.flags = tracer_common::flags::FINAL;
    for ((step, i), (old, new)) in
        rec.steps
            .iter_mut()
            .zip(0u32..)
            .zip([(7, 2), (2, 1), (1, 8), (8, 9), (9, 7)])
    {
        step.ts_ns = 1_000_000_000 + 1_000_000 * u64::from(i);
        step.old_state = old;
        step.new_state = new;
        step.send_idle_jiffies = 100 * i;
        step.recv_idle_jiffies = 50 * i;
    }
    tracer_common::AsBytes::as_bytes(&rec).to_vec()
}

fn btf_target(b: &[u8]) {
    if let Ok(btf) = crate::kernel::btf::Btf::parse(b.to_vec()) {
        let _ = btf.member_offset("outer", "c.y");
        let _ = btf.member_offset("tcp_sock", "inet_conn.icsk_inet.sk.__sk_common.skc_state");
        let _ = btf.enum_values("color");
        let _ = btf.has_trace_hook("inet_sock_set_state");
    }
}

fn btf_seeds() -> Vec<Vec<u8>> {
    vec![crate::kernel::btf::tiny_sample()]
}

fn tracefs_target(b: &[u8]) {
    let fields = crate::kernel::tracefs::parse_format(&lossy(b));
    let _ = crate::kernel::support::ResetRecord::from_fields(&fields);
}

fn proc_tcp_target(b: &[u8]) {
    let _ = crate::kernel::listeners::listening(&lossy(b));
}

fn sockstat_target(b: &[u8]) {
    let _ = crate::kernel::sockstat::parse_sockstat(&lossy(b));
}

fn cgroup_target(b: &[u8]) {
    let _ = crate::k8s::cgroup::parse(&lossy(b));
}

fn pod_list_target(b: &[u8]) {
    let _ = crate::k8s::api::parse_pod_list(&lossy(b));
}

fn diag_target(b: &[u8]) {
    if let Some(c) = crate::kernel::diag::parse_msg(1, b) {
        let _ = c.awaiting_reply();
    }
}

fn diag_seeds() -> Vec<Vec<u8>> {
    let mut m = vec![0u8; 72];
    m[0] = 2;
    m[1] = 1;
    m[4..6].copy_from_slice(&40000u16.to_be_bytes());
    m[6..8].copy_from_slice(&5432u16.to_be_bytes());
    m[8..12].copy_from_slice(&[10, 0, 0, 1]);
    m[24..28].copy_from_slice(&[10, 0, 0, 7]);
    let mut info = vec![0u8; 232];
    info[44..48].copy_from_slice(&40_000u32.to_ne_bytes());
    info[52..56].copy_from_slice(&41_000u32.to_ne_bytes());
    info[120..128].copy_from_slice(&33u64.to_ne_bytes());
    m.extend_from_slice(&u16::try_from(info.len() + 4).unwrap_or(0).to_ne_bytes());
    m.extend_from_slice(&2u16.to_ne_bytes());
    m.extend_from_slice(&info);
    vec![m]
}

fn cidr_target(b: &[u8]) {
    let _ = lossy(b).parse::<crate::pipeline::filter::Cidr>();
}

fn cidr_seeds() -> Vec<Vec<u8>> {
    [
        "10.0.0.0/8",
        "fd00::/8",
        "192.0.2.1",
        "::1/128",
        "0.0.0.0/0",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// Every target.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "log",
            run: log_target,
            builtin: none,
        },
        Target {
            name: "decoder",
            run: decoder_target,
            builtin: raw_events,
        },
        Target {
            name: "btf",
            run: btf_target,
            builtin: btf_seeds,
        },
        Target {
            name: "tracefs",
            run: tracefs_target,
            builtin: none,
        },
        Target {
            name: "proc_tcp",
            run: proc_tcp_target,
            builtin: none,
        },
        Target {
            name: "sockstat",
            run: sockstat_target,
            builtin: none,
        },
        Target {
            name: "cgroup",
            run: cgroup_target,
            builtin: none,
        },
        Target {
            name: "pod_list",
            run: pod_list_target,
            builtin: none,
        },
        Target {
            name: "diag",
            run: diag_target,
            builtin: diag_seeds,
        },
        Target {
            name: "cidr",
            run: cidr_target,
            builtin: cidr_seeds,
        },
    ]
}

/// The seeds of `target`: its corpus files and its built-in seeds.
pub fn seeds(target: &Target) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target.name);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    out.extend((target.builtin)());
    if out.is_empty() {
        out.push(Vec::new());
    }
    out
}

/// xorshift64*: small, fast, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            usize::try_from(self.next() % n as u64).unwrap_or(0)
        }
    }
}

const INTERESTING_BYTES: [u8; 12] = [
    0, 0xff, 0x7f, 0x80, b'\n', b'"', b'{', b'}', b':', b',', b'\\', b'-',
];
const INTERESTING_U32: [u32; 6] = [0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0xffff];
/// Inputs are kept below this size (the log reader's limits are tested separately).
const MAX_INPUT: usize = 64 * 1024;

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    if rng.below(16) == 0 {
        let n = rng.below(512);
        input.clear();
        input.extend((0..n).map(|_| rng.byte()));
        return;
    }
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
            }
            2 if len >= 4 => {
                let i = rng.below(len - 3);
                let v = INTERESTING_U32[rng.below(INTERESTING_U32.len())];
                input[i..i + 4].copy_from_slice(&v.to_ne_bytes());
            }
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                input.splice(at..at, bytes);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                input.drain(a..b);
            }
            5 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(256)).min(len);
                let copy = input[a..b].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, copy);
            }
            6 if len > 0 => input.truncate(rng.below(len)),
            7 => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + 1 + rng.below(512)).min(other.len());
                    let at = rng.below(len + 1);
                    input.splice(at..at, other[a..b].iter().copied());
                }
            }
            _ if len > 0 => {
                // A digit run: numbers are where parsers overflow.
                let at = rng.below(len);
                let digits: Vec<u8> = (0..=rng.below(24))
                    .map(|_| b'0' + u8::try_from(rng.below(10)).unwrap_or(0))
                    .collect();
                input.splice(at..at, digits);
            }
            _ => {}
        }
    }
    input.truncate(MAX_INPUT);
}

/// How long to fuzz.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    Executions(u64),
    Time(Duration),
}

/// What one run did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub executions: u64,
    pub elapsed: Duration,
    /// Panics: the message and the input.
    pub crashes: Vec<(String, Vec<u8>)>,
}

/// Fuzzes `target` from its seeds within `budget`, with generator seed `seed`.
pub fn fuzz(target: &Target, budget: Budget, seed: u64) -> Outcome {
    let seeds = seeds(target);
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let mut out = Outcome::default();
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut input = Vec::new();
    loop {
        let done = match budget {
            Budget::Executions(n) => out.executions >= n,
            Budget::Time(t) => out.executions % 64 == 0 && started.elapsed() >= t,
        };
        if done || out.crashes.len() >= 8 {
            break;
        }
        // Every seed as it is first, then mutations of a random one.
        input.clear();
        let i = usize::try_from(out.executions).unwrap_or(usize::MAX);
        if i < seeds.len() {
            input.extend_from_slice(&seeds[i]);
        } else {
            input.extend_from_slice(&seeds[rng.below(seeds.len())]);
            mutate(&mut rng, &seeds, &mut input);
        }
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| (target.run)(&input))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic".to_owned());
            out.crashes.push((msg, input.clone()));
        }
        out.executions += 1;
    }
    std::panic::set_hook(previous_hook);
    out.elapsed = started.elapsed();
    for (n, (_, input)) in out.crashes.iter().enumerate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-crashes");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(format!("{}-{seed}-{n}", target.name)), input);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI's smoke run: every target, 3,000 inputs each (a few seconds in all).
    #[test]
    fn every_parser_survives_mutated_inputs() {
        for target in targets() {
            let out = fuzz(&target, Budget::Executions(3_000), 0x00C0_FFEE);
            assert!(
                out.crashes.is_empty(),
                "{}: {} crashes, first: {:?} (inputs in target/fuzz-crashes)",
                target.name,
                out.crashes.len(),
                out.crashes.first().map(|c| &c.0)
            );
            assert_eq!(out.executions, 3_000);
        }
    }

    #[test]
    fn every_target_has_seeds_that_parse() {
        for target in targets() {
            assert!(
                seeds(&target).iter().any(|s| !s.is_empty()),
                "{} has no seed",
                target.name
            );
        }
        let log = &seeds(&targets()[0])[0];
        let reader = crate::eventlog::LogReader::new(Cursor::new(log)).expect("a seed log reads");
        assert!(
            reader.flatten().count() > 10,
            "the log seed is a real recording"
        );
    }
}
