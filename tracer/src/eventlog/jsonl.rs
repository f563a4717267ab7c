//! A hand-written JSON encoder for [`Event`] and [`Conn`], the log's hot path: for
//! an event the same JSON serde writes (a test holds them equal), without serde's
//! flatten machinery and with the RFC 3339 second prefix cached. Reading stays with
//! serde. Both use the same keys for the socket and its owner.

use std::{io::Write as _, time::SystemTime};

use crate::event::{Conn, Event, EventKind, Totals};

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

/// `sk`, `pid`, `tid` (only when not `pid`), `comm`, `cg` (only when set), `own`
/// (only when false): the socket and its owner, in events and connection lines alike.
fn owner(out: &mut Vec<u8>, sock: u64, pid: u32, tid: u32, comm: &str, cgroup: u64, known: bool) {
    out.extend_from_slice(b",\"sk\":\"");
    hex(out, sock);
    out.push(b'"');
    num(out, "pid", pid);
    if tid != pid {
        num(out, "tid", tid);
    }
    out.extend_from_slice(b",\"comm\":");
    let _ = serde_json::to_writer(&mut *out, comm);
    if cgroup != 0 {
        num(out, "cg", cgroup);
    }
    if !known {
        boolean(out, "own", false);
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
    out.extend_from_slice(b"{\"t\":\"");
    times.write(out, *time);
    out.push(b'"');
    num(out, "ns", *mono_ns);
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
    owner(out, *sock, *pid, *tid, comm, *cgroup, *owner_known);
    addr(out, "l", local);
    addr(out, "r", remote);
    out.push(b'}');
}

/// Appends `c` as the log's connection line (no newline):
/// `{"conn":HISTORY,"ns":…,"sk":…,"pid":…,"comm":…,"l":…,"r":…,"end":[…]}`.
/// Short keys and no defaults: this is most of a recording. The line's first key,
/// `conn`, names its kind and holds the history. No `t`: the wall time is the
/// header's boot time plus `ns` ([`read_conn`]), exactly the live one. `tid` only
/// when it is not `pid`, `cg` only when set, `own` only when false, `end` (the
/// totals: `[tx, rx, rtt_us, rtx, rto]`, the last two only when not zero) only on
/// the connection's last record.
pub fn write_conn(out: &mut Vec<u8>, c: &Conn) {
    out.extend_from_slice(b"{\"conn\":\"");
    c.write_history(out);
    out.extend_from_slice(b"\",\"ns\":");
    out.extend_from_slice(itoa::Buffer::new().format(c.mono_ns).as_bytes());
    owner(out, c.sock, c.pid, c.tid, &c.comm, c.cgroup, c.owner_known);
    addr(out, "l", &c.local);
    addr(out, "r", &c.remote);
    if let Some(t) = &c.totals {
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(b",\"end\":[");
        out.extend_from_slice(num.format(t.bytes_acked).as_bytes());
        out.push(b',');
        out.extend_from_slice(num.format(t.bytes_received).as_bytes());
        out.push(b',');
        out.extend_from_slice(num.format(t.srtt_us).as_bytes());
        if t.retrans != 0 || t.rto_count != 0 {
            out.push(b',');
            out.extend_from_slice(num.format(t.retrans).as_bytes());
        }
        if t.rto_count != 0 {
            out.push(b',');
            out.extend_from_slice(num.format(t.rto_count).as_bytes());
        }
        out.push(b']');
    }
    out.push(b'}');
}

/// Reads a connection line: this version's ([`write_conn`]) or, from versions 2 to 4,
/// `{"conn":{…,"h":HISTORY,"end":{"tx","rx","rtt_us","rtx","rto"}}}`.
/// `boot`: the header's boot time, which gives a line without `t` (from version 4)
/// its wall time.
pub fn parse_conn_line(line: &str, boot: SystemTime) -> Result<Conn, String> {
    let line: ConnLine = if line.starts_with("{\"conn\":{") {
        #[derive(serde::Deserialize)]
        struct Nested {
            conn: ConnLine,
        }
        serde_json::from_str::<Nested>(line).map(|n| n.conn)
    } else {
        serde_json::from_str(line)
    }
    .map_err(|e| crate::eventlog::describe(&e))?;
    read_conn(line, boot).map_err(|e| format!("corrupt line ({e})"))
}

fn read_conn(value: ConnLine, boot: SystemTime) -> Result<Conn, String> {
    let digits = value.sk.strip_prefix("0x").unwrap_or(&value.sk);
    let sock = u64::from_str_radix(digits, 16).map_err(|e| format!("sk: {e}"))?;
    let history = value
        .conn
        .or(value.h)
        .ok_or_else(|| "no history (conn or h)".to_owned())?;
    let totals = match value.end {
        None => None,
        Some(EndLine::Map(e)) => Some(Totals {
            retrans: e.rtx,
            rto_count: e.rto,
            bytes_acked: e.tx,
            bytes_received: e.rx,
            srtt_us: e.rtt_us,
        }),
        Some(EndLine::List(v, n)) => {
            let at = |i: usize| v[i];
            if n < 3 {
                return Err(format!("end: {n} numbers, not 3 to 5"));
            }
            Some(Totals {
                retrans: u32::try_from(at(3)).map_err(|e| format!("end: {e}"))?,
                rto_count: u8::try_from(at(4)).map_err(|e| format!("end: {e}"))?,
                bytes_acked: at(0),
                bytes_received: at(1),
                srtt_us: u32::try_from(at(2)).map_err(|e| format!("end: {e}"))?,
            })
        }
    };
    Ok(Conn {
        time: value
            .t
            .unwrap_or_else(|| boot + std::time::Duration::from_nanos(value.ns)),
        mono_ns: value.ns,
        pid: value.pid,
        tid: value.tid.unwrap_or(value.pid),
        comm: value.comm.into(),
        cgroup: value.cg,
        owner_known: value.own,
        sock,
        local: value.l,
        remote: value.r,
        steps: Conn::parse_history(&history)?,
        totals,
    })
}

/// The JSON shape of a connection line: this version's flat one, or the body of an
/// older `{"conn": {…}}`.
#[derive(serde::Deserialize)]
struct ConnLine {
    /// The history, from version 5 (the line's first key).
    #[serde(default)]
    conn: Option<String>,
    /// Written up to version 3; from 4 the header's boot time plus `ns`.
    #[serde(
        default,
        deserialize_with = "crate::event::rfc3339::option::deserialize"
    )]
    t: Option<SystemTime>,
    ns: u64,
    sk: String,
    pid: u32,
    #[serde(default)]
    tid: Option<u32>,
    comm: String,
    #[serde(default)]
    cg: u64,
    #[serde(default = "yes")]
    own: bool,
    l: std::net::SocketAddr,
    r: std::net::SocketAddr,
    /// The history, up to version 4.
    #[serde(default)]
    h: Option<String>,
    #[serde(default)]
    end: Option<EndLine>,
}

