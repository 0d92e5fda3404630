//! Phalanx wire types.
//!
//! The protobuf definitions live in `proto/phalanx/v1/*.proto`; this crate compiles them with
//! prost (via protox, no system `protoc`) and re-exports the generated types, plus a few
//! helpers that every layer needs (entry sizes, kind checks).

#![allow(missing_docs)] // Generated code carries the .proto comments; helpers below are documented.

/// Version 1 of the Phalanx wire protocol.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/phalanx.v1.rs"));
}

mod entry_codec;

pub use prost::Message;
pub use v1::*;

/// The wire protocol version spoken by this build. Peers exchange it in the handshake.
pub const PROTOCOL_VERSION: u32 = 1;

impl LogEntry {
    /// Approximate in-memory / on-wire size in bytes, used for batch and frame byte limits.
    /// Cheaper than `encoded_len` and good enough for limits.
    #[must_use]
    pub fn approx_size(&self) -> usize {
        // term + index + kind + ticket are at most ~40 bytes encoded.
        40 + self.log_type.len() + self.payload.len()
    }
}
