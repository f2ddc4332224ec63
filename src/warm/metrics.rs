//! The `--metrics-file`: a run in the Prometheus text format, for node-exporter's
//! textfile collector. Every metric is a gauge of the last run (a file is a snapshot,
//! rewritten by each run), except the per-image duration histogram.
//!
//! | metric | labels | meaning |
//! | --- | --- | --- |
//! | `ctrpull_images` | `result` | images by result: pulled, present, failed, cancelled |
//! | `ctrpull_image_ok` | `image`, `platform` | 1 when the image is pulled or present |
//! | `ctrpull_fetched_bytes` | | body bytes received from registries |
//! | `ctrpull_image_duration_seconds` | | histogram of per-image wall time |
//! | `ctrpull_endpoint_requests` | `endpoint` | requests the endpoint answered |
//! | `ctrpull_endpoint_failovers` | `endpoint` | requests failed there and moved on |
//! | `ctrpull_endpoint_retries` | `endpoint` | downloads that broke off there (stalls included) |
//! | `ctrpull_endpoint_stalls` | `endpoint` | downloads abandoned there for stalling |
//! | `ctrpull_run_duration_seconds` | | wall time of the run |
//! | `ctrpull_run_timestamp_seconds` | | when the run ended, Unix time |
//! | `ctrpull_run_success` | | 1 when every image is pulled or present |

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Error;
use crate::pull::{EndpointStats, ImageStatus, WarmReport};

