//! CPU time and memory of this process, from `/proc/self` (Linux).

use std::time::Instant;

/// CPU seconds (user + system) consumed by the process so far.
#[must_use]
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the ')'.
    let ticks: f64 = [11, 12].iter().filter_map(|&i| f.get(i)?.parse::<f64>().ok()).sum();
    // Linux reports these in USER_HZ, which is 100 on every architecture it runs on.
    ticks / 100.0
}

/// Peak resident set size of the process in bytes (VmHWM).
#[must_use]
pub fn peak_rss_bytes() -> u64 {
    status_kib("VmHWM:") * 1024
}

/// Current resident set size of the process in bytes (VmRSS).
#[must_use]
pub fn current_rss_bytes() -> u64 {
    status_kib("VmRSS:") * 1024
}

/// Bytes of the files under `dir` (recursively; what a node's data directory holds).
#[must_use]
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU use over an interval, as a percentage of one core.
pub struct CpuMeter {
    wall: Instant,
    cpu: f64,
}

impl CpuMeter {
    /// Starts measuring now.
    #[must_use]
    pub fn start() -> Self {
        CpuMeter { wall: Instant::now(), cpu: cpu_seconds() }
    }

    /// CPU% since `start` (100 = one core busy).
    #[must_use]
    pub fn percent(&self) -> f64 {
        let wall = self.wall.elapsed().as_secs_f64();
        if wall <= 0.0 { 0.0 } else { (cpu_seconds() - self.cpu) / wall * 100.0 }
    }
}
