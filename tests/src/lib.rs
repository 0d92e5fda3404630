//! Phalanx test support: the deterministic simulator and its safety checker.
//!
//! The tests themselves live in `tests/` (`sim.rs`, ...). [`fuzz_targets`] holds the bodies of
//! the fuzz targets (`tests/fuzz/`), replayed over their corpora by `tests/fuzz_corpus.rs`.

#![allow(clippy::unwrap_used)]

pub mod fuzz_targets;
pub mod sim;
