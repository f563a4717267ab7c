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
    /// Reads the boot time from the current clocks and HZ from the kernel config.
    pub fn detect() -> Result<Self> {
        let mono = monotonic_now();
        let boot = SystemTime::now()
            .checked_sub(mono)
            .context("clock before boot")?;
        Ok(Self {
            boot,
            hz: detect_hz(),
        })
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

/// CONFIG_HZ from `/proc/config.gz` or `/boot/config-<release>`; 250 (Debian's and
/// most distributions' choice) when neither is readable.
fn detect_hz() -> u32 {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let boot_config = format!("/boot/config-{}", release.trim());
    if let Ok(text) = std::fs::read_to_string(boot_config) {
        if let Some(hz) = parse_config_hz(&text) {
            return hz;
        }
    }
    if let Ok(out) = std::process::Command::new("zcat")
        .arg("/proc/config.gz")
        .output()
    {
        if let Some(hz) = parse_config_hz(&String::from_utf8_lossy(&out.stdout)) {
            return hz;
        }
    }
    250
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
    fn jiffies_convert_at_hz() {
        let clock = KernelClock {
            boot: SystemTime::UNIX_EPOCH,
            hz: 250,
        };
        assert_eq!(clock.jiffies_to_ms(375), 1500);
        assert_eq!(clock.jiffies_to_ms(1), 4);
    }
}
