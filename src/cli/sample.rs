//! `ctrpull sample-image`: build a runnable busybox-static image and push it.

use std::path::PathBuf;

use clap::Args;
use url::Url;

use super::{parse_size, EXIT_FAILED, EXIT_OK};
use crate::builder::{self, LayerSource};

/// Options of `ctrpull sample-image`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Registry base URL, e.g. http://127.0.0.1:5000
    #[arg(long)]
    pub registry: Url,
    /// Repository to push to.
    #[arg(long, default_value = "test/busybox")]
    pub repository: String,
    /// Tag to push under.
    #[arg(long, default_value = "latest")]
    pub tag: String,
    /// A statically linked busybox (Debian's busybox-static).
    #[arg(long, default_value = "/bin/busybox")]
    pub busybox: PathBuf,
    /// Extra layers of random bytes, e.g. 1MiB,40MiB (units: B, KiB, MiB, GiB).
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub random_layers: Vec<u64>,
}

pub(super) async fn run(args: SampleArgs) -> u8 {
    match push_sample(&args).await {
        Ok(digest) => {
            println!(
                "pushed {}/{}:{} {digest}",
                args.registry.authority(),
                args.repository,
                args.tag
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("ctrpull: sample-image: {e:#}");
            EXIT_FAILED
        }
    }
}

async fn push_sample(args: &SampleArgs) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let mut spec = builder::busybox_image(&args.busybox);
    for (i, size) in args.random_layers.iter().enumerate() {
        spec.layers.push(LayerSource::Random {
            size: *size,
            seed: i as u64 + 1,
        });
    }
    let workdir = tempfile::tempdir().context("creating a work directory")?;
    let path = workdir.path().to_owned();
    let image = tokio::task::spawn_blocking(move || builder::build(&spec, &path))
        .await
        .context("building the image")?
        .with_context(|| format!("building an image from {}", args.busybox.display()))?;
    let client = reqwest::Client::new();
    let descriptor = builder::push(&client, &args.registry, &args.repository, &args.tag, &image)
        .await
        .with_context(|| format!("pushing to {}", args.registry))?;
    Ok(descriptor.digest().to_string())
}
