//! Phalanx networking.
