//! Shared harness for remapd's integration tests: packet building and independent
//! verification, `BPF_PROG_TEST_RUN` runs, and network-namespace topologies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bpf;
pub mod cases;
pub mod daemons;
pub mod netns;
pub mod packet;
pub mod topology;
