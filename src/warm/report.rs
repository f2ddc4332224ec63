//! The `--report` JSON document: the run's settings and summary, then one entry per
//! image with its status, digest, bytes, time, endpoints, retries, stalls and reason.

use serde::Serialize;
use serde_json::{json, Value};

use crate::pull::{ImageStatus, WarmReport};

/// Version of the report's layout; it changes only when a field changes meaning or
/// goes away.
pub const REPORT_VERSION: u32 = 1;

/// Where the images went.
#[derive(Debug, Clone, Serialize)]
pub struct Target<'a> {
    /// containerd's socket.
    pub address: &'a str,
    /// The namespace.
    pub namespace: &'a str,
}

/// The report as JSON: `version`, `command`, `containerd`, `started_at`, `seconds`,
/// `summary` (counts by status, bytes, `ok`) and `images`.
pub fn to_json(command: &str, target: &Target<'_>, report: &WarmReport) -> Value {
    let mut summary = serde_json::Map::new();
    summary.insert("images".into(), json!(report.images.len()));
    for status in ImageStatus::ALL {
        summary.insert(status.as_str().into(), json!(report.count(status)));
    }
    summary.insert("bytes_fetched".into(), json!(report.bytes_fetched()));
    summary.insert("ok".into(), json!(report.all_ok()));
    json!({
        "version": REPORT_VERSION,
        "command": command,
        "containerd": target,
        "started_at": humantime::format_rfc3339_seconds(report.started_at).to_string(),
        "seconds": report.seconds,
        "summary": summary,
        "images": report.images,
    })
}

/// The report as the bytes of the file: pretty JSON and a final newline.
pub fn render(command: &str, target: &Target<'_>, report: &WarmReport) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(&to_json(command, target, report))
        .expect("a JSON value always serialises");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pull::{EndpointStats, ImageResult};
    use std::collections::BTreeMap;
    use std::time::{Duration, SystemTime};

    pub(crate) fn result(reference: &str, status: ImageStatus) -> ImageResult {
        let ok = status.is_ok();
        let mut stats = BTreeMap::new();
        stats.insert(
            "http://127.0.0.1:5000".to_string(),
            EndpointStats {
                requests: 3,
                failovers: 0,
                retries: 1,
                stalls: 1,
            },
        );
        stats.insert(
            "http://mirror:1".to_string(),
            EndpointStats {
                requests: 0,
                failovers: 2,
                retries: 0,
                stalls: 0,
            },
        );
        ImageResult {
            reference: reference.to_string(),
            platform: "linux/amd64".into(),
            status,
            digest: ok.then(|| "sha256:aa".to_string()),
            bytes_fetched: if status == ImageStatus::Pulled {
                1000
            } else {
                0
            },
            seconds: 2.5,
            endpoints: vec!["http://127.0.0.1:5000".into()],
            retries: 1,
            stalls: 1,
            endpoint_stats: stats,
            reason: (!ok).then(|| "resolving x: not found".to_string()),
            report: None,
            error: None,
        }
    }

    pub(crate) fn sample() -> WarmReport {
        WarmReport {
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            seconds: 3.0,
            images: vec![
                result("r/a:1", ImageStatus::Pulled),
                result("r/b:1", ImageStatus::Present),
                result("r/c:1", ImageStatus::Failed),
            ],
        }
    }

    #[test]
    fn the_report_has_a_summary_and_every_image_field() {
        let target = Target {
            address: "/run/containerd/containerd.sock",
            namespace: "k8s.io",
        };
        let bytes = render("warm", &target, &sample());
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["version"], 1);
        assert_eq!(value["command"], "warm");
        assert_eq!(value["containerd"]["namespace"], "k8s.io");
        assert_eq!(value["started_at"], "2023-11-14T22:13:20Z");
        assert_eq!(
            value["summary"],
            json!({"images": 3, "pulled": 1, "present": 1, "failed": 1, "cancelled": 0,
                   "bytes_fetched": 1000, "ok": false})
        );
        let failed = &value["images"][2];
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["reason"], "resolving x: not found");
        assert_eq!(failed["digest"], Value::Null);
        let pulled = &value["images"][0];
        for key in [
            "reference",
            "platform",
            "status",
            "digest",
            "bytes_fetched",
            "seconds",
            "endpoints",
            "retries",
            "stalls",
            "endpoint_stats",
            "reason",
        ] {
            assert!(pulled.get(key).is_some(), "no {key} in {pulled}");
        }
        assert_eq!(pulled["endpoint_stats"]["http://mirror:1"]["failovers"], 2);
        assert!(bytes.ends_with(b"}\n"));
    }
}
