use super::{of_kind, run};
use crate::engine::testing::assert_has;
use crate::{
    engine::{testing::Sock, Config, Engine, Kind, Severity},
    event::TcpState::*,
};

#[test]
fn retransmits_without_ack_past_the_threshold_are_a_stall() {
    let c = Sock::new(1, 30, "worker", "10.0.0.1:40000", "10.0.0.7:6432");
    let mut events = c.connect(0);
    for (at, idle, n) in [
        (1200, 200, 0),
        (1600, 600, 1),
        (2400, 1400, 2),
        (4000, 3000, 3),
        (7200, 6200, 4),
    ] {
        events.push(c.retransmit(at, idle, n));
    }
    events.push(c.error(20_000, libc::ETIMEDOUT));
    let f = of_kind(&run(&events), Kind::StalledPeer);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].count, 1);
    assert_eq!(f[0].endpoint, "10.0.0.7:6432");
    assert_eq!(f[0].evidence["no_ack_ms"], 6200);
    assert_eq!(f[0].evidence["retransmits"], 5);
    assert_eq!(f[0].evidence["timed_out"], 1);
    assert_eq!(f[0].evidence["keepalive"], false);
    assert_has!(f[0].summary, "keepalive and TCP_USER_TIMEOUT off");
}

#[test]
fn short_stalls_and_closed_peers_are_not_reported() {
    let short = Sock::new(1, 30, "worker", "10.0.0.1:40000", "10.0.0.7:6432");
    let mut events = short.connect(0);
    events.push(short.retransmit(1200, 2999, 0));
    let finned = Sock::new(2, 30, "worker", "10.0.0.1:40001", "10.0.0.7:6432");
    events.extend(finned.connect(0));
    events.push(finned.state(100, Established, CloseWait, 100));
    events.push(finned.retransmit(5000, 4900, 3));
    assert!(of_kind(&run(&events), Kind::StalledPeer).is_empty());
}

#[test]
fn orphans_retransmitting_their_close_are_info_and_workers_still_critical() {
    // The client gave up after 1 s, closed, exited: its FIN retransmits for minutes.
    let gone = Sock::new(1, 41, "python3", "10.0.0.1:40000", "10.0.0.7:9000");
    let mut events = gone.connect(0);
    events.push(gone.retransmit(600, 400, 0));
    events.push(gone.state(1000, Established, FinWait1, 1000));
    for (at, idle, n) in [
        (1400, 1200, 1),
        (3000, 2800, 2),
        (6200, 6000, 3),
        (13000, 12800, 4),
    ] {
        events.push(gone.orphan_retransmit(at, idle, n));
    }
    // Left behind by an earlier run: owner unknown, orphaned.
    let old = Sock::new(2, 0, "", "10.0.0.1:40001", "10.0.0.7:9000");
    events.push(old.orphan_retransmit(2000, 90_000, 9));
    // A worker of another process still blocked on the same vanished peer.
    let worker = Sock::new(3, 42, "worker", "10.0.0.1:40002", "10.0.0.7:9000");
    events.extend(worker.connect(0));
    for (at, idle, n) in [(1200, 200, 0), (4000, 3000, 1), (9000, 8000, 2)] {
        events.push(worker.retransmit(at, idle, n));
    }
    let mut engine = run(&events);
    engine.sample(&crate::engine::testing::sockstat(
        14_000,
        10,
        [100, 200, 300],
    ));
    let f = of_kind(&engine, Kind::StalledPeer);
    assert_eq!(f.len(), 2, "{f:#?}");
    let critical: Vec<_> = f
        .iter()
        .filter(|f| f.severity == Severity::Critical)
        .collect();
    assert_eq!(critical.len(), 1, "only the worker is critical: {f:#?}");
    assert_eq!(critical[0].process.as_ref().map(|p| p.pid), Some(42));
    assert_eq!(critical[0].count, 1);
    let orphans = f
        .iter()
        .find(|f| f.severity == Severity::Info)
        .expect("info");
    assert!(orphans.process.is_none(), "nobody holds an orphan");
    assert_eq!(orphans.count, 2);
    assert_eq!(orphans.endpoint, "10.0.0.7:9000");
    assert_eq!(orphans.evidence["orphaned"], true);
    assert_eq!(orphans.evidence["no_ack_ms"], 90_000);
    assert_eq!(orphans.evidence["closed_by"][0], "python3 (pid 41)");
    assert_eq!(
        orphans.evidence["closed_by"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(orphans.evidence["max_orphans"], 65536);
    assert_has!(orphans.summary, starts_with "2 orphaned sockets still retransmitting their close to 10.0.0.7:9000");
    assert_has!(orphans.summary, "nobody waits on them");
}

#[test]
fn a_stalled_worker_that_later_closes_stays_critical_and_says_so() {
    let c = Sock::new(1, 30, "worker", "10.0.0.1:40000", "10.0.0.7:6432");
    let mut events = c.connect(0);
    events.push(c.retransmit(4000, 3500, 2));
    events.push(c.state(5000, Established, FinWait1, 4500));
    events.push(c.orphan_retransmit(9000, 8500, 3));
    let f = of_kind(&run(&events), Kind::StalledPeer);
    let critical = f
        .iter()
        .find(|f| f.severity == Severity::Critical)
        .expect("critical");
    assert_eq!(critical.evidence["closed_since"], 1);
    assert!(
        critical
            .summary
            .ends_with("; 1 closed by the process since"),
        "{}",
        critical.summary
    );
    let info = f
        .iter()
        .find(|f| f.severity == Severity::Info)
        .expect("orphan");
    assert_eq!(info.count, 1);
}

#[test]
fn a_short_orphan_retransmit_is_not_reported() {
    let c = Sock::new(1, 30, "worker", "10.0.0.1:40000", "10.0.0.7:6432");
    let mut events = c.connect(0);
    events.push(c.state(100, Established, FinWait1, 100));
    events.push(c.orphan_retransmit(400, 300, 0));
    assert!(of_kind(&run(&events), Kind::StalledPeer).is_empty());
}

fn resets(n: u64, every_ms: u64) -> Engine {
    let mut engine = Engine::new(Config::default());
    for i in 0..n {
        let s = Sock::new(0, 0, "", "10.0.0.5:80", &format!("10.0.0.9:{}", 30000 + i));
        engine.ingest(&s.reset_sent(i * every_ms, None, "NO_SOCKET"));
    }
    engine
}

#[test]
fn a_hundred_resets_in_ten_seconds_is_a_storm() {
    let engine = resets(100, 50);
    let f = of_kind(&engine, Kind::RstStorm);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].endpoint, "10.0.0.5:80");
    assert_eq!(f[0].evidence["resets_sent"], 100);
    assert_eq!(f[0].evidence["reasons"]["NO_SOCKET"], 100);
    assert!(of_kind(&resets(99, 50), Kind::RstStorm).is_empty());
    assert!(
        of_kind(&resets(150, 200), Kind::RstStorm).is_empty(),
        "51 per window at most"
    );
}

