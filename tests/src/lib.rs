//! Phalanx test support: the deterministic simulator and its safety checker.
//!
//! The tests themselves live in `tests/` (`sim.rs`, ...).

#![allow(clippy::unwrap_used)]

pub mod sim;