fn yes() -> bool {
    true
}

/// The totals: `[tx, rx, rtt_us, rtx, rto]` from version 5, an object before. Read
/// straight from either shape (an untagged enum would buffer every line's value
/// first, on replay's hot path).
enum EndLine {
    /// The numbers, and how many the line had.
    List([u64; 5], usize),
    Map(EndMap),
}

impl<'de> serde::Deserialize<'de> for EndLine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = EndLine;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("[tx, rx, rtt_us, rtx, rto] or {\"tx\", \"rx\", \"rtt_us\", ...}")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<EndLine, A::Error> {
                let mut v = [0u64; 5];
                let mut n = 0;
                while let Some(x) = seq.next_element::<u64>()? {
                    *v.get_mut(n)
                        .ok_or_else(|| serde::de::Error::invalid_length(n + 1, &self))? = x;
                    n += 1;
                }
                Ok(EndLine::List(v, n))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<EndLine, A::Error> {
                serde::Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(EndLine::Map)
            }
        }
        d.deserialize_any(Visit)
    }
}

#[derive(serde::Deserialize)]
struct EndMap {
    tx: u64,
    rx: u64,
    rtt_us: u32,
    #[serde(default)]
    rtx: u32,
    #[serde(default)]
    rto: u8,
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

    #[test]
    fn connection_lines_read_back_and_stay_short() {
        use crate::event::Step;
        let step = |after_us, old, new, idle| Step {
            after_us,
            old,
            new,
            send_idle_ms: idle,
            recv_idle_ms: idle,
            retrans: 0,
        };
        let boot =
            SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(1_795_000_000_123_456_789);
        let mut c = Conn {
            time: boot + std::time::Duration::from_micros(123_456_789_012),
            mono_ns: 123_456_789_012_000,
            pid: 4242,
            tid: 4242,
            comm: "we\"ird".into(),
            cgroup: 0,
            owner_known: true,
            sock: 0xffff_8881_0241_1bc0,
            local: "127.0.0.1:40000".parse().unwrap(),
            remote: "127.0.0.1:8080".parse().unwrap(),
            steps: vec![
                step(0, TcpState::Close, TcpState::SynSent, 0),
                step(41, TcpState::SynSent, TcpState::Established, 0),
                step(1203, TcpState::Established, TcpState::FinWait1, 0),
                step(1210, TcpState::FinWait1, TcpState::FinWait2, 0),
                step(1215, TcpState::FinWait2, TcpState::Close, 0),
            ],
            totals: Some(Totals {
                retrans: 0,
                rto_count: 0,
                bytes_acked: 78,
                bytes_received: 160,
                srtt_us: 31,
            }),
        };
        for variant in 0..3 {
            if variant == 1 {
                c.tid = 4243;
                c.cgroup = 9;
                c.owner_known = false;
                c.steps[2].send_idle_ms = 5000;
                c.steps[2].retrans = 2;
                c.totals.as_mut().unwrap().retrans = 2;
            }
            if variant == 2 {
                c.totals = None;
                c.steps.truncate(3);
            }
            let mut out = Vec::new();
            write_conn(&mut out, &c);
            let text = String::from_utf8(out.clone()).unwrap();
            if variant == 0 {
                assert!(text.len() <= 180, "{} bytes: {text}", text.len());
            }
            assert_eq!(parse_conn_line(&text, boot).unwrap(), c, "{text}");
        }
    }

