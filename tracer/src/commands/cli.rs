//! Command line: `conntrace <command> [flags]`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::pipeline::filter::{Cidr, Filter};

#[derive(Debug, Parser)]
#[command(
    name = "conntrace",
    version,
    about = "eBPF TCP connection-lifecycle tracer: who closed first, idle time before close, resets, connect errors, retransmits",
    propagate_version = true
)]
pub struct Cli {
    /// Without a command: the live terminal UI.
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub live: LiveArgs,
}

impl Cli {
    /// The command to run, with the flags given before it applied to it:
    /// `conntrace --pid 42 record -o f` records like `conntrace record -o f --pid 42`.
    /// Without a command, the live UI. A command that takes none of those flags
    /// (`report`, `replay`, `lab`, and `check` for filters) refuses them with the
    /// reason, as does the same flag given before and after with different values.
    pub fn resolve(self) -> Result<Command, String> {
        let Some(mut command) = self.command else {
            return Ok(Command::Tui(TuiArgs {
                filter: self.filter,
                live: self.live,
            }));
        };
        let filters = self.filter.given();
        let live = self.live.given();
        if filters.is_empty() && live.is_empty() {
            return Ok(command);
        }
        let name = command.name();
        let refuse = |flags: &[&str], why: &str| {
            Err(format!(
                "{} given before `{name}`, which {why}",
                flags.join(", ")
            ))
        };
        match &mut command {
            Command::Record(RecordArgs {
                filter, live: l, ..
            })
            | Command::Watch(WatchArgs {
                filter, live: l, ..
            })
            | Command::Tui(TuiArgs { filter, live: l }) => {
                filter.merge(self.filter)?;
                l.merge(self.live)?;
            }
            Command::Check(CheckArgs { live: l }) => {
                if !filters.is_empty() {
                    return refuse(&filters, "only loads the programs and takes no filter");
                }
                l.merge(self.live)?;
            }
            Command::Report(_) | Command::Replay(_) => {
                return refuse(
                    &[filters, live].concat(),
                    "reads a recorded log: filters and tracing flags apply when recording",
                );
            }
            Command::Lab(_) => {
                return refuse(
                    &[filters, live].concat(),
                    "runs its own scenario and takes none of them",
                );
            }
        }
        Ok(command)
    }
}

/// `--await-after`'s default.
const AWAIT_DEFAULT: AwaitAfter = AwaitAfter(Some(std::time::Duration::from_secs(30)));

/// `merge`: a flag given before the command and after it must agree.
fn merge_one<T: PartialEq + std::fmt::Debug>(
    flag: &str,
    after: &mut Option<T>,
    before: Option<T>,
) -> Result<(), String> {
    match (after.as_ref(), before) {
        (None, Some(b)) => *after = Some(b),
        (Some(a), Some(b)) if *a != b => {
            return Err(format!(
                "{flag} given twice with different values ({b:?} before the command, {a:?} after it)"
            ));
        }
        _ => {}
    }
    Ok(())
}

/// How the live commands trace and what they serve.
#[derive(Debug, Args, Clone, Copy, Default)]
#[command(next_help_heading = "Live tracing")]
pub struct LiveArgs {
    /// Serve Prometheus metrics on this address (PORT means 127.0.0.1:PORT; off by default).
    #[arg(long, value_name = "ADDR", value_parser = crate::output::metrics::parse_addr)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Also attach the system-call tracepoints of connect() and accept(): they name
    /// synchronous connect errors other than EADDRNOTAVAIL (ENETUNREACH, EACCES, ...)
    /// and the accepting thread at once. Off by default: while any system-call
    /// tracepoint is attached, every system call on the node takes the kernel's
    /// slower traced path (about 120 ns more, `cargo xtask bench`). Without them an
    /// accepted connection is its listener's until the process holding it closes it
    /// (that close names it), and EADDRNOTAVAIL is read from the kernel's failed port
    /// search.
    #[arg(long)]
    pub syscall_hooks: bool,
    /// The default since connection records (kept for old scripts).
    #[arg(long, hide = true, conflicts_with = "syscall_hooks")]
    pub no_syscall_hooks: bool,
    /// Ship every TCP state transition as its own event (log version 1's lines), as
    /// tools like tcpstates do, for deep dives. By default a socket's transitions
    /// travel together: one record per connection at its close, plus one whenever it
    /// must be seen live (a close after idling, a reset, an error, a retransmit, and
    /// a read of the kernel's map for connections open over a second); about half
    /// the CPU and a fifth of the log per connection.
    #[arg(long)]
    pub every_transition: bool,
    /// Report connections awaiting a reply this long (our request acknowledged,
    /// nothing back since): the open sockets are inspected every 2 s through
    /// sock_diag, as `ss -ti` does. `off` disables the inspection.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_await)]
    pub await_after: AwaitAfter,
}

