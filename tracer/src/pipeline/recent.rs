//! Owners of recently closed connections by 4-tuple, applied to resets and errors
//! before the filters run.
//!
//! When a server closes an idle keep-alive connection, its full socket goes to CLOSE
//! at once and a time-wait mini-socket (a different kernel object) answers what the
//! client sends next — with a reset that carries no owner. This table remembers, for
//! each connection that closed with a known owner, who owned its 4-tuple, and hands
//! that owner to an ownerless reset on the same 4-tuple. `--comm`, `--pid`, `--pod`
//! then keep the reset with the connection it belongs to, and the log stores it with
//! its owner, so a replay sees what the live run saw.
//!
//! Bounded, in three time-ordered rings: the tuples this side closed first after
//! idling or whose idle is not known, which its time-wait socket holds (at most
//! [`CAP`], each kept [`KEEP_NS`]: a time-wait socket lives 60 s; a FIN_WAIT2 one up
//! to `tcp_fin_timeout`, 60 s by default); those it closed first right after
//! activity (under the engine's idle-close minimum, 500 ms by default: a
//! `Connection: close` server's every connection), as many and as long; and the others (the peer closed first, or a
//! connect never got through: at most [`CAP`], each kept [`BRIEF_NS`]), which nothing
//! of this node holds and whose late events (the error report after ->CLOSE,
//! close()'s own reset) come at once. A busy node's passive closes so never push a
//! time-wait holder out, nor its churn (thousands of prompt closes a second) the
//! idle closes whose time-wait resets are the keep-alive race, which `--comm` keeps
//! only with their owner. What any ring had to drop early is counted
//! ([`RecentOwners::evicted`]) and shown with the run's losses as closed-connection
//! owners not kept.

use std::net::SocketAddr;

use crate::{
    engine::{expiring::ExpiringMap, Comm},
    event::{Event, EventKind, TcpState},
};

/// Tuples remembered at most in each ring; the oldest go first.
pub const CAP: usize = 65_536;
/// How long the owner of a tuple this side closed first is remembered.
pub const KEEP_NS: u64 = 120_000_000_000;
/// How long any other closed connection's owner is remembered.
pub const BRIEF_NS: u64 = 2_000_000_000;

#[derive(Debug, Clone)]
struct Owner {
    pid: u32,
    tid: u32,
    comm: Comm,
    cgroup: u64,
    /// This side sent the first FIN: its time-wait socket holds the tuple.
    closed_first: bool,
    /// The connection got through (a SYN_SENT that closed held no tuple).
    held: bool,
}

/// How long a time-wait socket holds its 4-tuple (`TCP_TIMEWAIT_LEN`, fixed).
const TIME_WAIT_NS: u64 = 60_000_000_000;

type Tuple = (SocketAddr, SocketAddr);

/// See the module documentation.
pub struct RecentOwners {
    /// Tuples this side closed first after idling, or idle not known.
    held: ExpiringMap<Tuple, Owner>,
    /// Tuples this side closed first right after activity.
    prompt: ExpiringMap<Tuple, Owner>,
    /// The others.
    brief: ExpiringMap<Tuple, Owner>,
    /// Resets and errors given the owner of their closed connection.
    pub attributed: u64,
}

impl Default for RecentOwners {
    fn default() -> Self {
        Self {
            held: ExpiringMap::new(CAP, KEEP_NS),
            prompt: ExpiringMap::new(CAP, KEEP_NS),
            brief: ExpiringMap::new(CAP, BRIEF_NS),
            attributed: 0,
        }
    }
}

impl RecentOwners {
    /// Learns from `e` (a connection closing with its owner known) or completes it
    /// (a reset or error with no owner on a tuple that closed recently).
    pub fn observe(&mut self, e: &mut Event) {
        self.observe_close(e, false);
    }

