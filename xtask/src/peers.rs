//! The tests' peers that are real software no one here wrote: PostgreSQL, pgbouncer
//! and psql, nftables (a Service's DNAT), nginx and wrk, Java 17 from Debian; uvicorn from PyPI, in a venv
//! of the project's own made by the system's python3 (a session's pyenv or pip
//! `--user` installs are never relied on). The venv's interpreter reaches the tests
//! as `CONNTRACE_PEER_PYTHON`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};

use crate::{apt_get_install, apt_install, status};

/// Pinned: the keep-alive timer the tests measure is uvicorn's own.
const UVICORN: &str = "uvicorn==0.32.1";
pub const PYTHON_ENV: &str = "CONNTRACE_PEER_PYTHON";

/// `$XDG_CACHE_HOME/conntrace` (or `~/.cache/conntrace`).
pub fn cache_base() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    Ok(base.join("conntrace"))
}

/// Debian's python3-venv, which `python3 -m venv` needs (ensurepip).
pub fn venv_support() -> Result<()> {
    let ensurepip = Command::new("/usr/bin/python3")
        .args(["-c", "import ensurepip"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ensurepip {
        apt_get_install(&["python3-venv"])?;
    }
    Ok(())
}

/// A venv at `dir` made by the system's python3 holding `package`, remade when it
/// no longer starts or lacks `module`. Returns its interpreter.
pub fn venv(dir: &Path, package: &str, module: &str) -> Result<PathBuf> {
    let python = dir.join("bin/python");
    let works = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return Ok(python);
    }
    venv_support()?;
    let _ = std::fs::remove_dir_all(dir);
    eprintln!("xtask: installing {package} in {}", dir.display());
    status(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(dir),
    )
    .context("python3 -m venv failed (Debian: apt-get install python3-venv)")?;
    status(Command::new(dir.join("bin/pip")).args(["install", "-q", package]))
        .with_context(|| format!("pip install {package} failed"))?;
    Ok(python)
}

/// Whether a PostgreSQL server of any version is installed.
fn have_postgres_server() -> bool {
    std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|v| v.path().join("bin/postgres").exists())
}

/// Installs the peers; returns the venv's interpreter.
pub fn install() -> Result<PathBuf> {
    apt_install(&[
        ("nft", "nftables"),
        ("pgbouncer", "pgbouncer"),
        ("psql", "postgresql-client"),
        ("nginx", "nginx-light"),
        ("wrk", "wrk"),
        // Java 17's HttpClient as a pool (single-file source launch needs javac)
        ("javac", "openjdk-17-jdk-headless"),
    ])?;
    if !have_postgres_server() {
        apt_get_install(&["postgresql"])?;
    }
    venv(&cache_base()?.join("peers"), UVICORN, "uvicorn")
}
