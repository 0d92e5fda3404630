//! Peer-shaped profiles, so a side-by-side run compares like with like.
//!
//! - `etcd-s|m|l|xl`: etcd's `etcdctl check perf` (etcdctl/ctlv3/command/check.go): 50 / 200
//!   / 500 / 1000 clients fed by a rate limiter (burst 1) at 150 / 1,000 / 8,000 / 15,000
//!   writes/s for 60 s, puts of 256-byte keys and 1 KiB values, latency measured from the
//!   send. Verdict as etcd prints it: any error fails; throughput must exceed 0.9 × the
//!   target; the slowest request must take at most 0.5 s; the standard deviation of latency
//!   must be at most 0.1 s.
//! - `openraft`: openraft's cluster benchmark shape: 3 members in one process, in-memory
//!   log and network, empty payloads, clients 1 / 64 / 256 / 4096, batch 1 and 4; one row
//!   per combination, counting entries (openraft's put/s) and requests.

use crate::load::LoadResult;

/// A profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// No profile: every knob from the command line.
    Custom,
    /// etcd `check perf --load=s`.
    EtcdS,
    /// etcd `check perf --load=m`.
    EtcdM,
    /// etcd `check perf --load=l`.
    EtcdL,
    /// etcd `check perf --load=xl`.
    EtcdXl,
    /// openraft's benchmark sweep.
    Openraft,
}

/// The shape of one etcd `check perf` load.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EtcdShape {
    /// Concurrent clients.
    pub clients: usize,
    /// Target writes per second.
    pub rate: f64,
}

/// Key size of etcd's check (bytes, the random part; etcd adds its prefix).
pub const ETCD_KEY_BYTES: usize = 256;
/// Value size of etcd's check.
pub const ETCD_VALUE_BYTES: usize = 1024;
/// Duration of etcd's check.
pub const ETCD_DURATION_SECS: f64 = 60.0;
/// Throughput must exceed this share of the target.
pub const ETCD_MIN_THROUGHPUT_RATIO: f64 = 0.9;
/// Slowest request allowed, seconds.
pub const ETCD_MAX_SLOWEST_SECS: f64 = 0.5;
/// Largest standard deviation of latency allowed, seconds.
pub const ETCD_MAX_STDDEV_SECS: f64 = 0.1;

/// openraft sweep: clients.
pub const OPENRAFT_CLIENTS: [usize; 4] = [1, 64, 256, 4096];
/// openraft sweep: entries per request.
pub const OPENRAFT_BATCHES: [usize; 2] = [1, 4];
/// openraft's default snapshot policy (`SnapshotPolicy::LogsSinceLast(5000)`): its in-memory
/// log is purged behind a snapshot every 5,000 entries; the sweep checkpoints as often.
pub const OPENRAFT_CHECKPOINT_EVERY: u64 = 5_000;
/// Executors the openraft sweep's three nodes share: one thread runs all three, beside the
/// driver's (openraft's benchmark: its three nodes on two server worker threads, its clients on
/// a third). Measured side by side on 2 vCPUs against one executor per node (the default
/// elsewhere), entries/s: 256 x 1 968k / 871k against 601k / 541k; 4096 x 1 1.19M / 1.31M
/// against 969k / 843k; 1 x 1 12.1k / 13.1k against 7.2k / 5.8k (`bench/README.md`).
pub const OPENRAFT_EXECUTORS: usize = 1;
/// The sweep row the target is about (256 clients, batch 1).
pub const OPENRAFT_HEADLINE: (usize, usize) = (256, 1);

impl Profile {
    /// Parses a profile name; the error lists the valid ones.
    pub fn parse(s: &str) -> Result<Profile, String> {
        Ok(match s {
            "custom" | "" => Profile::Custom,
            "etcd-s" => Profile::EtcdS,
            "etcd-m" => Profile::EtcdM,
            "etcd-l" => Profile::EtcdL,
            "etcd-xl" => Profile::EtcdXl,
            "openraft" => Profile::Openraft,
            other => {
                return Err(format!(
                    "unknown profile {other:?}: expected one of custom, etcd-s, etcd-m, etcd-l, etcd-xl, openraft"
                ));
            }
        })
    }

