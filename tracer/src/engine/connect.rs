//! `connect-errors` and `connection-refused`.
//!
//! `connect-errors`: failed connects (synchronous errors of connect(), and errors
//! reported on a connecting socket before it was established) grouped by (process,
//! destination, errno); each socket counts once. ECONNREFUSED goes to
//! `connection-refused` instead. EADDRNOTAVAIL is critical, the rest warnings.
//!
//! EADDRNOTAVAIL comes in two forms, told apart by the failed socket's local port:
//! - **ports exhausted** (no port: the kernel found no free source port to the
//!   destination). Evidence: the connections open to the destination, the span of
//!   local ports they use, the node's ephemeral range (root network namespace).
//! - **one 4-tuple in use** (a port the caller bound: a transparent proxy keeping
//!   the client's port, a fixed source port). Evidence: the 4-tuple and the socket
//!   holding it — a live connection, or this node's previous connection on it in
//!   TIME_WAIT (this side closed first), with its owner, when it closed and when
//!   the kernel frees the tuple.
//!
//! `connection-refused` (warning): refused connects by destination, and resets this
//! node sent answering a SYN to a local port with no socket (reason NO_SOCKET), by
//! that endpoint. The count is the larger of the two, since on one node they are the two
//! ends of the same attempts.

use std::{
    collections::{BTreeMap, HashMap},
    time::SystemTime,
};

use std::fmt::Write as _;

use super::finding::{secs, Finding, Involved, Kind, Process, Severity};
use crate::event::{Errno, Event};

#[derive(Debug)]
struct Group {
    comm: String,
    cgroup: u64,
    count: u64,
    held_by: Option<crate::event::TupleHolder>,
    /// The last 4-tuple a bound connect wanted, and failures of that form.
    tuple: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    bound: u64,
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
        held_by: Option<crate::event::TupleHolder>,
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
            let client = (e.pid, e.comm.to_string(), e.cgroup);
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
            comm: e.comm.to_string(),
            cgroup: e.cgroup,
            count: 0,
            held_by: None,
            tuple: None,
            bound: 0,
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
        if e.local.port() != 0 {
            g.bound += 1;
            g.tuple = Some((e.local, e.remote));
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
            let mut summary = format!(
                "{} failed {} connect{} to {destination} with {}",
                process.describe(),
                g.count,
                if g.count == 1 { "" } else { "s" },
                errno.name()
            );
            let recommendation = if critical {
                g.addrnotavail(&mut evidence, &mut summary)
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
                summary,
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

impl Group {
    /// EADDRNOTAVAIL's evidence and summary, by form; returns the fix for that form.
    fn addrnotavail(
        &self,
        evidence: &mut BTreeMap<String, serde_json::Value>,
        summary: &mut String,
    ) -> String {
        let tuple_in_use = self.bound * 2 > self.count;
        let mut put = |k: &str, v: serde_json::Value| {
            evidence.insert(k.to_owned(), v);
        };
        put(
            "form",
            serde_json::json!(if tuple_in_use {
                "tuple-in-use"
            } else {
                "ports-exhausted"
            }),
        );
        put(
            "open_to_destination",
            serde_json::json!(self.max_open_to_destination),
        );
        put(
            "local_ports_in_use",
            serde_json::json!(self.ports_in_use.map(|(lo, hi)| [lo, hi])),
        );
        // The root namespace's range; a pod's own namespace may differ.
        put("node_port_range", serde_json::json!(self.port_range));
        put("bound_port_failures", serde_json::json!(self.bound));
        put(
            "tuple",
            serde_json::json!(self.tuple.map(|(l, r)| format!("{l} -> {r}"))),
        );
        put("held_by", serde_json::json!(self.held_by));
        if !tuple_in_use {
            summary.push_str(": no free source port");
            return "the node ran out of source ports to this destination: reuse connections (keep-alive pooling), widen net.ipv4.ip_local_port_range, add destination addresses, or enable net.ipv4.tcp_tw_reuse=1 so ports held in TIME_WAIT can be taken over".to_owned();
        }
        if let Some((local, remote)) = self.tuple {
            let _ = write!(summary, ": its bound source {local} -> {remote} is held");
            match &self.held_by {
                Some(h) => {
                    let _ = write!(
                        summary,
                        " by {} (pid {}) in {}",
                        h.process.comm, h.process.pid, h.state
                    );
                    if let Some(ago) = h.closed_ago_ms {
                        let by = if h.first_fin.as_deref() == Some("local") {
                            "this side closed first"
                        } else {
                            "the peer closed first"
                        };
                        let _ = write!(
                            summary,
                            ", its connection closed {} earlier ({by})",
                            secs(ago)
                        );
                    }
                    if let Some(left) = h.released_in_ms {
                        let _ = write!(summary, "; freed in {}", secs(left));
                    }
                }
                None => summary.push_str(" by a socket conntrace did not see close"),
            }
        }
        "one 4-tuple reused too soon, not a shortage of ports: the caller binds its source port and this node still holds the same 4-tuple — a live connection, or its previous connection's TIME_WAIT (60 s after this side closed first; the kernel lets a bound connect take its own time-wait tuple over only when both ends use TCP timestamps). Stop fixing the source port (bind the address only, with IP_BIND_ADDRESS_NO_PORT, and let the kernel pick the port), or let the server close first so the TIME_WAIT is on its side, or keep TCP timestamps on at both ends (net.ipv4.tcp_timestamps=1; check that no middlebox strips them)".to_owned()
    }
}
