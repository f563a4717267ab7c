//! What the kernel's tables said of 4-tuples ([`TupleInfo`] records): the socket
//! holding a tuple a bound connect() could not take, and where DNAT sent a
//! connection (a Service VIP's backend). Both bounded; a full table starts over
//! (counted in `dropped`), since its entries only name things, never count them.

use std::net::SocketAddr;

use super::conn::FxMap;
use crate::event::{TupleHolder, TupleInfo};

/// Tuples remembered at most per table.
const CAP: usize = 65_536;

#[derive(Debug, Default)]
pub struct Tuples {
    holders: FxMap<(SocketAddr, SocketAddr), TupleHolder>,
    /// (client's local, dialled destination) -> backend.
    backends: FxMap<(SocketAddr, SocketAddr), SocketAddr>,
    /// (client's local, backend) -> dialled destination: the server's view back to
    /// the client's.
    dialled: FxMap<(SocketAddr, SocketAddr), SocketAddr>,
    /// backend -> a dialled address that leads to it.
    vip_of: FxMap<SocketAddr, SocketAddr>,
    pub dropped: u64,
}

impl Tuples {
    pub fn learn(&mut self, t: &TupleInfo) {
        let key = (t.local, t.remote);
        if let Some(h) = &t.holder {
            if self.holders.len() >= CAP && !self.holders.contains_key(&key) {
                self.dropped += self.holders.len() as u64;
                self.holders.clear();
            }
            self.holders.insert(key, h.clone());
        }
        if let Some(backend) = t.backend.filter(|b| *b != t.remote) {
            if self.backends.len() >= CAP && !self.backends.contains_key(&key) {
                self.dropped += self.backends.len() as u64;
                self.backends.clear();
                self.dialled.clear();
                self.vip_of.clear();
            }
            self.backends.insert(key, backend);
            self.dialled.insert((t.local, backend), t.remote);
            self.vip_of.insert(backend, t.remote);
        }
    }

    /// The socket holding `local -> remote`, as last learnt.
    pub fn holder(&self, local: SocketAddr, remote: SocketAddr) -> Option<&TupleHolder> {
        self.holders.get(&(local, remote))
    }

    /// Where the connection `local -> dialled` really went, when translated.
    pub fn backend(&self, local: SocketAddr, dialled: SocketAddr) -> Option<SocketAddr> {
        self.backends.get(&(local, dialled)).copied()
    }

    /// A translated address (a Service VIP) that leads to `backend`.
    pub fn vip_of(&self, backend: &SocketAddr) -> Option<SocketAddr> {
        self.vip_of.get(backend).copied()
    }

    /// The backends seen behind `vip` (at most 16, sorted).
    pub fn backends_of(&self, vip: SocketAddr) -> Vec<SocketAddr> {
        let mut b: Vec<SocketAddr> = self
            .vip_of
            .iter()
            .filter(|(_, v)| **v == vip)
            .map(|(b, _)| *b)
            .collect();
        b.sort_unstable();
        b.truncate(16);
        b
    }

    /// The destination a client at `client` dialled to reach `backend`, when DNAT
    /// translated it.
    pub fn dialled(&self, client: SocketAddr, backend: SocketAddr) -> Option<SocketAddr> {
        self.dialled.get(&(client, backend)).copied()
    }
}
