//! `ctrpull warm -f FILE|-`: a list of images pulled under one budget, once or
//! (`--watch`) every time the list changes or a pass failed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::flags::{positive_duration, OutputFlags, PullFlags};
use super::outputs::finish_run;
use super::progress::{self, Progress};
use super::{EXIT_OK, EXIT_USAGE};
use crate::pull::{Puller, WarmItem, WarmOptions, DEFAULT_IMAGES_IN_FLIGHT};
use crate::warm;

/// How often `--watch` reads the list again unless `--watch-interval` says.
pub const DEFAULT_WATCH_INTERVAL: &str = "30s";

/// Options of `ctrpull warm`.
#[derive(Debug, Args)]
pub struct WarmArgs {
    /// The image list, or - for standard input: one reference per line (an optional
    /// platform os/arch[/variant] after it; # comments), or YAML/JSON: a list of
    /// references or {image, platform} objects, alone or under `images:`.
    #[arg(short = 'f', long = "file", value_name = "FILE|-")]
    pub file: PathBuf,
    /// Where and how to pull.
    #[command(flatten)]
    pub pull: PullFlags,
    /// What to print and write.
    #[command(flatten)]
    pub output: OutputFlags,
    /// Pull every image even when some fail (the default).
    #[arg(long, overrides_with = "fail_fast")]
    pub keep_going: bool,
    /// Stop at the first failure: cancel the pulls in flight, start no more.
    #[arg(long, overrides_with = "keep_going")]
    pub fail_fast: bool,
    /// Images pulled at once (their blobs share one connection budget).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_IMAGES_IN_FLIGHT as u16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub parallel_images: u16,
    /// Keep running: read the list every --watch-interval, warm again when it changed
    /// or the last pass failed. SIGTERM or SIGINT stop it (exit 0).
    #[arg(long)]
    pub watch: bool,
    /// How often --watch reads the list.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_WATCH_INTERVAL,
          value_parser = positive_duration)]
    pub watch_interval: Duration,
    /// Created after a pass in which every image is pulled or present; removed when
    /// a pass fails or the list changes (a readiness probe can test for it).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

pub(super) async fn run(args: WarmArgs) -> u8 {
    if args.watch && args.file == Path::new("-") {
        eprintln!("ctrpull: --watch needs a list file to read again, not standard input");
        return EXIT_USAGE;
    }
    let mut list = List::new(&args.file);
    // A list that cannot be read or parsed before anything started is a usage error.
    let mut items = match list.read() {
        Ok(Some(items)) => items,
        Ok(None) => unreachable!("the first read always sees a change"),
        Err(e) => {
            eprintln!("ctrpull: {e}");
            return EXIT_USAGE;
        }
    };
    let puller = match args.pull.puller() {
        Ok(puller) => puller,
        Err(code) => return code,
    };
    let stop = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(stop.clone()));
    let shown = progress::choose(args.output.progress, args.output.quiet, true);
    let progress = Progress::start(shown, puller.events());
    let code = loop {
        let code = pass(&args, &puller, items.clone(), &stop, shown, &progress).await;
        if !args.watch {
            break code;
        }
        let changed = loop {
            tokio::select! {
                _ = stop.cancelled() => break None,
                _ = tokio::time::sleep(args.watch_interval) => {}
            }
            match list.read() {
                Ok(Some(new)) => {
                    tracing::info!(list = %args.file.display(), "the list changed; warming again");
                    remove_ready(&args);
                    break Some(new);
                }
                // Unchanged: only a failed pass is worth another try.
                Ok(None) if code != EXIT_OK => break Some(items.clone()),
                Ok(None) => {}
                Err(e) => {
                    eprintln!("ctrpull: {e} (keeping the images of the last good list)");
                    remove_ready(&args);
                }
            }
        };
        match changed {
            Some(new) => items = new,
            None => break EXIT_OK,
        }
    };
    signals.abort();
    progress.stop().await;
    code
}

/// One warm of `items`: results printed and written, ready file set or removed.
async fn pass(
    args: &WarmArgs,
    puller: &Puller,
    items: Vec<WarmItem>,
    stop: &CancellationToken,
    shown: progress::Shown,
    progress: &Progress,
) -> u8 {
    let options = WarmOptions {
        fail_fast: args.fail_fast,
        images_in_flight: usize::from(args.parallel_images),
        cancel: stop.child_token(),
    };
    let report = puller.warm(items, options).await;
    let code = finish_run("warm", &args.pull, &args.output, shown, progress, &report).await;
    if let Some(path) = &args.ready_file {
        if code == EXIT_OK {
            let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            let text = format!("{} images ready at {stamp}\n", report.images.len());
            if let Err(e) = warm::write_atomically(path, text.as_bytes()) {
                eprintln!("ctrpull: {e}");
            }
        } else {
            remove_ready(args);
        }
    }
    code
}

fn remove_ready(args: &WarmArgs) {
    if let Some(path) = &args.ready_file {
        match std::fs::remove_file(path) {
            Ok(()) => tracing::info!(path = %path.display(), "ready file removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("ctrpull: removing {}: {e}", path.display()),
        }
    }
}

/// Cancels `stop` on SIGTERM or SIGINT: pulls in flight stop and delete their leases.
async fn cancel_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot listen for SIGTERM/SIGINT; they will stop ctrpull abruptly");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    stop.cancel();
}

/// The list file and the text last read from it.
struct List {
    path: PathBuf,
    last: Option<String>,
}

impl List {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            last: None,
        }
    }

    /// The items when the text differs from the last read, `None` when unchanged.
    /// A list that cannot be read or parsed forgets the last text, so the next good
    /// one counts as a change (and a pass puts the ready file back).
    fn read(&mut self) -> Result<Option<Vec<WarmItem>>, warm::Error> {
        if self.path == Path::new("-") {
            return warm::list::read(&self.path).map(Some);
        }
        let name = self.path.display().to_string();
        let last = self.last.take();
        let text = std::fs::read_to_string(&self.path).map_err(|error| warm::Error::Read {
            name: name.clone(),
            error,
        })?;
        if last.as_deref() == Some(text.as_str()) {
            self.last = last;
            return Ok(None);
        }
        let items = warm::list::parse(&name, &text)?;
        self.last = Some(text);
        Ok(Some(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_reports_changes_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.txt");
        std::fs::write(&path, "busybox\n").unwrap();
        let mut list = List::new(&path);
        assert_eq!(list.read().unwrap().unwrap().len(), 1);
        assert!(list.read().unwrap().is_none(), "unchanged");
        std::fs::write(&path, "busybox\nalpine\n").unwrap();
        assert_eq!(list.read().unwrap().unwrap().len(), 2);
        std::fs::write(&path, "busybox\nBad Ref Here\n").unwrap();
        let err = list.read().unwrap_err().to_string();
        assert!(err.contains("images.txt:2"), "{err}");
        std::fs::write(&path, "busybox\nalpine\n").unwrap();
        assert_eq!(
            list.read()
                .unwrap()
                .expect("a fixed list is a change")
                .len(),
            2
        );
        std::fs::remove_file(&path).unwrap();
        assert!(list.read().unwrap_err().to_string().starts_with("reading "));
    }
}
