//! The kernel programs' own diagnostics (aya-log): with `-v` a failed kernel read is
//! said on stderr with the program and the helper's error; without it only counted.
//! The failure is real: connect() given an unreadable address (EFAULT), which the
//! exit hook of connect() fails to read from user memory.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use tests::{conntrace_bin, require_root};

/// connect() on a fresh TCP socket with an address pointer into the unmapped first
/// page: EFAULT.
fn bad_connects(n: usize) {
    for _ in 0..n {
        // SAFETY: plain system calls on a socket this function owns; the bad pointer
        // is only handed to the kernel, which refuses it.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0, "socket");
            let r = libc::connect(fd, std::ptr::dangling::<libc::sockaddr>(), 16);
            assert_eq!(r, -1);
            assert_eq!(*libc::__errno_location(), libc::EFAULT);
            libc::close(fd);
        }
    }
}

fn watch(verbose: bool) -> String {
    let mut args = vec!["watch", "--syscall-hooks", "--duration", "60"];
    if verbose {
        args.push("-v");
    }
    let mut child = Command::new(conntrace_bin())
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run conntrace");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut err = String::new();
    // Attaching takes seconds on an emulated kernel of the matrix: wait for it.
    for line in lines.by_ref() {
        let line = line.expect("stderr");
        err.push_str(&line);
        err.push('\n');
        if line.contains("programs attached") {
            break;
        }
    }
    assert!(err.contains("programs attached"), "{err}");
    bad_connects(3);
    // The programs' log is read every 50 ms; then a clean stop (SIGINT).
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(i32::try_from(child.id()).expect("pid"), libc::SIGINT) };
    for line in lines {
        err.push_str(&line.expect("stderr"));
        err.push('\n');
    }
    let status = child.wait().expect("conntrace");
    assert!(status.success(), "{err}");
    err
}

/// `lost N (… kernel read K, …)` from the exit line.
fn kernel_read_losses(stderr: &str) -> u64 {
    stderr
        .lines()
        .find(|l| l.contains("; lost "))
        .and_then(|l| l.split("kernel read ").nth(1))
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no kernel read count in: {stderr}"))
}

#[test]
fn with_v_a_failed_kernel_read_is_said_and_counted() {
    require_root();
    let err = watch(true);
    let said = err
        .lines()
        .filter(|l| {
            l.starts_with(
                "conntrace: kernel warn: sys_exit_connect: a kernel read failed (error -14)",
            )
        })
        .count();
    assert!(said >= 3, "{err}");
    assert!(kernel_read_losses(&err) >= 3, "{err}");
}

#[test]
fn without_v_it_is_only_counted() {
    require_root();
    let err = watch(false);
    assert!(!err.contains("conntrace: kernel warn"), "{err}");
    assert!(kernel_read_losses(&err) >= 3, "{err}");
}
