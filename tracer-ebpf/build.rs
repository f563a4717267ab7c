use std::env;

/// Rebuild the programs when bpf-linker changes (a new nightly means a new linker).
fn main() {
    let bpf_linker = which::which("bpf-linker").unwrap_or_default();
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
    let _ = env::var("CARGO_CFG_BPF_TARGET_ARCH");
}
