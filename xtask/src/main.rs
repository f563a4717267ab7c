//! Project tasks: `cargo xtask setup | run -- ARGS | test`.
//!
//! `setup` is idempotent and installs what a fresh machine lacks for building and
//! testing: the nightly toolchain's rust-src, bpf-linker built against that nightly's
//! own libLLVM (rebuilt when the nightly changes), Debian packages the tests drive
//! (iproute2, python3, tmux, gzip, time, prometheus), the real-software peers
//! ([`peers`]: PostgreSQL, pgbouncer, nftables, uvicorn in a venv), and a tracefs
//! mount.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _, Result};

mod bench;
mod dist;
mod fresh;
mod image;
mod matrix;
mod peers;
mod storm;

const BPF_LINKER_VERSION: &str = "0.13.0";
const APT_PACKAGES: [(&str, &str); 6] = [
    ("ip", "iproute2"),
    // the tests' peers (standard library only)
    ("python3", "python3"),
    ("tmux", "tmux"),
    ("zcat", "gzip"),
    ("/usr/bin/time", "time"),
    // a real Prometheus for the metrics test
    ("prometheus", "prometheus"),
];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup().and_then(|()| test_setup()),
        Some("run") => setup().and_then(|()| run(&args[1..])),
        Some("test") => setup()
            .and_then(|()| test_setup())
            .and_then(|()| test(&args[1..])),
        Some("storm") => storm_cmd(&args[1..]),
        Some("lint") => setup().and_then(|()| lint()),
        Some("bench") => setup().and_then(|()| bench::run()),
        Some("dist") => setup().and_then(|()| dist::build()).and_then(|bin| {
            if is_root() {
                dist::verify_without_glibc(&bin)
            } else {
                eprintln!("xtask: not root: the busybox-chroot check of the binary is skipped");
                Ok(())
            }
        }),
        Some("matrix") => setup()
            .and_then(|()| test_setup())
            .and_then(|()| matrix::run(&args[1..])),
        Some("fresh") => fresh::run(&args[1..]),
        Some("image") => setup().and_then(|()| image::run()),
        _ => {
            eprintln!(
                "usage: cargo xtask setup            install build (as the user) and test (as root) prerequisites\n       \
                 cargo xtask run -- ARGS      build (release, as you) and run conntrace ARGS as root (through sudo -E when not root)\n       \
                 cargo xtask test [ARGS]      set up, build and run every test (as root), then the kernel matrix\n       \
                 \x20                            (--no-matrix: this kernel only)\n       \
                 cargo xtask lint             rustfmt check and clippy (denying warnings) on every crate, the eBPF one included\n       \
                 cargo xtask storm [SECS] [CLIENTS]  loopback connection storm (connect, write, close)\n       \
                 cargo xtask bench            overhead, engine, memory, start-up and loss figures (as root)\n       \
                 cargo xtask dist             the static binary (musl) in target/dist, tried in a busybox-only chroot (as root)\n       \
                 cargo xtask matrix [KERNELS] boot each kernel in qemu and run the root tests there (as root);\n       \
                 \x20                            KERNELS: comma-separated, of 5.10,6.1,6.12,host (default: all)\n       \
                 cargo xtask image            the container image from the static binary (FROM scratch, podman, no registry)\n       \
                 cargo xtask fresh [DIR]      CI as a new machine runs it: .ci/run in a clone of HEAD with a minimal PATH,\n       \
                 \x20                            its own CARGO_HOME and an empty cache (as root)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn status(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !st.success() {
        bail!("{shown} failed ({st})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// What building needs, in the invoking user's own toolchain (no root): nightly
/// with rust-src, and bpf-linker.
fn setup() -> Result<()> {
    nightly_rust_src()?;
    bpf_linker()
}

/// What the tests need besides the build (as root): their peers' packages, tracefs.
fn test_setup() -> Result<()> {
    apt_packages()?;
    tracefs();
    let python = peers::install()?;
    // Read by the tests (and handed to the matrix's guests).
    env::set_var(peers::PYTHON_ENV, python);
    Ok(())
}

fn nightly_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !installed.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("xtask: installing the nightly toolchain (the kernel programs need it)");
        status(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("the nightly toolchain is not installed and could not be downloaded; install it with `rustup toolchain install nightly`")?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to nightly (build-std for the BPF target)");
        status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
            .context("rust-src for nightly could not be downloaded; run `rustup component add rust-src --toolchain nightly`")?;
    }
    Ok(())
}

/// bpf-linker links libLLVM dynamically: build it against the nightly's own copy, and
/// rebuild it whenever that nightly changes (a stamp records which one it was built for).
fn bpf_linker() -> Result<()> {
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let sysroot = PathBuf::from(sysroot.trim());
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let stamp = cargo_home.join("conntrace-bpf-linker.stamp");
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}\n{version}");
    let starts = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if starts && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV does not name its LLVM version")?
        .to_owned();
    let lib = sysroot.join("lib");
    let libllvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| {
            n.starts_with("libLLVM.so.")
                || (n.starts_with("libLLVM-")
                    && std::path::Path::new(n)
                        .extension()
                        .is_some_and(|e| e == "so"))
        })
        .with_context(|| format!("no libLLVM in {}", lib.display()))?;
    let link = lib.join("libLLVM.so");
    if !link.exists() {
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {} -> {libllvm}", link.display()))?;
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {llvm_major} (about a minute)");
    status(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .env("LLVM_PREFIX", &sysroot),
    )
    .context("building bpf-linker failed")?;
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

fn apt_packages() -> Result<()> {
    apt_install(&APT_PACKAGES)
}

/// Installs the Debian packages whose program (`(program, package)`) is missing.
pub(crate) fn apt_install(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(bin, _)| {
            if bin.starts_with('/') {
                !Path::new(bin).exists()
            } else {
                !have(bin)
            }
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    apt_get_install(&missing)
}

/// `apt-get install` of the packages `missing` (nothing when empty).
pub(crate) fn apt_get_install(missing: &[&str]) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    status(Command::new("apt-get").args(["update", "-qq"]))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing {} failed", missing.join(" ")))
}

/// conntrace mounts tracefs itself when it can; mounting here too lets tests and
/// `bpftool`-style inspection work before the first run.
fn tracefs() {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        return;
    }
    let ok = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("xtask: warning: could not mount tracefs at /sys/kernel/tracing (not root?)");
    }
}

