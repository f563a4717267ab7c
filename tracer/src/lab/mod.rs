//! `conntrace lab SCENARIO`: the incidents conntrace exists for, reproduced locally
//! with short timeouts on loopback and in network namespaces it creates (and
//! removes). Run `conntrace watch` or `record` in another terminal to see the
//! finding; the integration tests run the same scenarios under the real probes.
//!
//! Each scenario ends with one machine-readable line on stdout:
//! `lab: result scenario=NAME endpoint=IP:PORT count=N pid=PID`.

mod bound_port;
mod keepalive;
mod listen_overflow;
pub mod netns;
mod service_vip;
mod simple;

use anyhow::{bail, Result};

/// Name, what it reproduces.
pub const SCENARIOS: [(&str, &str); 12] = [
    ("keepalive-race", "an HTTP server closing idle keep-alive connections after 2 s, and a naive pool that reuses them (incident 1)"),
    ("healthy-keepalive", "the same server with a pool that validates connections before reuse: the negative control"),
    ("keepalive-near-miss", "the same server with a pool that reuses after 1.70 s: no failure yet, 0.30 s from one (record with the default inspection)"),
    ("keepalive-safe", "the same server with a pool that retires connections idle for 1.00 s itself: safe"),
    ("close-wait-leak", "a server that never closes connections its clients closed (incident 2)"),
    ("refused", "connects to a port nothing listens on (incident 3)"),
    ("port-exhaustion", "a client holding connections until the ephemeral port range runs out: EADDRNOTAVAIL (incident 5, in a network namespace)"),
    ("silent-peer", "a database peer that vanishes without FIN or RST while a worker waits (incident 4, two network namespaces)"),
    ("hung-peer", "a database that acknowledges three workers' queries and vanishes before answering: nothing retransmits, the workers wait (incident 4, two network namespaces; record with --await-after 3s)"),
    ("bound-port", "a proxy keeping a fixed source port reconnects while its own TIME_WAIT holds the 4-tuple: EADDRNOTAVAIL with ports to spare (incident 5, two network namespaces)"),
    ("listen-overflow", "a server with a backlog of 4 that stopped accepting; 30 clients in another namespace time out as their SYNs are dropped (incident 3, two network namespaces)"),
    ("service-vip", "the keep-alive race behind a Service VIP that DNAT sends to the pod, both ends on this node (incident 1, two network namespaces, needs nft)"),
];

/// What a scenario did, as the client saw it.
pub struct Outcome {
    pub endpoint: String,
    pub count: u64,
}

/// What a lab is asked to do.
#[derive(Debug, Clone, Copy)]
pub enum Options<'a> {
    /// Print the scenarios.
    List,
    /// Run one scenario by name.
    Run(&'a str),
}

pub fn run(options: Options<'_>) -> Result<()> {
    let name = match options {
        Options::List => {
            for (name, what) in SCENARIOS {
                crate::outln!("{name:<18} {what}");
            }
            return Ok(());
        }
        Options::Run(name) => name,
    };
    std::thread::Builder::new()
        .name("lab-signals".into())
        .spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_millis(100));
            if let Some(sig) = crate::signals::requested() {
                let removed = netns::remove_all();
                crate::errln!(
                    "conntrace: lab stopped by {}; removed {removed} network namespaces",
                    crate::signals::name(sig)
                );
                std::process::exit(130);
            }
        })?;
    let outcome = match name {
        "keepalive-race" | "healthy-keepalive" | "keepalive-near-miss" | "keepalive-safe" => {
            keepalive::run(name)?
        }
        "close-wait-leak" => simple::close_wait_leak()?,
        "refused" => simple::refused()?,
        "port-exhaustion" => netns::port_exhaustion()?,
        "silent-peer" => netns::silent_peer()?,
        "hung-peer" => netns::hung_peer()?,
        "bound-port" => bound_port::run()?,
        "service-vip" => service_vip::run()?,
        "listen-overflow" => listen_overflow::run()?,
        other => bail!(
            "unknown lab scenario '{other}'; `conntrace lab --list` lists them: {}",
            SCENARIOS.map(|(n, _)| n).join(", ")
        ),
    };
    crate::outln!(
        "lab: result scenario={name} endpoint={} count={} pid={}",
        outcome.endpoint,
        outcome.count,
        std::process::id()
    );
    Ok(())
}

/// Prints a progress line (stdout, unbuffered enough for a terminal or a pipe).
fn say(scenario: &str, line: &str) {
    crate::outln!("lab {scenario}: {line}");
}

/// Spawns a named thread (the name is the kernel `comm` conntrace shows).
fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<T>> {
    Ok(std::thread::Builder::new().name(name.to_owned()).spawn(f)?)
}