#[test]
fn findings_are_sorted_by_severity_and_poll_reports_growth_once() {
    let mut engine = resets(100, 10);
    let c = Sock::new(1, 30, "worker", "10.0.0.1:40000", "10.0.0.7:6432");
    for e in c.connect(0) {
        engine.ingest(&e);
    }
    engine.ingest(&c.retransmit(4000, 4000, 3));
    let kinds: Vec<Kind> = engine.findings().iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        vec![Kind::StalledPeer, Kind::ConnectionRefused, Kind::RstStorm]
    );
    assert_eq!(engine.poll_new().len(), 3);
    assert!(engine.poll_new().is_empty());
    let s = Sock::new(0, 0, "", "10.0.0.5:80", "10.0.0.9:1");
    engine.ingest(&s.reset_sent(2000, None, "NO_SOCKET"));
    let again = engine.poll_new();
    assert_eq!(again.len(), 2, "refused and storm counts grew: {again:#?}");
}

/// Resets are counted under the connection's server, whichever end is traced: a
/// server whose clients abort (resets received on its accepted sockets) and a client
/// node aborting its own connections (resets sent on them) make one endpoint, the
/// server's, not one per client ephemeral port that would fill the table.
#[test]
fn resets_count_under_the_server_from_either_end() {
    let mut engine = Engine::new(Config::default());
    for i in 0..60u16 {
        let client = format!("10.0.0.9:{}", 40_000 + i);
        let served = Sock::new(1 + u64::from(i), 7, "srv", "10.0.0.5:8080", &client);
        let mut events = served.accepted(u64::from(i) * 50);
        events.push(served.reset_received(u64::from(i) * 50 + 1, Established, 0));
        // An old connection (accepted before the trace): its ports tell.
        let old = Sock::new(
            0,
            0,
            "",
            "10.0.0.5:8080",
            &format!("10.0.0.8:{}", 40_000 + i),
        );
        events.push(old.reset_received(u64::from(i) * 50 + 2, Established, 0));
        for e in events {
            engine.ingest(&e);
        }
    }
    let mut client_node = Engine::new(Config::default());
    for i in 0..100u16 {
        let c = Sock::new(
            1 + u64::from(i),
            9,
            "pool",
            &format!("10.0.0.1:{}", 40_000 + i),
            "10.0.0.5:8080",
        );
        let mut events = c.connect(u64::from(i) * 50);
        events.push(c.reset_sent_for_data(
            u64::from(i) * 50 + 1,
            Some(Established),
            "TCP_ABORT_ON_CLOSE",
        ));
        for e in events {
            client_node.ingest(&e);
        }
    }
    for (engine, resets) in [(&engine, 120), (&client_node, 100)] {
        let f = of_kind(engine, Kind::RstStorm);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].endpoint, "10.0.0.5:8080");
        assert_eq!(f[0].count, resets);
        let endpoints: Vec<_> = engine
            .endpoints()
            .by_endpoint
            .keys()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            endpoints,
            ["10.0.0.5:8080"],
            "no client port is an endpoint"
        );
    }
}

/// A full table lets go of the endpoints with no storm and no reset within the
/// window: a storm at a new endpoint late in a long run is still seen.
#[test]
fn a_full_reset_table_makes_room_for_a_later_storm() {
    let mut engine = Engine::new(Config::default());
    for i in 0..8192u32 {
        let server = format!("10.1.{}.{}:80", i / 256, i % 256);
        let s = Sock::new(0, 0, "", &server, "10.0.0.9:40000");
        engine.ingest(&s.reset_sent(u64::from(i / 8), None, "NO_SOCKET"));
    }
    for i in 0..100u64 {
        let s = Sock::new(0, 0, "", "10.0.0.5:80", &format!("10.0.0.9:{}", 41_000 + i));
        engine.ingest(&s.reset_sent(60_000 + i * 10, None, "NO_SOCKET"));
    }
    let f = of_kind(&engine, Kind::RstStorm);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].endpoint, "10.0.0.5:80");
}
