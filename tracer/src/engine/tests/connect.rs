use super::{of_kind, run};
use crate::engine::testing::assert_has;
use crate::{
    engine::{
        testing::{sockstat, Sock},
        Config, Engine, Kind, Severity,
    },
    event::TcpState::*,
};

#[test]
fn eaddrnotavail_is_critical_with_ports_in_use_and_range() {
    let mut engine = Engine::new(Config::default());
    engine.sample(&sockstat(0, 1, [100, 200, 300]));
    for i in 0..3u16 {
        let c = Sock::new(
            u64::from(i) + 1,
            5,
            "proxy",
            &format!("10.0.0.1:{}", 40000 + i),
            "10.0.0.8:80",
        );
        for e in c.connect(10) {
            engine.ingest(&e);
        }
    }
    let failing = Sock::new(9, 5, "proxy", "0.0.0.0:0", "10.0.0.8:80");
    for at in [20, 30] {
        let mut e = failing.connect_error(at, libc::EADDRNOTAVAIL);
        e.sock = 9 + at;
        engine.ingest(&e);
    }
    let f = of_kind(&engine, Kind::ConnectErrors);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].severity, Severity::Critical);
    assert_eq!(f[0].count, 2);
    assert_eq!(f[0].evidence["errno"], "EADDRNOTAVAIL");
    assert_eq!(f[0].evidence["open_to_destination"], 3);
    assert_eq!(
        f[0].evidence["node_port_range"],
        serde_json::json!([32768, 60999])
    );
    assert_eq!(
        f[0].evidence["local_ports_in_use"],
        serde_json::json!([40000, 40002])
    );
    assert_eq!(
        f[0].summary,
        "proxy (pid 5) failed 2 connects to 10.0.0.8:80 with EADDRNOTAVAIL: no free source port"
    );
    assert_eq!(f[0].evidence["form"], "ports-exhausted");
}

#[test]
fn bound_source_port_names_the_socket_holding_the_tuple() {
    let holder = Sock::new(1, 5, "proxy", "10.0.0.1:5000", "10.0.0.8:80");
    let mut events = holder.connect(0);
    let again = Sock::new(2, 6, "proxy2", "10.0.0.1:5000", "10.0.0.8:80");
    events.push(again.connect_error(10, libc::EADDRNOTAVAIL));
    let f = of_kind(&run(&events), Kind::ConnectErrors);
    let held = &f[0].evidence["held_by"];
    assert_eq!(held["pid"], 5, "{held}");
    assert_eq!(held["state"], "ESTABLISHED", "{held}");
    assert_eq!(f[0].evidence["form"], "tuple-in-use");
    assert_eq!(f[0].evidence["tuple"], "10.0.0.1:5000 -> 10.0.0.8:80");
}

/// Incident 5's own mechanism: a proxy keeping the client's source port closed its
/// previous connection first, so its own time-wait socket holds the 4-tuple.
#[test]
fn bound_port_held_in_time_wait_names_its_closed_connection() {
    let mut engine = crate::engine::Engine::new(Config::default());
    // A table entry on the same tuple whose close was never seen (a socket of another
    // process at a reused address, seen in CI): the kernel's time-wait fact wins.
    let stale = Sock::new(7, 99, "lab-client", "10.0.0.1:5000", "10.0.0.8:80");
    for e in stale.connect(0) {
        engine.ingest(&e);
    }
    let failing = Sock::new(2, 6, "haproxy", "10.0.0.1:5000", "10.0.0.8:80");
    let e = failing.connect_error(10, libc::EADDRNOTAVAIL);
    engine.tuple(&crate::event::TupleInfo {
        time: e.time,
        mono_ns: e.mono_ns,
        local: e.local,
        remote: e.remote,
        holder: Some(crate::event::TupleHolder {
            state: TimeWait,
            process: crate::event::Process {
                pid: 6,
                comm: "haproxy".into(),
                cgroup: 0,
            },
            closed_ago_ms: Some(1_500),
            first_fin: Some("local".into()),
            released_in_ms: Some(58_500),
        }),
        backend: None,
    });
    engine.ingest(&e);
    let f = of_kind(&engine, Kind::ConnectErrors);
    assert_eq!(f[0].severity, Severity::Critical);
    assert_eq!(f[0].evidence["form"], "tuple-in-use");
    assert_eq!(f[0].evidence["held_by"]["state"], "TIME_WAIT");
    assert_eq!(
        f[0].summary,
        "haproxy (pid 6) failed 1 connect to 10.0.0.8:80 with EADDRNOTAVAIL: its bound source 10.0.0.1:5000 -> 10.0.0.8:80 is held by haproxy (pid 6) in TIME_WAIT, its connection closed 1.50 s earlier (this side closed first); freed in 58.50 s"
    );
    assert_has!(f[0].recommendation, "IP_BIND_ADDRESS_NO_PORT");
}

