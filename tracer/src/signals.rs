//! Stopping cleanly from the first moment. SIGINT, SIGTERM and SIGHUP (a dropped ssh
//! or `kubectl debug` session) only raise a flag, from process start; every command
//! polls it: the live loop at its next 50 ms drain (the programs are then detached,
//! the log's last line written, findings and losses printed), the UI at its next
//! frame, `lab` by removing its namespaces. A closed stdout or stderr pipe raises the
//! same flag (see [`crate::output::term`]) instead of killing the process.

use std::sync::atomic::{AtomicI32, Ordering};

static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Async-signal-safe: one atomic store.
    STOP.store(sig, Ordering::SeqCst);
}

/// Installs the handlers; call first thing in `main`.
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a plain handler and an empty mask is valid;
        // the handler only stores to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&raw mut sa.sa_mask);
            libc::sigaction(sig, &raw const sa, std::ptr::null_mut());
        }
    }
}

/// The signal that asked to stop, if any.
pub fn requested() -> Option<i32> {
    match STOP.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// Asks every loop to stop as if `sig` had arrived (a closed output pipe).
pub fn request(sig: i32) {
    let _ = STOP.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
}

/// `SIGHUP`, ... for messages.
pub fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "a closed output pipe",
        _ => "a signal",
    }
}
