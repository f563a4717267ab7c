//! Where a log's lines go, and what happens when the disk says no. A node in trouble
//! fills its disks; a recording must not stop the diagnosis when its own file cannot
//! grow. Lines are buffered whole and written a buffer at a time (every 256 KiB, and
//! at least once a second); when a write fails (ENOSPC, EDQUOT, EIO, EFBIG, ...) the
//! file is cut back to its last whole record, the buffered records are counted as
//! not written, and later ones are counted and dropped while the error lasts — the
//! tracing, the engine, findings, metrics and the UI go on. Every
//! [`RETRY_EVERY`] a write is tried again; once it works the log resumes (a `losses`
//! line then says how many records it is missing). At the end the log ends on a whole
//! record and [`Store::incomplete`] says what it lacks.

use std::{
    fs::File,
    io::{self, Seek as _, Write},
    time::{Duration, Instant},
};

/// Buffered bytes written at once.
const BUFFER: usize = 256 * 1024;
/// Buffered lines are written at least this often.
const FLUSH_EVERY_MS: u64 = 1000;
/// How often a failed log tries to write again.
pub const RETRY_EVERY: Duration = Duration::from_secs(5);

/// An output a log can be cut back to a length on.
pub trait Truncate: Write {
    fn truncate_to(&mut self, len: u64) -> io::Result<()>;
}

impl Truncate for File {
    fn truncate_to(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)?;
        self.seek(io::SeekFrom::Start(len)).map(|_| ())
    }
}

impl Truncate for Vec<u8> {
    fn truncate_to(&mut self, len: u64) -> io::Result<()> {
        self.truncate(usize::try_from(len).unwrap_or(usize::MAX));
        Ok(())
    }
}

/// See the module documentation.
pub struct Store<W: Truncate> {
    out: W,
    buf: Vec<u8>,
    /// Lines in `buf`.
    buffered: u64,
    /// Bytes of whole records the output holds.
    committed: u64,
    /// [`coarse_ms`] of the last write.
    last_write: u64,
    /// Records not written since the first failure, and that failure.
    pub unwritten: u64,
    pub error: Option<io::Error>,
    retry_at: Option<Instant>,
    /// The output came back after a failure; cleared by [`Store::recovered`].
    came_back: bool,
}

/// CLOCK_MONOTONIC_COARSE in ms: read for every line, where a precise clock read
/// (tens of ns in a VM) showed in the profile; a tick's precision is plenty for a
/// one-second flush.
fn coarse_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain syscall (vDSO) with a valid struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000_000
}

