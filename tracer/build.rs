use anyhow::{anyhow, Context as _};

/// Builds the kernel programs (`tracer-ebpf`) for the BPF target with the nightly
/// toolchain and bpf-linker; `cargo xtask setup` installs both.
fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .join("tracer-ebpf");
    let root = root.to_str().context("non-UTF-8 path")?;
    // aya-build relays every line the inner cargo prints on stderr as `warning:`;
    // quiet, that cargo prints no progress there, and its compiler warnings and
    // errors (JSON on stdout) still come through.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the kernel programs failed; run `cargo xtask setup` first")
}