    /// [`RecentOwners::observe`], for a close known to follow this side's own close
    /// right after activity (`prompt`: the connection's record holds its
    /// ESTABLISHED -> FIN_WAIT1 under the engine's idle-close minimum).
    pub fn observe_close(&mut self, e: &mut Event, prompt: bool) {
        match e.kind {
            EventKind::State {
                new: TcpState::Close,
                old,
                ..
            } if e.owner_known && old != TcpState::Listen && e.remote.port() != 0 => {
                // A connect that never got through held no tuple: it must not hide
                // the connection whose time-wait socket does (a failed bound connect
                // on the same 4-tuple), but its owner still names its own late error.
                if old == TcpState::SynSent
                    && self
                        .get(&(e.local, e.remote), e.mono_ns)
                        .is_some_and(|(_, o)| o.held)
                {
                    return;
                }
                let owner = Owner {
                    pid: e.pid,
                    tid: e.tid,
                    comm: e.comm,
                    cgroup: e.cgroup,
                    // Only an active close passes FIN_WAIT1/2 or CLOSING on its way
                    // to the time-wait socket (the full socket then goes to CLOSE).
                    closed_first: matches!(
                        old,
                        TcpState::FinWait1
                            | TcpState::FinWait2
                            | TcpState::Closing
                            | TcpState::TimeWait
                    ),
                    held: old != TcpState::SynSent,
                };
                let ring = match (owner.closed_first, prompt) {
                    (true, false) => &mut self.held,
                    (true, true) => &mut self.prompt,
                    (false, _) => &mut self.brief,
                };
                ring.insert((e.local, e.remote), e.mono_ns, owner);
            }
            // The kernel forgets a socket's owner at ->CLOSE; what follows on its
            // 4-tuple (a time-wait socket's reset, the error report after tcp_done,
            // close()'s own reset) takes the owner of the connection that closed.
            EventKind::Reset { .. } | EventKind::Error { .. } if !e.owner_known && e.pid == 0 => {
                if let Some((_, o)) = self.get(&(e.local, e.remote), e.mono_ns) {
                    e.pid = o.pid;
                    e.tid = o.tid;
                    e.comm = o.comm;
                    e.cgroup = o.cgroup;
                    e.owner_known = true;
                    self.attributed += 1;
                }
            }
            _ => {}
        }
    }

    /// The closed connection of this node that holds `local -> remote` at `now_ns`,
    /// if it closed within the table's memory: in TIME_WAIT for 60 s after this side
    /// closed first. A connect() that wanted the tuple (a bound source port) failed
    /// with EADDRNOTAVAIL because of it.
    pub fn holder(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        now_ns: u64,
    ) -> Option<crate::event::TupleHolder> {
        let (closed_ns, o) = self.get(&(local, remote), now_ns).filter(|(_, o)| o.held)?;
        let ago = now_ns.saturating_sub(closed_ns);
        let time_wait = o.closed_first && ago < TIME_WAIT_NS;
        Some(crate::event::TupleHolder {
            state: if time_wait {
                TcpState::TimeWait
            } else {
                TcpState::Close
            },
            process: crate::event::Process {
                pid: o.pid,
                comm: o.comm.to_string(),
                cgroup: o.cgroup,
            },
            closed_ago_ms: Some(ago / 1_000_000),
            first_fin: Some(if o.closed_first { "local" } else { "peer" }.to_owned()),
            released_in_ms: time_wait.then(|| (TIME_WAIT_NS - ago) / 1_000_000),
        })
    }

    /// The newest owner of `tuple` any ring remembers at `now_ns`, with when its
    /// connection closed.
    fn get(&mut self, tuple: &Tuple, now_ns: u64) -> Option<(u64, &Owner)> {
        let held = self.held.get(tuple, now_ns);
        let prompt = self.prompt.get(tuple, now_ns);
        let brief = self.brief.get(tuple, now_ns);
        newer(newer(held, prompt), brief)
    }

    /// Tuples forgotten early because their ring was full.
    pub fn evicted(&self) -> u64 {
        self.held
            .evicted
            .saturating_add(self.prompt.evicted)
            .saturating_add(self.brief.evicted)
    }

    pub fn len(&self) -> usize {
        self.held.len() + self.prompt.len() + self.brief.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.prompt.is_empty() && self.brief.is_empty()
    }
}

