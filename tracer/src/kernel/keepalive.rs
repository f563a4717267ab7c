//! The keepalive settings a connection runs with, read for connections awaiting a
//! reply: whether keepalive is on says little (libpq turns it on by default, with the
//! kernel's 2 h idle), when its probes will end the wait says whether it is a hang.
//!
//! Per socket: the holder's descriptor is duplicated with `pidfd_getfd(2)` (Linux 5.6;
//! root or `CAP_SYS_PTRACE`) and asked with `getsockopt`, which answers the socket's
//! own `TCP_KEEPIDLE`/`TCP_KEEPINTVL`/`TCP_KEEPCNT` or, where the application set
//! none, its network namespace's `net.ipv4.tcp_keepalive_*` — exactly what the
//! kernel's timer uses — and `TCP_USER_TIMEOUT`. The duplicate is closed at once; the
//! socket is never changed. Where no holder is found, the namespace's sysctls (read
//! by a thread inside it) stand in, and the settings say so.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use crate::event::{KeepaliveSettings, SettingsSource};

fn getsockopt_int(fd: &OwnedFd, level: i32, name: i32) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: v and len are valid for the call; fd is open.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw mut v).cast(),
            &raw mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u32::try_from(v).unwrap_or(0))
}

/// A duplicate of `pid`'s descriptor `fd`, checked to be the socket `inode`.
fn duplicate(pid: u32, fd: i32, inode: u64) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open(2) with no flags; the result is owned at once.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let pidfd = i32::try_from(pidfd).map_err(|_| io::Error::last_os_error())?;
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: pidfd_getfd(2) with no flags; the result is owned at once.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    let dup = i32::try_from(dup).map_err(|_| io::Error::last_os_error())?;
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    let dup = unsafe { OwnedFd::from_raw_fd(dup) };
    // The holder may have closed and reused the number since /proc was read.
    // SAFETY: an all-zero stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is valid for writing; dup is open.
    if unsafe { libc::fstat(dup.as_raw_fd(), &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_ino != inode {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(dup)
}

/// The settings of the socket `inode`, held by `pid` as descriptor `fd`.
pub fn of_socket(pid: u32, fd: i32, inode: u64) -> io::Result<KeepaliveSettings> {
    let dup = duplicate(pid, fd, inode)?;
    let tcp = libc::IPPROTO_TCP;
    Ok(KeepaliveSettings {
        idle_ms: u64::from(getsockopt_int(&dup, tcp, libc::TCP_KEEPIDLE)?) * 1000,
        interval_ms: u64::from(getsockopt_int(&dup, tcp, libc::TCP_KEEPINTVL)?) * 1000,
        probes: getsockopt_int(&dup, tcp, libc::TCP_KEEPCNT)?,
        user_timeout_ms: u64::from(getsockopt_int(&dup, tcp, libc::TCP_USER_TIMEOUT)?),
        source: SettingsSource::Socket,
    })
}

/// The calling thread's network namespace's defaults (`net.ipv4.tcp_keepalive_*`).
pub fn of_namespace() -> Option<KeepaliveSettings> {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(KeepaliveSettings {
        idle_ms: read("tcp_keepalive_time")? * 1000,
        interval_ms: read("tcp_keepalive_intvl")? * 1000,
        probes: u32::try_from(read("tcp_keepalive_probes")?).ok()?,
        user_timeout_ms: 0,
        source: SettingsSource::Namespace,
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;

    fn set(fd: i32, name: i32, v: i32) {
        // SAFETY: v is valid for the call.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                name,
                (&raw const v).cast(),
                libc::socklen_t::try_from(std::mem::size_of::<i32>()).unwrap_or(4),
            )
        };
        assert_eq!(r, 0, "setsockopt {name}");
    }

    #[test]
    fn a_sockets_own_settings_are_read_through_its_holder() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let fd = c.as_raw_fd();
        set(fd, libc::TCP_KEEPIDLE, 30);
        set(fd, libc::TCP_KEEPINTVL, 5);
        set(fd, libc::TCP_KEEPCNT, 3);
        set(fd, libc::TCP_USER_TIMEOUT, 20_000);
        let mut st = std::fs::metadata(format!("/proc/self/fd/{fd}")).expect("fd");
        let inode = std::os::unix::fs::MetadataExt::ino(&st);
        let pid = std::process::id();
        let k = of_socket(pid, fd, inode).expect("read (needs pidfd_getfd: Linux 5.6)");
        assert_eq!(
            (k.idle_ms, k.interval_ms, k.probes, k.user_timeout_ms),
            (30_000, 5_000, 3, 20_000)
        );
        assert_eq!(k.source, SettingsSource::Socket);
        // Another socket's inode at that number is refused, not misread.
        st = std::fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd())).expect("fd");
        let other = std::os::unix::fs::MetadataExt::ino(&st);
        assert!(of_socket(pid, fd, other).is_err());
        let ns = of_namespace().expect("sysctls readable");
        assert!(ns.idle_ms >= 1000 && ns.probes >= 1, "{ns:?}");
    }
}
