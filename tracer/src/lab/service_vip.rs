//! Incident 1 behind a Kubernetes Service: the client dials a VIP (10.96.0.50:80)
//! that DNAT sends to the pod (192.0.2.2:8000), as kube-proxy's rules do on a node.
//! The pod's server closes idle keep-alive connections after 2 s; the client's pool
//! reuses them after 2.5 s. Both ends run on this node: the client sees the VIP, the
//! server its own address, and conntrace must count each failure once and name the
//! backend. Two namespaces; the DNAT rule (nftables, `nft`) in the client's, where a
//! node's own rules translate its processes' connections.

use std::{net::TcpListener, sync::mpsc, time::Duration};

use anyhow::{Context as _, Result};

use super::{
    keepalive,
    netns::{client_and_database, join, Netns},
    say, spawn, Outcome,
};

pub const VIP: &str = "10.96.0.50:80";
pub const POD: &str = "192.0.2.2:8000";

fn nft(ns: &Netns, args: &[&str]) -> Result<()> {
    let mut cmd = vec!["nft"];
    cmd.extend_from_slice(args);
    ns.exec(&cmd)
        .context("adding the Service's DNAT rule with nft (install nftables)")
}

pub fn run() -> Result<Outcome> {
    let name = "service-vip";
    let (a, b, _) = client_and_database("ctv")?;
    let va = format!("ctva{}", std::process::id());
    a.exec(&["ip", "route", "add", "10.96.0.0/16", "dev", &va])?;
    nft(&a, &["add", "table", "ip", "ctlab"])?;
    nft(
        &a,
        &[
            "add",
            "chain",
            "ip",
            "ctlab",
            "out",
            "{ type nat hook output priority -100 ; }",
        ],
    )?;
    nft(
        &a,
        &[
            "add",
            "rule",
            "ip",
            "ctlab",
            "out",
            "ip",
            "daddr",
            "10.96.0.50",
            "tcp",
            "dport",
            "80",
            "dnat",
            "to",
            POD,
        ],
    )?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let _server = b.spawn("ka-server", move || {
        let listener = TcpListener::bind(POD)?;
        ready_tx.send(())?;
        for conn in listener.incoming().flatten() {
            let _ = spawn("ka-worker", move || keepalive::serve(conn));
        }
        Ok(())
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the pod's server did not start")?;
    say(name, &format!(
        "Service {VIP} -> pod {POD} (DNAT in the client's namespace); the pod closes idle keep-alive connections after {:.2} s; a pool reuses them after {:.2} s idle",
        keepalive::IDLE_TIMEOUT.as_secs_f64(),
        keepalive::PAUSE.as_secs_f64()
    ));
    let vip = VIP.parse()?;
    let (failed, reused) = a
        .spawn("pool-client", move || {
            keepalive::client(vip, keepalive::NAIVE)
        })
        .and_then(join)?;
    say(
        name,
        &format!("client saw {failed} failed requests on reused connections ({reused} reused)"),
    );
    Ok(Outcome {
        endpoint: VIP.to_owned(),
        count: failed,
    })
}