#[test]
fn refused_connect_counts_once_per_socket_with_the_no_socket_reset() {
    let c = Sock::new(3, 11, "curl", "127.0.0.1:40000", "127.0.0.1:9");
    let mut events = vec![c.state(0, Close, SynSent, 0)];
    let rst = Sock::new(0, 0, "", "127.0.0.1:9", "127.0.0.1:40000");
    events.push(rst.reset_sent(1, None, "NO_SOCKET"));
    events.push(c.reset_received(1, SynSent, 0));
    events.push(c.state(1, SynSent, Close, 0));
    // Asynchronous report, then the synchronous return of the same connect().
    events.push(c.error(1, libc::ECONNREFUSED));
    events.push(c.connect_error(1, libc::ECONNREFUSED));
    let engine = run(&events);
    assert!(of_kind(&engine, Kind::ConnectErrors).is_empty());
    assert!(of_kind(&engine, Kind::KeepaliveReuseRace).is_empty());
    let f = of_kind(&engine, Kind::ConnectionRefused);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].endpoint, "127.0.0.1:9");
    assert_eq!(f[0].count, 1);
    assert_eq!(f[0].evidence["refused_connects"], 1);
    assert_eq!(f[0].evidence["resets_sent_no_socket"], 1);
    assert_eq!(f[0].process.as_ref().map(|p| p.pid), Some(11));
}

/// Issue 21: a connect whose SYNs go unanswered is a connect timeout (the kernel's
/// ETIMEDOUT, or the caller giving up), never a stall, and its age runs from the SYN.
#[test]
fn unanswered_syns_are_connect_timeouts_by_kernel_or_caller() {
    let dest = "10.9.9.9:443";
    let kernel = Sock::new(3, 11, "app", "10.0.0.1:40000", dest);
    let mut events = vec![kernel.state(0, Close, SynSent, 0)];
    for at in [1000, 3000, 7000] {
        let mut r = kernel.retransmit(at, 0, 1);
        if let crate::event::EventKind::Retransmit { state, .. } = &mut r.kind {
            *state = SynSent;
        }
        events.push(r);
    }
    events.push(kernel.error(15_000, libc::ETIMEDOUT));
    events.push(kernel.state(15_000, SynSent, Close, 0));
    // A client with a 1.5 s timeout closes its connecting socket itself.
    let caller = Sock::new(4, 11, "app", "10.0.0.1:40001", dest);
    events.push(caller.state(20_000, Close, SynSent, 0));
    events.push(caller.state(21_500, SynSent, Close, 0));
    // A connect cancelled at once is no timeout.
    let quick = Sock::new(5, 11, "app", "10.0.0.1:40002", dest);
    events.push(quick.state(30_000, Close, SynSent, 0));
    events.push(quick.state(30_010, SynSent, Close, 0));
    let engine = run(&events);
    assert!(of_kind(&engine, Kind::ConnectErrors).is_empty());
    assert!(
        of_kind(&engine, Kind::StalledPeer).is_empty(),
        "never established: no stall"
    );
    let f = of_kind(&engine, Kind::ConnectTimeout);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].severity, Severity::Warning);
    assert_eq!(f[0].count, 2);
    assert_eq!(f[0].evidence["by_kernel"], 1);
    assert_eq!(f[0].evidence["by_caller"], 1);
    assert_eq!(f[0].evidence["max_wait_ms"], 15_000, "from the SYN");
    assert_eq!(f[0].evidence["syn_retransmits"], 3);
}

#[test]
fn no_socket_reset_for_a_late_segment_is_not_a_refusal() {
    let rst = Sock::new(0, 0, "", "127.0.0.1:45000", "127.0.0.1:80");
    let mut late = rst.reset_sent(1, None, "NO_SOCKET");
    if let crate::event::EventKind::Reset { syn, .. } = &mut late.kind {
        *syn = false;
    }
    let engine = run(&[late]);
    assert!(of_kind(&engine, Kind::ConnectionRefused).is_empty());
}

#[test]
fn findings_name_the_container_and_pod_of_the_callers_cgroup() {
    let mut engine = Engine::new(Config::default());
    let c = Sock::new(3, 11, "curl", "127.0.0.1:40000", "127.0.0.1:9");
    engine.ingest(&c.connect_error(1, libc::ECONNREFUSED));
    let container = crate::k8s::ContainerRef {
        runtime: Some("containerd".into()),
        container_id: Some("abc123abc123abc1".into()),
        pod_uid: Some("7a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9".into()),
        qos: Some("burstable".into()),
    };
    engine.cgroup(&crate::k8s::CgroupInfo {
        id: 1,
        path: "/kubepods.slice/x".into(),
        container,
    });
    let process = |e: &Engine| {
        of_kind(e, Kind::ConnectionRefused)[0]
            .process
            .clone()
            .expect("process")
    };
    assert_eq!(
        process(&engine).pod.as_deref(),
        Some("7a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"),
        "UID until the API names it"
    );
    assert_eq!(
        process(&engine).container.as_deref(),
        Some("abc123abc123abc1")
    );
    engine.pod(&crate::k8s::api::PodInfo {
        uid: "7a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9".into(),
        namespace: "shop".into(),
        name: "web-0".into(),
    });
    assert_eq!(process(&engine).pod.as_deref(), Some("shop/web-0"));
}

#[test]
fn refused_callers_are_named_up_to_a_bound_and_all_counted() {
    let mut engine = Engine::new(Config::default());
    for pid in 0..100u32 {
        let c = Sock::new(
            u64::from(pid) + 1,
            pid + 1,
            "client",
            "10.0.0.1:40000",
            "10.0.0.9:80",
        );
        engine.ingest(&c.connect_error(u64::from(pid), libc::ECONNREFUSED));
    }
    let f = of_kind(&engine, Kind::ConnectionRefused);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].count, 100, "every refused connect counts");
    assert_eq!(f[0].evidence["clients"].as_array().map(Vec::len), Some(64));
}
