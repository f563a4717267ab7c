//! `cargo xtask fresh [DIR]`: CI's run as a new machine would make it. Clones the
//! committed `main` (HEAD) into a directory of its own and runs `.ci/run` there
//! with nothing an earlier session left behind: a `PATH` of the system's
//! directories and rustup's proxies only (no `/usr/local/bin`, no pyenv shims, no
//! `~/.cargo/bin` tools), a `CARGO_HOME` of its own (so bpf-linker and virtiofsd are
//! built again and the crates fetched again), an empty cache (the kernel matrix
//! downloads its kernels and makes its virtme-ng venv anew), no Python user site,
//! and an environment cleared of everything else. Rust's toolchains (`RUSTUP_HOME`)
//! and the system's Debian packages stay: those are what a new machine has.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{output, status, workspace_root};

/// The rustup proxies linked into the fresh `PATH`.
const PROXIES: [&str; 8] = [
    "cargo",
    "rustc",
    "rustup",
    "rustdoc",
    "rustfmt",
    "cargo-fmt",
    "cargo-clippy",
    "clippy-driver",
];

pub fn run(args: &[String]) -> Result<()> {
    let dir = match args.first() {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("conntrace-fresh-{}", std::process::id())),
    };
    if dir.exists() {
        bail!("{} exists: give a new directory", dir.display());
    }
    let root = workspace_root();
    let dirty = output(
        Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(&root),
    )?;
    if !dirty.trim().is_empty() {
        eprintln!("xtask: warning: uncommitted changes are not in the clone (it tests HEAD)");
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let repo = dir.join("repo");
    status(
        Command::new("git")
            .args(["clone", "--quiet", "--no-hardlinks"])
            .arg(&root)
            .arg(&repo),
    )?;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let rustup = which("rustup").context("rustup is not on PATH")?;
    let proxies = rustup.parent().context("rustup's directory")?;
    for p in PROXIES {
        let target = proxies.join(p);
        if target.exists() {
            std::os::unix::fs::symlink(&target, bin.join(p))?;
        }
    }
    let rustup_home = output(Command::new(&rustup).args(["show", "home"]))?;
    let cargo_home = dir.join("cargo");
    let path = format!(
        "{}:{}:/usr/sbin:/usr/bin:/sbin:/bin",
        cargo_home.join("bin").display(),
        bin.display()
    );
    let mut cmd = Command::new("/bin/bash");
    cmd.arg(".ci/run")
        .current_dir(&repo)
        .env_clear()
        .env("PATH", &path)
        .env(
            "HOME",
            std::env::var_os("HOME").unwrap_or_else(|| "/root".into()),
        )
        .env("RUSTUP_HOME", rustup_home.trim())
        .env("CARGO_HOME", &cargo_home)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("PYTHONNOUSERSITE", "1")
        .env("RUSTUP_AUTO_INSTALL", "0")
        .env("CI", "true")
        .env("LANG", "C.UTF-8");
    eprintln!(
        "xtask: fresh run of {} in {} (PATH={path})",
        short_head(&root),
        repo.display()
    );
    let started = std::time::Instant::now();
    let result = status(&mut cmd);
    eprintln!(
        "xtask: fresh run {} after {} s; its files stay in {}",
        if result.is_ok() { "passed" } else { "FAILED" },
        started.elapsed().as_secs(),
        dir.display()
    );
    result
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| Path::new(p).is_file())
}

fn short_head(root: &Path) -> String {
    output(
        Command::new("git")
            .args(["log", "-1", "--format=%h %s"])
            .current_dir(root),
    )
    .map(|s| s.trim().chars().take(72).collect())
    .unwrap_or_default()
}