/// The later of two remembered closes of a tuple.
fn newer<'a>(a: Option<(u64, &'a Owner)>, b: Option<(u64, &'a Owner)>) -> Option<(u64, &'a Owner)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::Sock;
    use crate::event::TcpState::*;

    #[test]
    fn a_reset_from_a_closed_connections_time_wait_socket_gets_its_owner() {
        let server = Sock::new(1, 77, "uvicorn", "10.0.0.5:8000", "10.0.0.9:41000");
        let mut table = RecentOwners::default();
        let mut closing = server.state(5000, Established, FinWait1, 5000);
        table.observe(&mut closing);
        let mut close = server.state(5001, FinWait2, Close, 5001);
        table.observe(&mut close);
        // The time-wait socket's reset: another object, no owner.
        let tw = Sock::new(2, 0, "", "10.0.0.5:8000", "10.0.0.9:41000");
        let mut rst = tw.reset_sent_for_data(6000, Some(TimeWait), "TCP_TIMEWAIT_SOCKET");
        rst.owner_known = false;
        table.observe(&mut rst);
        assert_eq!((rst.pid, rst.comm.as_str()), (77, "uvicorn"));
        assert!(rst.owner_known);
        assert_eq!(table.attributed, 1);
        // Another tuple, or after two minutes: left alone.
        let other = Sock::new(3, 0, "", "10.0.0.5:8000", "10.0.0.9:41001");
        let mut rst = other.reset_sent_for_data(6000, Some(TimeWait), "TCP_TIMEWAIT_SOCKET");
        rst.owner_known = false;
        table.observe(&mut rst);
        assert_eq!(rst.pid, 0);
        let mut late = tw.reset_sent_for_data(130_000, Some(TimeWait), "TCP_TIMEWAIT_SOCKET");
        late.owner_known = false;
        table.observe(&mut late);
        assert_eq!(late.pid, 0);
        assert!(table.is_empty());
    }

    /// Regression (found by the `refused` lab): on Linux 6.x tcp_reset() reports the
    /// error after tcp_done(), so a refused connect's ECONNREFUSED comes after its
    /// close, ownerless; it still takes the connecting process as owner.
    #[test]
    fn a_refused_connects_late_error_keeps_its_owner() {
        let client = Sock::new(1, 42, "curl", "127.0.0.1:40000", "127.0.0.1:9");
        let mut table = RecentOwners::default();
        let mut close = client.state(1000, SynSent, Close, 0);
        table.observe(&mut close);
        let mut err = client.error(1000, libc::ECONNREFUSED);
        (err.pid, err.comm, err.owner_known) = (0, Comm::default(), false);
        table.observe(&mut err);
        assert_eq!((err.pid, err.comm.as_str()), (42, "curl"));
        let local = "127.0.0.1:40000".parse().expect("addr");
        let remote = "127.0.0.1:9".parse().expect("addr");
        assert!(
            table
                .holder(local, remote, crate::engine::testing::T0 + 1_001_000_000)
                .is_none(),
            "a connect that never got through holds no tuple"
        );
    }

    #[test]
    fn a_tuple_this_side_closed_first_is_held_in_time_wait_for_60_s() {
        let proxy = Sock::new(1, 42, "proxy", "10.0.0.1:40000", "10.0.0.8:80");
        let mut table = RecentOwners::default();
        for mut e in [
            proxy.state(1000, Established, FinWait1, 0),
            proxy.state(1001, FinWait1, FinWait2, 0),
            proxy.state(1002, FinWait2, Close, 0),
        ] {
            table.observe(&mut e);
        }
        let local = "10.0.0.1:40000".parse().expect("addr");
        let remote = "10.0.0.8:80".parse().expect("addr");
        let h = table
            .holder(local, remote, crate::engine::testing::T0 + 3_002_000_000)
            .expect("held");
        assert_eq!(
            (h.state, h.process.pid, h.process.comm.as_str()),
            (TimeWait, 42, "proxy")
        );
        assert_eq!(h.closed_ago_ms, Some(2000));
        assert_eq!(h.released_in_ms, Some(58_000));
        assert_eq!(h.first_fin.as_deref(), Some("local"));
        // The peer closed first: no time-wait here.
        let passive = Sock::new(2, 42, "proxy", "10.0.0.1:40001", "10.0.0.8:80");
        let mut e = passive.state(1000, LastAck, Close, 0);
        table.observe(&mut e);
        let h = table
            .holder(
                "10.0.0.1:40001".parse().expect("addr"),
                remote,
                crate::engine::testing::T0 + 1_500_000_000,
            )
            .expect("known");
        assert_eq!((h.state, h.released_in_ms), (Close, None));
    }

    /// A busy node's passive closes (a client whose server closes first, at tens of
    /// thousands a second) fill their own ring: the tuple a time-wait socket here
    /// holds keeps its owner for the time-wait's 60 s, theirs only 2 s.
    #[test]
    fn passive_closes_never_push_out_a_time_wait_holder() {
        let mut table = RecentOwners::default();
        let proxy = Sock::new(1, 42, "proxy", "10.0.0.1:40000", "10.0.0.8:80");
        for mut e in [
            proxy.state(1000, Established, FinWait1, 0),
            proxy.state(1002, FinWait2, Close, 0),
        ] {
            table.observe(&mut e);
        }
        for i in 0..(CAP as u64 + 10) {
            let s = Sock::new(
                i + 2,
                7,
                "wrk",
                &format!("10.0.2.{}:{}", i / 60_000, 1024 + i % 60_000),
                "10.0.0.9:80",
            );
            // 10 µs apart: all within the brief ring's 2 s.
            let mut e = s.state(1003, LastAck, Close, 0);
            e.mono_ns += i * 10_000;
            table.observe(&mut e);
        }
        assert_eq!(table.evicted(), 10, "only passive closes were dropped");
        // A passive close's late reset within 2 s gets its owner; later, none.
        let last = Sock::new(9, 0, "", "10.0.2.1:6034", "10.0.0.9:80");
        let mut rst = last.reset_sent_for_data(2_500, None, "NO_SOCKET");
        rst.owner_known = false;
        table.observe(&mut rst);
        assert_eq!(rst.pid, 7);
        let mut late = last.reset_sent_for_data(6_000, None, "NO_SOCKET");
        late.owner_known = false;
        table.observe(&mut late);
        assert_eq!(late.pid, 0, "forgotten after 2 s");
        let held = table
            .holder(
                "10.0.0.1:40000".parse().expect("addr"),
                "10.0.0.8:80".parse().expect("addr"),
                crate::engine::testing::T0 + 30_000_000_000,
            )
            .expect("the time-wait holder, 29 s after its close");
        assert_eq!((held.state, held.process.pid), (TimeWait, 42));
    }

    /// A churning server's prompt closes (closed first right after its answer, tens
    /// of thousands a second) fill their own ring: the owner of a connection it
    /// closed idle stays for its time-wait socket's reset, the keep-alive race's, which
    /// `--comm` keeps only with its owner.
    #[test]
    fn a_churning_servers_prompt_closes_never_push_out_an_idle_close() {
        let mut table = RecentOwners::default();
        let idle = Sock::new(1, 42, "srv", "10.0.0.5:8000", "10.0.0.9:41000");
        let mut e = idle.state(1000, FinWait2, Close, 0);
        table.observe_close(&mut e, false);
        for i in 0..(CAP as u64 + 10) {
            let s = Sock::new(
                i + 2,
                42,
                "srv",
                "10.0.0.5:8000",
                &format!("10.0.3.{}:{}", i / 60_000, 1024 + i % 60_000),
            );
            let mut e = s.state(1001, FinWait2, Close, 0);
            e.mono_ns += i * 10_000;
            table.observe_close(&mut e, true);
        }
        assert_eq!(table.evicted(), 10, "only prompt closes were dropped");
        let mut rst = idle.reset_sent_for_data(5_000, Some(TimeWait), "TCP_RESET");
        (rst.pid, rst.comm, rst.owner_known) = (0, Comm::default(), false);
        table.observe(&mut rst);
        assert_eq!((rst.pid, rst.comm.as_str()), (42, "srv"));
    }

    #[test]
    fn the_table_is_bounded_and_counts_what_it_forgets() {
        let mut table = RecentOwners::default();
        for i in 0..(CAP as u64 + 10) {
            let port = 1024 + (i % 60_000);
            let host = i / 60_000;
            let s = Sock::new(
                i + 1,
                5,
                "w",
                "10.0.0.5:80",
                &format!("10.0.1.{host}:{port}"),
            );
            let mut e = s.state(i / 1000, FinWait2, Close, 0);
            table.observe(&mut e);
        }
        assert_eq!(table.len(), CAP);
        assert_eq!(table.evicted(), 10);
    }
}