/// A kernel program's diagnostic on stderr, escaped.
fn kernel_diagnostic(text: &str) {
    crate::errln!("conntrace: kernel {}", crate::text::printable(text));
}

impl LiveArgs {
    /// What the live pipeline takes from these flags; `verbose`: the kernel
    /// programs' diagnostics on stderr too.
    pub fn options(&self, verbose: bool) -> crate::pipeline::live::Options {
        crate::pipeline::live::Options {
            attach: crate::kernel::session::Attach {
                syscall_hooks: self.syscall_hooks,
                every_transition: self.every_transition,
                diagnostics: verbose.then_some(kernel_diagnostic as fn(&str)),
            },
            metrics_addr: self.metrics_addr,
            await_after: self.await_after.0,
        }
    }
}

impl LiveArgs {
    /// The flags set (named as typed), for messages.
    fn given(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.metrics_addr.is_some() {
            out.push("--metrics-addr");
        }
        if self.syscall_hooks {
            out.push("--syscall-hooks");
        }
        if self.no_syscall_hooks {
            out.push("--no-syscall-hooks");
        }
        if self.every_transition {
            out.push("--every-transition");
        }
        if self.await_after != AWAIT_DEFAULT {
            out.push("--await-after");
        }
        out
    }

    /// Takes the flags given before the command.
    fn merge(&mut self, before: Self) -> Result<(), String> {
        merge_one(
            "--metrics-addr",
            &mut self.metrics_addr,
            before.metrics_addr,
        )?;
        self.syscall_hooks |= before.syscall_hooks;
        self.no_syscall_hooks |= before.no_syscall_hooks;
        if self.syscall_hooks && self.no_syscall_hooks {
            return Err("--syscall-hooks and --no-syscall-hooks both given".to_owned());
        }
        self.every_transition |= before.every_transition;
        if before.await_after != AWAIT_DEFAULT {
            let mut after = (self.await_after != AWAIT_DEFAULT).then_some(self.await_after);
            merge_one("--await-after", &mut after, Some(before.await_after))?;
            self.await_after = after.unwrap_or(before.await_after);
        }
        Ok(())
    }
}

/// `--await-after`: the inspection's threshold, or `None` for off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AwaitAfter(pub Option<std::time::Duration>);

/// `--await-after`: a duration of at least one second, or `off`.
fn parse_await(s: &str) -> Result<AwaitAfter, String> {
    if s == "off" {
        return Ok(AwaitAfter(None));
    }
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 30s, 2m, off)"))?;
    if d < std::time::Duration::from_secs(1) {
        return Err("at least 1s: shorter waits are ordinary request latency".to_owned());
    }
    Ok(AwaitAfter(Some(d)))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record kernel events to a JSON Lines log (headless); findings at exit.
    Record(RecordArgs),
    /// Live and headless: findings to stdout as they fire (events too with -v).
    Watch(WatchArgs),
    /// Findings from a recorded log.
    Report(ReportArgs),
    /// Reproduce an incident locally (loopback and network namespaces).
    Lab(LabArgs),
    /// The live terminal UI (the default).
    Tui(TuiArgs),
    /// The terminal UI on a recorded log, with play/pause, speed and jump to end.
    Replay(ReplayArgs),
    /// Load and attach the kernel programs, print what works on this kernel and what
    /// is degraded, and exit (non-zero when conntrace cannot run here).
    Check(CheckArgs),
}

impl Command {
    /// As typed on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Record(_) => "record",
            Self::Watch(_) => "watch",
            Self::Report(_) => "report",
            Self::Lab(_) => "lab",
            Self::Tui(_) => "tui",
            Self::Replay(_) => "replay",
            Self::Check(_) => "check",
        }
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub live: LiveArgs,
}

#[derive(Debug, Args)]
pub struct TuiArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub live: LiveArgs,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A log written by `conntrace record` (or exported from the UI).
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// JSON lines (`{"finding": ...}`, `{"event": ...}`) for a log pipeline.
    #[arg(long)]
    pub json: bool,
    /// Print every event too, and the kernel programs' diagnostics on stderr.
    #[arg(short, long)]
    pub verbose: bool,
    /// Stop after this many seconds (default: until Ctrl-C, SIGTERM or SIGHUP).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<f64>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub live: LiveArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A log written by `conntrace record`.
    pub file: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    pub format: crate::output::report::Format,
    /// Also print to stderr how long reading and the engine took (events/s).
    #[arg(long)]
    pub stats: bool,
}

