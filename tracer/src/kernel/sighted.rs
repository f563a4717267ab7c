//! De-duplication between the two ways a socket's transitions reach userspace: the
//! records the kernel ships on the ring buffer, and the reads of its per-socket map
//! for connections open longer than a second (a pool's idle sockets, a hung worker,
//! a port held). A read delivers steps early; the kernel ships them again later, and
//! those are trimmed. An entry is known by its socket address *and* its birth
//! (`born_ns`): a freed socket's address is soon another's, and a read of the new
//! entry must never trim the old one's last record, still on its way through the ring
//! (seen under TCG: churned connections missing from the log with nothing counted).

use std::collections::HashMap;

use tracer_common::{flags, kind, ConnRecord, MAX_STEPS};

/// Entries remembered at most; beyond, forgotten (sockets whose last record was lost).
const CAP: usize = 262_144;

#[derive(Debug, Default)]
pub struct Sighted {
    /// (socket, birth) -> the last step delivered from a read.
    upto: HashMap<(u64, u64), u64>,
}

/// Drops the steps at or before `upto`.
fn trim(rec: &mut ConnRecord, upto: u64) {
    let n = (rec.steps_len as usize).min(MAX_STEPS);
    let keep = rec.steps[..n]
        .iter()
        .position(|s| s.ts_ns > upto)
        .unwrap_or(n);
    rec.steps.copy_within(keep..n, 0);
    rec.steps_len = u32::try_from(n - keep).unwrap_or(0);
}

impl Sighted {
    /// A record from the ring: what a read delivered already is trimmed; the socket's
    /// final record ends what is remembered of it. Returns whether steps are left.
    pub fn shipped(&mut self, rec: &mut ConnRecord) -> bool {
        let key = (rec.head.sock, rec.born_ns);
        let upto = if rec.head.flags & flags::FINAL != 0 {
            self.upto.remove(&key)
        } else {
            self.upto.get(&key).copied()
        };
        if let Some(upto) = upto {
            trim(rec, upto);
        }
        rec.steps_len > 0
    }

    /// A record read from the map: trimmed of what an earlier read delivered, made
    /// to look as the kernel would ship it, remembered. Returns whether steps are left.
    pub fn read(&mut self, rec: &mut ConnRecord) -> bool {
        if self.upto.len() > CAP {
            self.upto.clear();
        }
        let key = (rec.head.sock, rec.born_ns);
        if let Some(&upto) = self.upto.get(&key) {
            trim(rec, upto);
        }
        let n = (rec.steps_len as usize).min(MAX_STEPS);
        if n == 0 {
            return false;
        }
        rec.head.kind = kind::CONN;
        rec.head.flags = 0;
        rec.head.new_state = rec.steps[n - 1].new_state;
        self.upto.insert(key, rec.steps[n - 1].ts_ns);
        true
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::{RawEvent, Step};

    use super::*;

    fn record(sock: u64, born_ns: u64, steps: &[u64], last: bool) -> ConnRecord {
        let mut rec = ConnRecord {
            head: RawEvent::ZERO,
            steps_len: u32::try_from(steps.len()).expect("len"),
            srtt_us: 0,
            bytes_acked: 0,
            bytes_received: 0,
            born_ns,
            steps: [Step::ZERO; MAX_STEPS],
        };
        rec.head.sock = sock;
        rec.head.flags = if last { flags::FINAL } else { 0 };
        for (s, ts) in rec.steps.iter_mut().zip(steps) {
            s.ts_ns = *ts;
        }
        rec
    }

    #[test]
    fn a_read_delivers_early_and_the_shipped_copy_is_trimmed() {
        let mut s = Sighted::default();
        let mut read = record(0xa, 100, &[100, 200], false);
        assert!(s.read(&mut read));
        let mut last = record(0xa, 100, &[100, 200, 300], true);
        assert!(s.shipped(&mut last));
        assert_eq!(last.steps_len, 1);
        assert_eq!(last.steps[0].ts_ns, 300);
    }

    /// Regression: socket X closed (its final record still in the ring); Y got X's
    /// address and was read. X's record must arrive whole.
    #[test]
    fn the_next_socket_at_an_address_does_not_trim_the_last_ones_record() {
        let mut s = Sighted::default();
        let mut y = record(0xa, 5_000, &[5_000, 6_000], false);
        assert!(s.read(&mut y));
        let mut x = record(0xa, 1_000, &[1_000, 1_500, 2_000], true);
        assert!(s.shipped(&mut x));
        assert_eq!(x.steps_len, 3, "X's record whole");
        let mut y_last = record(0xa, 5_000, &[5_000, 6_000, 7_000], true);
        assert!(s.shipped(&mut y_last));
        assert_eq!(y_last.steps_len, 1, "Y's early steps not delivered twice");
    }
}
