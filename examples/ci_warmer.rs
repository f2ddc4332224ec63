//! A CI image warmer built on the library: pulls every image of a list into
//! containerd under one budget and prints one line per image and a summary.
//!
//! ```sh
//! cargo run --example ci_warmer -- [--address SOCK] [--namespace NS] [--plain-http] LIST
//! ```
//!
//! LIST is a `ctrpull warm` list (text, YAML or JSON). Exit code 0 when every image
//! is pulled or already present, 1 otherwise, 2 for bad arguments or configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use ctrpull::{Event, ImageStatus, Puller, WarmOptions, WarmReport};
use futures::StreamExt;

/// What the warmer is asked to do.
#[derive(Debug, Clone)]
pub struct Settings {
    /// containerd's socket.
    pub address: PathBuf,
    /// The containerd namespace.
    pub namespace: String,
    /// Reach registries without a configured scheme over plain HTTP.
    pub plain_http: bool,
    /// containerd's config.toml, when not the default one.
    pub config_file: Option<PathBuf>,
    /// The image list.
    pub list: PathBuf,
}

/// What a warm did, with the images the event stream saw finish.
pub struct Outcome {
    /// The per-image results.
    pub report: WarmReport,
    /// Images whose `finished` event arrived, in arrival order.
    pub finished: Vec<String>,
}

/// Reads the list, warms it and collects the `finished` events on the way.
pub async fn run(settings: &Settings) -> Result<Outcome, ctrpull::Error> {
    let items = ctrpull::warm::list::read(&settings.list)?;
    let mut builder = Puller::builder()
        .address(&settings.address)
        .namespace(&settings.namespace)
        .plain_http(settings.plain_http);
    if let Some(config) = &settings.config_file {
        builder = builder.config_file(config);
    }
    let puller = builder.build()?;
    let mut events = puller.events();
    let watcher = tokio::spawn(async move {
        let mut finished = Vec::new();
        while let Some(event) = events.next().await {
            if let Event::Finished { image, .. } = event {
                finished.push(image);
            }
        }
        finished
    });
    let report = puller.warm(items, WarmOptions::default()).await;
    // The event stream ends once the puller is gone.
    drop(puller);
    let finished = watcher.await.unwrap_or_default();
    Ok(Outcome { report, finished })
}

/// One line per image, then the totals.
pub fn summary(report: &WarmReport) -> String {
    let mut text = String::new();
    for image in &report.images {
        let detail = match (&image.reason, &image.digest) {
            (Some(reason), _) => reason.clone(),
            (None, Some(digest)) => format!("{digest}, {} bytes fetched", image.bytes_fetched),
            (None, None) => String::new(),
        };
        text.push_str(&format!(
            "{:<9} {} ({:.1} s) {detail}\n",
            image.status, image.reference, image.seconds
        ));
    }
    text.push_str(&format!(
        "{} images, {} pulled, {} present, {} failed in {:.1} s\n",
        report.images.len(),
        report.count(ImageStatus::Pulled),
        report.count(ImageStatus::Present),
        report.count(ImageStatus::Failed) + report.count(ImageStatus::Cancelled),
        report.seconds
    ));
    text
}

fn parse(args: impl Iterator<Item = String>) -> Result<Settings, String> {
    let mut settings = Settings {
        address: PathBuf::from(ctrpull::pull::DEFAULT_ADDRESS),
        namespace: ctrpull::pull::DEFAULT_NAMESPACE.to_string(),
        plain_http: false,
        config_file: None,
        list: PathBuf::new(),
    };
    let mut list = None;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--address" => settings.address = value("--address")?.into(),
            "--namespace" => settings.namespace = value("--namespace")?,
            "--config" => settings.config_file = Some(value("--config")?.into()),
            "--plain-http" => settings.plain_http = true,
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            path => list = Some(PathBuf::from(path)),
        }
    }
    settings.list = list.ok_or(
        "usage: ci_warmer [--address SOCK] [--namespace NS] [--config FILE] [--plain-http] LIST",
    )?;
    Ok(settings)
}

fn main() -> ExitCode {
    let settings = match parse(std::env::args().skip(1)) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("ci_warmer: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(run(&settings)) {
        Ok(outcome) => {
            print!("{}", summary(&outcome.report));
            ExitCode::from(if outcome.report.all_ok() { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("ci_warmer: {e}");
            ExitCode::from(2)
        }
    }
}
