//! `conntrace check`: whether conntrace runs on this kernel, and what it cannot see here.

use anyhow::Result;

use crate::{commands::cli::LiveArgs, kernel::session::KernelSession};

/// `conntrace check`: loads and attaches everything, then says what this kernel gives.
/// The lines are stable (`kernel`, `attached`, `tick-rate`, `socket-map`, `degraded`,
/// `ok`) so scripts and the kernel matrix read them.
pub fn run(live: LiveArgs) -> Result<()> {
    let probes = KernelSession::load(live.options(false).attach)?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    crate::outln!("kernel {}", kernel.trim());
    crate::outln!(
        "attached {} programs in {} ms: {}",
        probes.attached.len(),
        probes.attach_time.as_millis(),
        probes.attached.join(" ")
    );
    crate::outln!(
        "tick-rate {} Hz ({})",
        probes.decoder.clock.hz,
        probes.tick_source
    );
    if let Some(bytes) = probes.socket_map_preallocated {
        crate::outln!(
            "socket-map preallocated: {} MiB of kernel memory taken at load (a kernel before \
             Linux 6.1 has no BPF memory allocator: a tracepoint program's map that allocates \
             draws a kernel warning there)",
            bytes >> 20
        );
    }
    for d in &probes.degraded {
        crate::outln!("degraded {d}");
    }
    crate::outln!(
        "ok conntrace runs on this kernel ({} degraded facts)",
        probes.degraded.len()
    );
    Ok(())
}
