//! Loopback network probe (placeholder).
fn main() {}
