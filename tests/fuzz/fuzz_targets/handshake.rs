//! libFuzzer entry for `phalanx_tests::fuzz_targets::handshake` (the body lives there so the corpus
//! replays under `cargo test`).
#![no_main]

#[global_allocator]
static ALLOC: phalanx_fuzz::LimitedAlloc = phalanx_fuzz::LimitedAlloc;

libfuzzer_sys::fuzz_target!(init: phalanx_fuzz::init(), |data: &[u8]| phalanx_tests::fuzz_targets::handshake(data));
