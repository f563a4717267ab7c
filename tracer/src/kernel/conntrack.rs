//! Where DNAT sent a connection, from the kernel's connection tracker (ctnetlink:
//! `NETLINK_NETFILTER`, `IPCTNL_MSG_CT_GET` for one tuple — what `conntrack -G`
//! does). A client that dials a Kubernetes Service VIP has a socket to the VIP; the
//! server's socket has the pod's address. Conntrack's entry holds both: the
//! original tuple (client -> VIP) and the reply tuple (backend -> client).
//!
//! Asked only for the few events that need it (an idle close, a reset), never per
//! packet or per connection, and only where the tracker exists at all
//! (`/sys/module/nf_conntrack`): asking would load `nf_conntrack_netlink` otherwise.
//! The node's namespace is asked first (kube-proxy translates there, for pods and
//! host processes alike), then the process's own.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, OwnedFd},
    path::Path,
};

const NETLINK_NETFILTER: i32 = 12;
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
/// `(NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET` and the answer's `CT_NEW`.
const CT_GET: u16 = 0x0101;
const CT_NEW: u16 = 0x0100;
const NLA_F_NESTED: u16 = 0x8000;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
/// Namespaces whose socket is kept at most.
const MAX_SOCKETS: usize = 64;

/// One direction of a tracked connection: source and destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// Which direction a lookup gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// As the client sent it (client -> what it dialled).
    Original,
    /// As the server answers (server -> client).
    Reply,
}

fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn ip_bytes(ip: IpAddr) -> (bool, Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => (true, v4.octets().to_vec()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (true, v4.octets().to_vec()),
            None => (false, v6.octets().to_vec()),
        },
    }
}

/// The `CT_GET` request for `t` in direction `dir`.
pub fn request(t: Tuple, dir: Direction) -> Vec<u8> {
    let (v4, src) = ip_bytes(t.src.ip());
    let (_, dst) = ip_bytes(t.dst.ip());
    let mut ip = Vec::new();
    attr(
        &mut ip,
        if v4 { CTA_IP_V4_SRC } else { CTA_IP_V6_SRC },
        &src,
    );
    attr(
        &mut ip,
        if v4 { CTA_IP_V4_DST } else { CTA_IP_V6_DST },
        &dst,
    );
    let mut proto = Vec::new();
    attr(&mut proto, CTA_PROTO_NUM, &[6]);
    attr(&mut proto, CTA_PROTO_SRC_PORT, &t.src.port().to_be_bytes());
    attr(&mut proto, CTA_PROTO_DST_PORT, &t.dst.port().to_be_bytes());
    let mut tuple = Vec::new();
    attr(&mut tuple, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    attr(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
    let which = match dir {
        Direction::Original => CTA_TUPLE_ORIG,
        Direction::Reply => CTA_TUPLE_REPLY,
    };
    let mut body = vec![
        if v4 {
            u8::try_from(libc::AF_INET).unwrap_or(2)
        } else {
            u8::try_from(libc::AF_INET6).unwrap_or(10)
        },
        0,
        0,
        0,
    ];
    attr(&mut body, which | NLA_F_NESTED, &tuple);
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    let len = u32::try_from(NLMSG_HDRLEN + body.len()).unwrap_or(0);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&CT_GET.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(&body);
    m
}

/// Attributes of `b`: (kind without flags, payload).
fn attrs(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(b.get(at + 2..at + 4)?.try_into().ok()?) & 0x3fff;
        if len < 4 {
            return None;
        }
        let payload = b.get(at + 4..at + len)?;
        at += (len + 3) & !3;
        Some((kind, payload))
    })
}

fn parse_tuple(b: &[u8]) -> Option<Tuple> {
    let (mut src_ip, mut dst_ip, mut sport, mut dport) = (None, None, None, None);
    for (kind, p) in attrs(b) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, v) in attrs(p) {
                    let ip = match v.len() {
                        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?)),
                        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?)),
                        _ => continue,
                    };
                    match k {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src_ip = Some(ip),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst_ip = Some(ip),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, v) in attrs(p) {
                    let port = v.get(..2).map(|p| u16::from_be_bytes([p[0], p[1]]));
                    match k {
                        CTA_PROTO_SRC_PORT => sport = port,
                        CTA_PROTO_DST_PORT => dport = port,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        src: SocketAddr::new(src_ip?, sport?),
        dst: SocketAddr::new(dst_ip?, dport?),
    })
}

/// The (original, reply) tuples of a `CT_NEW` answer; `None` for anything else.
pub fn parse_answer(b: &[u8]) -> Option<(Tuple, Tuple)> {
    let len = usize::try_from(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?)).ok()?;
    let kind = u16::from_ne_bytes(b.get(4..6)?.try_into().ok()?);
    if kind != CT_NEW || len > b.len() || len < NLMSG_HDRLEN + 4 {
        return None;
    }
    let (mut orig, mut reply) = (None, None);
    for (k, p) in attrs(&b[NLMSG_HDRLEN + 4..len]) {
        match k {
            CTA_TUPLE_ORIG => orig = parse_tuple(p),
            CTA_TUPLE_REPLY => reply = parse_tuple(p),
            _ => {}
        }
    }
    Some((orig?, reply?))
}

fn netfilter_socket() -> io::Result<OwnedFd> {
    crate::kernel::diag::netlink_socket(NETLINK_NETFILTER, std::time::Duration::from_millis(200))
}

