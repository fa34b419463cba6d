//! The `remapd` binary.

fn main() {}
