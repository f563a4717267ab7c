//! The kernel's two sources of connection facts as [`Record`]s: the ring buffer
//! (events, and the records the kernel ships for a socket), and reads of its
//! per-socket map for connections open longer than a moment (a pool's idle sockets,
//! a hung worker's query, a port held). Both go through the [`Decoder`]; a step read
//! early from the map is not delivered again when the kernel ships it
//! ([`Delivered`]).

use std::time::Duration;

use tracer_common::ConnRecord;

use crate::{
    event::Record,
    kernel::{
        decode::{self, Decoder, Wire},
        delivered::Delivered,
        session::Socks,
        time::monotonic_now,
    },
};

pub struct KernelRecords {
    decoder: Decoder,
    delivered: Delivered,
    socks: Option<Socks>,
    buf: Vec<ConnRecord>,
    /// Records that did not decode (counted in the losses).
    pub undecodable: u64,
}

impl KernelRecords {
    /// `socks`: the kernel's per-socket map (`None`: only the ring buffer).
    pub fn new(decoder: Decoder, socks: Option<Socks>) -> Self {
        Self {
            decoder,
            delivered: Delivered::default(),
            socks,
            buf: Vec::new(),
            undecodable: 0,
        }
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// One ring-buffer record; `None` when it did not decode (counted) or when every
    /// step it carries was delivered already by a read of the map.
    pub fn from_ring(&mut self, bytes: &[u8]) -> Option<Record> {
        let wire = match decode::parse(bytes) {
            Ok(Wire::Conn(mut rec)) => {
                if !self.delivered.shipped(&mut rec) {
                    return None;
                }
                Wire::Conn(rec)
            }
            Ok(wire) => wire,
            Err(_) => {
                self.undecodable += 1;
                return None;
            }
        };
        self.convert(&wire)
    }

    /// One entry read from the kernel's map: the steps not delivered before, as the
    /// kernel would ship them.
    pub fn from_map(&mut self, mut rec: ConnRecord) -> Option<Record> {
        if !self.delivered.read(&mut rec) {
            return None;
        }
        self.convert(&Wire::Conn(rec))
    }

    fn convert(&mut self, wire: &Wire) -> Option<Record> {
        let record = self.decoder.convert_wire(wire).ok();
        if record.is_none() {
            self.undecodable += 1;
        }
        record
    }

    /// Connections whose transitions have waited in the kernel's map for longer than
    /// `after`, as records (to `out`).
    pub fn open_conns(&mut self, after: Duration, out: &mut Vec<Record>) {
        let Some(socks) = &self.socks else {
            return;
        };
        let now = monotonic_now();
        let before = u64::try_from(now.saturating_sub(after).as_nanos()).unwrap_or(0);
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        crate::kernel::session::waiting_records(socks, before, &mut buf);
        for rec in buf.drain(..) {
            out.extend(self.from_map(rec));
        }
        self.buf = buf;
    }
}
