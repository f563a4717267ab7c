//! Loads and attaches the kernel programs, and reads what they produce.

use std::{
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use tracer_common::{Offsets, LOSS_CONNECT_MAP, LOSS_OWNER_MAP, LOSS_READ, LOSS_RINGBUF_FULL};

use crate::{
    kernel::btf::Btf,
    kernel::decode::Decoder,
    kernel::support::{Degraded, KernelSupport},
    kernel::time::{KernelClock, TickSource, ASSUMED_HZ},
    kernel::tracefs,
};

/// How a program is hooked.
#[derive(Debug, Clone, Copy)]
enum Hook {
    /// tp_btf, by kernel tracepoint name.
    Btf(&'static str),
    /// Classic tracepoint `(category, name)`.
    Classic(&'static str, &'static str),
}

/// A tp_btf program named as its tracepoint.
const fn btf(name: &'static str, degraded: &'static str) -> (&'static str, Hook, &'static str) {
    (name, Hook::Btf(name), degraded)
}

/// A classic tracepoint's program named as the tracepoint.
const fn classic(
    category: &'static str,
    name: &'static str,
    degraded: &'static str,
) -> (&'static str, Hook, &'static str) {
    (name, Hook::Classic(category, name), degraded)
}

/// Every program, its hook, and what is degraded without it.
const PROGRAMS: [(&str, Hook, &str); 9] = [
    btf("inet_sock_set_state", "everything (state changes)"),
    btf(
        "inet_sk_error_report",
        "asynchronous connect errors (connect-errors, stalled-peer)",
    ),
    btf(
        "tcp_receive_reset",
        "resets received (keepalive-reuse-race, rst-storm)",
    ),
    btf("tcp_retransmit_skb", "retransmits (stalled-peer)"),
    classic(
        "tcp",
        "tcp_send_reset",
        "resets sent (connection-refused, rst-storm)",
    ),
    classic(
        "syscalls",
        "sys_enter_connect",
        "synchronous connect errors (connect-errors, EADDRNOTAVAIL)",
    ),
    classic(
        "syscalls",
        "sys_exit_connect",
        "synchronous connect errors (connect-errors, EADDRNOTAVAIL)",
    ),
    classic(
        "syscalls",
        "sys_exit_accept4",
        "owner of accepted connections",
    ),
    classic(
        "syscalls",
        "sys_exit_accept",
        "owner of accepted connections",
    ),
];

/// The loaded kernel session: the programs attached, the facts degraded, the ring
/// buffer and socket map until taken, the decoder for their records.
pub struct KernelSession {
    ebpf: Ebpf,
    /// Names of the attached programs.
    pub attached: Vec<&'static str>,
    /// Facts this run cannot see: hooks this kernel lacks, programs that failed to
    /// attach, hooks turned off by a flag.
    pub degraded: Vec<Degraded>,
    pub decoder: Decoder,
    /// From the start of loading to the last attach.
    pub attach_time: Duration,
    /// The socket map's memory taken at load, in bytes, when this kernel needs it
    /// preallocated (Linux before 6.1: see [`super::object`]); `None` when its entries
    /// are allocated as sockets come.
    pub socket_map_preallocated: Option<u64>,
    /// Where the kernel's tick rate (`decoder.clock.hz`) came from.
    pub tick_source: TickSource,
    /// Keeps the kernel's BPF run-time statistics on while set (the UI only).
    run_time_stats: Option<std::os::fd::OwnedFd>,
    /// The programs' own diagnostics (aya-log), with `-v`.
    kernel_log: Option<aya_log::EbpfLogger<KernelLog>>,
}

/// Hands the kernel programs' diagnostics (aya-log records) to the caller's
/// callback as `LEVEL: TEXT` (the text as the kernel wrote it: the caller escapes).
#[derive(Debug, Clone, Copy)]
pub struct KernelLog(fn(&str));

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let level = record.level().as_str().to_ascii_lowercase();
        (self.0)(&format!("{level}: {}", record.args()));
    }
    fn flush(&self) {}
}

/// Fails with the remedy when this process cannot load BPF programs.
pub fn check_privileges() -> Result<()> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| cap_eff & (1u64 << bit) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    bail!(
        "conntrace needs root, or the capabilities CAP_BPF and CAP_PERFMON, to load its \
         kernel programs: run it with sudo (or grant them: setcap cap_bpf,cap_perfmon+ep)"
    )
}

