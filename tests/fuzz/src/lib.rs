//! Shared by the fuzz binaries: an allocator that turns one oversized allocation into a crash.
//!
//! libFuzzer's `-malloc_limit_mb` only works through a sanitizer's malloc hooks, and these
//! builds have no sanitizer (stable toolchain): without this, a decoder that allocates what
//! a hostile length asks for would pass unnoticed until the RSS limit, or not at all if the
//! memory is never touched. [`LimitedAlloc`] aborts instead, which libFuzzer reports as a
//! crash and saves the input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Largest single allocation, in MiB, when `FUZZ_MALLOC_LIMIT_MB` is not set (`run.sh` sets
/// it, to the value it also passes libFuzzer as `-malloc_limit_mb`).
pub const DEFAULT_MALLOC_LIMIT_MB: usize = 256;

static LIMIT_BYTES: AtomicUsize = AtomicUsize::new(DEFAULT_MALLOC_LIMIT_MB << 20);

/// Reads `FUZZ_MALLOC_LIMIT_MB` once, at start-up (reading the environment allocates, so it
/// cannot happen inside the allocator).
pub fn init() {
    if let Some(mb) = std::env::var("FUZZ_MALLOC_LIMIT_MB").ok().and_then(|v| v.parse::<usize>().ok()) {
        LIMIT_BYTES.store(mb.saturating_mul(1 << 20), Ordering::Relaxed);
    }
}

/// The system allocator, refusing (with an abort) any single allocation over the limit.
pub struct LimitedAlloc;

fn check(size: usize) {
    let limit = LIMIT_BYTES.load(Ordering::Relaxed);
    if size > limit {
        // No formatting machinery here: it could allocate, inside the allocator.
        let mut msg = *b"==phalanx-fuzz== malloc limit exceeded: an allocation of 0000000000000 MiB\n";
        let digits = 13;
        let at = msg.len() - 5 - digits;
        let mut mb = size >> 20;
        for i in (0..digits).rev() {
            msg[at + i] = b'0' + (mb % 10) as u8;
            mb /= 10;
        }
        let _ = std::io::stderr().write_all(&msg);
        std::process::abort();
    }
}

// SAFETY: forwards to `System`, adding only a size check before allocating.
unsafe impl GlobalAlloc for LimitedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
