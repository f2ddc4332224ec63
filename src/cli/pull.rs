//! `ctrpull pull`: a warm of the references on the command line.

use clap::Args;

use super::flags::{OutputFlags, PullFlags};
use super::outputs::finish_run;
use super::progress::{self, Progress};
use super::EXIT_USAGE;
use crate::pull::{WarmItem, WarmOptions};
use crate::reference::Reference;

/// Options of `ctrpull pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Where and how to pull.
    #[command(flatten)]
    pub pull: PullFlags,
    /// What to print and write.
    #[command(flatten)]
    pub output: OutputFlags,
    /// Images to pull, e.g. busybox, registry.example:5000/team/app:1.2, app@sha256:…
    #[arg(required = true, value_name = "REF")]
    pub refs: Vec<String>,
}

pub(super) async fn run(args: PullArgs) -> u8 {
    let mut items = Vec::new();
    for text in &args.refs {
        match Reference::parse(text) {
            Ok(reference) => items.push(WarmItem::new(reference)),
            Err(e) => {
                eprintln!("ctrpull: invalid reference {text:?}: {e}");
                return EXIT_USAGE;
            }
        }
    }
    let puller = match args.pull.puller() {
        Ok(puller) => puller,
        Err(code) => return code,
    };
    let shown = progress::choose(args.output.progress, args.output.quiet, false);
    let progress = Progress::start(shown, puller.events());
    // All images at once under the one budget of the puller; results in order.
    let options = WarmOptions {
        images_in_flight: items.len(),
        ..WarmOptions::default()
    };
    let report = puller.warm(items, options).await;
    let code = finish_run("pull", &args.pull, &args.output, shown, &progress, &report).await;
    progress.stop().await;
    code
}