/// What to attach and how the programs ship transitions (`--syscall-hooks`,
/// `--every-transition`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Attach {
    /// The `syscalls/*` tracepoints of connect() and accept().
    pub syscall_hooks: bool,
    /// One event per TCP state transition instead of connection records.
    pub every_transition: bool,
    /// Where the programs' diagnostics go (a failed kernel read: which program,
    /// which error); `None`: their log statements are skipped in the kernel.
    pub diagnostics: Option<fn(&str)>,
}

/// Field offsets the programs need, from BTF and the reset record of this kernel
/// (zero when `tcp:tcp_send_reset` is missing: its program is not attached then).
pub fn offsets(btf: &Btf, support: &KernelSupport) -> Result<Offsets> {
    let f = |s: &str, p: &str| btf.member_offset(s, p);
    let rst = support.reset.unwrap_or_default();
    Ok(Offsets {
        skc_daddr: f("sock_common", "skc_daddr")?,
        skc_rcv_saddr: f("sock_common", "skc_rcv_saddr")?,
        skc_dport: f("sock_common", "skc_dport")?,
        skc_family: f("sock_common", "skc_family")?,
        skc_state: f("sock_common", "skc_state")?,
        skc_v6_daddr: f("sock_common", "skc_v6_daddr")?,
        skc_v6_rcv_saddr: f("sock_common", "skc_v6_rcv_saddr")?,
        sk_protocol: f("sock", "sk_protocol")?,
        sk_err: f("sock", "sk_err")?,
        sk_flags: f("sock_common", "skc_flags")?,
        inet_sport: f("inet_sock", "inet_sport")?,
        icsk_lrcvtime: f("inet_connection_sock", "icsk_ack.lrcvtime")?,
        icsk_user_timeout: f("inet_connection_sock", "icsk_user_timeout")?,
        icsk_retransmits: f("inet_connection_sock", "icsk_retransmits")?,
        tp_lsndtime: f("tcp_sock", "lsndtime")?,
        tp_rcv_tstamp: f("tcp_sock", "rcv_tstamp")?,
        tp_total_retrans: f("tcp_sock", "total_retrans")?,
        tp_packets_out: f("tcp_sock", "packets_out")?,
        task_files: f("task_struct", "files")?,
        files_fdt: f("files_struct", "fdt")?,
        fdt_max_fds: f("fdtable", "max_fds")?,
        fdt_fd: f("fdtable", "fd")?,
        file_private_data: f("file", "private_data")?,
        socket_sk: f("socket", "sk")?,
        rst_skaddr: rst.skaddr,
        rst_state: rst.state,
        rst_reason: rst.reason.unwrap_or(0),
        rst_has_reason: u32::from(rst.reason.is_some()),
        rst_layout: rst.layout,
        rst_saddr: rst.saddr,
        rst_daddr: rst.daddr,
        rst_sport: rst.sport,
        rst_dport: rst.dport,
        rst_skbaddr: rst.skbaddr,
        skb_data: f("sk_buff", "data")?,
        infer_port_exhaustion: 0,
        infer_sock_errors: u32::from(!support.error_report),
        skc_net: f("sock_common", "skc_net.net")?,
        net_inum: f("net", "ns.inum")?,
        tp_bytes_acked: f("tcp_sock", "bytes_acked")?,
        tp_bytes_received: f("tcp_sock", "bytes_received")?,
        tp_srtt_us: f("tcp_sock", "srtt_us")?,
        tp_segs_out: f("tcp_sock", "segs_out")?,
        stream_all: 0,
        live_idle_jiffies: 0,
        ready: 1,
    })
}

/// `enum sk_rst_reason` names by value, prefix stripped (`NO_SOCKET`).
fn reset_reasons(btf: &Btf) -> Vec<String> {
    let mut values = btf.enum_values("sk_rst_reason").unwrap_or_default();
    values.sort_by_key(|(_, v)| *v);
    let mut names = Vec::new();
    for (name, value) in values {
        let Ok(index) = usize::try_from(value) else {
            continue;
        };
        if index >= 256 {
            continue;
        }
        names.resize(index + 1, String::new());
        name.strip_prefix("SK_RST_REASON_")
            .unwrap_or(&name)
            .clone_into(&mut names[index]);
    }
    names
}

