//! `cargo xtask matrix [KERNELS]`: the kernel matrix. Boots pinned distribution
//! kernels (Debian's cloud kernel packages, downloaded and extracted, never installed)
//! in qemu with TCG through virtme-ng, which shares this machine's root filesystem
//! read-only, and runs inside each the static binary's `conntrace check` and every
//! root integration test binary. The host kernel runs the same script directly.
//! Prints a table per kernel: programs attached, degraded facts, tests passed.
//!
//! Downloads, the extracted kernels and virtme-ng live in `~/.cache/conntrace/matrix`;
//! apt runs with a private sources list and state there, so the system's apt
//! configuration is read (for its mirror) and never changed.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{apt_install, dist, have, output, status, workspace_root};

/// A pinned kernel package: `(short name, package, version, suite)`.
struct Kernel {
    name: &'static str,
    package: &'static str,
    version: &'static str,
    suite: &'static str,
}

/// Oldest supported (Debian 11, like Amazon Linux 2's 5.10), Debian 12's 6.1 (as on
/// AL2023 and COS), and 6.12 (the newest LTS before the host's).
const KERNELS: [Kernel; 3] = [
    Kernel {
        name: "5.10",
        package: "linux-image-5.10.0-32-cloud-amd64-unsigned",
        version: "5.10.223-1",
        suite: "bullseye",
    },
    Kernel {
        name: "6.1",
        package: "linux-image-6.1.0-56-cloud-amd64-unsigned",
        version: "6.1.192-2",
        suite: "bookworm-security",
    },
    Kernel {
        name: "6.12",
        package: "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
        version: "6.12.117-1~deb12u1",
        suite: "bookworm-security",
    },
];

const VIRTME_NG: &str = "virtme-ng==1.42";
const VIRTIOFSD: &str = "1.14.0";
/// The longest one guest may run (its tests took 4-6 min under TCG in CI).
const GUEST_LIMIT: std::time::Duration = std::time::Duration::from_mins(25);

/// One row of the table.
struct Row {
    kernel: String,
    seconds: u64,
    attached: String,
    degraded: Vec<String>,
    passed: u64,
    failed: u64,
    failures: Vec<String>,
    /// Test binaries that failed once and passed when run again.
    retried: Vec<String>,
    /// What each failed attempt printed about its failures (libtest's `failures:`
    /// section, bounded), so a CI log says why without the guest's files.
    details: Vec<String>,
}

/// libtest's report of the failed tests in `text`: from the first `---- name stdout
/// ----` to the summary list, at most `MAX_DETAIL_LINES` lines.
fn failure_detail(text: &str) -> Option<String> {
    const MAX_DETAIL_LINES: usize = 80;
    let start = text.find("\n---- ")? + 1;
    let body = &text[start..];
    let end = body.find("\nfailures:\n").unwrap_or(body.len());
    let lines: Vec<&str> = body[..end].lines().collect();
    let mut out = lines
        .iter()
        .take(MAX_DETAIL_LINES)
        .copied()
        .collect::<Vec<_>>()
        .join("\n");
    if lines.len() > MAX_DETAIL_LINES {
        let _ = write!(out, "\n[{} more lines]", lines.len() - MAX_DETAIL_LINES);
    }
    Some(out)
}

pub fn run(args: &[String]) -> Result<()> {
    let wanted: Vec<String> = match args.first() {
        Some(list) => list.split(',').map(str::to_owned).collect(),
        None => KERNELS
            .iter()
            .map(|k| k.name.to_owned())
            .chain(["host".to_owned()])
            .collect(),
    };
    for w in &wanted {
        if w != "host" && !KERNELS.iter().any(|k| k.name == w) {
            bail!("unknown kernel {w}: choose from 5.10, 6.1, 6.12, host");
        }
    }
    let started = Instant::now();
    let bin = dist::build()?;
    let tests = test_binaries()?;
    let cache = cache_dir()?;
    let vms: Vec<&Kernel> = KERNELS
        .iter()
        .filter(|k| wanted.iter().any(|w| w == k.name))
        .collect();
    let vng = if vms.is_empty() {
        None
    } else {
        Some(vm_tools(&cache)?)
    };
    let mut rows = Vec::new();
    for kernel in vms {
        let vmlinuz = fetch_kernel(&cache, kernel)?;
        let vng = vng.as_deref().context("virtme-ng")?;
        rows.push(run_one(kernel.name, Some((vng, &vmlinuz)), &bin, &tests)?);
    }
    if wanted.iter().any(|w| w == "host") {
        rows.push(run_one("host", None, &bin, &tests)?);
    }
    let table = render(&rows);
    println!("{table}");
    let passed: u64 = rows.iter().map(|r| r.passed).sum();
    let failed: u64 = rows.iter().map(|r| r.failed).sum();
    println!(
        "kernel matrix: {} kernels in {} s",
        rows.len(),
        started.elapsed().as_secs()
    );
    println!("matrix: {passed} passed, {failed} failed");
    if failed > 0 || rows.iter().any(|r| r.attached.is_empty()) {
        bail!("the kernel matrix failed (see the table above)");
    }
    Ok(())
}

