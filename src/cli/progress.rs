//! Showing a puller's events: bars on stderr (indicatif) or JSON lines on stdout.
//!
//! A task of its own consumes the [`EventStream`]; lines the command writes through
//! [`Progress::line`] go through the same task, after every event sent before them,
//! so a pass's summary always follows its `finished` events.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::flags::ProgressMode;
use crate::pull::{Event, EventStream, ImageStatus};

/// What the command decided to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shown {
    Bars,
    Json,
    Nothing,
}

/// The display for `mode` given the terminals: see [`ProgressMode`].
pub(super) fn choose(mode: ProgressMode, quiet: bool, warm: bool) -> Shown {
    let stdout_tty = std::io::stdout().is_terminal();
    let stderr_tty = std::io::stderr().is_terminal();
    decide(mode, quiet, warm, stdout_tty, stderr_tty)
}

fn decide(
    mode: ProgressMode,
    quiet: bool,
    warm: bool,
    stdout_tty: bool,
    stderr_tty: bool,
) -> Shown {
    match mode {
        _ if quiet => Shown::Nothing,
        ProgressMode::Bars => Shown::Bars,
        ProgressMode::Json => Shown::Json,
        ProgressMode::None => Shown::Nothing,
        ProgressMode::Auto if warm && !stdout_tty => Shown::Json,
        ProgressMode::Auto if stderr_tty => Shown::Bars,
        ProgressMode::Auto => Shown::Nothing,
    }
}

enum Control {
    /// Print this JSON value as a line once every event sent so far is out.
    Line(serde_json::Value, oneshot::Sender<()>),
    /// Show what is left and stop.
    Stop(oneshot::Sender<()>),
}

/// The running display.
pub(super) struct Progress {
    control: mpsc::Sender<Control>,
    task: JoinHandle<()>,
}

impl Progress {
    /// Starts showing `events`; `Shown::Nothing` still drains them.
    pub(super) fn start(shown: Shown, events: EventStream) -> Self {
        let (control, rx) = mpsc::channel(4);
        let task = tokio::spawn(render(shown, events, rx));
        Self { control, task }
    }

    /// Writes `value` as a JSON line after every event sent before this call.
    pub(super) async fn line(&self, value: serde_json::Value) {
        let (done, wait) = oneshot::channel();
        if self.control.send(Control::Line(value, done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Shows every event sent so far and stops.
    pub(super) async fn stop(self) {
        let (done, wait) = oneshot::channel();
        if self.control.send(Control::Stop(done)).await.is_ok() {
            let _ = wait.await;
        }
        let _ = self.task.await;
    }
}

async fn render(shown: Shown, mut events: EventStream, mut control: mpsc::Receiver<Control>) {
    let mut display = match shown {
        Shown::Bars => Display::Bars(Bars::new()),
        Shown::Json => Display::Json,
        Shown::Nothing => Display::Nothing,
    };
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(event) => display.show(&event),
                None => break,
            },
            message = control.recv() => {
                // Every event sent before the message is ready now: show them first.
                while let Some(Some(event)) = events.next().now_or_never() {
                    display.show(&event);
                }
                match message {
                    Some(Control::Line(value, done)) => {
                        display.line(&value);
                        let _ = done.send(());
                    }
                    Some(Control::Stop(done)) => {
                        display.finish();
                        let _ = done.send(());
                        return;
                    }
                    None => break,
                }
            }
        }
    }
    display.finish();
}

enum Display {
    Bars(Bars),
    Json,
    Nothing,
}

/// A JSON line: the event and when it was shown.
#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    time: String,
    #[serde(flatten)]
    body: &'a T,
}

fn json_line<T: Serialize>(body: &T) {
    let line = Line {
        time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        body,
    };
    let mut out = std::io::stdout().lock();
    // A closed stdout (e.g. `| head`) must not stop the pulls.
    if serde_json::to_writer(&mut out, &line).is_ok() {
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}

impl Display {
    fn show(&mut self, event: &Event) {
        match self {
            Display::Bars(bars) => bars.show(event),
            Display::Json => json_line(event),
            Display::Nothing => {}
        }
    }

    fn line(&mut self, value: &serde_json::Value) {
        if let Display::Json = self {
            json_line(value);
        }
    }

    fn finish(&mut self) {
        if let Display::Bars(bars) = self {
            bars.finish();
        }
    }
}

/// One bar per image and one for the run.
struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    images: HashMap<String, (ProgressBar, u64)>,
}

const IMAGE_TEMPLATE: &str =
    "{prefix:40!} {bar:25.cyan/blue} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} ETA {eta:>4} {msg}";
const OVERALL_TEMPLATE: &str =
    "{prefix:40!} {bar:25.green/white} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} ETA {eta:>4} {msg}";

