//! `listen-overflow`, `connect-timeout` folded into it, `conntrack-full`.

use crate::engine::testing::assert_has;

use super::of_kind;
use crate::{
    engine::{
        testing::{listeners, sockstat, Sock},
        Config, Engine, Kind, Severity,
    },
    event::{
        ConntrackStats, Listeners,
        TcpState::{Close, SynSent},
    },
};

const LISTENER: &str = "10.237.0.2:18095";

fn pass(at_ms: u64, queued: u32, overflows: u64) -> Listeners {
    let mut l = listeners(at_ms, LISTENER, (queued, 4), overflows);
    for q in &mut l.queues {
        q.process.comm = "stalled-srv".into();
    }
    l
}

#[test]
fn drops_at_a_full_queue_name_the_listener_and_fold_the_clients_timeouts() {
    let mut engine = Engine::new(Config::default());
    engine.listeners(&pass(0, 0, 100));
    engine.listeners(&pass(2000, 5, 100));
    // A client on this node gave up on the same listener.
    let c = Sock::new(9, 400, "client", "10.237.0.1:40000", LISTENER);
    engine.ingest(&c.state(2500, Close, SynSent, 0));
    engine.ingest(&c.state(4000, SynSent, Close, 0));
    engine.listeners(&pass(4000, 5, 125));
    let f = of_kind(&engine, Kind::ListenOverflow);
    assert_eq!(f.len(), 1, "{f:#?}");
    let f = &f[0];
    assert_eq!(f.severity, Severity::Critical, "drops just now");
    assert_eq!(f.endpoint, LISTENER);
    assert_eq!(f.count, 25);
    assert_eq!(f.process.as_ref().map(|p| p.pid), Some(300));
    assert_eq!(f.evidence["queued"], 5);
    assert_eq!(f.evidence["backlog"], 4);
    assert_eq!(f.evidence["drops_per_s"], 12.5);
    assert_eq!(f.evidence["full_for_ms"], 2000);
    assert_eq!(f.evidence["client_timeouts"], 1);
    assert_has!(f.summary, starts_with "listener 10.237.0.2:18095 of stalled-srv (pid 300) dropped 25 connection attempts: its accept queue is full (5/4 queued, full for 2.00 s)");
    assert!(
        of_kind(&engine, Kind::ConnectTimeout).is_empty(),
        "one incident, one finding"
    );
    // Ten quiet seconds later it is no longer critical.
    engine.listeners(&pass(16_000, 0, 125));
    engine.sample(&sockstat(16_000, 1, [100, 200, 300]));
    let f = of_kind(&engine, Kind::ListenOverflow);
    assert_eq!(f[0].severity, Severity::Warning);
}

#[test]
fn a_busy_listener_that_drops_nothing_raises_nothing() {
    let mut engine = Engine::new(Config::default());
    for (at, queued) in [(0, 3), (2000, 100), (4000, 40)] {
        let mut p = pass(at, queued, 7);
        p.queues[0].backlog = 511;
        engine.listeners(&p);
    }
    assert!(of_kind(&engine, Kind::ListenOverflow).is_empty());
}

#[test]
fn conntrack_drops_are_a_node_finding() {
    let mut engine = Engine::new(Config::default());
    for (at, drop) in [(0, 5), (1000, 5), (2000, 40)] {
        let mut s = sockstat(at, 1, [100, 200, 300]);
        s.conntrack = Some(ConntrackStats {
            entries: 65_536,
            max: 65_536,
            drop,
            early_drop: 0,
            insert_failed: 0,
        });
        engine.sample(&s);
    }
    let f = of_kind(&engine, Kind::ConntrackFull);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].severity, Severity::Critical);
    assert_eq!(f[0].evidence["drop"], 35);
    assert_eq!(f[0].evidence["nf_conntrack_max"], 65_536);
}
