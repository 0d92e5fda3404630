//! Phalanx load generator (grows with the load-generator issue).
fn main() {}
