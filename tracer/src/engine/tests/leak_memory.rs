use super::of_kind;
use crate::engine::testing::assert_has;
use crate::{
    engine::{
        testing::{sockstat, Sock},
        Config, Engine, Kind, Severity,
    },
    event::TcpState::*,
};

const MEM: [u64; 3] = [1000, 2000, 3000];

/// The `i`th connection the worker (pid 77) accepted.
fn worker(i: u16) -> Sock {
    Sock::new(
        u64::from(i) + 1,
        77,
        "worker",
        "10.0.0.5:6379",
        &format!("10.0.0.9:{}", 40000 + i),
    )
}

/// `n` accepted connections of pid 77 whose peers close at 0 ms.
fn leaking(n: u16) -> Engine {
    let mut engine = Engine::new(Config::default());
    for i in 0..n {
        let s = worker(i);
        for e in s.accepted(0) {
            engine.ingest(&e);
        }
        engine.ingest(&s.state(0, Established, CloseWait, 10));
    }
    engine
}

#[test]
fn sockets_older_than_the_threshold_are_a_leak() {
    let mut engine = leaking(4);
    engine.sample(&sockstat(4_000, 10, MEM));
    assert!(
        of_kind(&engine, Kind::CloseWaitLeak).is_empty(),
        "4 s old: below the 5 s age"
    );
    engine.sample(&sockstat(6_000, 10, MEM));
    let f = of_kind(&engine, Kind::CloseWaitLeak);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].count, 4);
    assert_eq!(f[0].severity, Severity::Warning);
    assert_eq!(f[0].endpoint, "10.0.0.5:6379");
    assert_eq!(f[0].evidence["oldest_ms"], 6000);
    assert_eq!(f[0].evidence["growth_per_min"], 120.0, "0 -> 4 in 2 s");
    assert_has!(f[0].summary, starts_with "worker (pid 77) holds 4 sockets in CLOSE_WAIT");
}

#[test]
fn below_the_minimum_count_is_not_a_leak() {
    let mut engine = leaking(2);
    engine.sample(&sockstat(60_000, 10, MEM));
    assert!(of_kind(&engine, Kind::CloseWaitLeak).is_empty());
}

#[test]
fn a_resolved_leak_keeps_its_peak() {
    let mut engine = leaking(3);
    engine.sample(&sockstat(6_000, 10, MEM));
    for i in 0..3u16 {
        let s = worker(i);
        engine.ingest(&s.state(7_000, CloseWait, LastAck, 7000));
    }
    engine.sample(&sockstat(8_000, 10, MEM));
    let f = of_kind(&engine, Kind::CloseWaitLeak);
    assert_eq!(f[0].count, 3);
    assert_eq!(f[0].evidence["close_wait_now"], 0);
    assert!(
        f[0].summary.contains("held up to 3 sockets") && f[0].summary.ends_with("all since closed"),
        "{}",
        f[0].summary
    );
}

#[test]
fn memory_above_pressure_warns_and_near_max_is_critical() {
    let mut engine = leaking(1);
    engine.sample(&sockstat(1_000, 1500, MEM));
    assert!(of_kind(&engine, Kind::TcpMemoryPressure).is_empty());
    engine.sample(&sockstat(2_000, 2100, MEM));
    let f = of_kind(&engine, Kind::TcpMemoryPressure);
    assert_eq!(f[0].severity, Severity::Warning);
    engine.sample(&sockstat(3_000, 2800, MEM));
    let f = of_kind(&engine, Kind::TcpMemoryPressure);
    assert_eq!(f[0].severity, Severity::Critical);
    assert_eq!(f[0].count, 2);
    assert_eq!(f[0].evidence["pct_of_max"], 93);
    assert_eq!(f[0].evidence["top_holders"][0]["pid"], 77);
    assert_eq!(f[0].evidence["top_holders"][0]["close_wait"], 1);
}
