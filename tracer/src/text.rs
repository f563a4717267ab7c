//! Strings from the kernel or a log (process names, paths, reasons) made safe for a
//! terminal: shown, never sent as control sequences. Used by every layer that writes
//! text a person reads (findings, the UI, the headless commands).

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