#[derive(Debug, Args)]
pub struct LabArgs {
    /// The scenario to run (see --list).
    #[arg(required_unless_present = "list")]
    pub scenario: Option<String>,
    /// List the scenarios.
    #[arg(long)]
    pub list: bool,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Where to write the log (JSON Lines).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Overwrite FILE if it exists (never through a symbolic link).
    #[arg(long)]
    pub force: bool,
    /// The kernel programs' diagnostics on stderr (a failed kernel read: which
    /// program, which error), besides the loss counts.
    #[arg(short, long)]
    pub verbose: bool,
    /// Stop after this many seconds (default: until Ctrl-C, SIGTERM or SIGHUP).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<f64>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub live: LiveArgs,
}

/// `--duration`: a finite number of seconds, more than 0 and at most a year.
pub fn parse_secs(s: &str) -> Result<f64, String> {
    const YEAR: f64 = 365.0 * 86_400.0;
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds (e.g. 30 or 2.5)"))?;
    if !v.is_finite() || v <= 0.0 || v > YEAR {
        return Err(format!(
            "'{s}' is not a duration: give seconds above 0 and at most a year ({YEAR})"
        ));
    }
    Ok(v)
}

/// Event selection shared by the live commands.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Filters")]
pub struct FilterArgs {
    /// Only connections owned by this process id.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Only connections owned by processes with this command name.
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Only connections with this local or remote port.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Only connections with a local or remote address in this network (e.g. 10.0.0.0/8).
    #[arg(long, value_name = "NET")]
    pub cidr: Option<Cidr>,
    /// Only connections of this pod (UID, or a prefix), from the cgroup path.
    #[arg(long, value_name = "UID")]
    pub pod: Option<String>,
    /// Only connections of this container (id, or a prefix), from the cgroup path.
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,
    /// Only connections of pods in this namespace (in a cluster: from the Kubernetes API).
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
}

impl FilterArgs {
    /// The filters set (named as typed), for messages.
    fn given(&self) -> Vec<&'static str> {
        [
            ("--pid", self.pid.is_some()),
            ("--comm", self.comm.is_some()),
            ("--port", self.port.is_some()),
            ("--cidr", self.cidr.is_some()),
            ("--pod", self.pod.is_some()),
            ("--container", self.container.is_some()),
            ("--namespace", self.namespace.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, set)| set.then_some(flag))
        .collect()
    }

    /// Takes the filters given before the command.
    fn merge(&mut self, before: Self) -> Result<(), String> {
        merge_one("--pid", &mut self.pid, before.pid)?;
        merge_one("--comm", &mut self.comm, before.comm)?;
        merge_one("--port", &mut self.port, before.port)?;
        merge_one("--cidr", &mut self.cidr, before.cidr)?;
        merge_one("--pod", &mut self.pod, before.pod)?;
        merge_one("--container", &mut self.container, before.container)?;
        merge_one("--namespace", &mut self.namespace, before.namespace)
    }

    pub fn to_filter(&self) -> Filter {
        let Self {
            pid,
            comm,
            port,
            cidr,
            pod,
            container,
            namespace,
        } = self.clone();
        Filter {
            pid,
            comm,
            port,
            cidr,
            pod,
            container,
            namespace,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    fn resolve(args: &[&str]) -> Result<Command, String> {
        Cli::try_parse_from(std::iter::once("conntrace").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?
            .resolve()
    }

    #[test]
    fn flags_before_the_command_apply_to_it_or_are_refused() {
        let Ok(Command::Record(r)) =
            resolve(&["--pid", "42", "--syscall-hooks", "record", "-o", "f"])
        else {
            panic!("record expected");
        };
        assert_eq!(r.filter.pid, Some(42));
        assert!(r.live.syscall_hooks);
        let Ok(Command::Watch(w)) = resolve(&["--await-after", "5s", "watch", "--port", "80"])
        else {
            panic!("watch expected");
        };
        assert_eq!(
            (w.filter.port, w.live.await_after.0),
            (Some(80), Some(std::time::Duration::from_secs(5)))
        );
        let Ok(Command::Tui(t)) = resolve(&["--comm", "nginx"]) else {
            panic!("tui expected");
        };
        assert_eq!(t.filter.comm.as_deref(), Some("nginx"));
        let e = resolve(&["--pid", "42", "report", "f"]).unwrap_err();
        assert!(
            e.contains("--pid given before `report`, which reads a recorded log"),
            "{e}"
        );
        let e = resolve(&["--port", "1", "check"]).unwrap_err();
        assert!(e.contains("takes no filter"), "{e}");
        let e = resolve(&["--pid", "1", "record", "-o", "f", "--pid", "2"]).unwrap_err();
        assert!(e.contains("--pid given twice"), "{e}");
        assert!(resolve(&["--pid", "1", "record", "-o", "f", "--pid", "1"]).is_ok());
        assert!(resolve(&["--every-transition", "lab", "--list"]).is_err());
    }
}
