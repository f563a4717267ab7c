//! `cargo xtask dist`: one static binary (`x86_64-unknown-linux-musl`, the kernel
//! programs embedded) that runs on any node userland, proven by running it in a chroot
//! that holds nothing but busybox and the binary.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{apt_install, output, status, workspace_root};

pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds the static binary and copies it to `target/dist/conntrace`; returns its path.
pub fn build() -> Result<PathBuf> {
    let targets = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !targets.lines().any(|l| l.trim() == TARGET) {
        eprintln!("xtask: adding the {TARGET} target (static binary)");
        status(Command::new("rustup").args(["target", "add", TARGET])).with_context(|| {
            format!("the {TARGET} target could not be downloaded; run `rustup target add {TARGET}`")
        })?;
    }
    // ring (TLS for the Kubernetes API) compiles C: musl-gcc builds it for musl.
    apt_install(&[("musl-gcc", "musl-tools")])?;
    let root = workspace_root();
    status(
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "--target",
                TARGET,
                "-p",
                "tracer",
                "--bin",
                "conntrace",
            ])
            .current_dir(&root),
    )?;
    let built = root.join("target").join(TARGET).join("release/conntrace");
    let dist = root.join("target/dist");
    std::fs::create_dir_all(&dist)?;
    let out = dist.join("conntrace");
    std::fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
    let file = output(Command::new("file").arg(&out)).unwrap_or_default();
    if !file.contains("statically linked") && !file.contains("static-pie linked") {
        bail!("{} is not a static binary: {}", out.display(), file.trim());
    }
    let size = std::fs::metadata(&out)?.len();
    #[expect(clippy::cast_precision_loss, reason = "a size for display")]
    let mib = size as f64 / (1024.0 * 1024.0);
    eprintln!("xtask: {} ({mib:.1} MiB, static, {TARGET})", out.display());
    Ok(out)
}

/// Runs `bin` in a chroot holding only busybox (static) and the binary: `--version`,
/// `check` (with /proc and /sys mounted in), and a 2-second `record` that sees a
/// refused connect made by busybox's nc. Needs root.
pub fn verify_without_glibc(bin: &Path) -> Result<()> {
    apt_install(&[("/bin/busybox", "busybox-static")])?;
    let dir = std::env::temp_dir().join(format!("conntrace-chroot-{}", std::process::id()));
    let result = run_in_chroot(&dir, bin);
    for m in ["sys", "proc"] {
        let _ = Command::new("umount").arg("-l").arg(dir.join(m)).status();
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in_chroot(dir: &Path, bin: &Path) -> Result<()> {
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    // The shell gives background jobs /dev/null as stdin; nothing else of /dev is there.
    status(
        Command::new("mknod")
            .args(["-m", "666"])
            .arg(dir.join("dev/null"))
            .args(["c", "1", "3"]),
    )?;
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).context("copying busybox")?;
    std::fs::copy(bin, dir.join("conntrace")).context("copying conntrace")?;
    status(
        Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(dir.join("proc")),
    )?;
    status(
        Command::new("mount")
            .args(["--rbind", "/sys"])
            .arg(dir.join("sys")),
    )?;
    let script = "set -e
/bin/busybox ls /lib* /usr 2>/dev/null && { echo 'the chroot is not empty'; exit 1; }
/conntrace --version
/conntrace check
/conntrace record -o /tmp/r.jsonl --duration 3 &
/bin/busybox sleep 2
/bin/busybox nc 127.0.0.1 9 || true
wait
/conntrace report /tmp/r.jsonl
/bin/busybox grep -c ECONNREFUSED /tmp/r.jsonl";
    let out = Command::new("chroot")
        .arg(dir)
        .args(["/bin/busybox", "sh", "-c", script])
        .output()
        .context("starting chroot")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("the static binary failed in a busybox-only chroot:\n{text}");
    }
    if !text.contains("connection-refused") {
        bail!("in the busybox-only chroot the refused connect was not named:\n{text}");
    }
    eprintln!(
        "xtask: static binary ran in a chroot with only busybox: check, record and report worked"
    );
    for line in text
        .lines()
        .filter(|l| l.starts_with("attached ") || l.contains("refused"))
    {
        eprintln!("xtask:   {}", line.trim());
    }
    Ok(())
}
