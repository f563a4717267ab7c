//! The live pipeline's look into the kernel's own tables for the few events whose
//! finding needs more than the event: which socket holds the 4-tuple a bound
//! connect() could not take (EADDRNOTAVAIL), and where DNAT sent a connection that
//! closed idle or was reset (a Service VIP's backend, from conntrack). What it
//! learns becomes a [`TupleInfo`] record, dispatched before the event, so the engine
//! and a replay of the log see the same.
//!
//! Bounded: each 4-tuple is asked about once (at most [`CAP`] remembered), and at
//! most [`BUDGET`] conntrack lookups a second; lookups skipped for the budget are
//! counted.

use std::net::SocketAddr;

use crate::{
    engine::conn::FxSet,
    event::{Direction, Errno, Event, EventKind, TcpState, TupleInfo},
    kernel::conntrack::{self, Conntrack},
    pipeline::recent::RecentOwners,
};

/// 4-tuples remembered as asked about.
const CAP: usize = 65_536;
/// Conntrack lookups a second at most.
const BUDGET: u32 = 200;
/// Idle closes shorter than this are request/response closes, not keep-alive ends.
const IDLE_MIN_MS: u64 = 500;

#[derive(Default)]
pub struct TupleFacts {
    conntrack: Option<Conntrack>,
    opened: bool,
    asked: FxSet<(SocketAddr, SocketAddr)>,
    /// The current second (of the events' clock) and lookups made in it.
    second: u64,
    spent: u32,
    /// Lookups made, translations found, lookups skipped for the budget.
    pub lookups: u64,
    pub translated: u64,
    pub skipped: u64,
}

impl TupleFacts {
    /// What the kernel's tables add to `e`, if anything.
    pub fn of(&mut self, e: &Event, recent: &mut RecentOwners) -> Option<TupleInfo> {
        let fact = |holder, backend| TupleInfo {
            time: e.time,
            mono_ns: e.mono_ns,
            local: e.local,
            remote: e.remote,
            holder,
            backend,
        };
        match &e.kind {
            EventKind::Connect { errno, .. }
                if *errno == Errno(libc::EADDRNOTAVAIL) && e.local.port() != 0 =>
            {
                let holder = recent.holder(e.local, e.remote, e.mono_ns)?;
                Some(fact(Some(holder), None))
            }
            // A client's connection the server closed idle, or reset: the client's
            // view is the original direction.
            EventKind::State {
                old: TcpState::Established,
                new: TcpState::CloseWait,
                idle_ms,
                ..
            } if *idle_ms >= IDLE_MIN_MS => {
                let t = self.translate(e, conntrack::Direction::Original)?;
                Some(fact(None, Some(t.backend)))
            }
            EventKind::Reset {
                direction: Direction::Received,
                ..
            } => {
                let t = self.translate(e, conntrack::Direction::Original)?;
                Some(fact(None, Some(t.backend)))
            }
            // A server closing an idle connection: its view is the reply direction,
            // and the record is written in the client's terms.
            EventKind::State {
                old: TcpState::Established,
                new: TcpState::FinWait1,
                idle_ms,
                ..
            } if *idle_ms >= IDLE_MIN_MS => {
                let t = self.translate(e, conntrack::Direction::Reply)?;
                Some(TupleInfo {
                    local: t.client,
                    remote: t.dialled,
                    ..fact(None, Some(t.backend))
                })
            }
            _ => None,
        }
    }

    fn translate(
        &mut self,
        e: &Event,
        dir: conntrack::Direction,
    ) -> Option<conntrack::Translation> {
        if !std::mem::replace(&mut self.opened, true) {
            self.conntrack = Conntrack::open();
        }
        let ct = self.conntrack.as_mut()?;
        if e.local.port() == 0 || e.remote.port() == 0 {
            return None;
        }
        let key = (e.local, e.remote);
        if self.asked.contains(&key) {
            return None;
        }
        let second = e.mono_ns / 1_000_000_000;
        if second != self.second {
            self.second = second;
            self.spent = 0;
        }
        if self.spent >= BUDGET {
            self.skipped += 1;
            return None;
        }
        self.spent += 1;
        if self.asked.len() >= CAP {
            self.asked.clear();
        }
        self.asked.insert(key);
        self.lookups += 1;
        let tuple = conntrack::Tuple {
            src: e.local,
            dst: e.remote,
        };
        // The thread's namespace: a thread may have entered another than its process's.
        let task = if e.tid != 0 { e.tid } else { e.pid };
        let t = ct.lookup(tuple, dir, task)?;
        self.translated += 1;
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::Sock;

    /// 260 connections closed idle in one second: 200 are looked up in conntrack,
    /// the rest counted as skipped; without conntrack on the node none is either.
    #[test]
    fn lookups_over_the_budget_are_counted() {
        let mut facts = TupleFacts::default();
        let mut recent = RecentOwners::default();
        for port in 0..260u16 {
            let sock = Sock::new(
                u64::from(port) + 1,
                10,
                "pool",
                &format!("10.0.0.1:{}", 40_000 + port),
                "10.96.0.10:80",
            );
            let e = sock.state(
                u64::from(port),
                TcpState::Established,
                TcpState::CloseWait,
                5_000,
            );
            // Nothing translates these made-up tuples.
            assert_eq!(facts.of(&e, &mut recent), None);
        }
        if Conntrack::open().is_some() {
            assert_eq!((facts.lookups, facts.skipped), (u64::from(BUDGET), 60));
        } else {
            assert_eq!((facts.lookups, facts.skipped), (0, 0));
        }
    }
}