    /// The name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Profile::Custom => "custom",
            Profile::EtcdS => "etcd-s",
            Profile::EtcdM => "etcd-m",
            Profile::EtcdL => "etcd-l",
            Profile::EtcdXl => "etcd-xl",
            Profile::Openraft => "openraft",
        }
    }

    /// The etcd shape, for etcd profiles.
    #[must_use]
    pub fn etcd(self) -> Option<EtcdShape> {
        match self {
            Profile::EtcdS => Some(EtcdShape { clients: 50, rate: 150.0 }),
            Profile::EtcdM => Some(EtcdShape { clients: 200, rate: 1_000.0 }),
            Profile::EtcdL => Some(EtcdShape { clients: 500, rate: 8_000.0 }),
            Profile::EtcdXl => Some(EtcdShape { clients: 1000, rate: 15_000.0 }),
            _ => None,
        }
    }
}

/// etcd's verdict on a run at `target` writes/s: the lines etcd prints, and whether it
/// passed. Same tests, thresholds and wording as `etcdctl check perf`.
#[must_use]
pub fn etcd_verdict(target: f64, load: &LoadResult) -> (bool, Vec<String>) {
    let mut ok = true;
    let mut lines = Vec::new();
    if !load.errors.is_empty() {
        lines.push("FAIL: too many errors".to_string());
        for (k, v) in &load.errors {
            lines.push(format!("FAIL: ERROR({k}) -> {v}"));
        }
        ok = false;
    }
    let rps = load.ops_per_sec();
    // etcd prints int(RPS)+1.
    let shown = rps as u64 + 1;
    if rps / target <= ETCD_MIN_THROUGHPUT_RATIO {
        lines.push(format!("FAIL: Throughput too low: {shown} writes/s"));
        ok = false;
    } else {
        lines.push(format!("PASS: Throughput is {shown} writes/s"));
    }
    let slowest = load.latency.max() as f64 / 1e6;
    if slowest > ETCD_MAX_SLOWEST_SECS {
        lines.push(format!("Slowest request took too long: {slowest:.6}s"));
        ok = false;
    } else {
        lines.push(format!("PASS: Slowest request took {slowest:.6}s"));
    }
    let stddev = load.latency.stdev() / 1e6;
    if stddev > ETCD_MAX_STDDEV_SECS {
        lines.push(format!("Stddev too high: {stddev:.6}s"));
        ok = false;
    } else {
        lines.push(format!("PASS: Stddev is {stddev:.6}s"));
    }
    (ok, lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn result(ops: u64, secs: u64, lat_us: &[u64], errors: &[(&str, u64)]) -> LoadResult {
        let mut h = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
        for &l in lat_us {
            h.record(l).unwrap();
        }
        LoadResult {
            latency: h,
            ops,
            entries: ops,
            reads: 0,
            not_found: 0,
            errors: errors.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            checkpoints: 0,
            checkpoint_failures: 0,
            started: std::time::Instant::now(),
            elapsed: Duration::from_secs(secs),
            per_second: Vec::new(),
        }
    }

    #[test]
    fn shapes_are_etcds() {
        let s: Vec<_> = [Profile::EtcdS, Profile::EtcdM, Profile::EtcdL, Profile::EtcdXl]
            .iter()
            .map(|p| p.etcd().unwrap())
            .map(|e| (e.clients, e.rate as u64))
            .collect();
        assert_eq!(s, vec![(50, 150), (200, 1000), (500, 8000), (1000, 15000)]);
        assert!(Profile::parse("etcd-xxl").unwrap_err().contains("etcd-xl"));
        assert_eq!(Profile::parse("openraft").unwrap(), Profile::Openraft);
    }

    #[test]
    fn verdict_passes_and_fails_like_etcd() {
        let good = result(60 * 7_300, 60, &[1_000, 2_000, 30_000], &[]);
        let (ok, lines) = etcd_verdict(8_000.0, &good);
        assert!(ok, "{lines:?}");
        assert_eq!(lines[0], "PASS: Throughput is 7301 writes/s");
        assert!(lines[1].starts_with("PASS: Slowest request took 0.03"));
        // Exactly 0.9 x target fails (etcd tests `<= 0.9`).
        let (ok, lines) = etcd_verdict(8_000.0, &result(60 * 7_200, 60, &[1_000], &[]));
        assert!(!ok);
        assert_eq!(lines[0], "FAIL: Throughput too low: 7201 writes/s");
        let (ok, lines) = etcd_verdict(150.0, &result(60 * 150, 60, &[600_000], &[("Busy", 2)]));
        assert!(!ok);
        assert_eq!(lines[0], "FAIL: too many errors");
        assert_eq!(lines[1], "FAIL: ERROR(Busy) -> 2");
        assert!(lines.iter().any(|l| l.starts_with("Slowest request took too long: 0.6")));
    }
}
