//! Phalanx: a thread-per-core, shard-nothing multi-Raft consensus engine.
//!
//! - [`raft`] — the pure, deterministic Raft core (no IO, no clocks).
//! - [`hlc`] — hybrid logical clock tickets.

pub mod hlc;
pub mod raft;