/// `cargo build --release` of conntrace; its path.
pub(crate) fn build_release() -> Result<PathBuf> {
    let root = workspace_root();
    status(
        Command::new("cargo")
            .args(["build", "--release", "-p", "tracer", "--bin", "conntrace"])
            .current_dir(&root),
    )?;
    Ok(root.join("target/release/conntrace"))
}

fn run(args: &[String]) -> Result<()> {
    let args = args.strip_prefix(&["--".to_owned()]).unwrap_or(args);
    let bin = build_release()?;
    // Built as the invoking user (their rustup and cargo); run as root. Through sudo
    // when not root already, as aya's template does: `sudo cargo xtask run` would
    // fail for anyone whose Rust is installed per user (root's PATH has no cargo).
    if is_root() {
        return status(Command::new(bin).args(args));
    }
    if !have("sudo") {
        bail!("conntrace must run as root: run {} as root", bin.display());
    }
    eprintln!("xtask: running {} through sudo -E", bin.display());
    status(Command::new("sudo").arg("-E").arg(bin).args(args))
}

/// `cargo fmt --check`, then clippy with warnings denied: the userspace crates, and
/// the kernel programs for the BPF target (nightly, as they are built).
fn lint() -> Result<()> {
    let root = workspace_root();
    status(
        Command::new("cargo")
            .args(["fmt", "--all", "--check"])
            .current_dir(&root),
    )?;
    status(
        Command::new("cargo")
            .args([
                "clippy",
                "--workspace",
                "--exclude",
                "tracer-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
            .current_dir(&root),
    )?;
    status(
        Command::new("cargo")
            .args([
                "+nightly",
                "clippy",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
                "--",
                "-D",
                "warnings",
            ])
            .current_dir(root.join("tracer-ebpf")),
    )
}

/// Whether xtask runs as root (/proc/self belongs to the effective user).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

/// Unit and root integration tests on this kernel, then (unless `--no-matrix`) the
/// static binary and the kernel matrix: the same tests on every pinned kernel.
fn test(args: &[String]) -> Result<()> {
    let no_matrix = args.iter().any(|a| a == "--no-matrix");
    let args: Vec<&String> = args.iter().filter(|a| *a != "--no-matrix").collect();
    let root = workspace_root();
    status(
        Command::new("cargo")
            .args(["build", "-p", "tracer", "--bin", "conntrace"])
            .current_dir(&root),
    )?;
    // The static binary and the image the DaemonSet runs: a test starts it.
    let bin = dist::build()?;
    let image = image::build(&bin)?;
    status(
        Command::new("cargo")
            .args(["test", "--workspace", "--exclude", "tracer-ebpf"])
            .args(&args)
            .env("CONNTRACE_BIN", root.join("target/debug/conntrace"))
            .env("CONNTRACE_IMAGE", &image)
            .env("CONTAINERS_CONF", image::containers_conf())
            .current_dir(&root),
    )?;
    if no_matrix {
        return Ok(());
    }
    dist::verify_without_glibc(&bin)?;
    matrix::run(&[])
}

fn storm_cmd(args: &[String]) -> Result<()> {
    let secs: f64 = args
        .first()
        .map_or(Ok(5.0), |s| s.parse())
        .context("SECS")?;
    let clients: usize = args
        .get(1)
        .map_or(Ok(2), |s| s.parse())
        .context("CLIENTS")?;
    let (n, elapsed) = storm::run(clients, secs)?;
    #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "{n} connections in {:.2} s: {rate:.0} connections/s",
        elapsed.as_secs_f64()
    );
    Ok(())
}
