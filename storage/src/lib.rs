//! Phalanx storage (WAL shards). Under construction in the storage issue.
