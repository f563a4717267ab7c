//! `connect-errors` and `connection-refused`.
//!
//! `connect-errors`: failed connects (synchronous errors of connect(), and errors
//! reported on a connecting socket before it was established) grouped by (process,
//! destination, errno); each socket counts once. ECONNREFUSED goes to
//! `connection-refused` instead. EADDRNOTAVAIL is critical (the node is out of
//! source ports or re-used a 4-tuple), the rest warnings. Evidence for
//! EADDRNOTAVAIL: the connections this node holds open to that destination and the
//! span of local ports they use, the node's ephemeral port range (root network
//! namespace), and the live socket holding the 4-tuple when the caller had bound a
//! source port.
//!
//! `connection-refused` (warning): refused connects by destination, and resets this
//! node sent answering a SYN to a local port with no socket (reason NO_SOCKET), by
//! that endpoint. The count is the larger of the two, since on one node they are the two
//! ends of the same attempts.

use std::{
    collections::{BTreeMap, HashMap},
    time::SystemTime,
};

use super::finding::{Finding, Involved, Kind, Process, Severity};
use crate::event::{Errno, Event};

#[derive(Debug)]
struct Group {
    comm: String,
    cgroup: u64,
    count: u64,
    held_by: Option<String>,
    max_open_to_destination: u32,
    ports_in_use: Option<(u16, u16)>,
    port_range: Option<[u16; 2]>,
    socks: Involved,
    first: SystemTime,
    last: SystemTime,
}

#[derive(Debug, Default)]
struct Refused {
    connects: u64,
    resets: u64,
    /// Refused connects by (pid, comm, cgroup).
    clients: BTreeMap<(u32, String, u64), u64>,
    socks: Involved,
    first: Option<SystemTime>,
    last: Option<SystemTime>,
}

#[derive(Debug, Default)]
pub struct ConnectFailures {
    errors: HashMap<(u32, String, Errno), Group>,
    refused: HashMap<String, Refused>,
}

const MAX_GROUPS: usize = 8192;
/// Callers named per refused destination at most (their connects are all counted).
const MAX_CLIENTS: usize = 64;

impl ConnectFailures {
    pub fn on_failure(
        &mut self,
        e: &Event,
        errno: Errno,
        held_by: Option<String>,
        open_to_destination: u32,
        ports_in_use: Option<(u16, u16)>,
        port_range: Option<[u16; 2]>,
    ) {
        let destination = e.remote.to_string();
        if errno.0 == libc::ECONNREFUSED {
            if self.refused.len() >= MAX_GROUPS && !self.refused.contains_key(&destination) {
                return;
            }
            let r = self.refused.entry(destination).or_default();
            r.connects += 1;
            r.socks.add(e.sock, e.local);
            let client = (e.pid, e.comm.clone(), e.cgroup);
            if r.clients.len() < MAX_CLIENTS || r.clients.contains_key(&client) {
                *r.clients.entry(client).or_default() += 1;
            }
            r.first.get_or_insert(e.time);
            r.last = Some(e.time);
            return;
        }
        let key = (e.pid, destination, errno);
        if self.errors.len() >= MAX_GROUPS && !self.errors.contains_key(&key) {
            return;
        }
        let g = self.errors.entry(key).or_insert_with(|| Group {
            comm: e.comm.clone(),
            cgroup: e.cgroup,
            count: 0,
            held_by: None,
            max_open_to_destination: 0,
            ports_in_use: None,
            port_range,
            socks: Involved::default(),
            first: e.time,
            last: e.time,
        });
        g.count += 1;
        g.socks.add(e.sock, e.local);
        g.last = e.time;
        if held_by.is_some() {
            g.held_by = held_by;
        }
        g.max_open_to_destination = g.max_open_to_destination.max(open_to_destination);
        g.port_range = port_range.or(g.port_range);
        g.ports_in_use = ports_in_use.or(g.ports_in_use);
    }