impl<W: Truncate> Store<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            buf: Vec::with_capacity(BUFFER),
            buffered: 0,
            committed: 0,
            last_write: coarse_ms(),
            unwritten: 0,
            error: None,
            retry_at: None,
            came_back: false,
        }
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// One whole line (with its newline).
    pub fn push(&mut self, line: &[u8]) {
        if self.error.is_some() && !self.retry_due() {
            self.unwritten += 1;
            return;
        }
        self.buf.extend_from_slice(line);
        self.buffered += 1;
        if self.buf.len() >= BUFFER || coarse_ms().saturating_sub(self.last_write) >= FLUSH_EVERY_MS
        {
            self.write_buffer();
        }
    }

    fn retry_due(&self) -> bool {
        self.retry_at.is_none_or(|at| Instant::now() >= at)
    }

    /// Writes what is buffered; on failure cuts the output back to its last whole
    /// record and counts what was lost.
    fn write_buffer(&mut self) {
        self.last_write = coarse_ms();
        if self.buf.is_empty() {
            return;
        }
        match self
            .out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush())
        {
            Ok(()) => {
                self.committed += self.buf.len() as u64;
                if self.error.take().is_some() {
                    self.came_back = true;
                    self.retry_at = None;
                }
            }
            Err(e) => {
                // Part of the buffer may have reached the file: cut it back, then
                // keep what still fits, a whole record at a time.
                let _ = self.out.truncate_to(self.committed);
                let kept = self.write_what_fits();
                self.unwritten += self.buffered - kept;
                self.error = Some(e);
                self.retry_at = Some(Instant::now() + RETRY_EVERY);
            }
        }
        self.buf.clear();
        self.buffered = 0;
    }

    /// Writes the buffer's records one by one until one does not fit; the output
    /// ends on the last that did. Returns how many were kept.
    fn write_what_fits(&mut self) -> u64 {
        let mut kept = 0;
        let mut at = 0;
        while let Some(len) = self.buf[at..].iter().position(|b| *b == b'\n') {
            let line = &self.buf[at..=at + len];
            if self
                .out
                .write_all(line)
                .and_then(|()| self.out.flush())
                .is_err()
            {
                let _ = self.out.truncate_to(self.committed);
                break;
            }
            self.committed += line.len() as u64;
            at += len + 1;
            kept += 1;
        }
        kept
    }

    /// Writes everything buffered (a retry too, when the output had failed).
    pub fn flush(&mut self) {
        self.write_buffer();
    }

    /// Whether the output came back after failing since the last call.
    pub fn recovered(&mut self) -> bool {
        std::mem::take(&mut self.came_back)
    }

    /// What the output lacks: records not written and why, if any were lost.
    pub fn incomplete(&self) -> Option<String> {
        (self.unwritten > 0).then(|| {
            format!(
                "{} record{} could not be written ({}); the log ends on a whole record",
                self.unwritten,
                if self.unwritten == 1 { "" } else { "s" },
                self.error.as_ref().map_or_else(
                    || "the disk recovered later".to_owned(),
                    ToString::to_string
                ),
            )
        })
    }
}

/// What is still buffered goes out when the log is dropped (an early return).
impl<W: Truncate> Drop for Store<W> {
    fn drop(&mut self) {
        self.write_buffer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output with room for `room` bytes, then ENOSPC (a partial write first,
    /// as a filesystem does).
    struct Full {
        data: Vec<u8>,
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let n = b.len().min(self.room.saturating_sub(self.data.len()));
            if n == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.data.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Truncate for Full {
        fn truncate_to(&mut self, len: u64) -> io::Result<()> {
            self.data.truncate(usize::try_from(len).unwrap_or(0));
            Ok(())
        }
    }

    #[test]
    fn what_fits_of_a_failed_buffer_is_kept_whole() {
        let mut s = Store::new(Full {
            data: Vec::new(),
            room: 20,
        });
        s.push(b"{\"a\":1}\n");
        s.push(b"{\"b\":2}\n");
        s.push(b"{\"c\":3}\n");
        s.flush();
        assert_eq!(s.get_ref().data, b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(s.unwritten, 1);
    }

    #[test]
    fn a_full_disk_cuts_back_to_a_whole_record_and_counts_the_rest() {
        let mut s = Store::new(Full {
            data: Vec::new(),
            room: 25,
        });
        s.push(b"{\"a\":1}\n");
        s.flush();
        s.push(b"{\"b\":22222222222}\n");
        s.push(b"{\"c\":3}\n");
        s.flush();
        assert_eq!(
            s.get_ref().data,
            b"{\"a\":1}\n",
            "cut back to the last whole record"
        );
        assert_eq!(s.unwritten, 2);
        // While the disk is full and the retry not due, records are counted.
        s.push(b"{\"d\":4}\n");
        assert_eq!(s.unwritten, 3);
        let msg = s.incomplete().expect("incomplete");
        assert!(
            msg.starts_with("3 records could not be written (No space left on device"),
            "{msg}"
        );
        // Space again, and the retry due: the log resumes.
        s.out.room = 1000;
        s.retry_at = Some(Instant::now());
        s.push(b"{\"e\":5}\n");
        s.flush();
        assert!(s.recovered());
        assert_eq!(s.get_ref().data, b"{\"a\":1}\n{\"e\":5}\n");
        assert_eq!(s.unwritten, 3, "what was lost stays counted");
    }
}
