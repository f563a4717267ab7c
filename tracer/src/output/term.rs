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

/// `s` with every control character (C0 including newline, DEL, C1) shown as `\xNN`
/// or `\u{NNNN}`: a process can name itself with terminal escape sequences
/// (`prctl(PR_SET_NAME)`), and a log can hold anything. For one-line fields.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    escape(s, false)
}

/// [`printable`] for multi-line text: newlines stay.
pub fn printable_text(s: &str) -> std::borrow::Cow<'_, str> {
    escape(s, true)
}

fn escape(s: &str, keep_newlines: bool) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && !(keep_newlines && c == '\n');
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !bad(c) {
            out.push(c);
        } else if let Ok(b) = u8::try_from(u32::from(c)) {
            use std::fmt::Write as _;
            let _ = write!(out, "\\x{b:02x}");
        } else {
            out.extend(c.escape_unicode());
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_newlines_are_shown_not_sent() {
        assert_eq!(printable("nginx"), "nginx");
        assert_eq!(printable("\u{1b}]0;owned\u{7}x"), "\\x1b]0;owned\\x07x");
        assert_eq!(printable("a\nb\u{9b}c"), "a\\x0ab\\x9bc");
        assert_eq!(
            printable_text("line 1\nline\u{1b}[2J"),
            "line 1\nline\\x1b[2J"
        );
        assert_eq!(printable("d\u{7f}"), "d\\x7f");
    }
}
