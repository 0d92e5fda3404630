//! Which CPU each shard of a node is pinned to.
//!
//! Several nodes often share one host: a local cluster, the tests, the README's example.
//! Pinning shard *i* to CPU *i* in every process stacked all their shards on the same CPUs
//! while the others idled. So a shard pins only to a CPU it *claimed*: an exclusive,
//! non-blocking `flock` on a per-CPU lock file in a directory every process of the host
//! shares. The node holds its claims while it runs; the kernel releases them when the
//! process exits, however it exits (SIGKILL included), so a crashed node never leaves a CPU
//! claimed. CPUs come from the process's affinity mask, so `taskset -c 2,3 phalanx node …`
//! confines a node's claims to CPUs 2 and 3. A shard for which no CPU is free runs unpinned,
//! and the node says so once: correct, only without the cache locality pinning buys.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Name of the lock directory under the system's temporary directory.
const LOCK_DIR_NAME: &str = "phalanx-cpus";

/// CPUs this node holds; dropping it releases them.
#[derive(Debug, Default)]
pub(crate) struct CpuClaims {
    /// One open, locked file per claimed CPU.
    _locks: Vec<File>,
}

/// The default lock directory, shared by every Phalanx process of the host.
#[must_use]
pub(crate) fn default_lock_dir() -> PathBuf {
    std::env::temp_dir().join(LOCK_DIR_NAME)
}

/// The CPUs this process may run on, ascending (its affinity mask). Empty when the mask
/// cannot be read.
#[must_use]
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain data; zeroed is an empty set. `sched_getaffinity` writes
    // at most `size_of::<cpu_set_t>()` bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `CPU_ISSET` reads the set for an index below its capacity.
    (0..max).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

/// Claims up to `shards` CPUs among `allowed`, in order, skipping those another process (or
/// another node of this one) holds. Returns the CPU of each shard (`None`: no free CPU, run
/// unpinned) and the claims to keep while the node runs. Errors opening the lock directory
/// leave every shard unpinned: pinning is an optimisation, never a reason not to start.
pub(crate) fn claim(shards: usize, allowed: &[usize], dir: &Path) -> (Vec<Option<usize>>, CpuClaims) {
    let mut placement = vec![None; shards];
    let mut claims = CpuClaims::default();
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::warn!("CPU lock directory {}: {e}; shards run unpinned", dir.display());
        return (placement, claims);
    }
    let mut cpus = allowed.iter().copied();
    for slot in &mut placement {
        for cpu in cpus.by_ref() {
            if let Some(f) = try_lock(&dir.join(format!("cpu-{cpu}.lock"))) {
                claims._locks.push(f);
                *slot = Some(cpu);
                break;
            }
        }
    }
    (placement, claims)
}

/// An exclusive lock on `path`, or `None` if another open file holds it (or it cannot be
/// opened).
fn try_lock(path: &Path) -> Option<File> {
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).ok()?;
    // SAFETY: `flock` on a file descriptor this function owns.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (rc == 0).then_some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (a, claims_a) = claim(2, &[0, 1, 2], dir.path());
        assert_eq!(a, vec![Some(0), Some(1)]);
        // A second node finds CPUs 0 and 1 taken: one shard gets CPU 2, the other none.
        let (b, claims_b) = claim(2, &[0, 1, 2], dir.path());
        assert_eq!(b, vec![Some(2), None]);
        drop(claims_a);
        let (c, _claims_c) = claim(3, &[0, 1, 2], dir.path());
        assert_eq!(c, vec![Some(0), Some(1), None], "released CPUs are free again");
        drop(claims_b);
    }

    #[test]
    fn the_affinity_mask_is_readable() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
    }
}