/// Upper bounds (seconds) of the per-image duration histogram: from a quick skip to
/// an hour-long pull of a big image on a slow link.
pub const DURATION_BUCKETS: [f64; 10] =
    [0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ImageLabel {
    image: String,
    platform: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// A per-endpoint family: its name, help and the counter it shows.
type EndpointFamily = (&'static str, &'static str, fn(&EndpointStats) -> u64);

/// The metrics of `report`, a run that ended at `ended`, as the file's text.
pub fn render(report: &WarmReport, ended: SystemTime) -> Result<String, Error> {
    let mut registry = Registry::with_prefix("ctrpull");

    let images = Family::<ResultLabel, Gauge>::default();
    for status in ImageStatus::ALL {
        images
            .get_or_create(&ResultLabel {
                result: status.as_str().to_string(),
            })
            .set(report.count(status) as i64);
    }
    registry.register("images", "Images of the run, by result", images);

    let image_ok = Family::<ImageLabel, Gauge>::default();
    for image in &report.images {
        image_ok
            .get_or_create(&ImageLabel {
                image: image.reference.clone(),
                platform: image.platform.clone(),
            })
            .set(i64::from(image.status.is_ok()));
    }
    registry.register(
        "image_ok",
        "1 when the image was pulled or already present, 0 when it failed or was cancelled",
        image_ok,
    );

    let fetched = Gauge::<i64>::default();
    fetched.set(report.bytes_fetched() as i64);
    registry.register(
        "fetched_bytes",
        "Body bytes received from registries",
        fetched,
    );

    let durations = Histogram::new(DURATION_BUCKETS);
    for image in report
        .images
        .iter()
        .filter(|i| i.status != ImageStatus::Cancelled)
    {
        durations.observe(image.seconds);
    }
    registry.register(
        "image_duration_seconds",
        "Wall time of each image's pull (cancelled ones left out)",
        durations,
    );

    let mut per_endpoint: BTreeMap<&str, EndpointStats> = BTreeMap::new();
    for image in &report.images {
        for (endpoint, stats) in &image.endpoint_stats {
            let total = per_endpoint.entry(endpoint).or_default();
            total.requests += stats.requests;
            total.failovers += stats.failovers;
            total.retries += stats.retries;
            total.stalls += stats.stalls;
        }
    }
    let families: [EndpointFamily; 4] = [
        ("endpoint_requests", "Requests the endpoint answered", |s| {
            s.requests
        }),
        (
            "endpoint_failovers",
            "Requests that failed at the endpoint and moved on to the next",
            |s| s.failovers,
        ),
        (
            "endpoint_retries",
            "Downloads from the endpoint that broke off and were resumed (stalls included)",
            |s| s.retries,
        ),
        (
            "endpoint_stalls",
            "Downloads from the endpoint abandoned for stalling",
            |s| s.stalls,
        ),
    ];
    for (name, help, value) in families {
        let family = Family::<EndpointLabel, Gauge>::default();
        for (endpoint, stats) in &per_endpoint {
            family
                .get_or_create(&EndpointLabel {
                    endpoint: endpoint.to_string(),
                })
                .set(value(stats) as i64);
        }
        registry.register(name, help, family);
    }

    let duration = FloatGauge::default();
    duration.set(report.seconds);
    registry.register("run_duration_seconds", "Wall time of the run", duration);
    let timestamp = FloatGauge::default();
    timestamp.set(
        ended
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64(),
    );
    registry.register(
        "run_timestamp_seconds",
        "When the run ended, Unix time",
        timestamp,
    );
    let success = Gauge::<i64>::default();
    success.set(i64::from(report.all_ok()));
    registry.register(
        "run_success",
        "1 when every image was pulled or already present",
        success,
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warm::report::tests::sample;
    use std::collections::HashMap;
    use std::time::Duration;

    /// `name{labels}` → value, from the exposition text; comments checked for form.
    fn samples(text: &str) -> HashMap<String, f64> {
        let mut out = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') {
                assert!(
                    line.starts_with("# HELP ") || line.starts_with("# TYPE ") || line == "# EOF",
                    "unexpected comment {line:?}"
                );
                continue;
            }
            let (key, value) = line.rsplit_once(' ').unwrap();
            out.insert(key.to_string(), value.parse().unwrap());
        }
        out
    }

    #[test]
    fn metrics_count_results_bytes_durations_and_endpoints() {
        let ended = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_003);
        let text = render(&sample(), ended).unwrap();
        let values = samples(&text);
        assert_eq!(values["ctrpull_images{result=\"pulled\"}"], 1.0);
        assert_eq!(values["ctrpull_images{result=\"present\"}"], 1.0);
        assert_eq!(values["ctrpull_images{result=\"failed\"}"], 1.0);
        assert_eq!(values["ctrpull_images{result=\"cancelled\"}"], 0.0);
        assert_eq!(
            values["ctrpull_image_ok{image=\"r/c:1\",platform=\"linux/amd64\"}"],
            0.0
        );
        assert_eq!(
            values["ctrpull_image_ok{image=\"r/a:1\",platform=\"linux/amd64\"}"],
            1.0
        );
        assert_eq!(values["ctrpull_fetched_bytes"], 1000.0);
        assert_eq!(values["ctrpull_image_duration_seconds_count"], 3.0);
        assert_eq!(values["ctrpull_image_duration_seconds_sum"], 7.5);
        assert_eq!(
            values["ctrpull_image_duration_seconds_bucket{le=\"5.0\"}"],
            3.0
        );
        assert_eq!(
            values["ctrpull_image_duration_seconds_bucket{le=\"1.0\"}"],
            0.0
        );
        let endpoint = "{endpoint=\"http://127.0.0.1:5000\"}";
        assert_eq!(values[&format!("ctrpull_endpoint_requests{endpoint}")], 9.0);
        assert_eq!(values[&format!("ctrpull_endpoint_stalls{endpoint}")], 3.0);
        assert_eq!(values[&format!("ctrpull_endpoint_retries{endpoint}")], 3.0);
        assert_eq!(
            values["ctrpull_endpoint_failovers{endpoint=\"http://mirror:1\"}"],
            6.0
        );
        assert_eq!(values["ctrpull_run_duration_seconds"], 3.0);
        assert_eq!(values["ctrpull_run_timestamp_seconds"], 1_700_000_003.0);
        assert_eq!(values["ctrpull_run_success"], 0.0);
        assert!(text.contains("# TYPE ctrpull_images gauge"), "{text}");
        assert!(
            text.contains("# TYPE ctrpull_image_duration_seconds histogram"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut report = sample();
        report.images[0].reference = "r/a:\"quoted\"\\".into();
        let text = render(&report, SystemTime::UNIX_EPOCH).unwrap();
        assert!(text.contains(r#"image="r/a:\"quoted\"\\""#), "{text}");
    }
}
