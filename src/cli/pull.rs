//! `ctrpull pull`.

use std::path::PathBuf;

use clap::Args;

use super::hosts::ConfigArgs;
use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::config::Config;
use crate::pull::{
    Platform, PullOptions, PullReport, Puller, DEFAULT_ADDRESS, DEFAULT_NAMESPACE,
    DEFAULT_SNAPSHOTTER,
};
use crate::reference::Reference;

/// Options of `ctrpull pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// containerd socket.
    #[arg(long, env = "CONTAINERD_ADDRESS", default_value = DEFAULT_ADDRESS)]
    pub address: PathBuf,
    /// containerd namespace (CRI and kubelet use k8s.io).
    #[arg(long, short = 'n', env = "CONTAINERD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Platform to pull from a multi-platform index, os/arch[/variant] [default: the host's].
    #[arg(long)]
    pub platform: Option<Platform>,
    /// Snapshotter to unpack into.
    #[arg(long, default_value = DEFAULT_SNAPSHOTTER)]
    pub snapshotter: String,
    /// Where endpoints, TLS settings and credentials come from.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Fetch into the content store only; do not unpack into the snapshotter.
    #[arg(long)]
    pub no_unpack: bool,
    /// HTTP requests in flight at once across every image, blob and chunk of the run:
    /// a number, or `auto` to tune it while pulling (start at 8, double while
    /// throughput rises; the CRI plugin's max_concurrent_downloads, when config.toml
    /// sets it, is the most it goes to) [default: auto].
    #[arg(long, value_name = "N|auto", value_parser = parse_concurrency)]
    pub concurrency: Option<Concurrency>,
    /// Size the connections to a link instead: 100mbit, 1gbit, 10gbit or a rate such
    /// as 300mbit or 50MB/s.
    #[arg(long, value_name = "RATE", conflicts_with = "concurrency", value_parser = crate::bench::link::parse_rate)]
    pub bandwidth: Option<u64>,
    /// A request that delivers no byte for this long is abandoned and its remaining
    /// bytes fetched elsewhere [default: config.toml's image_pull_progress_timeout
    /// when set, else 30s].
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub progress_timeout: Option<std::time::Duration>,
    /// Give up on an image that is not pulled within this long (e.g. 10m) [default: no limit].
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
    /// Images to pull, e.g. busybox, registry.example:5000/team/app:1.2, app@sha256:…
    #[arg(required = true, value_name = "REF")]
    pub refs: Vec<String>,
}

pub(super) async fn run(args: PullArgs) -> u8 {
    let mut references = Vec::new();
    for text in &args.refs {
        match Reference::parse(text) {
            Ok(reference) => references.push(reference),
            Err(e) => {
                eprintln!("ctrpull: invalid reference {text:?}: {e}");
                return EXIT_USAGE;
            }
        }
    }
    let sources = args.config.sources();
    let config = match Config::load(&sources) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ctrpull: {e}");
            return EXIT_USAGE;
        }
    };
    let mut options = PullOptions {
        address: args.address,
        namespace: args.namespace,
        platform: args.platform.unwrap_or_else(Platform::host),
        snapshotter: args.snapshotter,
        config: sources,
        unpack: !args.no_unpack,
        ..PullOptions::default()
    };
    // The node's own CRI settings are the defaults; flags override them.
    let cri = config.cri();
    let (concurrency, auto_tune, reason) = match (
        args.concurrency,
        args.bandwidth,
        &cri.max_concurrent_downloads,
    ) {
        (Some(Concurrency::Fixed(n)), _, _) => (n, false, "--concurrency".to_string()),
        (_, Some(rate), _) => {
            let (n, reason) = crate::pull::for_bandwidth(rate);
            (n, false, format!("--bandwidth: {reason}"))
        }
        // 0 means "no limit" to containerd.
        (None, None, Some(setting)) if setting.value > 0 => (
            setting.value.min(crate::pull::AUTO_MAX),
            true,
            format!("tuned, at most {} from {}", setting.value, setting.source),
        ),
        _ => (
            crate::pull::AUTO_MAX,
            true,
            "tuned while pulling".to_string(),
        ),
    };
    tracing::info!(concurrency, auto_tune, "connections: {reason}");
    options.concurrency = concurrency;
    options.auto_tune = auto_tune;
    // containerd's progress timeout cancels the whole pull; ours abandons one stalled
    // response and resumes it elsewhere. Zero (containerd: off) keeps ours.
    let from_config = cri
        .image_pull_progress_timeout
        .as_ref()
        .map(|setting| setting.value)
        .filter(|value| !value.is_zero());
    if let Some(timeout) = args.progress_timeout.or(from_config) {
        options.registry.read_timeout = timeout;
    }
    options.timeout = args.timeout;
    let puller = match Puller::with_config(options, std::sync::Arc::new(config)) {
        Ok(puller) => puller,
        Err(e) => {
            eprintln!("ctrpull: {e}");
            return EXIT_USAGE;
        }
    };
    // All images at once under the one budget of the puller; results in order.
    let results =
        futures::future::join_all(references.iter().map(|reference| puller.pull(reference))).await;
    let mut code = EXIT_OK;
    for (reference, result) in references.iter().zip(results) {
        match result {
            Ok(report) => {
                if !args.quiet {
                    println!("{}", summary(&report));
                }
            }
            Err(e) => {
                eprintln!("ctrpull: pulling {reference} failed: {}", chain(&e));
                code = match e {
                    crate::pull::Error::Config(_) => EXIT_USAGE,
                    _ => code.max(EXIT_FAILED),
                };
            }
        }
    }
    code
}

/// A `--concurrency` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// A fixed number of requests in flight.
    Fixed(usize),
    /// Tuned while pulling.
    Auto,
}

fn parse_concurrency(text: &str) -> Result<Concurrency, String> {
    match text.trim() {
        "auto" => Ok(Concurrency::Auto),
        n => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=crate::pull::MAX_CONCURRENCY).contains(n))
            .map(Concurrency::Fixed)
            .ok_or_else(|| {
                format!(
                    "{n:?}: a number from 1 to {}, or auto",
                    crate::pull::MAX_CONCURRENCY
                )
            }),
    }
}

/// A duration such as `30s`, `2m` or `1h30m`; zero is refused.
fn positive_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration =
        humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e} (e.g. 30s, 5m)"))?;
    if duration.is_zero() {
        return Err(format!("{text:?}: must be more than zero"));
    }
    Ok(duration)
}

/// `docker.io/library/busybox:latest sha256:… 2.2 MB in 0.41 s (5.4 MB/s)`.
fn summary(report: &PullReport) -> String {
    format!(
        "{} {} fetched {:.1} MB in {:.2} s ({:.1} MB/s)",
        report.reference,
        report.digest,
        report.bytes_fetched as f64 / 1e6,
        report.elapsed.as_secs_f64(),
        report.megabytes_per_second()
    )
}

/// An error and its sources, "a: b: c", skipping sources already in the message.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