fn cache_dir() -> Result<PathBuf> {
    let dir = crate::peers::cache_base()?.join("matrix");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// qemu, udev (without it no output comes back from the guest), virtiofsd (the cloud
/// kernels have no 9p) and virtme-ng in a venv of its own. Returns the `vng` path.
fn vm_tools(cache: &Path) -> Result<PathBuf> {
    apt_install(&[
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("udevadm", "udev"),
        ("pkg-config", "pkg-config"),
        ("/usr/include/seccomp.h", "libseccomp-dev"),
        ("/usr/include/cap-ng.h", "libcap-ng-dev"),
        // virtme-ng runs depmod for a kernel whose modules have no modules.dep
        // (Debian's packages ship none); the guest script loads veth with modprobe
        ("depmod", "kmod"),
        ("/usr/bin/python3", "python3"),
    ])?;
    // The venv is made by the system's python3, whose ensurepip is Debian's
    // python3-venv.
    crate::peers::venv_support()?;
    if !have("virtiofsd") {
        eprintln!("xtask: building virtiofsd {VIRTIOFSD} (about 2 minutes)");
        status(Command::new("cargo").args([
            "install",
            "virtiofsd",
            "--version",
            VIRTIOFSD,
            "--locked",
        ]))
        .context("building virtiofsd failed")?;
    }
    let venv = cache.join("virtme-ng");
    let vng = venv.join("bin/vng");
    let starts = Command::new(&vng)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !starts {
        // Absent, or made by an interpreter that is gone.
        let _ = std::fs::remove_dir_all(&venv);
        eprintln!("xtask: installing {VIRTME_NG} in {}", venv.display());
        // The system's python3, not whichever a PATH (pyenv shims) offers first: the
        // venv must outlive a session's hand installs.
        status(
            Command::new("/usr/bin/python3")
                .args(["-m", "venv"])
                .arg(&venv),
        )
        .context("python3 -m venv failed (Debian: apt-get install python3-venv)")?;
        status(Command::new(venv.join("bin/pip")).args(["install", "-q", VIRTME_NG]))
            .with_context(|| format!("pip install {VIRTME_NG} failed"))?;
    }
    Ok(vng)
}

/// `PATH` with the directory of `vng` (the venv's `bin/`) first.
fn venv_path(vng: &Path) -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = vng.parent().map(Path::to_path_buf).into_iter().collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// The system's Debian archive and security archive URIs, read from its apt sources
/// (this workplace reaches the archive only through its configured mirror).
fn debian_mirrors() -> Result<(String, String)> {
    let mut text = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for entry in dir.filter_map(Result::ok) {
            let path = entry.path();
            if path
                .extension()
                .is_some_and(|e| e == "sources" || e == "list")
            {
                text.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
                text.push('\n');
            }
        }
    }
    let uris: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
        .collect();
    let find = |suffix: &str| {
        uris.iter()
            .find(|u| u.trim_end_matches('/').ends_with(suffix))
            .map(|u| u.trim_end_matches('/').to_owned())
    };
    match (find("/debian"), find("/debian-security")) {
        (Some(main), Some(security)) => Ok((main, security)),
        _ => bail!(
            "no Debian archive (…/debian and …/debian-security) in this machine's apt sources: \
             the kernel matrix downloads Debian's kernel packages through them"
        ),
    }
}

