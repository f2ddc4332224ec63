//! The end of a run of `pull` or `warm`: summary lines, the `--report` and
//! `--metrics-file` files, and the exit code.

use std::time::SystemTime;

use serde_json::json;

use super::flags::{OutputFlags, PullFlags};
use super::progress::{Progress, Shown};
use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::pull::{ImageResult, ImageStatus, WarmReport};
use crate::warm::{self, report::Target};

/// Prints what the run did, writes the files asked for, and returns the exit code.
pub(super) async fn finish_run(
    command: &str,
    pull: &PullFlags,
    output: &OutputFlags,
    shown: Shown,
    progress: &Progress,
    report: &WarmReport,
) -> u8 {
    for image in &report.images {
        match image.status {
            ImageStatus::Pulled | ImageStatus::Present => {
                if !output.quiet && shown != Shown::Json {
                    println!("{}", summary(image));
                }
            }
            ImageStatus::Failed => eprintln!(
                "ctrpull: pulling {} failed: {}",
                image.reference,
                image.reason.as_deref().unwrap_or("")
            ),
            ImageStatus::Cancelled => eprintln!(
                "ctrpull: {} {}",
                image.reference,
                image.reason.as_deref().unwrap_or("cancelled")
            ),
        }
    }
    if shown == Shown::Json {
        progress.line(summary_json(report)).await;
    } else if !output.quiet && command == "warm" {
        println!("{}", totals(report));
    }
    let mut code = exit_code(report);
    if let Err(e) = write_outputs(command, pull, output, report) {
        eprintln!("ctrpull: {e}");
        code = code.max(EXIT_FAILED);
    }
    code
}

/// Writes `--report` and `--metrics-file` when asked for.
pub(super) fn write_outputs(
    command: &str,
    pull: &PullFlags,
    output: &OutputFlags,
    report: &WarmReport,
) -> Result<(), warm::Error> {
    if let Some(path) = &output.report {
        let address = pull.address.display().to_string();
        let target = Target {
            address: &address,
            namespace: &pull.namespace,
        };
        warm::write_atomically(path, &warm::report::render(command, &target, report))?;
    }
    if let Some(path) = &output.metrics_file {
        let text = warm::metrics::render(report, SystemTime::now())?;
        warm::write_atomically(path, text.as_bytes())?;
    }
    Ok(())
}

/// 0 when every image is pulled or present; 2 when one failed on its registry's
/// configuration; else 1.
pub(super) fn exit_code(report: &WarmReport) -> u8 {
    let mut code = EXIT_OK;
    for image in report.images.iter().filter(|i| !i.status.is_ok()) {
        let usage = image
            .error
            .as_deref()
            .is_some_and(|e| matches!(e, crate::pull::Error::Config(_)));
        code = code.max(if usage { EXIT_USAGE } else { EXIT_FAILED });
    }
    code
}

/// `docker.io/library/busybox:latest sha256:… fetched 2.2 MB in 0.41 s (5.4 MB/s)`,
/// with `, already present` for an image that was not pulled again.
fn summary(image: &ImageResult) -> String {
    let rate = if image.seconds > 0.0 {
        image.bytes_fetched as f64 / 1e6 / image.seconds
    } else {
        0.0
    };
    let present = if image.status == ImageStatus::Present {
        ", already present"
    } else {
        ""
    };
    format!(
        "{} {} fetched {:.1} MB in {:.2} s ({:.1} MB/s){present}",
        image.reference,
        image.digest.as_deref().unwrap_or("-"),
        image.bytes_fetched as f64 / 1e6,
        image.seconds,
        rate
    )
}

/// `4 images: 2 pulled, 1 present, 1 failed, 0 cancelled; fetched 80.1 MB in 3.20 s`.
fn totals(report: &WarmReport) -> String {
    let counts: Vec<String> = ImageStatus::ALL
        .iter()
        .map(|s| format!("{} {s}", report.count(*s)))
        .collect();
    format!(
        "{} images: {}; fetched {:.1} MB in {:.2} s",
        report.images.len(),
        counts.join(", "),
        report.bytes_fetched() as f64 / 1e6,
        report.seconds
    )
}

/// The `summary` JSON line that closes a run in `--progress json`.
fn summary_json(report: &WarmReport) -> serde_json::Value {
    let mut value = json!({
        "event": "summary",
        "images": report.images.len(),
        "bytes_fetched": report.bytes_fetched(),
        "seconds": report.seconds,
        "ok": report.all_ok(),
    });
    for status in ImageStatus::ALL {
        value[status.as_str()] = json!(report.count(status));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warm::report::tests::{result, sample};

    #[test]
    fn summaries() {
        let pulled = result("r/a:1", ImageStatus::Pulled);
        assert_eq!(
            summary(&pulled),
            "r/a:1 sha256:aa fetched 0.0 MB in 2.50 s (0.0 MB/s)"
        );
        let present = result("r/b:1", ImageStatus::Present);
        assert!(summary(&present).ends_with(", already present"));
        assert_eq!(
            totals(&sample()),
            "3 images: 1 pulled, 1 present, 1 failed, 0 cancelled; fetched 0.0 MB in 3.00 s"
        );
        let json = summary_json(&sample());
        assert_eq!(json["event"], "summary");
        assert_eq!(json["failed"], 1);
        assert_eq!(json["ok"], false);
    }

    #[test]
    fn exit_codes() {
        let mut report = sample();
        assert_eq!(exit_code(&report), EXIT_FAILED);
        report.images.truncate(2);
        assert_eq!(exit_code(&report), EXIT_OK);
        report.images.push(result("r/d:1", ImageStatus::Cancelled));
        assert_eq!(exit_code(&report), EXIT_FAILED);
    }
}
