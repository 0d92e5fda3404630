//! The allocator the node binary and the benchmark run on, mimalloc (the engine allocates
//! and frees many small buffers on every shard thread at once; glibc's allocator spent a
//! third of the benchmark's CPU time in malloc/free and consolidation, mimalloc's per-thread
//! heaps avoid that), how the process sets it up for many idle partitions, and when freed
//! memory goes back to the system ([`PurgePolicy`]: at once while every shard is quiet).

pub use mimalloc::MiMalloc;

/// Sets the process up for a node that may hold many idle partitions; call it first thing
/// in `main`: transparent huge pages off for this process. mimalloc asks for them on its
/// arenas, and a 2 MiB page stays resident whole while any 4 KiB of it is in use: 10,000
/// idle partitions held 118-122 MiB with them, 82-94 MiB without, and the default benchmark
/// was no slower without (`bench/README.md`, quiescence). When freed pages go back is
/// [`PurgePolicy`]'s business.
///
/// Errors when the kernel refuses.
pub fn configure_for_many_partitions() -> std::io::Result<()> {
    // SAFETY: `PR_SET_THP_DISABLE` takes integer arguments only and changes a flag of this
    // process.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_t`, `mimalloc.h`; the Rust
/// bindings do not name it): milliseconds between freeing pages and returning them to the
/// system, 0 for at once. `purge_delay_option_is_mimallocs` checks the number.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Inputs (peer messages, requests, bus messages) a second below which a shard counts as
/// quiet. A node whose partitions are quiesced gets a few dozen a second (the failure
/// detector's); 10,000 heartbeating partitions bring a hundred thousand, a single client
/// writing in a loop thousands.
pub const QUIET_INPUTS_PER_SEC: u64 = 100;

/// How often a shard looks at its input rate (and, when quiet, has the allocator give back
/// what it freed): twice the window in which a burst's buffers are given back
/// (`phalanx_net::spare`), so that by the second look they are.
pub const PURGE_LOOK_INTERVAL: std::time::Duration =
    std::time::Duration::from_secs(2 * phalanx_net::spare::SPARE_WINDOW.as_secs());

/// The process's busy shards (`None` until the first shard starts).
static BUSY: std::sync::Mutex<Option<Busy>> = std::sync::Mutex::new(None);

/// How many shards are busy, and the purge delay mimalloc had before any shard started.
#[derive(Debug)]
struct Busy {
    shards: usize,
    default_delay: std::os::raw::c_long,
}

impl Busy {
    /// One more (`busy`) or one fewer busy shard; returns the purge delay to set.
    fn change(&mut self, busy: bool) -> std::os::raw::c_long {
        self.shards = if busy { self.shards + 1 } else { self.shards.saturating_sub(1) };
        if self.shards == 0 { 0 } else { self.default_delay }
    }
}

/// Whether `inputs` in `elapsed` make a shard busy.
fn is_busy(inputs: u64, elapsed: std::time::Duration) -> bool {
    inputs.saturating_mul(1000) / (elapsed.as_millis().max(1) as u64) >= QUIET_INPUTS_PER_SEC
}

/// When mimalloc returns freed memory to the system, from how busy the shards are.
///
/// mimalloc purges a page a delay (1 s) after it was freed, and only when the thread
/// allocates or frees again: a shard that went quiet after a burst (a start-up of ten
/// thousand partitions) kept the burst's pages resident for good, and pages reused within the
/// delay keep every byte their earlier use touched. Purging at once (delay 0) took an idle
/// 10,000-partition cluster from 2.4 to 1.8 KiB per replica, cost nothing to the default
/// benchmark, but cost 10,000 heartbeating partitions a quarter to two thirds more CPU (their
/// pages emptied and faulted again every turn); `bench/README.md`, quiescence. So the delay is
/// 0 while every shard of the process is quiet and mimalloc's own while any is busy; a quiet
/// shard also has its freed pages purged at each look.
///
/// One per shard, on the shard's thread; a new one counts as busy (a shard starting up is).
#[derive(Debug)]
pub struct PurgePolicy {
    busy: bool,
    inputs: u64,
}

impl Default for PurgePolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl PurgePolicy {
    /// A busy shard's policy.
    #[must_use]
    pub fn new() -> Self {
        set_busy(true);
        PurgePolicy { busy: true, inputs: 0 }
    }

    /// Counts `n` inputs of the shard.
    pub fn inputs(&mut self, n: u64) {
        self.inputs = self.inputs.saturating_add(n);
    }

    /// The shard's look, every [`PURGE_LOOK_INTERVAL`]: `elapsed` since the previous one.
    pub fn look(&mut self, elapsed: std::time::Duration) {
        let busy = is_busy(std::mem::take(&mut self.inputs), elapsed);
        if busy != self.busy {
            self.busy = busy;
            set_busy(busy);
        }
        if !busy {
            // SAFETY: `mi_collect` takes a flag and works on the calling thread's heap and
            // the process's arenas, which mimalloc synchronises itself.
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
    }
}

impl Drop for PurgePolicy {
    fn drop(&mut self) {
        if self.busy {
            set_busy(false);
        }
    }
}

/// One more (`busy`) or one fewer busy shard; sets mimalloc's purge delay to match.
fn set_busy(busy: bool) {
    let mut state = BUSY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let b = state.get_or_insert_with(|| Busy {
        shards: 0,
        // SAFETY: reads an integer option.
        default_delay: unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
    });
    let delay = b.change(busy);
    // SAFETY: sets an integer option; mimalloc reads options racily by design (a word
    // each), and the lock orders the writers.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay) };
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn purge_delay_option_is_mimallocs() {
        // The option's number is not in the bindings: mimalloc's documented default at that
        // number (1,000 ms in mimalloc 3) says it is the purge delay. Other tests' shards may
        // have set it to 0 (all quiet) meanwhile, never to anything else.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads an integer option.
            let d = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
            assert!(d == 1000 || d == 0, "option {MI_OPTION_PURGE_DELAY} reads {d}");
        }
    }

    #[test]
    fn the_delay_is_zero_only_while_no_shard_is_busy() {
        let mut b = Busy { shards: 0, default_delay: 1000 };
        assert_eq!(b.change(true), 1000);
        assert_eq!(b.change(true), 1000);
        assert_eq!(b.change(false), 1000, "one still busy");
        assert_eq!(b.change(false), 0, "none busy");
        assert_eq!(b.change(false), 0, "never below zero");
        assert_eq!(b.change(true), 1000);
    }

    #[test]
    fn busy_is_a_rate_of_inputs() {
        let two = Duration::from_secs(2);
        assert!(!is_busy(0, two));
        assert!(!is_busy(2 * QUIET_INPUTS_PER_SEC - 1, two));
        assert!(is_busy(2 * QUIET_INPUTS_PER_SEC, two));
        assert!(is_busy(1, Duration::ZERO), "no time at all counts as busy");
    }
}