/// The decoder for this kernel: its clocks and its reset reasons' names.
fn decoder(btf: &Btf, support: &KernelSupport) -> Result<(Decoder, TickSource)> {
    let (clock, tick_source) = KernelClock::detect_with_source()?;
    let decoder = Decoder {
        clock,
        reset_reasons: if support.reset.is_some_and(|r| r.reason.is_some()) {
            reset_reasons(btf)
        } else {
            Vec::new()
        },
    };
    Ok((decoder, tick_source))
}

/// A tick rate neither read nor measured scales every idle time by the error.
fn tick_rate_fact(source: &TickSource) -> Option<Degraded> {
    (*source == TickSource::Assumed).then(|| {
        Degraded::new(
            "tick rate",
            format!(
                "CONFIG_HZ not found (/boot/config-<release>, /proc/config.gz) and \
                 /proc/timer_list unreadable: idle times assume {ASSUMED_HZ} Hz and are off by \
                 the kernel's real rate over {ASSUMED_HZ} (mount the host's /boot)"
            ),
        )
    })
}

impl KernelSession {
    /// Checks privileges, computes offsets, loads and attaches every program.
    /// Programs other than the state tracker may fail to attach: they are listed in
    /// [`KernelSession::degraded`] with what is lost, and the rest keeps running.
    ///
    /// Without `--syscall-hooks` the `syscalls/*` tracepoints stay detached and the
    /// state tracker infers EADDRNOTAVAIL instead; `--every-transition` makes every
    /// state change its own event instead of connection records.
    pub fn load(what: Attach) -> Result<Self> {
        let syscall_hooks = what.syscall_hooks;
        let start = Instant::now();
        check_privileges()?;
        raise_memlock();
        let btf = Btf::vmlinux()?;
        let tracefs = tracefs::ensure_mounted()?;
        let btf_hooks: Vec<&'static str> = PROGRAMS
            .iter()
            .filter_map(|(_, hook, _)| match hook {
                Hook::Btf(tp) => Some(*tp),
                Hook::Classic(..) => None,
            })
            .collect();
        let support = KernelSupport::detect(&btf, &tracefs, &btf_hooks);
        if !support.btf_hooks.contains(&"inet_sock_set_state") {
            bail!(
                "this kernel's BTF has no inet_sock_set_state tracepoint (btf_trace_inet_sock_set_state): \
                 conntrace needs Linux 5.10 or newer built with CONFIG_DEBUG_INFO_BTF"
            );
        }
        let mut offsets = offsets(&btf, &support)?;
        offsets.infer_port_exhaustion = u32::from(!syscall_hooks);
        offsets.stream_all = u32::from(what.every_transition);
        let (decoder, tick_source) = decoder(&btf, &support)?;
        // A close after a quarter second idle ships at once: the engine counts closes
        // idle from half a second (`idle_min_ms`) and the keep-alive race starts there.
        offsets.live_idle_jiffies = decoder.clock.hz.max(1) / 4;
        let aya_btf = aya::Btf::from_sys_fs().context("reading kernel BTF for tp_btf programs")?;
        // aya-log's level in the programs: warn with -v, else off (0), so a log
        // statement costs one load and compare, on failure paths only.
        let log_level: u8 = if what.diagnostics.is_some() { 2 } else { 0 };
        // Before Linux 6.1 with the socket map preallocated.
        let programs = super::object::Programs::for_kernel(&btf)?;
        drop(btf);
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&aya_btf))
            .override_global("OFFSETS", &offsets, true)
            .override_global(aya_log::LEVEL, &log_level, false)
            .load(programs.bytes())
            .context("loading the kernel programs")?;
        let mut attached = Vec::new();
        let mut degraded = support.degraded.clone();
        degraded.extend(tick_rate_fact(&tick_source));
        for (name, hook, loses) in PROGRAMS {
            let missing = match hook {
                Hook::Btf(tp) => !support.btf_hooks.contains(&tp),
                Hook::Classic(category, tp) => {
                    !tracefs.join("events").join(category).join(tp).is_dir()
                }
            };
            if missing {
                // The error-report fact is already named with its fallback.
                if name != "inet_sk_error_report" {
                    degraded.push(Degraded::new(
                        name,
                        format!("hook missing in this kernel: no {loses}"),
                    ));
                }
                continue;
            }
            if !syscall_hooks && matches!(hook, Hook::Classic("syscalls", _)) {
                if name == "sys_enter_connect" {
                    degraded.push(Degraded::new(
                        crate::kernel::support::SYSCALL_HOOKS_OFF,
                        "off by default (--syscall-hooks attaches them): connect errors other than \
                         EADDRNOTAVAIL that connect() returns at once (ENETUNREACH, EACCES) are \
                         not seen; accepted connections are their listener's until closed"
                            .to_owned(),
                    ));
                }
                continue;
            }
            match attach(&mut ebpf, name, hook, &aya_btf) {
                Ok(()) => attached.push(name),
                Err(e) if name == "inet_sock_set_state" => {
                    return Err(e.context("attaching the TCP state tracker"));
                }
                Err(e) => degraded.push(Degraded::new(
                    name,
                    format!("not attached ({e:#}): no {loses}"),
                )),
            }
        }
        let kernel_log = what
            .diagnostics
            .map(|say| aya_log::EbpfLogger::init_with_logger(&mut ebpf, KernelLog(say)))
            .transpose()
            .context("reading the kernel programs' log (aya-log)")?;
        Ok(Self {
            ebpf,
            attached,
            degraded,
            decoder,
            attach_time: start.elapsed(),
            socket_map_preallocated: programs.preallocated_bytes(),
            tick_source,
            run_time_stats: None,
            kernel_log,
        })
    }

    /// Prints what the programs logged since the last call (with `-v`).
    pub fn flush_kernel_log(&mut self) {
        if let Some(l) = &mut self.kernel_log {
            l.flush();
        }
    }

    /// The degraded facts worth a warning at start: what this kernel cannot give,
    /// not what the operator chose (the system-call hooks left off).
    pub fn warnings(&self) -> impl Iterator<Item = &Degraded> {
        self.degraded
            .iter()
            .filter(|d| d.fact != crate::kernel::support::SYSCALL_HOOKS_OFF)
    }

    /// Hands the kernel the owners of listening sockets that predate the trace
    /// ([`crate::kernel::listeners`]); a listener the kernel has already seen being created
    /// keeps its own entry. Returns how many were added.
    pub fn seed_listeners(
        &mut self,
        listeners: &[crate::kernel::listeners::Listener],
    ) -> Result<usize> {
        const BPF_NOEXIST: u64 = 1;
        let map = self
            .ebpf
            .map_mut("LISTENERS")
            .context("LISTENERS map missing")?;
        let mut map: aya::maps::HashMap<_, u64, tracer_common::Owner> =
            aya::maps::HashMap::try_from(map)?;
        let mut added = 0;
        for l in listeners {
            let mut comm = [0u8; 16];
            let bytes = l.comm.as_bytes();
            let n = bytes.len().min(15);
            comm[..n].copy_from_slice(&bytes[..n]);
            let owner = tracer_common::Owner {
                cgroup_id: l.cgroup_id,
                pid: l.pid,
                tid: l.pid,
                comm,
            };
            let key = tracer_common::listener_key(l.netns, l.port);
            if map.insert(key, owner, BPF_NOEXIST).is_ok() {
                added += 1;
            }
        }
        Ok(added)
    }

    /// The ring buffer of events (can be taken once).
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("EVENTS").context("EVENTS map missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Time the kernel spent running conntrace's programs so far (BPF stats).
    /// Turns the kernel's BPF run-time statistics on (kernel-wide, for as long as
    /// these probes live): only when something shows them (the UI's header), since
    /// every BPF program on the node then pays two clock reads per run.
    pub fn enable_run_time_stats(&mut self) {
        if self.run_time_stats.is_none() {
            self.run_time_stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
        }
    }

    pub fn bpf_run_time(&self) -> Duration {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok())
            .map(|i| i.run_time())
            .sum()
    }

    /// Each attached program's runs and run time so far (zero unless the kernel's BPF
    /// statistics are on: `kernel.bpf_stats_enabled`, or the UI's own switch).
    pub fn program_stats(&self) -> Vec<(String, u64, Duration)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| p.info().ok().map(|i| (name, i)))
            .map(|(name, i)| (name.to_owned(), i.run_count(), i.run_time()))
            .collect()
    }

    /// Runs of this session's programs the kernel skipped because the program was
    /// already running on that CPU (`recursion_misses` in each program's fdinfo,
    /// Linux 5.12 and later; 0 where the kernel does not say).
    pub fn nested_runs(&self) -> u64 {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.fd().ok())
            .filter_map(|fd| {
                let raw = fd.as_fd().as_raw_fd();
                std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")).ok()
            })
            .filter_map(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("recursion_misses:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .sum()
    }

    /// The kernel's per-socket records (can be taken once), for
    /// [`waiting_records`].
    pub fn take_socks(&mut self) -> Result<Socks> {
        let map = self.ebpf.take_map("SOCKS").context("SOCKS map missing")?;
        Ok(aya::maps::HashMap::try_from(map)?)
    }

    /// The kernel's loss counters, summed over CPUs (the userspace causes are zero).
    pub fn losses(&self) -> Result<crate::event::Losses> {
        let map = self.ebpf.map("LOSSES").context("LOSSES map missing")?;
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        let count = |i: u32| -> Result<u64> { Ok(array.get(&i, 0)?.iter().sum()) };
        Ok(crate::event::Losses {
            ringbuf_full: count(LOSS_RINGBUF_FULL)?,
            owner_map: count(LOSS_OWNER_MAP)?,
            connect_map: count(LOSS_CONNECT_MAP)?,
            kernel_read: count(LOSS_READ)?,
            kernel_nested: self.nested_runs(),
            ..crate::event::Losses::default()
        })
    }
}

