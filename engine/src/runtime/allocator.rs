//! The allocator the node binary and the benchmark run on, mimalloc (the engine allocates
//! and frees many small buffers on every shard thread at once; glibc's allocator spent a
//! third of the benchmark's CPU time in malloc/free and consolidation, mimalloc's per-thread
//! heaps avoid that), and how the process sets it up for many idle partitions.

pub use mimalloc::MiMalloc;

/// Sets the process up for a node that may hold many idle partitions; call it first thing
/// in `main`: transparent huge pages off for this process. mimalloc asks for them on its
/// arenas, and a 2 MiB page stays resident whole while any 4 KiB of it is in use: 10,000
/// idle partitions held 118-122 MiB with them, 82-94 MiB without, and the default benchmark
/// was no slower without (`bench/README.md`, quiescence). Purging freed pages at once
/// (`mi_option_purge_delay` 0) would take the idle cluster down to 61 MiB, but it cost 18 %
/// more CPU to 10,000 heartbeating partitions (pages emptied and faulted again at 400,000
/// messages a second), so the delay stays mimalloc's.
///
/// Errors when the kernel refuses.
pub fn configure_for_many_partitions() -> std::io::Result<()> {
    // SAFETY: `PR_SET_THP_DISABLE` takes integer arguments only and changes a flag of this
    // process.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}
