use crate::engine::testing::assert_has;
use crate::{
    engine::{Config, Engine, Kind, Severity},
    event::{KeepaliveSettings, SettingsSource, WaitingConn},
};

use crate::engine::testing::{waiting as snapshot, waiting_conn as conn};

/// An engine that took one snapshot.
fn waited(at_ms: u64, conns: Vec<WaitingConn>) -> Engine {
    let mut engine = Engine::new(Config::default());
    engine.waiting(&snapshot(at_ms, conns));
    engine
}

fn awaiting(engine: &Engine) -> Vec<crate::engine::Finding> {
    engine
        .findings()
        .into_iter()
        .filter(|f| f.kind == Kind::AwaitingReply)
        .collect()
}

#[test]
fn several_connections_silent_together_are_critical() {
    let mut engine = Engine::new(Config::default());
    let db = "10.0.0.7:5432";
    // Three waits that began within 400 ms of each other, seen twice.
    for at in [100_000, 102_000] {
        let d = at - 100_000;
        engine.waiting(&snapshot(
            at,
            vec![
                conn(9, "10.0.0.1:40001", db, 40_000 + d, false),
                conn(9, "10.0.0.1:40002", db, 40_400 + d, false),
                conn(9, "10.0.0.1:40003", db, 40_200 + d, false),
            ],
        ));
    }
    let f = awaiting(&engine);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].severity, Severity::Critical);
    assert_eq!(f[0].count, 3);
    assert_eq!(f[0].endpoint, db);
    assert_eq!(f[0].evidence["silent_together"], 3);
    assert_eq!(f[0].evidence["waiting_ms"], 42_400);
    assert_has!(f[0].summary, "the signature of a vanished peer");
}

#[test]
fn a_lone_wait_is_a_warning_and_keepalive_makes_it_info() {
    let engine = waited(
        50_000,
        vec![
            // Two to one peer, but their waits began 20 s apart: two slow queries.
            conn(9, "10.0.0.1:40001", "10.0.0.7:5432", 45_000, false),
            conn(9, "10.0.0.1:40002", "10.0.0.7:5432", 25_000, false),
            conn(9, "10.0.0.1:40003", "10.0.0.8:6379", 31_000, true),
        ],
    );
    let f = awaiting(&engine);
    assert_eq!(f.len(), 2);
    let db = f
        .iter()
        .find(|f| f.endpoint == "10.0.0.7:5432")
        .expect("db");
    assert_eq!(db.severity, Severity::Warning);
    assert_eq!(db.evidence["silent_together"], 1);
    let redis = f
        .iter()
        .find(|f| f.endpoint == "10.0.0.8:6379")
        .expect("redis");
    assert_eq!(redis.severity, Severity::Info);
    assert_has!(redis.summary, "keepalive on");
}

#[test]
fn the_worst_moment_is_kept_after_the_waits_end() {
    let mut engine = Engine::new(Config::default());
    let db = "10.0.0.7:5432";
    engine.waiting(&snapshot(
        10_000,
        vec![
            conn(9, "10.0.0.1:40001", db, 31_000, false),
            conn(9, "10.0.0.1:40002", db, 31_000, false),
        ],
    ));
    engine.waiting(&snapshot(
        12_000,
        vec![conn(9, "10.0.0.1:40001", db, 33_000, false)],
    ));
    let f = awaiting(&engine);
    assert_eq!(f[0].count, 2);
    assert_eq!(f[0].severity, Severity::Critical);
    assert_eq!(f[0].evidence["waiting_ms"], 33_000);
}

fn with_keepalive(mut c: WaitingConn, idle_s: u64, intvl_s: u64, probes: u32) -> WaitingConn {
    c.keepalive = true;
    c.last_ack_ms = Some(c.waiting_ms - 40);
    c.keepalive_settings = Some(KeepaliveSettings {
        idle_ms: idle_s * 1000,
        interval_ms: intvl_s * 1000,
        probes,
        user_timeout_ms: 0,
        source: SettingsSource::Socket,
    });
    c
}