impl Bars {
    fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(style(OVERALL_TEMPLATE));
        overall.set_prefix("all images");
        Self {
            multi,
            overall,
            images: HashMap::new(),
        }
    }

    fn show(&mut self, event: &Event) {
        match event {
            Event::Started { image, .. } => {
                let bar = self
                    .multi
                    .insert_before(&self.overall, ProgressBar::new_spinner());
                bar.set_prefix(image.clone());
                bar.set_message("resolving");
                bar.enable_steady_tick(Duration::from_millis(200));
                self.images.insert(image.clone(), (bar, 0));
            }
            Event::Resolved {
                image, total_bytes, ..
            } => {
                if let Some((bar, total)) = self.images.get_mut(image) {
                    bar.disable_steady_tick();
                    bar.set_style(style(IMAGE_TEMPLATE));
                    bar.set_length(*total_bytes);
                    bar.set_message("");
                    *total = *total_bytes;
                    self.overall.inc_length(*total_bytes);
                }
            }
            Event::Progress {
                image,
                fetched_bytes,
                ..
            } => {
                if let Some((bar, _)) = self.images.get(image) {
                    let step = fetched_bytes.saturating_sub(bar.position());
                    bar.set_position(*fetched_bytes);
                    self.overall.inc(step);
                }
            }
            Event::Stall { endpoint, .. } | Event::Retry { endpoint, .. } => {
                if let Some((bar, _)) = self.images.get(event.image()) {
                    bar.set_message(format!("resuming ({endpoint})"));
                }
            }
            Event::Finished { image, status, .. } => {
                if let Some((bar, total)) = self.images.remove(image) {
                    // What was not fetched (present blobs, a failure) is no longer
                    // expected by the overall bar.
                    let left = total.saturating_sub(bar.position());
                    self.overall
                        .set_length(self.overall.length().unwrap_or(0).saturating_sub(left));
                    bar.disable_steady_tick();
                    bar.finish_with_message(status.to_string());
                    if *status == ImageStatus::Present {
                        bar.set_length(bar.position().max(1));
                        bar.set_position(bar.position().max(1));
                    }
                }
            }
            Event::BlobDone { .. } | Event::Failover { .. } => {}
        }
    }

    fn finish(&mut self) {
        for (_, (bar, _)) in self.images.drain() {
            bar.abandon();
        }
        self.overall.finish();
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("the bar templates are valid")
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::quiet_wins(ProgressMode::Json, true, true, false, false, Shown::Nothing)]
    #[case::warm_piped(ProgressMode::Auto, false, true, false, true, Shown::Json)]
    #[case::warm_terminal(ProgressMode::Auto, false, true, true, true, Shown::Bars)]
    #[case::warm_no_stderr_tty(ProgressMode::Auto, false, true, true, false, Shown::Nothing)]
    #[case::pull_piped(ProgressMode::Auto, false, false, false, true, Shown::Bars)]
    #[case::pull_no_tty(ProgressMode::Auto, false, false, false, false, Shown::Nothing)]
    #[case::asked_bars(ProgressMode::Bars, false, false, false, false, Shown::Bars)]
    #[case::asked_none(ProgressMode::None, false, true, false, true, Shown::Nothing)]
    fn what_is_shown(
        #[case] mode: ProgressMode,
        #[case] quiet: bool,
        #[case] warm: bool,
        #[case] stdout_tty: bool,
        #[case] stderr_tty: bool,
        #[case] shown: Shown,
    ) {
        assert_eq!(decide(mode, quiet, warm, stdout_tty, stderr_tty), shown);
    }

    #[test]
    fn bars_follow_an_image_to_its_end() {
        let mut bars = Bars::new();
        bars.multi.set_draw_target(ProgressDrawTarget::hidden());
        let image = "r/a:1".to_string();
        bars.show(&Event::Started {
            image: image.clone(),
            platform: "linux/amd64".into(),
        });
        bars.show(&Event::Resolved {
            image: image.clone(),
            digest: "sha256:ab".into(),
            total_bytes: 1000,
            layers: 2,
        });
        bars.show(&Event::Progress {
            image: image.clone(),
            fetched_bytes: 400,
            total_bytes: 1000,
        });
        assert_eq!(bars.overall.position(), 400);
        assert_eq!(bars.overall.length(), Some(1000));
        bars.show(&Event::Finished {
            image: image.clone(),
            status: ImageStatus::Failed,
            digest: None,
            fetched_bytes: 400,
            seconds: 1.0,
            reason: Some("boom".into()),
        });
        assert_eq!(
            bars.overall.length(),
            Some(400),
            "the unfetched rest is dropped"
        );
        assert!(bars.images.is_empty());
    }
}