/// Downloads (once) and extracts a pinned kernel package; returns its vmlinuz.
fn fetch_kernel(cache: &Path, kernel: &Kernel) -> Result<PathBuf> {
    let dir = cache.join("kernels").join(kernel.package);
    if let Some(v) = vmlinuz_in(&dir) {
        return Ok(v);
    }
    let apt = cache.join("apt");
    for d in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(apt.join(d))?;
    }
    let (main, security) = debian_mirrors()?;
    let key = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]";
    std::fs::write(
        apt.join("sources.list"),
        format!(
            "deb {key} {main} bullseye main\ndeb {key} {main} bookworm main\ndeb {key} {security} bookworm-security main\n"
        ),
    )?;
    let opts = |cmd: &mut Command| {
        cmd.arg("-o")
            .arg(format!(
                "Dir::Etc::SourceList={}",
                apt.join("sources.list").display()
            ))
            .args(["-o", "Dir::Etc::SourceParts=/nonexistent"])
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", apt.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", apt.join("cache").display()))
            .args(["-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root"]);
    };
    let mut update = Command::new("apt-get");
    opts(&mut update);
    status(update.args(["update", "-qq"])).context("apt-get update (private sources) failed")?;
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs)?;
    let mut download = Command::new("apt-get");
    opts(&mut download);
    let pinned = format!("{}={}", kernel.package, kernel.version);
    eprintln!("xtask: downloading {pinned} ({})", kernel.suite);
    if download
        .arg("download")
        .arg(&pinned)
        .current_dir(&debs)
        .status()?
        .success()
    {
    } else {
        // The security suite keeps only its newest build of a package.
        eprintln!(
            "xtask: warning: {pinned} is gone from the archive; taking the newest {}",
            kernel.package
        );
        let mut newest = Command::new("apt-get");
        opts(&mut newest);
        status(
            newest
                .arg("download")
                .arg(kernel.package)
                .current_dir(&debs),
        )?;
    }
    let deb = std::fs::read_dir(&debs)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{}_", kernel.package)))
        })
        .with_context(|| format!("{} was not downloaded", kernel.package))?;
    let partial = cache
        .join("kernels")
        .join(format!("{}.partial", kernel.package));
    std::fs::create_dir_all(cache.join("kernels"))?;
    let _ = std::fs::remove_dir_all(&partial);
    status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    std::fs::rename(&partial, &dir)?;
    let _ = std::fs::remove_file(&deb);
    vmlinuz_in(&dir).with_context(|| format!("no boot/vmlinuz-* in {}", deb.display()))
}

fn vmlinuz_in(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir.join("boot"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
}

/// The root integration test binaries (`tests/tests/*.rs`), built.
fn test_binaries() -> Result<Vec<(String, PathBuf)>> {
    let out = output(
        Command::new("cargo")
            .args(["test", "--no-run", "-p", "tests", "--message-format=json"])
            .current_dir(workspace_root()),
    )?;
    let mut bins = Vec::new();
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|v| v == "test"));
        if msg["reason"] == "compiler-artifact" && is_test {
            if let (Some(name), Some(exe)) =
                (msg["target"]["name"].as_str(), msg["executable"].as_str())
            {
                bins.push((name.to_owned(), PathBuf::from(exe)));
            }
        }
    }
    if bins.is_empty() {
        bail!("no integration test binaries were built");
    }
    bins.sort();
    Ok(bins)
}

/// A TCG guest's heartbeat: its script rewrites `heartbeat` in `out` this often with
/// the guest's uptime and the test binary running (and the uptime it began).
const HEARTBEAT_EVERY_SECS: u64 = 5;
/// A guest whose heartbeat has not changed for this long is taken as hung (seen: both
/// vCPUs looping on a stale int3 under TCG, no task making progress).
const HEARTBEAT_STALE: std::time::Duration = std::time::Duration::from_mins(2);
/// The guest's own bound on one test binary (`timeout`), and the kill that follows.
const BINARY_LIMIT_SECS: u64 = 300;
/// A binary still running this long after it began has outlived its SIGKILL: it is
/// stuck in the guest's kernel. Its tasks are written down (`NAME.stuck.txt`) at
/// `BINARY_LIMIT_SECS + 20`, and the guest is stopped at this.
const BINARY_STUCK_SECS: u64 = BINARY_LIMIT_SECS + 120;
/// Boots of one kernel at most: the first, and one per hung guest resumed after.
const MAX_BOOTS: u32 = 3;

/// What one guest boot (or the host) runs.
struct Plan<'a> {
    out: &'a Path,
    bin: &'a Path,
    /// The test binaries still to run, and whether each may be retried in the guest
    /// (not when its first attempt was the one a hung guest stopped).
    tests: Vec<(&'a str, &'a Path, bool)>,
    /// Some(boot number, from 1) in a TCG guest; None on the host.
    boot: Option<u32>,
    /// Whether `conntrace check` is still to run (it has not reported).
    check: bool,
}

/// The tracepoints conntrace's programs attach to: `PROGRAMS` in
/// `tracer/src/kernel/session.rs` (a program missing from this list still works; only
/// its attach and detach then patch kernel text in the guests).
const PINNED_EVENTS: [&str; 9] = [
    "sock/inet_sock_set_state",
    "sock/inet_sk_error_report",
    "tcp/tcp_receive_reset",
    "tcp/tcp_retransmit_skb",
    "tcp/tcp_send_reset",
    "syscalls/sys_enter_connect",
    "syscalls/sys_exit_connect",
    "syscalls/sys_exit_accept4",
    "syscalls/sys_exit_accept",
];