#[test]
fn keepalive_that_ends_the_wait_in_hours_is_a_hang_not_info() {
    let bouncer = "10.0.0.7:6432";
    // libpq's default: SO_KEEPALIVE with the kernel's 2 h idle, 9 probes 75 s apart.
    let engine = waited(
        100_000,
        vec![
            with_keepalive(
                conn(9, "10.0.0.1:40001", bouncer, 40_000, false),
                7200,
                75,
                9,
            ),
            with_keepalive(
                conn(9, "10.0.0.1:40002", bouncer, 40_300, false),
                7200,
                75,
                9,
            ),
        ],
    );
    let f = awaiting(&engine);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].severity, Severity::Critical, "{}", f[0].summary);
    // 7200 s + 9 x 75 s after the later ACK, 39.96 s ago: the last wait ends then.
    let ends = f[0].evidence["keepalive_ends_in_ms"]
        .as_u64()
        .expect("ends");
    assert_eq!(ends, 7_875_000 - 39_960);
    assert_has!(
        f[0].summary,
        "keepalive on, but its probes end the wait only in 2 h 10 min"
    );
    assert_has!(f[0].summary, "idle 2 h + 9 x 1 min 15 s");
    assert_eq!(f[0].evidence["keepalive_probes"], 9);
}

#[test]
fn keepalive_that_ends_the_wait_within_minutes_ranks_info() {
    let redis = "10.0.0.8:6379";
    let engine = waited(
        100_000,
        vec![
            with_keepalive(conn(9, "10.0.0.1:40001", redis, 40_000, false), 30, 5, 3),
            with_keepalive(conn(9, "10.0.0.1:40002", redis, 40_000, false), 30, 5, 3),
        ],
    );
    let f = awaiting(&engine);
    assert_eq!(f[0].severity, Severity::Info, "{}", f[0].summary);
    assert_eq!(f[0].evidence["keepalive_ends_in_ms"], 5_040);
    assert_has!(f[0].summary, "its probes end the wait in 5 s");
}

#[test]
fn user_timeout_ends_keepalive_at_the_first_probe_round_past_it() {
    let k = |user_timeout_ms| KeepaliveSettings {
        idle_ms: 30_000,
        interval_ms: 10_000,
        probes: 9,
        user_timeout_ms,
        source: SettingsSource::Namespace,
    };
    assert_eq!(k(0).gives_up_after_ms(), 120_000);
    // At least one probe must be out: the second firing.
    assert_eq!(k(5_000).gives_up_after_ms(), 40_000);
    assert_eq!(k(45_000).gives_up_after_ms(), 50_000);
    assert_eq!(k(50_000).gives_up_after_ms(), 50_000);
}

#[test]
fn separate_worker_processes_silent_together_are_one_critical_group() {
    let mut engine = Engine::new(Config::default());
    let bouncer = "192.0.2.2:6432";
    let mut conns = Vec::new();
    for (pid, port) in [(101, 40001), (102, 40002), (103, 40003)] {
        let mut c = conn(pid, &format!("192.0.2.1:{port}"), bouncer, 8_000, false);
        c.process.comm = "psql".into();
        conns.push(c);
    }
    engine.waiting(&snapshot(100_000, conns));
    let f = awaiting(&engine);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].severity, Severity::Critical);
    assert_eq!(f[0].count, 3);
    assert_eq!(f[0].evidence["pids"], serde_json::json!([101, 102, 103]));
    assert_has!(f[0].summary, starts_with "3 connections from psql (pids 101, 102, 103) to 192.0.2.2:6432");
}

#[test]
fn a_peer_whose_end_is_open_in_the_same_namespace_is_slow_not_gone() {
    let db = "127.0.0.1:5432";
    let conns = (0..3)
        .map(|i| {
            let mut c = conn(9, &format!("127.0.0.1:{}", 39_000 + i), db, 8_000, false);
            c.peer_here = true;
            c
        })
        .collect();
    let engine = waited(100_000, conns);
    let f = awaiting(&engine);
    assert_eq!(f[0].severity, Severity::Info, "{}", f[0].summary);
    assert_eq!(f[0].evidence["peer_here"], true);
    assert_has!(f[0].summary, "slow or stuck, not gone");
}
