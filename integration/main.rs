//! Tests against a real containerd and a real registry (see `harness` for how they run).

mod harness;

mod pull;
mod smoke;
