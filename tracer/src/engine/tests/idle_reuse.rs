use super::{of_kind, run};
use crate::engine::testing::assert_has;
use crate::{
    engine::{testing::Sock, Kind, Severity},
    event::{Event, EventKind, TcpState::*},
};

const SERVER: &str = "10.0.0.5:8080";

/// A pooled client connection that the server closes after `idle` ms of quiet.
fn closed_by_server(sock: u64, port: u16, at: u64, idle: u64) -> (Sock, Vec<Event>) {
    let c = Sock::new(sock, 4242, "pool", &format!("10.0.0.1:{port}"), SERVER);
    let mut ev = c.connect(at);
    ev.push(c.state(at + idle, Established, CloseWait, idle));
    (c, ev)
}

#[test]
fn idle_timeout_is_the_cluster_median_within_a_tick() {
    let mut events = Vec::new();
    for (i, idle) in (0u16..).zip([5000, 5004, 4996, 5000]) {
        let (_, ev) = closed_by_server(u64::from(i) + 1, 40000 + i, u64::from(i) * 10_000, idle);
        events.extend(ev);
    }
    // Noise: closes at unrelated idle times do not move the estimate.
    for (i, idle) in (0u16..).zip([1200, 3400]) {
        let (_, ev) = closed_by_server(100 + u64::from(i), 41000 + i, 50_000, idle);
        events.extend(ev);
    }
    let engine = run(&events);
    let f = of_kind(&engine, Kind::IdleCloseTimeout);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].severity, Severity::Info);
    assert_eq!(f[0].endpoint, SERVER);
    assert_eq!(f[0].evidence["idle_timeout_ms"], 5000);
    assert_eq!(f[0].evidence["spread_ms"], 8);
    assert_eq!(f[0].evidence["samples"], 4);
    assert_eq!(f[0].evidence["idle_closes_seen"], 6);
    assert_has!(f[0].summary, "after 5.00 s");
    assert!(
        of_kind(&engine, Kind::KeepaliveReuseRace).is_empty(),
        "no reuse, no race"
    );
}

#[test]
fn two_samples_are_not_enough_and_short_closes_do_not_count() {
    let mut events = Vec::new();
    for (i, idle) in (0u16..).zip([5000, 5000, 100, 120, 130]) {
        events.extend(closed_by_server(u64::from(i) + 1, 40000 + i, 0, idle).1);
    }
    assert!(of_kind(&run(&events), Kind::IdleCloseTimeout).is_empty());
}

#[test]
fn one_connection_seen_from_both_ends_counts_once() {
    let mut events = Vec::new();
    for i in 0..2u16 {
        let client = Sock::new(
            10 + u64::from(i),
            1,
            "client",
            &format!("127.0.0.1:{}", 40000 + i),
            "127.0.0.1:8080",
        );
        let server = Sock::new(
            20 + u64::from(i),
            2,
            "server",
            "127.0.0.1:8080",
            &format!("127.0.0.1:{}", 40000 + i),
        );
        events.extend(client.connect(0));
        events.extend(server.accepted(0));
        events.push(server.state(2000, Established, FinWait1, 2000));
        events.push(client.state(2000, Established, CloseWait, 2000));
    }
    // Two connections, four views: below the three-sample minimum.
    assert!(of_kind(&run(&events), Kind::IdleCloseTimeout).is_empty());
}

#[test]
fn reset_in_close_wait_is_a_failed_reuse_with_its_gap() {
    let mut events = Vec::new();
    for i in 0..3u16 {
        let (c, ev) = closed_by_server(u64::from(i) + 1, 40000 + i, 0, 2000);
        events.extend(ev);
        // The pool hands the dead connection out 500 ms after the FIN.
        events.push(c.reset_received(2500, CloseWait, 2500));
        // Its error report must not count the same connection twice.
        events.push(c.error(2500, libc::ECONNRESET));
    }
    let engine = run(&events);
    let f = of_kind(&engine, Kind::KeepaliveReuseRace);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].severity, Severity::Critical);
    assert_eq!(f[0].count, 3);
    assert_eq!(f[0].process.as_ref().map(|p| p.pid), Some(4242));
    assert_eq!(f[0].evidence["idle_timeout_ms"], 2000);
    assert_eq!(f[0].evidence["reuse_gap_ms"], 2500);
    assert_eq!(
        f[0].summary,
        "pool (pid 4242) reused 3 connections to 10.0.0.5:8080 after the server closed them at 2.00 s idle"
    );
    assert!(f[0].recommendation.contains("below 2.00 s"));
}

