//! Tests against a real containerd and a real registry (see `harness` for how they run).

mod bench;
mod harness;

mod fault_matrix;
mod faults;
mod hostile;
mod hosts_cli;
mod mirrors;
mod pull;
mod redirect;
mod security;
mod smoke;
mod unpack;
mod verify;
mod warm;
mod warm_watch;
