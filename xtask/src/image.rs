//! `cargo xtask image`: the container image the DaemonSet runs, built from the static
//! binary (`cargo xtask dist`) `FROM scratch` with Debian's podman — no registry is
//! reached, nothing is compiled again. Tagged as `deploy/daemonset.yaml` names it and
//! saved as an OCI archive in `target/dist` (load it on a node, or push it with
//! `skopeo copy oci-archive:... docker://...`).
//!
//! crun (podman's default here) refuses to start containers on hybrid-cgroup hosts,
//! so runc runs them; a `containers.conf` of the project's own clears podman's default
//! ulimits, which runc cannot set in these sandboxes.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{apt_install, dist, output, status, workspace_root};

/// The reference the DaemonSet runs (`deploy/daemonset.yaml`), with this version.
pub fn reference() -> String {
    format!("ghcr.io/conntrace/conntrace:{}", env!("CARGO_PKG_VERSION"))
}

/// The containers.conf podman runs with (`CONTAINERS_CONF`).
pub fn containers_conf() -> PathBuf {
    workspace_root().join("target/image/containers.conf")
}

/// Podman with the project's runtime settings.
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", containers_conf());
    c
}

/// Installs podman and runc, builds the image from `bin`; returns its reference.
pub fn build(bin: &Path) -> Result<String> {
    apt_install(&[("podman", "podman"), ("runc", "runc")])?;
    let root = workspace_root();
    let context = root.join("target/image");
    std::fs::create_dir_all(&context)?;
    std::fs::copy(bin, context.join("conntrace"))
        .with_context(|| format!("copying {}", bin.display()))?;
    std::fs::write(
        containers_conf(),
        "[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\n",
    )?;
    let reference = reference();
    status(
        podman()
            .args(["build", "--quiet", "--file"])
            .arg(root.join("deploy/Containerfile"))
            .args(["--tag", &reference])
            .arg(&context),
    )
    .context("podman build failed")?;
    let size = output(podman().args(["image", "inspect", "--format", "{{.Size}}", &reference]))?;
    let archive = root
        .join("target/dist")
        .join(format!("conntrace-image-{}.tar", env!("CARGO_PKG_VERSION")));
    let _ = std::fs::remove_file(&archive);
    status(
        podman()
            .args(["save", "--quiet", "--format", "oci-archive", "--output"])
            .arg(&archive)
            .arg(&reference),
    )
    .context("podman save failed")?;
    let bytes: u64 = size.trim().parse().unwrap_or(0);
    if bytes == 0 {
        bail!("podman built an empty image");
    }
    #[expect(clippy::cast_precision_loss, reason = "a size for display")]
    let mib = bytes as f64 / (1024.0 * 1024.0);
    eprintln!(
        "xtask: image {reference} ({mib:.1} MiB: the static binary alone, FROM scratch), saved to {}",
        archive.display()
    );
    Ok(reference)
}

/// `cargo xtask image`.
pub fn run() -> Result<()> {
    let bin = dist::build()?;
    build(&bin).map(|_| ())
}
