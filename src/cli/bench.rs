//! `ctrpull bench`: pull throughput per bandwidth tier against containerd's own pull.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use url::Url;

use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::bench::runner::{self, Baseline, BenchConfig, Setting};
use crate::bench::{profiles, report, tiers};
use crate::pull::DEFAULT_ADDRESS;

/// containerd's pull to compare with.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BaselineArg {
    /// The CRI ImageService PullImage (what kubelet triggers).
    Cri,
    /// The Transfer service (containerd 2.0+: 1.7's cannot reach plain-HTTP registries).
    Transfer,
    /// No baseline.
    None,
}

/// Options of `ctrpull bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// containerd socket. Its content store must not otherwise hold the benchmark's images.
    #[arg(long, env = "CONTAINERD_ADDRESS", default_value = DEFAULT_ADDRESS)]
    pub address: PathBuf,
    /// Registry to push the test images to (loopback only) [default: a scratch docker-registry].
    #[arg(long)]
    pub registry: Option<Url>,
    /// Tiers: a TOML file, or names of built-in tiers (100mbit, 1gbit, 10gbit, unshaped).
    #[arg(long, default_value = "100mbit,1gbit,10gbit,unshaped")]
    pub tiers: String,
    /// Image profiles: typical (~75 MB, 8 layers), fat (400 MB layer), many (40 × 1 MiB).
    #[arg(long, default_value = "typical,fat,many")]
    pub profiles: String,
    /// Multiply every layer size by this (e.g. 0.05 for a quick run).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// ctrpull concurrency settings to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,3,8,auto", value_parser = Setting::parse)]
    pub concurrency: Vec<Setting>,
    /// containerd's own pull to compare with, measured in the same run.
    #[arg(long, value_enum, default_value_t = BaselineArg::Cri)]
    pub baseline: BaselineArg,
    /// Pulls per cell (the median is reported).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub repeat: u16,
    /// Directory for results.json, results.csv, results.md and throughput.svg.
    #[arg(long)]
    pub out: PathBuf,
    /// No progress bars.
    #[arg(short, long)]
    pub quiet: bool,
    /// Keep each timed ctrpull pull's log (run with -vv: endpoints, tuner decisions,
    /// resumes, each Range request's timing, each blob's commit and layer's apply) as
    /// DIR/<tier>-<profile>-<setting>-<run>.log.
    #[arg(long, value_name = "DIR")]
    pub logs: Option<PathBuf>,
    /// Also measure `wire` on every tier and profile: the image downloaded and
    /// discarded, evenly over twice the connections that fill the link (nothing
    /// written or unpacked): how close the link's latency lets any client come to
    /// its rate.
    #[arg(long)]
    pub wire: bool,
}

pub(super) async fn run(args: BenchArgs) -> u8 {
    let config = match config(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ctrpull: bench: {e}");
            return EXIT_USAGE;
        }
    };
    let results = match runner::run(&config).await {
        Ok(results) => results,
        Err(e) => {
            eprintln!("ctrpull: bench: {e}");
            return EXIT_FAILED;
        }
    };
    println!("{}", report::table(&results));
    match report::write_all(&results, &args.out) {
        Ok(files) => {
            for file in files {
                eprintln!("wrote {}", file.display());
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!(
                "ctrpull: bench: writing results to {}: {e}",
                args.out.display()
            );
            EXIT_FAILED
        }
    }
}

fn config(args: &BenchArgs) -> Result<BenchConfig, String> {
    if !(args.scale > 0.0 && args.scale <= 100.0) {
        return Err(format!("--scale {} is out of range (0, 100]", args.scale));
    }
    let profiles = profiles::select(&args.profiles)?
        .into_iter()
        .map(|p| p.scaled(args.scale))
        .collect();
    Ok(BenchConfig {
        address: args.address.clone(),
        registry: args.registry.clone(),
        tiers: tiers::select(&args.tiers)?,
        profiles,
        scale: args.scale,
        settings: args.concurrency.clone(),
        baseline: match args.baseline {
            BaselineArg::Cri => Baseline::Cri,
            BaselineArg::Transfer => Baseline::Transfer,
            BaselineArg::None => Baseline::None,
        },
        repeat: usize::from(args.repeat),
        ctrpull: std::env::current_exe().map_err(|e| format!("finding the ctrpull binary: {e}"))?,
        progress: !args.quiet,
        logs: args.logs.clone(),
        wire: args.wire,
    })
}
