//! A hand-written JSON encoder for [`Event`], the log's hot path: the same JSON
//! serde writes (a test holds them equal), without serde's flatten machinery and
//! with the RFC 3339 second prefix cached. Reading stays with serde.

use std::{io::Write as _, time::SystemTime};

use crate::event::{Event, EventKind};

/// The last second formatted, and its `2026-11-23T01:43:07.` prefix.
#[derive(Default)]
pub struct TimeCache {
    secs: Option<u64>,
    prefix: String,
}

impl TimeCache {
    fn write(&mut self, out: &mut Vec<u8>, t: SystemTime) {
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        if self.secs != Some(secs) {
            let full = humantime::format_rfc3339_seconds(t).to_string();
            // "2026-11-23T01:43:07Z" -> "2026-11-23T01:43:07."
            self.prefix = format!("{}.", full.trim_end_matches('Z'));
            self.secs = Some(secs);
        }
        out.extend_from_slice(self.prefix.as_bytes());
        let ms = since.subsec_millis();
        out.extend_from_slice(&[
            b'0' + u8::try_from(ms / 100).unwrap_or(0),
            b'0' + u8::try_from(ms / 10 % 10).unwrap_or(0),
            b'0' + u8::try_from(ms % 10).unwrap_or(0),
            b'Z',
        ]);
    }
}

fn num(out: &mut Vec<u8>, key: &str, v: impl itoa::Integer) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// A string value that needs no escaping (state names, errno names, addresses).
fn plain(out: &mut Vec<u8>, key: &str, v: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":\"");
    out.extend_from_slice(v.as_bytes());
    out.push(b'"');
}

fn boolean(out: &mut Vec<u8>, key: &str, v: bool) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(if v { b"\":true" } else { b"\":false" });
}

/// A socket address as `Display` writes it; IPv4 by hand (the common case, and
/// `core::fmt` was a tenth of `record`'s CPU in a connection storm).
fn addr(out: &mut Vec<u8>, key: &str, v: &std::net::SocketAddr) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":\"");
    match v {
        std::net::SocketAddr::V4(v4) => {
            let mut buf = itoa::Buffer::new();
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(buf.format(octet).as_bytes());
            }
            out.push(b':');
            out.extend_from_slice(buf.format(v4.port()).as_bytes());
        }
        std::net::SocketAddr::V6(_) => {
            let _ = write!(out, "{v}");
        }
    }
    out.push(b'"');
}

/// `0x` and lowercase hex digits, no leading zeros, as `{:#x}` writes them.
fn hex(out: &mut Vec<u8>, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"0x");
    let nibbles = (64 - v.leading_zeros()).div_ceil(4).max(1);
    for i in (0..nibbles).rev() {
        out.push(DIGITS[((v >> (i * 4)) & 0xf) as usize]);
    }
}

