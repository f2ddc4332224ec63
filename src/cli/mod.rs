//! Command-line interface: argument parsing and the commands' output.

mod bench;
mod flags;
mod hosts;
mod outputs;
mod progress;
mod pull;
mod sample;
mod verify;
mod warm;

pub use flags::{OutputFlags, ProgressMode, PullFlags};

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code when every image was pulled (or was already there).
pub const EXIT_OK: u8 = 0;
/// Exit code when at least one pull failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for invalid usage or configuration (bad reference, bad flag, bad file).
pub const EXIT_USAGE: u8 = 2;

/// Pull images into containerd faster: tuned concurrency, mirror failover,
/// straight into containerd's content store.
#[derive(Debug, Parser)]
#[command(name = "ctrpull", version, about, long_about = None)]
pub struct Cli {
    /// More log output on stderr (-v: info, -vv: debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// ctrpull's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pull images into containerd: fetch, unpack and create the records CRI uses.
    Pull(pull::PullArgs),
    /// Pull a list of images (file or stdin) under one budget, report per image;
    /// with --watch, keep them pulled as the list changes.
    Warm(warm::WarmArgs),
    /// Build a small runnable image (busybox-static) and push it to a registry.
    SampleImage(sample::SampleArgs),
    /// Show the endpoints, TLS settings and credentials a pull of REF would use.
    Hosts(hosts::HostsArgs),
    /// Measure pull throughput per bandwidth tier, against containerd's own pull.
    Bench(bench::BenchArgs),
    /// Ask containerd's CRI ImageService whether the kubelet would find each image.
    Verify(verify::VerifyArgs),
}

impl Cli {
    /// True when the command was asked to print nothing but errors.
    pub fn quiet(&self) -> bool {
        match &self.command {
            Command::Pull(args) => args.output.quiet,
            Command::Warm(args) => args.output.quiet,
            Command::Bench(args) => args.quiet,
            Command::Verify(args) => args.quiet,
            Command::SampleImage(_) | Command::Hosts(_) => false,
        }
    }
}

/// Runs the parsed command and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let code = match cli.command {
        Command::Pull(args) => pull::run(args).await,
        Command::Warm(args) => warm::run(args).await,
        Command::SampleImage(args) => sample::run(args).await,
        Command::Hosts(args) => hosts::run(args),
        Command::Bench(args) => bench::run(args).await,
        Command::Verify(args) => verify::run(args).await,
    };
    ExitCode::from(code)
}

/// A size in bytes: `4096`, `16KiB`, `40MiB`, `1GiB`.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 40MiB"))?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?} (use B, KiB, MiB or GiB)"
            ))
        }
    };
    number
        .checked_mul(factor)
        .filter(|size| *size > 0)
        .ok_or_else(|| format!("{text:?} is not a usable size"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("16KiB").unwrap(), 16 << 10);
        assert_eq!(parse_size("40MiB").unwrap(), 40 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("0").is_err());
        assert!(parse_size("12XB").unwrap_err().contains("unit"));
        assert!(parse_size("MiB").is_err());
    }
}
