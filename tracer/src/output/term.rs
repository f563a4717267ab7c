//! Terminal output that never panics: `println!` and `eprintln!` abort the process
//! when the pipe they write to is closed (`conntrace report f | head -1`). These
//! write what they can, and a closed pipe asks the running command to stop cleanly
//! ([`crate::signals`]) so the log is still completed.

use std::io::Write as _;

/// Writes `args` and a newline to stdout (`stderr` false) or stderr.
pub fn line(stderr: bool, args: std::fmt::Arguments<'_>) {
    let result = if stderr {
        writeln!(std::io::stderr().lock(), "{args}")
    } else {
        writeln!(std::io::stdout().lock(), "{args}")
    };
    if let Err(e) = result {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            crate::signals::request(libc::SIGPIPE);
        }
    }
}

/// Writes `text` as it is (no newline added) to stdout or stderr.
pub fn text(stderr: bool, text: &str) {
    let result = if stderr {
        std::io::stderr().lock().write_all(text.as_bytes())
    } else {
        std::io::stdout().lock().write_all(text.as_bytes())
    };
    if let Err(e) = result {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            crate::signals::request(libc::SIGPIPE);
        }
    }
}

/// `println!` that survives a closed pipe.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => { $crate::output::term::line(false, format_args!($($arg)*)) };
}

/// `eprintln!` that survives a closed pipe.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::output::term::line(true, format_args!($($arg)*)) };
}
