//! `--pid`, `--comm`, `--port`, `--cidr`: which events a command keeps.

use std::{net::IpAddr, str::FromStr};

use crate::event::Event;

/// An IP network, `10.0.0.0/8` or `fd00::/8`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("'{s}' is not an IP network (expected e.g. 10.0.0.0/8 or fd00::/8)")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{s}': prefix length must be 0..={max}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Event selection; every set criterion must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Local or remote port.
    pub port: Option<u16>,
    /// Local or remote address.
    pub cidr: Option<Cidr>,
    /// Pod UID (or a prefix of it).
    pub pod: Option<String>,
    /// Container id (or a prefix of it).
    pub container: Option<String>,
    /// Pod namespace (needs the Kubernetes API).
    pub namespace: Option<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn matches(&self, e: &Event) -> bool {
        self.matches_conn(e.pid, &e.comm, e.local, e.remote)
    }

    /// `--pid`, `--comm`, `--port`, `--cidr` against one connection and its owner.
    pub fn matches_conn(
        &self,
        owner_pid: u32,
        owner_comm: &str,
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
    ) -> bool {
        let Self {
            pid,
            comm,
            port,
            cidr,
            pod: _,
            container: _,
            namespace: _,
        } = self;
        pid.is_none_or(|p| owner_pid == p)
            && comm.as_ref().is_none_or(|c| owner_comm == c)
            && port.is_none_or(|p| local.port() == p || remote.port() == p)
            && cidr
                .as_ref()
                .is_none_or(|n| n.contains(local.ip()) || n.contains(remote.ip()))
    }
}

impl Filter {
    /// `--pod` / `--container` / `--namespace` against the container of the event's
    /// cgroup and its pod's namespace.
    /// Whether a pod, container or namespace is asked for (else every cgroup matches
    /// and [`Self::matches_container`] need not be asked).
    pub fn by_container(&self) -> bool {
        self.pod.is_some() || self.container.is_some() || self.namespace.is_some()
    }

    pub fn matches_container(
        &self,
        c: Option<&crate::k8s::ContainerRef>,
        namespace: Option<&str>,
    ) -> bool {
        let has = |want: &Option<String>, got: Option<&String>| {
            want.as_ref()
                .is_none_or(|w| got.is_some_and(|g| g.starts_with(w.as_str())))
        };
        has(&self.pod, c.and_then(|c| c.pod_uid.as_ref()))
            && has(&self.container, c.and_then(|c| c.container_id.as_ref()))
            && self
                .namespace
                .as_ref()
                .is_none_or(|n| namespace == Some(n.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_matches() {
        let n: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let host: Cidr = "::1".parse().unwrap();
        assert_eq!(host.prefix, 128);
    }

    #[test]
    fn bad_cidr_names_the_problem() {
        assert!("10.0.0.0/33"
            .parse::<Cidr>()
            .unwrap_err()
            .contains("prefix"));
        assert!("banana"
            .parse::<Cidr>()
            .unwrap_err()
            .contains("not an IP network"));
    }
}
