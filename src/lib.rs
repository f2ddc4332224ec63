//! ctrpull: an image pull accelerator for containerd.

pub mod builder;
pub mod cli;
pub mod config;
pub mod containerd;
pub mod cri;
pub mod pull;
pub mod reference;
pub mod registry;
