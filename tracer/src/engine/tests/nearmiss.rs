//! `keepalive-near-miss`: the keep-alive race predicted before it fails.

use crate::engine::testing::assert_has;

use super::of_kind;
use crate::{
    engine::{
        testing::{wall, Sock, T0},
        Config, Engine, Kind, Severity,
    },
    event::{Reuse, Reuses, TcpState::*},
};

const SERVER: &str = "10.0.0.5:8000";

/// An engine that learnt SERVER closes idle connections at 5 s (three peer FINs).
fn engine_with_timeout() -> Engine {
    let mut engine = Engine::new(Config::default());
    for i in 0..3u16 {
        let c = Sock::new(
            100 + u64::from(i),
            7,
            "other",
            &format!("10.0.0.1:{}", 30000 + i),
            SERVER,
        );
        let at = u64::from(i) * 10_000;
        for e in c.connect(at) {
            engine.ingest(&e);
        }
        engine.ingest(&c.state(at + 5000, Established, CloseWait, 5000));
    }
    engine
}

fn reuses(engine: &mut Engine, at_ms: u64, gaps: &[u64]) {
    let mono_ns = T0 + at_ms * 1_000_000;
    engine.reuses(&Reuses {
        time: wall(mono_ns),
        mono_ns,
        reuses: gaps
            .iter()
            .zip(0u16..)
            .map(|(gap, i)| Reuse {
                process: crate::event::Process {
                    pid: 42,
                    comm: "pool".into(),
                    cgroup: 0,
                },
                local: format!("10.0.0.1:{}", 40000 + i).parse().expect("addr"),
                remote: SERVER.parse().expect("addr"),
                gap_ms: *gap,
                exact: true,
            })
            .collect(),
    });
}

#[test]
fn reuse_gaps_near_the_servers_timeout_are_a_near_miss_with_the_margin() {
    let mut engine = engine_with_timeout();
    reuses(&mut engine, 40_000, &[4000, 4500, 4800]);
    let f = of_kind(&engine, Kind::KeepaliveNearMiss);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].severity, Severity::Warning);
    assert_eq!(f[0].evidence["server_idle_timeout_ms"], 5000);
    assert_eq!(f[0].evidence["max_reuse_gap_ms"], 4800);
    assert_eq!(f[0].evidence["margin_ms"], 200);
    assert_eq!(f[0].evidence["reuses_in_danger"], 3);
    assert!(
        f[0].summary.starts_with("pool (pid 42) reuses pooled connections to 10.0.0.5:8000 after up to 4.80 s idle; 10.0.0.5:8000 closes idle connections at 5.00 s: a margin of 0.20 s"),
        "{}",
        f[0].summary
    );
    assert_has!(f[0].recommendation, "below 4.00 s");
}

#[test]
fn short_reuse_gaps_are_not_a_near_miss() {
    let mut engine = engine_with_timeout();
    reuses(&mut engine, 40_000, &[1000, 1500, 2000]);
    assert!(of_kind(&engine, Kind::KeepaliveNearMiss).is_empty());
}

#[test]
fn a_pool_that_retires_idle_connections_first_is_named_safe() {
    let mut engine = engine_with_timeout();
    reuses(&mut engine, 40_000, &[900, 1500]);
    for i in 0..3u16 {
        let c = Sock::new(
            200 + u64::from(i),
            42,
            "pool",
            &format!("10.0.0.1:{}", 41000 + i),
            SERVER,
        );
        let at = 50_000 + u64::from(i) * 5000;
        for e in c.connect(at) {
            engine.ingest(&e);
        }
        engine.ingest(&c.state(at + 2000, Established, FinWait1, 2000 + u64::from(i)));
    }
    let f = of_kind(&engine, Kind::KeepaliveNearMiss);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].severity, Severity::Info);
    assert_eq!(f[0].evidence["pool_idle_timeout_ms"], 2001);
    assert_has!(f[0].summary, "safe");
}

#[test]
fn a_pair_that_already_failed_is_the_races_not_a_near_miss() {
    let mut engine = engine_with_timeout();
    reuses(&mut engine, 40_000, &[4800]);
    let c = Sock::new(300, 42, "pool", "10.0.0.1:42000", SERVER);
    for e in c.connect(50_000) {
        engine.ingest(&e);
    }
    engine.ingest(&c.state(55_000, Established, CloseWait, 5000));
    engine.ingest(&c.reset_received(55_500, CloseWait, 5500));
    assert_eq!(of_kind(&engine, Kind::KeepaliveReuseRace).len(), 1);
    assert!(of_kind(&engine, Kind::KeepaliveNearMiss).is_empty());
}