/// The kernel's map of per-socket records.
pub type Socks = aya::maps::HashMap<MapData, u64, tracer_common::ConnRecord>;

/// The kernel's per-socket records whose transitions have waited there since
/// before `older_than_ns` (CLOCK_MONOTONIC): connections still open, shown without
/// waiting for their close. One lookup per socket in the map, so this runs on a
/// slow timer (and before a port-exhaustion error), not per event.
pub fn waiting_records(
    socks: &Socks,
    older_than_ns: u64,
    out: &mut Vec<tracer_common::ConnRecord>,
) {
    for entry in socks {
        // A socket closed between two lookups is simply gone.
        let Ok((sock, mut rec)) = entry else {
            continue;
        };
        let n = rec.steps_len as usize;
        if n == 0 || n > tracer_common::MAX_STEPS || rec.steps[0].ts_ns >= older_than_ns {
            continue;
        }
        rec.head.sock = sock;
        out.push(rec);
    }
}

fn attach(ebpf: &mut Ebpf, name: &str, hook: Hook, btf: &aya::Btf) -> Result<()> {
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?;
    match hook {
        Hook::Btf(tracepoint) => {
            let p: &mut BtfTracePoint = program.try_into()?;
            p.load(tracepoint, btf)?;
            p.attach()?;
        }
        Hook::Classic(category, tracepoint) => {
            let p: &mut TracePoint = program.try_into()?;
            p.load()?;
            p.attach(category, tracepoint)?;
        }
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const limit) };
}