/// Appends `e` as one JSON object (no newline).
pub fn write_event(out: &mut Vec<u8>, e: &Event, times: &mut TimeCache) {
    let Event {
        time,
        mono_ns,
        kind,
        pid,
        tid,
        comm,
        cgroup,
        owner_known,
        sock,
        local,
        remote,
    } = e;
    out.extend_from_slice(b"{\"time\":\"");
    times.write(out, *time);
    out.push(b'"');
    num(out, "mono_ns", *mono_ns);
    plain(out, "type", kind.name());
    match kind {
        EventKind::State {
            old,
            new,
            idle_ms,
            send_idle_ms,
            recv_idle_ms,
            closed_by,
            retrans,
        } => {
            plain(out, "old", old.as_str());
            plain(out, "new", new.as_str());
            num(out, "idle_ms", *idle_ms);
            num(out, "send_idle_ms", *send_idle_ms);
            num(out, "recv_idle_ms", *recv_idle_ms);
            if let Some(c) = closed_by {
                plain(out, "closed_by", c.as_str());
            }
            num(out, "retrans", *retrans);
        }
        EventKind::Connect { errno, state } | EventKind::Error { errno, state } => {
            plain(out, "errno", &errno.name());
            plain(out, "state", state.as_str());
        }
        EventKind::Reset {
            direction,
            state,
            reason,
            idle_ms,
            recv_idle_ms,
            syn,
        } => {
            plain(out, "direction", direction.as_str());
            match state {
                Some(s) => plain(out, "state", s.as_str()),
                None => out.extend_from_slice(b",\"state\":null"),
            }
            if let Some(r) = reason {
                out.extend_from_slice(b",\"reason\":");
                let _ = serde_json::to_writer(&mut *out, r);
            }
            num(out, "idle_ms", *idle_ms);
            num(out, "recv_idle_ms", *recv_idle_ms);
            boolean(out, "syn", *syn);
        }
        EventKind::Retransmit {
            state,
            retrans,
            rto_count,
            ack_idle_ms,
            packets_out,
            keepalive,
            user_timeout_ms,
            orphan,
        } => {
            plain(out, "state", state.as_str());
            num(out, "retrans", *retrans);
            num(out, "rto_count", *rto_count);
            num(out, "ack_idle_ms", *ack_idle_ms);
            num(out, "packets_out", *packets_out);
            boolean(out, "keepalive", *keepalive);
            num(out, "user_timeout_ms", *user_timeout_ms);
            if *orphan {
                boolean(out, "orphan", true);
            }
        }
        EventKind::Accept { state } => plain(out, "state", state.as_str()),
    }
    num(out, "pid", *pid);
    num(out, "tid", *tid);
    out.extend_from_slice(b",\"comm\":");
    let _ = serde_json::to_writer(&mut *out, comm);
    num(out, "cgroup", *cgroup);
    boolean(out, "owner_known", *owner_known);
    out.extend_from_slice(b",\"sock\":\"");
    hex(out, *sock);
    out.push(b'"');
    addr(out, "local", local);
    addr(out, "remote", remote);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::Sock;
    use crate::event::TcpState;

    #[test]
    fn hex_and_addresses_match_core_fmt() {
        for v in [0u64, 1, 0xf, 0x10, 0xffff_8881_0241_1bc0, u64::MAX] {
            let mut out = Vec::new();
            hex(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{v:#x}"));
        }
        for a in [
            "0.0.0.0:0",
            "127.0.0.1:8080",
            "255.255.255.255:65535",
            "[::1]:5",
            "[fe80::1%2]:80",
        ] {
            let a: std::net::SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            super::addr(&mut out, "k", &a);
            assert_eq!(String::from_utf8(out).unwrap(), format!(",\"k\":\"{a}\""));
        }
    }

    #[test]
    fn matches_serde_for_every_kind() {
        let s = Sock::new(
            0xffff_8881_0241_1bc0,
            42,
            "we\"ird\\comm",
            "[::1]:40000",
            "10.0.0.5:80",
        );
        let mut events = s.connect(1234);
        events.push(s.state(5000, TcpState::Established, TcpState::CloseWait, 5000));
        events.push(s.reset_received(5001, TcpState::CloseWait, 4));
        events.push(s.reset_sent(5002, None, "NO_SOCKET"));
        events.push(s.connect_error(5003, libc::EADDRNOTAVAIL));
        events.push(s.error(5004, 9999));
        events.push(s.retransmit(5005, 300, 2));
        events.push(s.event(
            5006,
            EventKind::Accept {
                state: TcpState::Established,
            },
        ));
        let mut times = TimeCache::default();
        for e in &events {
            let mut out = Vec::new();
            write_event(&mut out, e, &mut times);
            let ours: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            let theirs = serde_json::to_value(e).expect("serde");
            assert_eq!(ours, theirs);
            let back: Event = serde_json::from_slice(&out).expect("reads back");
            assert_eq!(&back, e);
        }
    }
}