    pub fn on_no_socket_reset(&mut self, endpoint: &str, e: &Event) {
        if self.refused.len() >= MAX_GROUPS && !self.refused.contains_key(endpoint) {
            return;
        }
        let r = self.refused.entry(endpoint.to_owned()).or_default();
        r.resets += 1;
        r.first.get_or_insert(e.time);
        r.last = Some(e.time);
    }

    pub fn findings(&self, out: &mut Vec<Finding>) {
        for ((pid, destination, errno), g) in &self.errors {
            let process = Process::new(*pid, &g.comm, g.cgroup);
            let critical = errno.0 == libc::EADDRNOTAVAIL;
            let mut evidence = crate::evidence! {
                "errno" => errno.name(),
                "failed_connects" => g.count,
            };
            let recommendation = if critical {
                evidence.insert(
                    "open_to_destination".into(),
                    serde_json::json!(g.max_open_to_destination),
                );
                evidence.insert(
                    "local_ports_in_use".into(),
                    serde_json::json!(g.ports_in_use.map(|(lo, hi)| [lo, hi])),
                );
                // The root namespace's range; a pod's own namespace may differ.
                evidence.insert("node_port_range".into(), serde_json::json!(g.port_range));
                evidence.insert("held_by".into(), serde_json::json!(g.held_by));
                "the node ran out of source ports to this destination (or the caller bound a source address/port another socket holds): reuse connections (keep-alive pooling), widen net.ipv4.ip_local_port_range, add destination addresses, or stop binding a fixed source port".to_owned()
            } else {
                match errno.0 {
                    libc::ETIMEDOUT => "the destination never answered the SYN: check that it is up and that no firewall or security group drops the traffic".to_owned(),
                    libc::EHOSTUNREACH | libc::ENETUNREACH => "no route to the destination: check routes, the destination's address and the network policy".to_owned(),
                    _ => "check the destination and the caller's socket setup for this errno".to_owned(),
                }
            };
            out.push(Finding {
                kind: Kind::ConnectErrors,
                severity: if critical {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                summary: format!(
                    "{} failed {} connect{} to {destination} with {}",
                    process.describe(),
                    g.count,
                    if g.count == 1 { "" } else { "s" },
                    errno.name()
                ),
                endpoint: destination.clone(),
                process: Some(process),
                count: g.count,
                first_seen: g.first,
                last_seen: g.last,
                evidence,
                recommendation,
                socks: g.socks.to_vec(),
            });
        }
        for (endpoint, r) in &self.refused {
            let (Some(first), Some(last)) = (r.first, r.last) else {
                continue;
            };
            let count = r.connects.max(r.resets);
            let top = r
                .clients
                .iter()
                .max_by_key(|((pid, comm, _), n)| (**n, std::cmp::Reverse((*pid, comm.clone()))))
                .map(|((pid, comm, cgroup), _)| Process::new(*pid, comm, *cgroup));
            let who = top.as_ref().map_or_else(String::new, |p| {
                format!(" ({} among the callers)", p.describe())
            });
            let clients: Vec<_> = r
                .clients
                .iter()
                .map(|((pid, comm, _), n)| serde_json::json!({"pid": pid, "comm": comm, "refused": n}))
                .collect();
            out.push(Finding {
                kind: Kind::ConnectionRefused,
                severity: Severity::Warning,
                summary: format!(
                    "{count} connection attempt{} to {endpoint} refused: nothing listens there{who}",
                    if count == 1 { "" } else { "s" }
                ),
                endpoint: endpoint.clone(),
                process: top,
                count,
                first_seen: first,
                last_seen: last,
                evidence: crate::evidence! {
                    "errno" => "ECONNREFUSED",
                    "refused_connects" => r.connects,
                    "resets_sent_no_socket" => r.resets,
                    "reset_reason" => (r.resets > 0).then_some("NO_SOCKET"),
                    "clients" => clients,
                },
                recommendation: format!(
                    "nothing listens on {endpoint}: check the service is running and bound to that address and port (and the Service/NodePort targets the right port); clients should back off instead of retrying at once"
                ),
                socks: r.socks.to_vec(),
            });
        }
    }
}
