//! The allocator the node binary and the benchmark run on, mimalloc (the engine allocates
//! and frees many small buffers on every shard thread at once; glibc's allocator spent a
//! third of the benchmark's CPU time in malloc/free and consolidation, mimalloc's per-thread
//! heaps avoid that), and how the process sets it up for many idle partitions.

pub use mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`, `mi_option_e`; the Rust bindings do
/// not name it). The test below checks it is the option whose default is 1,000 ms.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets the process up for a node that may hold many idle partitions; call it first thing
/// in `main`. Both changes were measured on 10,000 idle partitions and on the default
/// benchmark, side by side (`bench/README.md`, quiescence): together they cut the resident
/// memory of the idle cluster by half, and the benchmark was no slower.
/// - Transparent huge pages off for this process: mimalloc asks for them on its arenas,
///   and a 2 MiB page stays resident whole while any 4 KiB of it is in use.
/// - Freed pages go back to the OS at once instead of after mimalloc's purge delay (1 s):
///   a delayed purge runs only when the freeing thread allocates again, and a shard whose
///   partitions quiesced hardly allocates, so the transients of a start stayed resident.
///
/// Errors when the kernel refuses to turn huge pages off (the purge is set regardless).
pub fn configure_for_many_partitions() -> std::io::Result<()> {
    // SAFETY: `mi_option_set` takes plain integers and only changes mimalloc's option table.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    // SAFETY: `PR_SET_THP_DISABLE` takes integer arguments only and changes a flag of this
    // process.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_the_one_named() {
        // SAFETY: reads mimalloc's option table.
        let ms = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(ms, 1000, "option {} is not mimalloc's purge delay", super::MI_OPTION_PURGE_DELAY);
    }
}
