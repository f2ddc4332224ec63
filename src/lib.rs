//! ctrpull: an image pull accelerator for containerd.
//!
//! ctrpull talks to containerd's gRPC socket directly. It resolves an image over the
//! registry HTTP API v2 (mirrors first, upstream last, as the node's containerd
//! configuration lists them), streams every blob into containerd's content store,
//! unpacks the layers into the snapshotter and writes the image records CRI writes,
//! so kubelet sees the image as if containerd had pulled it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ctrpull::{Puller, Reference, WarmItem, WarmOptions};
//!
//! let puller = Puller::builder()
//!     .address("/run/containerd/containerd.sock")
//!     .namespace("k8s.io")
//!     .build()?;
//! let report = puller.pull(&Reference::parse("docker.io/library/busybox:latest")?).await?;
//! println!("{} {} in {:?}", report.reference, report.digest, report.elapsed);
//!
//! // Many images under one budget, a result each; progress from `puller.events()`.
//! let items = vec![WarmItem::new(Reference::parse("alpine:3.20")?)];
//! let warmed = puller.warm(items, WarmOptions::default()).await;
//! assert!(warmed.all_ok(), "{:?}", warmed.images[0].reason);
//! # Ok(())
//! # }
//! ```
//!
//! [`PullOptions`] with [`Puller::new`] gives the same puller from a struct.
//!
//! # Layout
//!
//! - [`reference`](mod@reference): image references, normalised as containerd and CRI do.
//! - [`config`]: where to fetch from: containerd's hosts.toml directories, giving
//!   ordered [`registry::Endpoint`]s per registry.
//! - [`registry`]: the HTTP side: manifest resolve and blob download with failover
//!   across endpoints, token auth, TLS per endpoint.
//! - [`pull`]: one pull from reference to image: plan, fetch (with resume), unpack,
//!   records, all under a lease; the quick skip of images already there; progress
//!   events; [`Puller::warm`] for lists. [`Puller`] is the entry point.
//! - [`containerd`]: the gRPC side: content writer, leases, snapshots and diff
//!   (unpack), image records; and [`containerd::apply`], which writes a layer
//!   straight into its prepared snapshot while it downloads, as containerd's applier
//!   would.
//! - [`warm`]: image lists in, the JSON report and Prometheus metrics out, around
//!   [`Puller::warm`].
//! - [`cri`]: our subset of the CRI ImageService, to check what kubelet sees
//!   ([`cri::verify`]).
//! - [`builder`]: builds OCI images and pushes them (tests, quickstart, benchmarks).
//! - [`cli`]: the `ctrpull` command line; `main.rs` only runs it.
//!
//! Data flows `reference` + `config` → `registry` (resolve) → `pull` (plan, fetch)
//! → `containerd` (content → unpack → images), each layer's bytes also going, as
//! they are written, to its unpack; `pull` emits [`Event`]s and results
//! that `warm` and the CLI turn into bars, JSON lines, reports and metrics.

pub mod bench;
pub mod builder;
pub mod cli;
pub mod config;
pub mod containerd;
pub mod cri;
#[doc(hidden)]
pub mod fuzzing;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod warm;

pub use pull::{
    Concurrency, Event, EventStream, ImageResult, ImageStatus, Platform, PullOptions, PullReport,
    Puller, PullerBuilder, WarmItem, WarmOptions, WarmReport,
};
pub use reference::Reference;

/// Any error of the library, by subsystem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An image reference is malformed.
    #[error(transparent)]
    Reference(#[from] reference::Error),
    /// The containerd or hosts configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// A pull failed.
    #[error(transparent)]
    Pull(#[from] pull::Error),
    /// A registry request failed.
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// A containerd call failed.
    #[error(transparent)]
    Containerd(#[from] containerd::Error),
    /// A CRI call failed.
    #[error(transparent)]
    Cri(#[from] cri::Error),
    /// Building or pushing an image failed.
    #[error(transparent)]
    Builder(#[from] builder::Error),
    /// An image list, report or metrics file could not be read or written.
    #[error(transparent)]
    Warm(#[from] warm::Error),
}
