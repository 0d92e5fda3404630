//! Phalanx test support.