/// Three pooled connections the server closes at 2 s idle; 600 ms after the FIN
/// each closes with its last send `send_idle_ms` back (0: it wrote, then read the
/// EOF and closed) and then receives a reset in LAST_ACK.
fn reset_after_closing_in_close_wait(send_idle_ms: u64) -> Vec<Event> {
    let mut events = Vec::new();
    for i in 0..3u16 {
        let (c, ev) = closed_by_server(u64::from(i) + 1, 40000 + i, 0, 2000);
        events.extend(ev);
        let mut close = c.state(2600, CloseWait, LastAck, send_idle_ms);
        if let EventKind::State { recv_idle_ms, .. } = &mut close.kind {
            *recv_idle_ms = 2600;
        }
        events.push(close);
        events.push(c.reset_received(2601, LastAck, 2601));
        events.push(c.state(2601, LastAck, Close, 1));
    }
    events
}

/// A request written after the server's FIN whose reset comes back after the client
/// read the EOF and closed (the reset a round trip away, as on a real network; seen
/// in a 6.1 guest with uvicorn and Python's http.client): the reset arrives in
/// LAST_ACK, and it is the same failed reuse, with the gap at the write.
#[test]
fn reset_in_last_ack_after_a_write_in_close_wait_is_a_failed_reuse() {
    let f = of_kind(
        &run(&reset_after_closing_in_close_wait(0)),
        Kind::KeepaliveReuseRace,
    );
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].count, 3);
    assert_eq!(f[0].evidence["reuse_gap_ms"], 2600);
    assert_eq!(f[0].evidence["idle_timeout_ms"], 2000);
}

/// A client that closes in CLOSE_WAIT without writing (its last send before the FIN)
/// and then gets a reset in LAST_ACK (a server aborting its side) reused nothing.
#[test]
fn reset_in_last_ack_without_a_write_is_not_a_race() {
    let events = reset_after_closing_in_close_wait(2600);
    assert!(of_kind(&run(&events), Kind::KeepaliveReuseRace).is_empty());
}

#[test]
fn healthy_client_that_closes_in_close_wait_is_not_a_race() {
    let mut events = Vec::new();
    for i in 0..3u16 {
        let (c, ev) = closed_by_server(u64::from(i) + 1, 40000 + i, 0, 2000);
        events.extend(ev);
        events.push(c.state(2100, CloseWait, LastAck, 2100));
        events.push(c.state(2101, LastAck, Close, 2101));
    }
    let engine = run(&events);
    assert!(of_kind(&engine, Kind::KeepaliveReuseRace).is_empty());
    assert_eq!(of_kind(&engine, Kind::IdleCloseTimeout).len(), 1);
}

#[test]
fn reset_in_established_counts_only_near_the_known_timeout() {
    let mut events = Vec::new();
    for i in 0..3u16 {
        events.extend(closed_by_server(u64::from(i) + 1, 40000 + i, 0, 5000).1);
    }
    let racer = Sock::new(50, 4242, "pool", "10.0.0.1:45000", SERVER);
    events.extend(racer.connect(10_000));
    events.push(racer.reset_received(14_990, Established, 4990));
    let early = Sock::new(51, 4242, "pool", "10.0.0.1:45001", SERVER);
    events.extend(early.connect(10_000));
    events.push(early.reset_received(11_000, Established, 1000));
    let f = of_kind(&run(&events), Kind::KeepaliveReuseRace);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].count, 1);
    assert_eq!(f[0].evidence["raced_fin"], 1);
}

#[test]
fn resets_on_accepted_connections_are_not_pool_reuse() {
    let s = Sock::new(7, 9, "server", "10.0.0.5:8080", "10.0.0.1:40000");
    let mut events = s.accepted(0);
    events.push(s.state(3000, Established, CloseWait, 3000));
    events.push(s.reset_received(3500, CloseWait, 3500));
    assert!(of_kind(&run(&events), Kind::KeepaliveReuseRace).is_empty());
}