fn ask(fd: &OwnedFd, t: Tuple, dir: Direction) -> io::Result<Option<(Tuple, Tuple)>> {
    let req = request(t, dir);
    // SAFETY: req is valid for its length.
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    let b = &buf[..n];
    if b.get(4..6).map(|k| u16::from_ne_bytes([k[0], k[1]])) == Some(NLMSG_ERROR) {
        // Not tracked (ENOENT) or not answerable here: nothing to say.
        return Ok(None);
    }
    Ok(parse_answer(b))
}

/// What a lookup found: the client's view (its local address, what it dialled) and
/// where the connection really went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub client: SocketAddr,
    pub dialled: SocketAddr,
    pub backend: SocketAddr,
}

/// The translated destination of a connection, if conntrack translated it: from a
/// tuple as the original direction (a client's socket) or as the reply (a server's).
pub fn translation(orig: Tuple, reply: Tuple) -> Option<Translation> {
    (reply.src != orig.dst).then_some(Translation {
        client: orig.src,
        dialled: orig.dst,
        backend: reply.src,
    })
}

/// Conntrack sockets by network namespace, and what they answered.
pub struct Conntrack {
    root: Option<OwnedFd>,
    root_netns: u64,
    others: HashMap<u64, OwnedFd>,
    /// Lookups made and failed (a namespace that could not be entered).
    pub lookups: u64,
    pub errors: u64,
}

fn netns_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path)
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

impl Conntrack {
    /// `None` where the kernel tracks no connections (nothing is translated).
    pub fn open() -> Option<Self> {
        let tracked = Path::new("/sys/module/nf_conntrack").exists()
            || Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists();
        if !tracked {
            return None;
        }
        Some(Self {
            root: netfilter_socket().ok(),
            root_netns: netns_of(Path::new("/proc/self/ns/net")).unwrap_or(0),
            others: HashMap::new(),
            lookups: 0,
            errors: 0,
        })
    }

    /// Looks `t` up (direction `dir`) in this process's namespace, then in the
    /// namespace of task `pid` (a thread id names the thread's own).
    pub fn lookup(&mut self, t: Tuple, dir: Direction, pid: u32) -> Option<Translation> {
        self.lookups += 1;
        if let Some(fd) = &self.root {
            if let Ok(Some((o, r))) = ask(fd, t, dir) {
                return translation(o, r);
            }
        }
        if pid == 0 {
            return None;
        }
        let path = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
        let netns = netns_of(&path)?;
        if netns == self.root_netns {
            return None;
        }
        if !self.others.contains_key(&netns) {
            if self.others.len() >= MAX_SOCKETS {
                self.others.clear();
            }
            let Ok(fd) = crate::kernel::diag::in_namespace(&path, netfilter_socket) else {
                self.errors += 1;
                return None;
            };
            self.others.insert(netns, fd);
        }
        let fd = self.others.get(&netns)?;
        match ask(fd, t, dir) {
            Ok(Some((o, r))) => translation(o, r),
            Ok(None) => None,
            Err(_) => {
                self.others.remove(&netns);
                self.errors += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    /// The answer the kernel gives, built from the request's own encoding.
    fn answer(orig: Tuple, reply: Tuple) -> Vec<u8> {
        let o = request(orig, Direction::Original);
        let r = request(reply, Direction::Reply);
        // Both requests: header (16) + nfgenmsg (4) + one nested tuple attribute.
        let mut m = o[..NLMSG_HDRLEN + 4].to_vec();
        m.extend_from_slice(&o[NLMSG_HDRLEN + 4..]);
        m.extend_from_slice(&r[NLMSG_HDRLEN + 4..]);
        let len = u32::try_from(m.len()).expect("len");
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&CT_NEW.to_ne_bytes());
        m
    }

    #[test]
    fn a_dnat_entry_names_the_backend_behind_the_vip() {
        let orig = Tuple {
            src: a("10.238.0.1:41000"),
            dst: a("10.96.0.50:80"),
        };
        let reply = Tuple {
            src: a("10.238.0.2:8000"),
            dst: a("10.238.0.1:41000"),
        };
        let (o, r) = parse_answer(&answer(orig, reply)).expect("parsed");
        assert_eq!((o, r), (orig, reply));
        let t = translation(o, r).expect("translated");
        assert_eq!(t.dialled, a("10.96.0.50:80"));
        assert_eq!(t.backend, a("10.238.0.2:8000"));
        assert_eq!(t.client, a("10.238.0.1:41000"));
        let plain = Tuple {
            src: a("10.96.0.50:80"),
            dst: a("10.238.0.1:41000"),
        };
        assert!(translation(orig, plain).is_none(), "untranslated");
    }

    #[test]
    fn truncated_answers_are_refused() {
        let orig = Tuple {
            src: a("[fd00::1]:41000"),
            dst: a("[fd00::50]:80"),
        };
        let reply = Tuple {
            src: a("[fd00::2]:8000"),
            dst: a("[fd00::1]:41000"),
        };
        let m = answer(orig, reply);
        assert!(parse_answer(&m).is_some());
        for cut in 0..m.len() {
            let mut b = m[..cut].to_vec();
            if b.len() >= 4 {
                let len = u32::try_from(b.len()).expect("len");
                b[..4].copy_from_slice(&len.to_ne_bytes());
            }
            let _ = parse_answer(&b);
        }
    }
}
