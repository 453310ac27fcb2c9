//! Machine vitals for `get_state` and heartbeats, in BOSH's shape (numbers as strings):
//! load (`/proc/loadavg`), CPU since the previous sample (`/proc/stat`), memory and swap
//! (`/proc/meminfo`), disk use of `/`, `<root>/data` and `<root>/store` (statvfs; the
//! persistent one only while a disk is mounted), uptime (`/proc/uptime`).
//!
//! The parsers are pure; [`Sampler`] reads the files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use crate::layout::Layout;
use agent_protocol::Vitals;

/// CPU jiffies: user (with nice), system (with irq, softirq), iowait, total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSample {
    /// user + nice.
    pub user: u64,
    /// system + irq + softirq.
    pub sys: u64,
    /// iowait.
    pub wait: u64,
    /// Everything.
    pub total: u64,
}

/// The `cpu` line of `/proc/stat`.
pub fn parse_cpu(stat: &str) -> Option<CpuSample> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(CpuSample {
        user: get(0) + get(1),
        sys: get(2) + get(5) + get(6),
        wait: get(4),
        // guest time is already counted in user.
        total: fields.iter().take(8).sum(),
    })
}

/// Percentages between two samples.
pub fn cpu_percentages(previous: CpuSample, now: CpuSample) -> BTreeMap<String, String> {
    let total = now.total.saturating_sub(previous.total).max(1) as f64;
    let percent = |a: u64, b: u64| format!("{:.1}", a.saturating_sub(b) as f64 * 100.0 / total);
    BTreeMap::from([
        ("user".to_string(), percent(now.user, previous.user)),
        ("sys".to_string(), percent(now.sys, previous.sys)),
        ("wait".to_string(), percent(now.wait, previous.wait)),
    ])
}

/// The three load averages.
pub fn parse_load(loadavg: &str) -> Vec<String> {
    loadavg
        .split_whitespace()
        .take(3)
        .map(str::to_string)
        .collect()
}

/// `(mem, swap)` as `{"percent", "kb"}` (used memory is total minus available).
pub fn parse_meminfo(meminfo: &str) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let field = |name: &str| -> Option<u64> {
        meminfo
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(':'))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    let usage = |total: Option<u64>, free: Option<u64>| {
        let total = total.unwrap_or(0);
        let used = total.saturating_sub(free.unwrap_or(total));
        let percent = if total == 0 {
            0.0
        } else {
            used as f64 * 100.0 / total as f64
        };
        BTreeMap::from([
            ("percent".to_string(), format!("{percent:.1}")),
            ("kb".to_string(), used.to_string()),
        ])
    };
    let available = field("MemAvailable").or_else(|| field("MemFree"));
    (
        usage(field("MemTotal"), available),
        usage(field("SwapTotal"), field("SwapFree")),
    )
}

/// Whole seconds of `/proc/uptime`.
pub fn parse_uptime(uptime: &str) -> u64 {
    uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map(|s| s as u64)
        .unwrap_or(0)
}

/// Used percentage as `df` computes it (used over used plus available to users, rounded
/// up).
pub fn used_percent(total: u64, free: u64, available: u64) -> u64 {
    let used = total.saturating_sub(free);
    let base = used + available;
    if base == 0 {
        0
    } else {
        (used * 100).div_ceil(base)
    }
}

fn disk(path: &Path) -> Option<BTreeMap<String, String>> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(BTreeMap::from([
        (
            "percent".to_string(),
            used_percent(stat.f_blocks, stat.f_bfree, stat.f_bavail).to_string(),
        ),
        (
            "inode_percent".to_string(),
            used_percent(stat.f_files, stat.f_ffree, stat.f_ffree).to_string(),
        ),
    ]))
}

/// Reads vitals, remembering the previous CPU sample.
#[derive(Debug, Default)]
pub struct Sampler {
    previous_cpu: Mutex<Option<CpuSample>>,
}

impl Sampler {
    /// Vitals now. `persistent` says whether a disk is mounted at `<root>/store`.
    pub fn sample(&self, layout: &Layout, persistent: bool) -> Vitals {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let (mem, swap) = parse_meminfo(&read("/proc/meminfo"));
        let cpu = match parse_cpu(&read("/proc/stat")) {
            Some(now) => {
                let mut previous = self.previous_cpu.lock().expect("cpu lock");
                let since = previous.unwrap_or_default();
                *previous = Some(now);
                cpu_percentages(since, now)
            }
            None => BTreeMap::new(),
        };
        let mut disks = BTreeMap::new();
        let mut add = |name: &str, path: &Path| {
            if let Some(usage) = disk(path) {
                disks.insert(name.to_string(), usage);
            }
        };
        add("system", Path::new("/"));
        add("ephemeral", &layout.data());
        if persistent {
            add("persistent", &layout.store());
        }
        Vitals {
            load: parse_load(&read("/proc/loadavg")),
            cpu,
            mem,
            swap,
            disk: disks,
            uptime: BTreeMap::from([("secs".to_string(), parse_uptime(&read("/proc/uptime")))]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        assert_eq!(
            parse_load("0.09 0.04 0.01 1/123 4567\n"),
            ["0.09", "0.04", "0.01"]
        );
        assert_eq!(parse_uptime("1234.56 999.0\n"), 1234);
        let meminfo = "MemTotal:        1000 kB\nMemFree:          100 kB\nMemAvailable:     750 kB\nSwapTotal:       200 kB\nSwapFree:        200 kB\n";
        let (mem, swap) = parse_meminfo(meminfo);
        assert_eq!(mem["kb"], "250");
        assert_eq!(mem["percent"], "25.0");
        assert_eq!(swap["kb"], "0");
        assert_eq!(swap["percent"], "0.0");
    }

    #[test]
    fn cpu_is_measured_between_samples() {
        let a = parse_cpu("cpu  100 0 50 800 10 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        let b = parse_cpu("cpu  150 0 70 900 30 0 0 0 0 0\n").unwrap();
        let p = cpu_percentages(a, b);
        assert_eq!(p["user"], "26.3");
        assert_eq!(p["sys"], "10.5");
        assert_eq!(p["wait"], "10.5");
    }

    #[test]
    fn disk_percent_like_df() {
        assert_eq!(used_percent(100, 40, 30), 67);
        assert_eq!(used_percent(0, 0, 0), 0);
    }
}
