//! containerd and Docker configuration: hosts.toml directories.

pub mod hosts;

pub use hosts::Error;
