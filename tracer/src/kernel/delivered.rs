//! De-duplication between the two ways a socket's transitions reach userspace: the
//! records the kernel ships on the ring buffer, and the reads of its per-socket map
//! for connections open longer than a second (a pool's idle sockets, a hung worker,
//! a port held). A read delivers steps early; the kernel ships them again later, and
//! exactly those are dropped — by their span of timestamps, not "everything up to
//! the read": a read can see an entry after a partial record left it and before the
//! pipeline took that record from the ring, and must not erase its older steps. An
//! entry is known by its socket address *and* its birth (`born_ns`): a freed socket's
//! address is soon another's. (Both were seen under TCG: churned connections missing
//! from the log with nothing counted.)

use tracer_common::{flags, kind, ConnRecord, MAX_STEPS};

/// Entries remembered at most; beyond, forgotten (sockets whose last record was lost).
const CAP: usize = 262_144;

#[derive(Debug, Default)]
pub struct Delivered {
    /// (socket, birth) -> the spans of steps (first, last timestamp) reads delivered,
    /// not yet shipped through the ring.
    delivered: crate::engine::conn::FxMap<(u64, u64), Vec<(u64, u64)>>,
}

/// Spans kept per entry at most (a socket read every 2 s while it stays open, its
/// spans pruned as the ring catches up); the oldest merge beyond.
const MAX_SPANS: usize = 16;

/// Drops the steps inside any of `spans`.
fn drop_delivered(rec: &mut ConnRecord, spans: &[(u64, u64)]) {
    let n = (rec.steps_len as usize).min(MAX_STEPS);
    let mut kept = 0;
    for i in 0..n {
        let ts = rec.steps[i].ts_ns;
        if !spans.iter().any(|(from, to)| (*from..=*to).contains(&ts)) {
            rec.steps[kept] = rec.steps[i];
            kept += 1;
        }
    }
    rec.steps_len = u32::try_from(kept).unwrap_or(0);
}

impl Delivered {
    /// A record from the ring: the steps a read delivered already are dropped (only
    /// those: a read may have seen the entry after this record left, and its steps
    /// are newer); the socket's final record ends what is remembered of it. Returns
    /// whether steps are left.
    pub fn shipped(&mut self, rec: &mut ConnRecord) -> bool {
        // Most records: nothing of any socket was read early.
        if self.delivered.is_empty() {
            return rec.steps_len > 0;
        }
        let key = (rec.head.sock, rec.born_ns);
        let n = (rec.steps_len as usize).min(MAX_STEPS);
        let last = n.checked_sub(1).map(|i| rec.steps[i].ts_ns);
        if rec.head.flags & flags::FINAL != 0 {
            if let Some(spans) = self.delivered.remove(&key) {
                drop_delivered(rec, &spans);
            }
        } else if let Some(spans) = self.delivered.get_mut(&key) {
            drop_delivered(rec, spans);
            // The kernel ships in order: spans up to this record's last step are done.
            if let Some(last) = last {
                spans.retain(|(_, to)| *to > last);
            }
            if spans.is_empty() {
                self.delivered.remove(&key);
            }
        }
        rec.steps_len > 0
    }

    /// A record read from the map: its steps not delivered before, made to look as
    /// the kernel would ship them, remembered. Returns whether steps are left.
    pub fn read(&mut self, rec: &mut ConnRecord) -> bool {
        if self.delivered.len() > CAP {
            self.delivered.clear();
        }
        let key = (rec.head.sock, rec.born_ns);
        if let Some(spans) = self.delivered.get(&key) {
            drop_delivered(rec, spans);
        }
        let n = (rec.steps_len as usize).min(MAX_STEPS);
        if n == 0 {
            return false;
        }
        rec.head.kind = kind::CONN;
        rec.head.flags = 0;
        rec.head.new_state = rec.steps[n - 1].new_state;
        let spans = self.delivered.entry(key).or_default();
        if spans.len() >= MAX_SPANS {
            let (from, _) = spans.remove(0);
            spans[0].0 = from;
        }
        spans.push((rec.steps[0].ts_ns, rec.steps[n - 1].ts_ns));
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
        let mut s = Delivered::default();
        let mut read = record(0xa, 100, &[100, 200], false);
        assert!(s.read(&mut read));
        let mut last = record(0xa, 100, &[100, 200, 300], true);
        assert!(s.shipped(&mut last));
        assert_eq!(last.steps_len, 1);
        assert_eq!(last.steps[0].ts_ns, 300);
    }

    /// Regression: a read after a partial record left the entry, before the pipeline
    /// took it from the ring, must not erase that record's older steps.
    #[test]
    fn a_read_after_a_partial_ship_leaves_the_shipped_steps_alone() {
        let mut s = Delivered::default();
        let mut read = record(0xa, 100, &[400], false);
        assert!(s.read(&mut read));
        let mut partial = record(0xa, 100, &[100, 200, 300], false);
        assert!(s.shipped(&mut partial));
        assert_eq!(partial.steps_len, 3, "the partial record whole");
        let mut last = record(0xa, 100, &[400, 500], true);
        assert!(s.shipped(&mut last));
        assert_eq!(last.steps_len, 1);
        assert_eq!(last.steps[0].ts_ns, 500);
    }

    /// Regression: socket X closed (its final record still in the ring); Y got X's
    /// address and was read. X's record must arrive whole.
    #[test]
    fn the_next_socket_at_an_address_does_not_trim_the_last_ones_record() {
        let mut s = Delivered::default();
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