/// The script run as root inside each guest (and on the host): results go to `out`.
fn guest_script(plan: &Plan<'_>) -> String {
    let root = workspace_root();
    let mut s = format!(
        "#!/bin/sh\n\
         R={out}\n\
         mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing\n\
         modprobe veth 2>/dev/null\n\
         export CONNTRACE_BIN={bin} RUST_BACKTRACE=0\n\
         export {peer_env}={peer_python}\n\
         cd {tests_dir}\n",
        out = plan.out.display(),
        bin = plan.bin.display(),
        tests_dir = root.join("tests").display(),
        peer_env = crate::peers::PYTHON_ENV,
        peer_python = std::env::var(crate::peers::PYTHON_ENV).unwrap_or_default(),
    );
    if let Some(boot) = plan.boot {
        // QEMU's TCG defect (seen on 5.10, 1 test run in 2 to 36): the kernel patches
        // a tracepoint's jump or static call in hot code (syscall_exit_to_user_mode)
        // when the first probe attaches or the last detaches; a vCPU keeps running
        // its stale translation of the int3 placed there while memory already holds
        // the new jump, the kernel's int3 handler sees no int3 and re-runs the
        // instruction, and both vCPUs loop forever. Real CPUs (and KVM) do not. Two
        // idle probes on every tracepoint conntrace uses (trace events enabled in two
        // tracefs instances, recording off) and BPF run-time stats held on keep the
        // kernel from patching that code while the tests attach and detach.
        let _ = write!(
            s,
            "T=/sys/kernel/tracing\n\
             echo 0 > $T/tracing_on\n\
             mkdir -p $T/instances/conntrace-pin && echo 0 > $T/instances/conntrace-pin/tracing_on\n\
             for e in {events}; do for d in $T $T/instances/conntrace-pin; do \
             [ -e $d/events/$e/enable ] && echo 1 > $d/events/$e/enable; done; done\n\
             sysctl -qw kernel.bpf_stats_enabled=1\n\
             echo 1 > /proc/sys/kernel/sysrq\n\
             dmesg -w > $R/dmesg.boot{boot}.txt 2>&1 & D=$!\n\
             up() {{ u=$(cut -d' ' -f1 /proc/uptime); echo ${{u%.*}}; }}\n\
             stuck() {{ echo \"$1 still running $2 s after it began; its tasks:\"; \
             for p in /proc/[0-9]*; do echo \"$(basename $p) $(cut -d' ' -f3 $p/stat 2>/dev/null) \
             $(cat $p/wchan 2>/dev/null) $(tr '\\0' ' ' < $p/cmdline 2>/dev/null | cut -c1-200)\"; done; \
             for p in /proc/[0-9]*; do [ \"$(cut -d' ' -f3 $p/stat 2>/dev/null)\" = D ] && \
             {{ echo \"== $(basename $p) in D state:\"; cat $p/stack 2>/dev/null; }}; done; \
             echo w > /proc/sysrq-trigger; }}\n\
             (while :; do c=$(cat $R/current 2>/dev/null); set -- $c; \
             echo \"$(up) $c\" > $R/heartbeat.new && mv -f $R/heartbeat.new $R/heartbeat; \
             if [ -n \"$1\" ] && [ $(( $(up) - $2 )) -gt {diag} ] && [ ! -e $R/$1.stuck.txt ]; then \
             stuck $1 $(( $(up) - $2 )) > $R/$1.stuck.txt 2>&1; fi; \
             sleep {every}; done) > /dev/null 2>&1 & H=$!\n",
            events = PINNED_EVENTS.join(" "),
            diag = BINARY_LIMIT_SECS + 20,
            every = HEARTBEAT_EVERY_SECS,
        );
    }
    if plan.check {
        s.push_str(
            "$CONNTRACE_BIN check --syscall-hooks > $R/check.txt 2>&1; echo $? > $R/check.rc\n\
             cat $R/check.txt\n",
        );
    }
    // Each binary is bounded (a hang under TCG must not stall the run) and retried
    // once when it fails; a retry is reported in the table, never hidden.
    for (name, exe, retry) in &plan.tests {
        let begin = if plan.boot.is_some() {
            format!("echo \"{name} $(up)\" > $R/current; ")
        } else {
            String::new()
        };
        let again = if *retry {
            format!(
                "if [ $rc -ne 0 ]; then mv $R/{name}.txt $R/{name}.first-attempt.txt; \
                 echo $rc > $R/{name}.retried; t; rc=$?; fi; "
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "t() {{ timeout -k 10 {BINARY_LIMIT_SECS} {exe} --test-threads=2 > $R/{name}.txt 2>&1; }}; \
             {begin}t; rc=$?; {again}echo $rc > $R/{name}.rc; rm -f $R/current; \
             echo \"  {name}: $(grep '^test result' $R/{name}.txt)\"",
            exe = exe.display(),
        );
    }
    if plan.boot.is_some() {
        s.push_str("kill $D $H 2>/dev/null\n");
    }
    s
}

fn run_one(
    name: &str,
    vm: Option<(&Path, &Path)>,
    bin: &Path,
    tests: &[(String, PathBuf)],
) -> Result<Row> {
    let out = workspace_root().join("target/matrix").join(name);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let started = Instant::now();
    let mut failed_boot = None;
    let mut notes = Vec::new();
    let mut details = Vec::new();
    if let Some((vng, vmlinuz)) = vm {
        let g = boot_until_done(name, vng, vmlinuz, &out, bin, tests)?;
        (failed_boot, notes, details) = (g.failed, g.notes, g.details);
    } else {
        eprintln!("xtask: running on the host kernel");
        let plan = Plan {
            out: &out,
            bin,
            tests: tests
                .iter()
                .map(|(t, exe)| (t.as_str(), exe.as_path(), true))
                .collect(),
            boot: None,
            check: true,
        };
        let script = out.join("run.sh");
        std::fs::write(&script, guest_script(&plan))?;
        status(Command::new("sh").arg(&script))?;
    }
    let seconds = started.elapsed().as_secs();
    let check = std::fs::read_to_string(out.join("check.txt")).unwrap_or_default();
    let kernel = check
        .lines()
        .find_map(|l| l.strip_prefix("kernel "))
        .map_or_else(|| name.to_owned(), |k| format!("{name} ({k})"));
    let attached = check
        .lines()
        .find_map(|l| l.strip_prefix("attached "))
        .and_then(|l| l.split(" programs").next())
        .unwrap_or_default()
        .to_owned();
    let degraded = check
        .lines()
        .filter_map(|l| l.strip_prefix("degraded "))
        .filter_map(|l| l.split(':').next())
        .map(str::to_owned)
        .collect();
    let mut row = Row {
        kernel,
        seconds,
        attached,
        degraded,
        passed: 0,
        failed: 0,
        failures: Vec::new(),
        retried: notes,
        details,
    };
    tally(&mut row, &out, tests);
    for warning in kernel_warnings(&out) {
        row.failures.push(warning);
        row.failed += 1;
    }
    if let Some(why) = failed_boot {
        // The binaries that never reported are failures already (no result): say why.
        let reported = tests
            .iter()
            .filter(|(t, _)| out.join(format!("{t}.rc")).exists())
            .count();
        row.failures.push(format!(
            "{why}; {reported} of {} test binaries had reported",
            tests.len()
        ));
        row.failed += 1;
    }
    Ok(row)
}

/// What booting one kernel until its tests were all run came to.
struct Boots {
    /// Why the last boot failed, when the tests could not all be run.
    failed: Option<String>,
    /// Boots retried, said in the table.
    notes: Vec<String>,
    /// What each stopped guest left, printed under the table.
    details: Vec<String>,
}

/// Boots the guest until every test binary has reported: a guest that stops is
/// booted again (at most `MAX_BOOTS` in all), resuming at the binary it was running.
fn boot_until_done(
    name: &str,
    vng: &Path,
    vmlinuz: &Path,
    out: &Path,
    bin: &Path,
    tests: &[(String, PathBuf)],
) -> Result<Boots> {
    let mut failed_boot = None;
    let mut notes = Vec::new();
    let mut details = Vec::new();
    let mut boot = 1;
    let mut no_retry: Vec<String> = Vec::new();
    loop {
        let plan = Plan {
            out,
            bin,
            tests: tests
                .iter()
                .filter(|(t, _)| !out.join(format!("{t}.rc")).exists())
                .map(|(t, exe)| (t.as_str(), exe.as_path(), !no_retry.contains(t)))
                .collect(),
            boot: Some(boot),
            check: !out.join("check.rc").exists(),
        };
        let script = out.join(format!("run.boot{boot}.sh"));
        std::fs::write(&script, guest_script(&plan))?;
        let _ = std::fs::remove_file(out.join("heartbeat"));
        let _ = std::fs::remove_file(out.join("current"));
        eprintln!(
            "xtask: booting {} (qemu, TCG), boot {boot}",
            vmlinuz.display()
        );
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=30", &GUEST_LIMIT.as_secs().to_string()])
            .arg(vng)
            // vng starts virtme-run (and the guest's helpers) through the shell's
            // PATH: the venv's bin/ must come first, or a fresh machine finds none.
            .env("PATH", venv_path(vng))
            .arg("-r")
            .arg(vmlinuz)
            .args(["--disable-kvm", "-m", "3G", "--cpus", "2"])
            .arg(format!("--rwdir={}", out.display()))
            .arg("--exec")
            .arg(format!("sh {}", script.display()))
            .current_dir(workspace_root());
        match run_guest(&mut cmd, out) {
            GuestEnd::Finished => break,
            // Hung, or exited before its script's end — also a guest that never
            // reached its script (vng exited 6 s into the boot, seen once on a fresh
            // machine): booted again, resuming where it stopped.
            GuestEnd::Failed(why) | GuestEnd::Hung(why) => {
                eprintln!("xtask: the {name} guest stopped: {why}");
                details.push(guest_evidence(out, boot, &why));
                let pending = tests
                    .iter()
                    .any(|(t, _)| !out.join(format!("{t}.rc")).exists());
                if !pending {
                    // Every binary had reported: only the guest's exit was lost.
                    break;
                }
                // The binary it was running, as its script last said (none while
                // `check` ran).
                let stopped = std::fs::read_to_string(out.join("current"))
                    .ok()
                    .and_then(|c| c.split_whitespace().next().map(str::to_owned))
                    .filter(|t| tests.iter().any(|(n, _)| n == t));
                if boot >= MAX_BOOTS || stopped.as_ref().is_some_and(|t| no_retry.contains(t)) {
                    failed_boot = Some(format!("{why} (boot {boot} of at most {MAX_BOOTS})"));
                    break;
                }
                notes.push(format!(
                    "the guest stopped in boot {boot} ({why}); booted again, resuming at {}",
                    stopped
                        .as_deref()
                        .unwrap_or("the first binary without a result")
                ));
                if let Some(stopped) = stopped {
                    // Its output so far is its first attempt; the next boot runs it
                    // again (once) and everything after it.
                    let _ = std::fs::rename(
                        out.join(format!("{stopped}.txt")),
                        out.join(format!("{stopped}.first-attempt.txt")),
                    );
                    std::fs::write(
                        out.join(format!("{stopped}.retried")),
                        format!("the guest stopped during it in boot {boot}"),
                    )?;
                    no_retry.push(stopped);
                }
            }
        }
        boot += 1;
    }
    Ok(Boots {
        failed: failed_boot,
        notes,
        details,
    })
}

/// How one boot of a guest ended.
enum GuestEnd {
    /// vng exited 0: its script ran to the end.
    Finished,
    /// vng (or the guest) exited with an error.
    Failed(String),
    /// The guest stopped making progress and was stopped.
    Hung(String),
}

/// Runs one guest boot, its output passed on, watching its heartbeat: a guest whose
/// heartbeat stops, or whose test binary outlives its own timeout's SIGKILL, is
/// stopped at once rather than at `GUEST_LIMIT`.
fn run_guest(cmd: &mut Command, out: &Path) -> GuestEnd {
    use std::os::unix::process::CommandExt as _;
    let shown = format!("{cmd:?}");
    let started = Instant::now();
    let mut child = match spawn_piped(cmd.process_group(0)) {
        Ok(c) => c,
        Err(e) => return GuestEnd::Failed(format!("{e:#}")),
    };
    let mut last_beat = (String::new(), Instant::now());
    let hung = loop {
        match child.child.try_wait() {
            Ok(Some(st)) => {
                child.join();
                return if st.success() {
                    GuestEnd::Finished
                } else {
                    GuestEnd::Failed(format!("{shown} failed ({st})"))
                };
            }
            Ok(None) => {}
            Err(e) => return GuestEnd::Failed(format!("waiting for the guest: {e}")),
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
        let beat = std::fs::read_to_string(out.join("heartbeat")).unwrap_or_default();
        if beat != last_beat.0 {
            last_beat = (beat.clone(), Instant::now());
        }
        let mut fields = beat.split_whitespace();
        let uptime: Option<u64> = fields.next().and_then(|u| u.parse().ok());
        let running = fields.next();
        let began: Option<u64> = fields.next().and_then(|u| u.parse().ok());
        if !beat.is_empty() && last_beat.1.elapsed() > HEARTBEAT_STALE {
            break format!(
                "its heartbeat stopped {} s ago{}",
                last_beat.1.elapsed().as_secs(),
                running.map_or_else(String::new, |t| format!(" while running {t}"))
            );
        }
        if let (Some(now), Some(t), Some(b)) = (uptime, running, began) {
            if now.saturating_sub(b) > BINARY_STUCK_SECS {
                break format!(
                    "{t} was still running {} s after it began, past its timeout's SIGKILL \
                     (stuck in the kernel)",
                    now - b
                );
            }
        }
        if started.elapsed() > GUEST_LIMIT + std::time::Duration::from_mins(1) {
            break format!("it ran past {} s", GUEST_LIMIT.as_secs());
        }
    };
    // The whole group: timeout, vng, virtme-run and qemu.
    let group = format!("-{}", child.child.id());
    for (signal, wait) in [("-TERM", 15), ("-KILL", 5)] {
        let _ = Command::new("kill")
            .args([signal, "--", &group])
            .stderr(Stdio::null())
            .status();
        for _ in 0..wait {
            if matches!(child.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    let _ = child.child.kill();
    let _ = child.child.wait();
    // Not joined: a helper the guest left (virtiofsd) may still hold the pipes.
    child.threads.clear();
    GuestEnd::Hung(hung)
}

/// The kernel warnings (`WARNING:` with its stack, a tainted kernel; a panic on a
/// node with `panic_on_warn`) raised in a conntrace process in any boot's kernel
/// log, each with the message before it.
fn kernel_warnings(out: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for boot in 1..=MAX_BOOTS {
        let path = out.join(format!("dmesg.boot{boot}.txt"));
        let Ok(dmesg) = std::fs::read_to_string(&path) else {
            continue;
        };
        let lines: Vec<&str> = dmesg.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.contains("WARNING: CPU:") && !line.contains("] WARNING: ") {
                continue;
            }
            let ours = lines[i..lines.len().min(i + 4)]
                .iter()
                .any(|l| l.contains(" Comm: conntrace"));
            if ours {
                let message = i.checked_sub(1).map_or("", |j| lines[j]);
                found.push(format!(
                    "kernel WARNING raised by conntrace ({}): {} / {}",
                    path.display(),
                    message.trim(),
                    line.trim()
                ));
            }
        }
    }
    found
}

/// What a stopped guest left: the tail of its kernel log and its stuck binary's tasks.
fn guest_evidence(out: &Path, boot: u32, why: &str) -> String {
    const TAIL: usize = 30;
    let mut s = format!("--- the guest (boot {boot}) stopped: {why}");
    let dmesg =
        std::fs::read_to_string(out.join(format!("dmesg.boot{boot}.txt"))).unwrap_or_default();
    let lines: Vec<&str> = dmesg.lines().collect();
    if lines.is_empty() {
        s.push_str("\nno kernel log: its script had not started");
    } else {
        let _ = write!(
            s,
            "\nlast {} lines of its kernel log ({}):\n{}",
            TAIL.min(lines.len()),
            out.join(format!("dmesg.boot{boot}.txt")).display(),
            lines[lines.len().saturating_sub(TAIL)..].join("\n")
        );
    }
    if let Ok(rd) = std::fs::read_dir(out) {
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            if p.to_string_lossy().ends_with(".stuck.txt") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                // The first line, and the tasks in uninterruptible sleep with their
                // kernel stacks.
                let d: Vec<&str> = text
                    .lines()
                    .enumerate()
                    .filter(|(i, l)| {
                        *i == 0 || l.contains(" D ") || !l.starts_with(|c: char| c.is_ascii_digit())
                    })
                    .map(|(_, l)| l)
                    .take(60)
                    .collect();
                let _ = write!(s, "\n{}:\n{}", p.display(), d.join("\n"));
            }
        }
    }
    s
}

/// Reads each test binary's results in `out` into `row`.
fn tally(row: &mut Row, out: &Path, tests: &[(String, PathBuf)]) {
    for (test, _) in tests {
        let text = std::fs::read_to_string(out.join(format!("{test}.txt"))).unwrap_or_default();
        let rc = std::fs::read_to_string(out.join(format!("{test}.rc"))).unwrap_or_default();
        let first = std::fs::read_to_string(out.join(format!("{test}.first-attempt.txt")))
            .unwrap_or_default();
        for (attempt, t) in [("first attempt", &first), ("last attempt", &text)] {
            if let Some(d) = failure_detail(t) {
                row.details
                    .push(format!("--- {test} on {}, {attempt}:\n{d}", row.kernel));
            }
        }
        if let (Ok(why), "0") = (
            std::fs::read_to_string(out.join(format!("{test}.retried"))),
            rc.trim(),
        ) {
            // The marker holds the first attempt's exit status, or why it was cut off.
            let why = why.trim();
            let why = if why.parse::<i32>().is_ok() {
                format!("exit {why}")
            } else {
                why.to_owned()
            };
            row.retried.push(format!(
                "{test} (first attempt: {why}; {})",
                out.join(format!("{test}.first-attempt.txt")).display()
            ));
        }
        let counts = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("test result: "));
        let count = |word: &str| -> u64 {
            counts
                .and_then(|c| c.split(';').find(|p| p.trim().ends_with(word)))
                .and_then(|p| p.split_whitespace().rev().nth(1))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        row.passed += count("passed");
        row.failed += count("failed");
        for l in text.lines() {
            if let Some(t) = l
                .strip_prefix("test ")
                .and_then(|t| t.strip_suffix(" ... FAILED"))
            {
                row.failures.push(format!("{test}::{t}"));
            }
        }
        if (counts.is_none() || rc.trim() != "0")
            && row
                .failures
                .iter()
                .all(|f| !f.starts_with(&format!("{test}::")))
        {
            row.failures.push(format!(
                "{test} (exit {}; see {})",
                rc.trim(),
                out.display()
            ));
            row.failed += 1;
        }
    }
}

/// A child whose output is passed on through pipes: virtme-ng's console rewrites a
/// regular file it is given as stdout from the start, losing what came before.
struct Piped {
    child: std::process::Child,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Piped {
    fn join(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn spawn_piped(cmd: &mut Command) -> Result<Piped> {
    use std::io::{BufRead as _, BufReader};
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let mut threads = Vec::new();
    if let Some(e) = child.stderr.take() {
        threads.push(std::thread::spawn(move || {
            for line in BufReader::new(e).lines().map_while(Result::ok) {
                eprintln!("{line}");
            }
        }));
    }
    if let Some(o) = child.stdout.take() {
        threads.push(std::thread::spawn(move || {
            for line in BufReader::new(o).lines().map_while(Result::ok) {
                println!("{line}");
            }
        }));
    }
    Ok(Piped { child, threads })
}

fn render(rows: &[Row]) -> String {
    let mut s = String::from(
        "\n| kernel | time | programs attached | degraded facts | tests |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        let degraded = if r.degraded.is_empty() {
            "none".to_owned()
        } else {
            r.degraded.join(", ")
        };
        let attached = if r.attached.is_empty() {
            "did not start"
        } else {
            &r.attached
        };
        let _ = writeln!(
            s,
            "| {} | {} s | {} | {} | {} passed, {} failed |",
            r.kernel, r.seconds, attached, degraded, r.passed, r.failed
        );
    }
    for r in rows {
        for f in &r.failures {
            let _ = writeln!(s, "FAILED on {}: {f}", r.kernel);
        }
        for t in &r.retried {
            let _ = writeln!(s, "failed once, passed on retry, on {}: {t}", r.kernel);
        }
    }
    for r in rows {
        for d in &r.details {
            let _ = writeln!(s, "\n{d}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A warning in a conntrace process is found with its message; one in another
    /// task is not conntrace's.
    #[test]
    fn kernel_warnings_of_conntrace_are_failures() {
        let dir = std::env::temp_dir().join(format!("xtask-warn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("dmesg.boot1.txt"),
            "[   13.453693] ------------[ cut here ]------------\n\
             [   13.453802] trace type BPF program uses run-time allocation\n\
             [   13.454175] WARNING: CPU: 0 PID: 188 at kernel/bpf/verifier.c:10493 bpf_check+0x2f92/0x3470\n\
             [   13.454194] Modules linked in: veth(E)\n\
             [   13.454504] CPU: 0 PID: 188 Comm: conntrace Tainted: G            E     5.10.0-32-cloud-amd64 #1\n\
             [   20.000000] something else\n\
             [   20.000001] WARNING: CPU: 1 PID: 9 at drivers/virtio/x.c:1 f+0x1/0x2\n\
             [   20.000002] CPU: 1 PID: 9 Comm: kworker/1:0 Not tainted\n",
        )
        .unwrap();
        let found = kernel_warnings(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("trace type BPF program uses run-time allocation"));
        assert!(found[0].contains("verifier.c:10493"));
    }

    /// The scripts parse as sh, and a resumed guest neither checks again nor retries
    /// the binary that was cut off.
    #[test]
    fn guest_scripts_are_sh() {
        let exe = PathBuf::from("/bin/true");
        for (boot, check) in [(Some(1), true), (Some(2), false), (None, true)] {
            let plan = Plan {
                out: Path::new("/tmp/out"),
                bin: Path::new("/bin/conntrace"),
                tests: vec![("a", &exe, boot != Some(2)), ("b", &exe, true)],
                boot,
                check,
            };
            let script = guest_script(&plan);
            let parsed = Command::new("sh")
                .args(["-n", "-c", &script])
                .output()
                .expect("sh");
            assert!(
                parsed.status.success(),
                "{script}\n{}",
                String::from_utf8_lossy(&parsed.stderr)
            );
            assert_eq!(script.contains(" check --syscall-hooks"), check);
            assert_eq!(script.contains("heartbeat"), boot.is_some());
            let line_a = script.lines().find(|l| l.contains("$R/a.txt")).unwrap();
            assert_eq!(line_a.contains("a.first-attempt.txt"), boot != Some(2));
        }
    }
}