/// An accepted connection on `SERVER` from `client`, closed by the server after
/// `idle` ms quiet; its time-wait socket answers the client's late request with a
/// reset (the owner handed over by `recent::RecentOwners`).
fn server_closes(sock: u64, client: &str, at: u64, idle: u64, reuse_after: u64) -> Vec<Event> {
    let s = Sock::new(sock, 77, "uvicorn", SERVER, client);
    let mut ev = s.accepted(at);
    ev.push(s.state(at + idle, Established, FinWait1, idle));
    ev.push(s.state(at + idle, FinWait1, FinWait2, idle));
    ev.push(s.state(at + idle, FinWait2, Close, idle));
    if reuse_after > 0 {
        let tw = Sock::new(sock + 1000, 77, "uvicorn", SERVER, client);
        ev.push(tw.reset_sent_for_data(at + reuse_after, Some(TimeWait), "TCP_TIMEWAIT_SOCKET"));
    }
    ev
}

#[test]
fn server_vantage_names_the_clients_that_reused_what_it_closed() {
    let mut events = Vec::new();
    for i in 0..6u16 {
        let client = format!("10.0.1.{}:{}", 1 + i % 2, 40000 + i);
        events.extend(server_closes(
            u64::from(i) + 1,
            &client,
            u64::from(i) * 100,
            5000,
            6000,
        ));
    }
    // A connection the server closed that no client reused: no reset, no count.
    events.extend(server_closes(50, "10.0.1.3:41000", 0, 5000, 0));
    let engine = run(&events);
    let f = of_kind(&engine, Kind::KeepaliveReuseRace);
    assert_eq!(f.len(), 1, "{f:#?}");
    let r = &f[0];
    assert_eq!(r.severity, Severity::Critical);
    assert_eq!(r.endpoint, SERVER);
    assert_eq!(r.count, 6);
    assert_eq!(r.process.as_ref().map(|p| p.pid), Some(77));
    assert_eq!(r.evidence["vantage"], "server");
    assert_eq!(r.evidence["idle_timeout_ms"], 5000);
    assert_eq!(
        r.evidence["clients"],
        serde_json::json!(["10.0.1.1", "10.0.1.2"])
    );
    assert_eq!(r.evidence["reset_reasons"]["TCP_TIMEWAIT_SOCKET"], 6);
    assert_eq!(r.evidence["raced_fin"], 0);
    assert_has!(r.summary, starts_with "clients at 10.0.1.1, 10.0.1.2 reused connections 6 times after this server, uvicorn (pid 77), closed them at 5.00 s idle");
    assert_has!(r.recommendation, "below 5.00 s");
    assert!(r.recommendation.contains("raise the keep-alive timeout"));
}

/// A churning server (`Connection: close`: it closes each connection right after
/// its answer) is not closing idle connections: its closes are not remembered for
/// the race, so a full day of them drops nothing the race needs, and a late reset
/// on such a tuple is not a pool's reuse.
#[test]
fn server_closes_right_after_the_answer_are_not_remembered_for_the_race() {
    let mut events = Vec::new();
    for i in 0..70_000u64 {
        let client = format!(
            "10.0.{}.{}:{}",
            i / 60_000,
            1 + i % 200,
            30_000 + i % 30_000
        );
        events.extend(server_closes(i + 1, &client, i, 2, 0));
    }
    events.extend(server_closes(90_001, "10.9.0.1:40000", 80_000, 3, 90_000));
    let engine = run(&events);
    assert_eq!(engine.stats().evicted, 0);
    assert!(of_kind(&engine, Kind::KeepaliveReuseRace).is_empty());
}

#[test]
fn server_vantage_counts_a_request_crossing_the_fin_and_each_connection_once() {
    let s = Sock::new(1, 77, "uvicorn", SERVER, "10.0.1.1:40000");
    let mut events = s.accepted(0);
    events.push(s.state(5000, Established, FinWait1, 5000));
    // The request was in flight: it reaches the orphaned FIN_WAIT1 socket.
    events.push(s.reset_sent_for_data(5001, Some(FinWait1), "TCP_ABORT_ON_DATA"));
    events.push(s.state(5001, FinWait1, Close, 5000));
    // A second reset on the same tuple (a retransmitted request) is the same failure.
    events.push(s.reset_sent_for_data(5300, None, "NO_SOCKET"));
    let f = of_kind(&run(&events), Kind::KeepaliveReuseRace);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].count, 1);
    assert_eq!(f[0].evidence["raced_fin"], 1);
    assert_eq!(f[0].evidence["reset_reasons"]["TCP_ABORT_ON_DATA"], 1);
}

