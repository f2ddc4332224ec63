//! `ctrpull bench`: pull throughput per bandwidth tier, side by side with containerd.
//!
//! [`profiles`] are built and pushed once; for each [`tiers`] entry a [`link`]
//! emulator fronts the registry, and the [`runner`] pulls every profile through it
//! with ctrpull at each concurrency setting and with containerd's own pull, from a
//! clean content store each time. With `--wire`, [`wire`] measures what the link
//! itself allows a client that only downloads. [`results`] holds what was measured.

pub mod link;
pub mod profiles;
pub mod report;
pub mod results;
pub mod runner;
pub mod scratch;
pub mod tiers;
pub mod wire;
