//! Tests against a real containerd and a real registry (see `harness` for how they run).

mod bench;
mod harness;

mod faults;
mod hostile;
mod hosts_cli;
mod mirrors;
mod pull;
mod redirect;
mod smoke;