/// A ring buffer registered with tokio.
pub struct EventStream {
    fd: tokio::io::unix::AsyncFd<RingBuf<MapData>>,
}

/// Records handed on per drain at most (an 8 MiB ring holds ~61,000).
pub const MAX_PER_DRAIN: usize = 1 << 16;

impl EventStream {
    pub fn new(ring: RingBuf<MapData>) -> Result<Self> {
        debug_assert!(ring.as_raw_fd() >= 0);
        // SAFETY: the RingBuf owns its fd and keeps it open until it is dropped, which
        // happens only when the AsyncFd (which deregisters first) is dropped.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(ring) }
            .map_err(|e| anyhow::anyhow!("registering the ring buffer with tokio: {e}"))?;
        Ok(Self { fd })
    }

    /// Waits until records are available, then hands each to `f` until the ring is empty.
    pub async fn drain_with(&mut self, mut f: impl FnMut(&[u8])) -> Result<usize> {
        let mut guard = self.fd.readable_mut().await?;
        let n = Self::drain_ring(guard.get_inner_mut(), &mut f);
        // Stopped at the bound with records left: stay ready, so the loop comes back
        // here after its other work (signals, samples) instead of waiting for a wakeup.
        if n < MAX_PER_DRAIN {
            guard.clear_ready();
        }
        Ok(n)
    }

    /// Hands every record still in the ring to `f` without waiting.
    pub fn drain_now(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        Self::drain_ring(self.fd.get_mut(), &mut f)
    }

    /// At most [`MAX_PER_DRAIN`] records: under a storm faster than the engine, one
    /// drain must not hold the loop forever (signals and samples wait on it).
    fn drain_ring(ring: &mut RingBuf<MapData>, f: &mut impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < MAX_PER_DRAIN {
            let Some(item) = ring.next() else {
                break;
            };
            f(&item);
            n += 1;
        }
        n
    }
}