    #[test]
    fn histories_leave_out_only_what_the_previous_step_gives() {
        let parse = |h: &str| Conn::parse_history(h);
        let write = |steps: Vec<crate::event::Step>| {
            Conn {
                time: SystemTime::UNIX_EPOCH,
                mono_ns: 0,
                pid: 1,
                tid: 1,
                comm: "c".into(),
                cgroup: 0,
                owner_known: true,
                sock: 1,
                local: "127.0.0.1:1".parse().unwrap(),
                remote: "127.0.0.1:2".parse().unwrap(),
                steps,
                totals: None,
            }
            .history()
        };
        // The usual first old states are implied; any other is written.
        let s = parse("SS E+41").unwrap();
        assert_eq!((s[0].old, s[0].new), (TcpState::Close, TcpState::SynSent));
        let s = parse("SR E+4").unwrap();
        assert_eq!((s[0].old, s[0].new), (TcpState::Listen, TcpState::SynRecv));
        assert_eq!(write(s), "SR E+4");
        for h in [
            "E>CW+3~0/9 LA+40~",
            "U>E CW+3~1/1",
            "C>SR E+1",
            "CW>LA C+30~5/5",
        ] {
            assert_eq!(write(parse(h).unwrap()), h, "{h}");
        }
        // A bare `~` repeats the previous step's idle times; it cannot open a
        // history, nor follow a step without idle times.
        let s = parse("E>CW+3~0/9 LA+40~ C+41~1/1").unwrap();
        assert_eq!((s[1].send_idle_ms, s[1].recv_idle_ms), (0, 9));
        assert_eq!((s[2].send_idle_ms, s[2].recv_idle_ms), (1, 1));
        for bad in ["E+4", "SS~", "SS E+41~", "SS E+41 CW+5~ LA"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn version_4_connection_lines_read_as_version_5s() {
        let boot = SystemTime::UNIX_EPOCH;
        let v4 = r#"{"conn":{"ns":17316964817000,"sk":"0xffff88836b8f1280","pid":23683,"tid":23724,"comm":"python3","cg":1,"l":"127.0.0.1:18555","r":"127.0.0.1:39156","h":"L>SR E+6 FW1+138~4/4 FW2+166~4/4 C+173~4/4","end":{"tx":3,"rx":3,"rtt_us":27,"rtx":2}}}"#;
        let v5 = r#"{"conn":"SR E+6 FW1+138~4/4 FW2+166~ C+173~","ns":17316964817000,"sk":"0xffff88836b8f1280","pid":23683,"tid":23724,"comm":"python3","cg":1,"l":"127.0.0.1:18555","r":"127.0.0.1:39156","end":[3,3,27,2]}"#;
        let c = parse_conn_line(v4, boot).unwrap();
        assert_eq!(parse_conn_line(v5, boot).unwrap(), c);
        let mut out = Vec::new();
        write_conn(&mut out, &c);
        assert_eq!(String::from_utf8(out).unwrap(), v5);
        assert_eq!(c.totals.unwrap().retrans, 2);
        for bad in [
            v5.replace("[3,3,27,2]", "[3,3]"),
            v5.replace("[3,3,27,2]", "[3,3,27,2,1,1]"),
            v5.replace("[3,3,27,2]", "[3,3,27,2,300]"),
            v5.replace(r#""conn":"SR"#, r#""conn":"XX"#),
            v5[..v5.len() - 5].to_owned(),
        ] {
            assert!(parse_conn_line(&bad, boot).is_err(), "{bad}");
        }
    }

    #[test]
    fn version_3_connection_lines_keep_their_own_time() {
        let text = r#"{"conn":{"t":"2026-11-23T20:11:28.200Z","ns":17316964748000,"sk":"0xffff88836b8f40c0","pid":23683,"comm":"python3","cg":1,"l":"127.0.0.1:39156","r":"127.0.0.1:18555","h":"C>SS E+57 CW+211~0/0"}}"#;
        let c = parse_conn_line(text, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(
            c.time,
            humantime::parse_rfc3339("2026-11-23T20:11:28.200Z").unwrap()
        );
        assert_eq!(c.mono_ns, 17_316_964_748_000);
    }
}