#[test]
fn both_ends_on_this_node_count_once_on_the_clients_side() {
    let (c, mut events) = closed_by_server(1, 40000, 0, 5000);
    let s = Sock::new(2, 77, "uvicorn", SERVER, "10.0.0.1:40000");
    events.extend(s.accepted(0));
    events.push(s.state(5000, Established, FinWait1, 5000));
    events.push(s.state(5000, FinWait1, FinWait2, 5000));
    events.push(s.state(5000, FinWait2, Close, 5000));
    let tw = Sock::new(3, 77, "uvicorn", SERVER, "10.0.0.1:40000");
    events.push(tw.reset_sent_for_data(6000, Some(TimeWait), "TCP_TIMEWAIT_SOCKET"));
    events.push(c.reset_received(6000, CloseWait, 6000));
    let f = of_kind(&run(&events), Kind::KeepaliveReuseRace);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].evidence["vantage"], "client");
    assert_eq!(f[0].count, 1);
}

/// A client dialling a Service VIP that DNAT sends to the pod, both ends on this
/// node: the client sees the VIP, the server its pod address. Conntrack's `tuple`
/// records join the two views: one failure counted once, the backend named, one
/// idle-close timeout (the client's, under the VIP).
#[test]
fn the_race_behind_a_service_vip_counts_once_and_names_the_backend() {
    const VIP: &str = "10.96.0.50:80";
    const POD: &str = "10.238.0.2:8000";
    let mut engine = crate::engine::Engine::new(crate::engine::Config::default());
    let learn = |engine: &mut crate::engine::Engine, e: &Event, client: &str| {
        engine.tuple(&crate::event::TupleInfo {
            time: e.time,
            mono_ns: e.mono_ns,
            local: client.parse().expect("addr"),
            remote: VIP.parse().expect("addr"),
            holder: None,
            backend: Some(POD.parse().expect("addr")),
        });
    };
    for i in 0..3u16 {
        let at = u64::from(i) * 10_000;
        let client = format!("10.238.0.1:{}", 40000 + i);
        let c = Sock::new(10 + u64::from(i), 4242, "pool", &client, VIP);
        let s = Sock::new(20 + u64::from(i), 77, "uvicorn", POD, &client);
        let mut events = c.connect(at);
        events.extend(s.accepted(at));
        // The server closes idle at 2 s; the pipeline asks conntrack first.
        let close = s.state(at + 2000, Established, FinWait1, 2000);
        for e in events {
            engine.ingest(&e);
        }
        learn(&mut engine, &close, &client);
        engine.ingest(&close);
        engine.ingest(&c.state(at + 2000, Established, CloseWait, 2000));
        engine.ingest(&s.state(at + 2000, FinWait1, FinWait2, 2000));
        engine.ingest(&s.state(at + 2000, FinWait2, Close, 2000));
        let tw = Sock::new(30 + u64::from(i), 77, "uvicorn", POD, &client);
        engine.ingest(&tw.reset_sent_for_data(at + 2500, Some(TimeWait), "TCP_TIMEWAIT_SOCKET"));
        engine.ingest(&c.reset_received(at + 2500, CloseWait, 2500));
    }
    let f = of_kind(&engine, Kind::KeepaliveReuseRace);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].count, 3);
    assert_eq!(f[0].endpoint, VIP);
    assert_eq!(f[0].evidence["backends"], serde_json::json!([POD]));
    assert_has!(
        f[0].summary,
        "to 10.96.0.50:80 (-> backend 10.238.0.2:8000)"
    );
    let idle = of_kind(&engine, Kind::IdleCloseTimeout);
    assert_eq!(idle.len(), 1, "{idle:#?}");
    assert_eq!(idle[0].endpoint, VIP);
    assert_eq!(idle[0].evidence["backends"], serde_json::json!([POD]));
}
