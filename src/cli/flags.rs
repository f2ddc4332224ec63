//! Flags shared by the commands that pull (`pull`, `warm`): where and how to pull
//! ([`PullFlags`]) and what to print and write ([`OutputFlags`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::hosts::ConfigArgs;
use crate::pull::{
    Concurrency, Platform, PullerBuilder, DEFAULT_ADDRESS, DEFAULT_NAMESPACE,
    DEFAULT_REORDER_MEMORY, DEFAULT_SNAPSHOTTER, MIN_CHUNK,
};

/// Where and how to pull.
#[derive(Debug, Args)]
pub struct PullFlags {
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
    /// Unpack each layer only once it is downloaded, with containerd's own applier.
    /// By default a layer is unpacked while it downloads, written straight into its
    /// snapshot, when the snapshotter is overlayfs and its directories are seen from
    /// here (same host, as root).
    #[arg(long, conflicts_with = "no_unpack")]
    pub unpack_after_download: bool,
    /// HTTP requests in flight at once across every image, blob and chunk of the run:
    /// a number, or `auto` to tune it while pulling (start at 16, double while
    /// throughput rises; the CRI plugin's max_concurrent_downloads, when config.toml
    /// sets it, is the most it goes to) [default: auto].
    #[arg(long, value_name = "N|auto", value_parser = parse_concurrency)]
    pub concurrency: Option<Concurrency>,
    /// Size the connections to a link instead: 100mbit, 1gbit, 10gbit or a rate such
    /// as 300mbit or 50MB/s.
    #[arg(long, value_name = "RATE", conflicts_with = "concurrency", value_parser = crate::bench::link::parse_rate)]
    pub bandwidth: Option<u64>,
    /// Largest Range request a big blob is fetched in, from 1MiB to 64MiB (the reorder
    /// memory): larger requests cost fewer round trips and registry requests, smaller
    /// ones spread a blob over more connections. Requests are also kept under the
    /// reorder memory shared out over twice the connections, and get smaller towards
    /// the end of the run [default: 4MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_chunk_size)]
    pub chunk_size: Option<u64>,
    /// A request that delivers no byte for this long is abandoned and its remaining
    /// bytes fetched elsewhere [default: config.toml's image_pull_progress_timeout
    /// when set, else 30s].
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub progress_timeout: Option<Duration>,
    /// Give up on an image that is not pulled within this long (e.g. 10m) [default: no limit].
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub timeout: Option<Duration>,
}

impl PullFlags {
    /// The puller these settings make, reading the configuration files; on an
    /// invalid configuration, says why and gives the usage exit code.
    pub(super) fn puller(&self) -> Result<crate::Puller, u8> {
        self.builder().build().map_err(|e| {
            eprintln!("ctrpull: {e}");
            super::EXIT_USAGE
        })
    }

    /// A puller builder with these settings (configuration files not read yet).
    pub fn builder(&self) -> PullerBuilder {
        let mut builder = crate::Puller::builder()
            .address(&self.address)
            .namespace(&self.namespace)
            .platform(self.platform.clone().unwrap_or_else(Platform::host))
            .snapshotter(&self.snapshotter)
            .sources(self.config.sources())
            .unpack(!self.no_unpack)
            .unpack_while_downloading(!self.unpack_after_download);
        if let Some(size) = self.chunk_size {
            builder = builder.chunk_size(size);
        }
        if let Some(concurrency) = self.concurrency {
            builder = builder.concurrency(concurrency);
        }
        if let Some(rate) = self.bandwidth {
            builder = builder.concurrency(Concurrency::Bandwidth(rate));
        }
        if let Some(timeout) = self.progress_timeout {
            builder = builder.progress_timeout(timeout);
        }
        if let Some(timeout) = self.timeout {
            builder = builder.timeout(timeout);
        }
        builder
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// `warm`: JSON lines when stdout is not a terminal, else bars when stderr is one.
    /// `pull`: bars when stderr is a terminal, else none.
    Auto,
    /// Bars on stderr: one per image and one overall (bytes, rate, ETA).
    Bars,
    /// One JSON object per event on stdout (schema in the README).
    Json,
    /// No progress.
    None,
}

/// What to print and write.
#[derive(Debug, Args)]
pub struct OutputFlags {
    /// Print nothing but errors (same as --progress none, without the summary lines).
    #[arg(short, long)]
    pub quiet: bool,
    /// Progress display.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Write a JSON report of the run here (per image: status, digest, bytes, seconds,
    /// endpoints, retries, stalls, failure reason).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write Prometheus metrics of the run here, for node-exporter's textfile collector.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

/// A `--chunk-size` value: a size from [`MIN_CHUNK`](crate::pull::MIN_CHUNK) to the
/// reorder memory ([`DEFAULT_REORDER_MEMORY`](crate::pull::DEFAULT_REORDER_MEMORY)).
fn parse_chunk_size(text: &str) -> Result<u64, String> {
    let size = super::parse_size(text)?;
    let (least, most) = (MIN_CHUNK, DEFAULT_REORDER_MEMORY as u64);
    if (least..=most).contains(&size) {
        Ok(size)
    } else {
        Err(format!(
            "{text:?} is outside {}MiB..={}MiB: a smaller request costs more in round \
             trips than it moves, and a larger one would not fit in the reorder memory",
            least >> 20,
            most >> 20
        ))
    }
}

/// A `--concurrency` value: `auto` or 1..=[`MAX_CONCURRENCY`](crate::pull::MAX_CONCURRENCY).
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
pub(super) fn positive_duration(text: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e} (e.g. 30s, 5m)"))?;
    if duration.is_zero() {
        return Err(format!("{text:?}: must be more than zero"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    /// `got` is the value wanted, or an error containing the text wanted.
    fn check<T: PartialEq + std::fmt::Debug>(
        text: &str,
        got: Result<T, String>,
        want: Result<T, &str>,
    ) {
        match (got, want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
            (got, want) => panic!("{text}: {got:?} != {want:?}"),
        }
    }

    #[rstest]
    #[case::auto("auto", Ok(Concurrency::Auto))]
    #[case::fixed(" 8 ", Ok(Concurrency::Fixed(8)))]
    #[case::zero("0", Err("a number from 1 to 256, or auto"))]
    #[case::word("many", Err("\"many\""))]
    fn concurrency(#[case] text: &str, #[case] want: Result<Concurrency, &str>) {
        check(text, parse_concurrency(text), want);
    }

    #[rstest]
    #[case::least("1MiB", Ok(1 << 20))]
    #[case::usual("8MiB", Ok(8 << 20))]
    #[case::most("64MiB", Ok(64 << 20))]
    #[case::bytes("16777216", Ok(16 << 20))]
    #[case::too_small("512KiB", Err("outside 1MiB..=64MiB"))]
    #[case::too_big("65MiB", Err("outside 1MiB..=64MiB"))]
    #[case::unit("4MB", Err("unknown size unit"))]
    fn chunk_sizes(#[case] text: &str, #[case] want: Result<u64, &str>) {
        check(text, parse_chunk_size(text), want);
    }

    #[rstest]
    #[case::seconds("30s", Ok(Duration::from_secs(30)))]
    #[case::compound("1m30s", Ok(Duration::from_secs(90)))]
    #[case::zero("0s", Err("must be more than zero"))]
    #[case::garbage("soon", Err("e.g. 30s, 5m"))]
    fn durations(#[case] text: &str, #[case] want: Result<Duration, &str>) {
        check(text, positive_duration(text), want);
    }
}
