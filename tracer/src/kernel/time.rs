//! Clocks: the kernel's monotonic timestamps mapped to wall time, and HZ.

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};

/// Maps kernel CLOCK_MONOTONIC nanoseconds to wall-clock time and jiffies to ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelClock {
    /// Wall-clock time at monotonic zero (the boot time, give or take suspend).
    pub boot: SystemTime,
    /// The kernel's tick rate (CONFIG_HZ).
    pub hz: u32,
}

impl KernelClock {
    /// Reads the boot time from the current clocks and HZ from the kernel config, or
    /// measures it (see [`detect_hz`]).
    pub fn detect() -> Result<Self> {
        Self::detect_with_source().map(|(clock, _)| clock)
    }

    /// As [`KernelClock::detect`], with where the tick rate came from.
    pub fn detect_with_source() -> Result<(Self, TickSource)> {
        let mono = monotonic_now();
        let boot = SystemTime::now()
            .checked_sub(mono)
            .context("clock before boot")?;
        let (hz, source) = detect_hz();
        Ok((Self { boot, hz }, source))
    }

    /// Wall time of a monotonic timestamp.
    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        self.boot + Duration::from_nanos(mono_ns)
    }

    /// Milliseconds in `jiffies` ticks.
    pub fn jiffies_to_ms(&self, jiffies: u32) -> u64 {
        u64::from(jiffies) * 1000 / u64::from(self.hz.max(1))
    }
}

/// CLOCK_MONOTONIC now.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Where the tick rate came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickSource {
    /// `CONFIG_HZ` in this file.
    Config(String),
    /// The kernel's jiffies counted against its monotonic clock in `/proc/timer_list`.
    Measured,
    /// Neither readable: [`ASSUMED_HZ`].
    Assumed,
}

impl std::fmt::Display for TickSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(file) => write!(f, "CONFIG_HZ in {file}"),
            Self::Measured => {
                f.write_str("measured: jiffies against the monotonic clock in /proc/timer_list")
            }
            Self::Assumed => f.write_str("assumed"),
        }
    }
}

/// Debian's and most distributions' tick rate, when it can be neither read nor measured.
pub const ASSUMED_HZ: u32 = 250;

/// CONFIG_HZ from `/boot/config-<release>` or `/proc/config.gz` (through `zcat`, which
/// a scratch image lacks); else measured from `/proc/timer_list` (root can read it on
/// every kernel: no config file in a container that does not mount the host's
/// /boot); else [`ASSUMED_HZ`]. A wrong rate scales every idle time: RHEL 9 and recent
/// Ubuntu kernels tick at 1000.
fn detect_hz() -> (u32, TickSource) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let boot_config = format!("/boot/config-{}", release.trim());
    if let Ok(text) = std::fs::read_to_string(&boot_config) {
        if let Some(hz) = parse_config_hz(&text) {
            return (hz, TickSource::Config(boot_config));
        }
    }
    if let Ok(out) = std::process::Command::new("zcat")
        .arg("/proc/config.gz")
        .output()
    {
        if let Some(hz) = parse_config_hz(&String::from_utf8_lossy(&out.stdout)) {
            return (hz, TickSource::Config("/proc/config.gz".to_owned()));
        }
    }
    if let Some(hz) = measure_hz(Duration::from_millis(200)) {
        return (hz, TickSource::Measured);
    }
    (ASSUMED_HZ, TickSource::Assumed)
}

/// The tick rate from two reads of `/proc/timer_list` `over` apart, rounded to the
/// rates Linux is built with.
fn measure_hz(over: Duration) -> Option<u32> {
    let read = || {
        std::fs::read_to_string("/proc/timer_list")
            .ok()
            .as_deref()
            .and_then(timer_list_sample)
    };
    let first = read()?;
    std::thread::sleep(over);
    let second = read()?;
    hz_between(first, second)
}

/// (`now at` nanoseconds, `jiffies`) of one read of `/proc/timer_list`.
fn timer_list_sample(text: &str) -> Option<(u64, u64)> {
    let now = text
        .lines()
        .find_map(|l| l.strip_prefix("now at "))
        .and_then(|l| l.strip_suffix(" nsecs"))
        .and_then(|v| v.trim().parse().ok())?;
    let jiffies = text
        .lines()
        .find_map(|l| l.strip_prefix("jiffies: "))
        .and_then(|v| v.trim().parse().ok())?;
    Some((now, jiffies))
}

/// The standard rate (100, 250, 300, 1000) within 10 % of the jiffies counted
/// between two samples; `None` for anything else.
fn hz_between(first: (u64, u64), second: (u64, u64)) -> Option<u32> {
    let ns = second
        .0
        .checked_sub(first.0)
        .filter(|&ns| ns >= 50_000_000)?;
    let ticks = second.1.checked_sub(first.1)?;
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    let rate = ticks as f64 * 1e9 / ns as f64;
    [100u32, 250, 300, 1000]
        .into_iter()
        .find(|&hz| (rate - f64::from(hz)).abs() <= f64::from(hz) / 10.0)
}

fn parse_config_hz(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_hz_is_parsed() {
        assert_eq!(
            parse_config_hz("# x\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"),
            Some(250)
        );
        assert_eq!(parse_config_hz("CONFIG_HZ_1000=y\n"), None);
    }

    #[test]
    fn tick_rate_is_measured_from_timer_list() {
        let read = |now: u64, jiffies: u64| {
            timer_list_sample(&format!(
                "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at {now} nsecs\n\n\
                 cpu: 0\n  .idle_jiffies   : 1\njiffies: {jiffies}\n"
            ))
            .unwrap()
        };
        let t0 = 78_570_561_083_432;
        assert_eq!(read(t0, 4_314_535_143), (t0, 4_314_535_143));
        let at = |ms: u64, ticks: u64| {
            hz_between(read(t0, 1000), read(t0 + ms * 1_000_000, 1000 + ticks))
        };
        assert_eq!(at(200, 50), Some(250));
        assert_eq!(at(200, 51), Some(250));
        assert_eq!(at(200, 200), Some(1000));
        assert_eq!(at(200, 199), Some(1000));
        assert_eq!(at(200, 60), Some(300));
        assert_eq!(at(200, 20), Some(100));
        // Not a rate Linux is built with, too short a span, or the clock going back.
        assert_eq!(at(200, 120), None);
        assert_eq!(at(10, 10), None);
        assert_eq!(hz_between(read(t0, 1000), read(t0 - 1, 1001)), None);
        assert_eq!(timer_list_sample("jiffies: 5\n"), None);
    }

    /// On this machine: the measured rate is the configured one where both exist.
    #[test]
    fn measured_tick_rate_matches_the_config() {
        let (hz, source) = detect_hz();
        if let Some(measured) = measure_hz(Duration::from_millis(200)) {
            assert_eq!(measured, hz, "config says {hz} ({source})");
        }
    }

    #[test]
    fn jiffies_convert_at_hz() {
        let clock = KernelClock {
            boot: SystemTime::UNIX_EPOCH,
            hz: 250,
        };
        assert_eq!(clock.jiffies_to_ms(375), 1500);
        assert_eq!(clock.jiffies_to_ms(1), 4);
    }
}
