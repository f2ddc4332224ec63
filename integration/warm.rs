//! `ctrpull warm` and the library's `Puller::warm` against the real containerd (1.6 and
//! 1.7) and docker-registry: reports, metrics, JSON-lines progress, the quick skip,
//! fail-fast, `--watch` with a ready file, and the `ci_warmer` example.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ctrpull::builder::LayerSource;
use rstest::rstest;
use serde_json::Value;

use crate::harness::{self, Containerd, Version};
use crate::pull::{blob_gets, busybox_with, fresh_seed, leases, push, records, Pushed};

#[allow(dead_code)]
#[path = "../examples/ci_warmer.rs"]
mod ci_warmer;

/// An empty config.toml, so the host's /etc/containerd/config.toml plays no part.
fn empty_config() -> PathBuf {
    static CONFIG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let path = harness::run_dir().join(format!("warm-config-{}.toml", std::process::id()));
            std::fs::write(&path, "version = 2\n").expect("write an empty config.toml");
            path
        })
        .clone()
}

/// `ctrpull warm --plain-http` against `containerd` in `namespace`.
pub fn warm_command(
    containerd: &Containerd,
    namespace: &str,
    args: &[&str],
) -> std::process::Command {
    let mut cmd = harness::ctrpull();
    cmd.arg("warm")
        .arg("--address")
        .arg(containerd.socket())
        .arg("--config")
        .arg(empty_config())
        .args(["--namespace", namespace, "--plain-http"])
        .args(args);
    cmd
}

fn warm(containerd: &Containerd, namespace: &str, args: &[&str]) -> Output {
    warm_command(containerd, namespace, args)
        .output()
        .expect("run ctrpull warm")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The report's entry for `reference`.
fn entry<'a>(report: &'a Value, reference: &str) -> &'a Value {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["reference"] == reference)
        .unwrap_or_else(|| panic!("no {reference} in {report:#}"))
}

/// `name{labels}` → value from a Prometheus text file.
fn metrics(path: &Path) -> HashMap<String, f64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// Two images sharing a 3 MiB layer, each with a layer of its own.
async fn two_sharing_a_layer(prefix: &str) -> (Pushed, Pushed, String) {
    let shared = fresh_seed();
    let layers = || {
        vec![
            LayerSource::Random {
                size: 3 << 20,
                seed: shared,
            },
            LayerSource::Random {
                size: 8192,
                seed: fresh_seed(),
            },
        ]
    };
    let first = push(
        &harness::unique(&format!("{prefix}-a")),
        busybox_with(layers()),
    )
    .await;
    let second = push(
        &harness::unique(&format!("{prefix}-b")),
        busybox_with(layers()),
    )
    .await;
    let digest = first.image.layers[1].descriptor.digest().to_string();
    assert_eq!(
        digest,
        second.image.layers[1].descriptor.digest().to_string()
    );
    (first, second, digest)
}

fn repo_of(pushed: &Pushed) -> String {
    let name = pushed.reference.rsplit_once(':').unwrap().0;
    name.split_once('/').unwrap().1.to_string()
}

/// One bad reference among good ones: exit 1, the reason in the report, the good
/// images pulled (the shared layer once) and visible to CRI; JSON-lines progress and
/// metrics checked. A second warm finds everything present and fetches no blob.
#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn a_bad_reference_among_good_ones(#[case] version: Version) {
    let env = harness::shared(version);
    // CRI only looks at k8s.io; the records are removed at the end.
    let ns = "k8s.io";
    let (first, second, shared) = two_sharing_a_layer("test/warm").await;
    let missing = format!(
        "{}/{}:latest",
        env.registry.addr(),
        harness::unique("test/missing")
    );
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.txt");
    std::fs::write(
        &list,
        format!(
            "# images for CI\n{}\n\n{missing}   # not pushed\n{}\n",
            first.reference, second.reference
        ),
    )
    .unwrap();
    let report_path = dir.path().join("out/report.json");
    let metrics_path = dir.path().join("out/ctrpull.prom");
    std::fs::create_dir(dir.path().join("out")).unwrap();

    let out = warm(
        &env.containerd,
        ns,
        &[
            "-f",
            list.to_str().unwrap(),
            "--progress",
            "json",
            "--report",
            report_path.to_str().unwrap(),
            "--metrics-file",
            metrics_path.to_str().unwrap(),
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("pulling {missing} failed")) && stderr.contains("not found"),
        "{stderr}"
    );

    // The report.
    let report = read_json(&report_path);
    assert_eq!(report["command"], "warm");
    assert_eq!(report["summary"]["pulled"], 2, "{report:#}");
    assert_eq!(report["summary"]["failed"], 1, "{report:#}");
    let bad = entry(&report, &missing);
    assert_eq!(bad["status"], "failed");
    let reason = bad["reason"].as_str().unwrap();
    assert!(
        reason.contains("resolving") && reason.contains("not found") && reason.contains("/v2/"),
        "the reason names the step, the answer and the URL tried: {reason}"
    );
    let registry_url = format!("http://{}", env.registry.addr());
    for pushed in [&first, &second] {
        let image = entry(&report, &pushed.reference);
        assert_eq!(image["status"], "pulled");
        assert_eq!(image["digest"], pushed.digest.as_str());
        assert!(image["bytes_fetched"].as_u64().unwrap() > 8192, "{image}");
        assert_eq!(image["endpoints"], serde_json::json!([registry_url]));
        assert_eq!(image["retries"], 0);
        assert_eq!(image["reason"], Value::Null);
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&report_path).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o644);

    // The shared layer came once, from one of the two repositories.
    let size = first
        .image
        .layers
        .iter()
        .find(|l| l.descriptor.digest().to_string() == shared)
        .map(|l| l.descriptor.size())
        .expect("the shared layer is in the first image");
    let served = harness::shared_registry().blob_bytes_served(&shared);
    assert_eq!(
        served, size,
        "{served} bytes served for the {size}-byte shared layer"
    );

    // The metrics file.
    let values = metrics(&metrics_path);
    assert_eq!(values["ctrpull_images{result=\"pulled\"}"], 2.0);
    assert_eq!(values["ctrpull_images{result=\"failed\"}"], 1.0);
    assert_eq!(values["ctrpull_run_success"], 0.0);
    assert_eq!(
        values["ctrpull_fetched_bytes"],
        report["summary"]["bytes_fetched"].as_f64().unwrap()
    );
    assert_eq!(values["ctrpull_image_duration_seconds_count"], 3.0);
    let requests = values[&format!("ctrpull_endpoint_requests{{endpoint=\"{registry_url}\"}}")];
    assert!(
        requests >= 6.0,
        "manifests and blobs of two images: {requests}"
    );
    assert_eq!(
        values[&format!(
            "ctrpull_image_ok{{image=\"{missing}\",platform=\"{}\"}}",
            ctrpull::Platform::host()
        )],
        0.0
    );

    // JSON-lines progress on stdout.
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["time"].is_string() && l["event"].is_string()));
    let of = |kind: &str, image: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["event"] == kind && l["image"] == image)
            .collect()
    };
    for pushed in [&first, &second] {
        let image = pushed.reference.as_str();
        assert_eq!(of("started", image).len(), 1);
        let resolved = of("resolved", image);
        assert_eq!(resolved[0]["digest"], pushed.digest.as_str());
        assert_eq!(resolved[0]["layers"], pushed.image.layers.len());
        assert_eq!(
            of("blob_done", image).len(),
            pushed.image.layers.len() + 1,
            "config and every layer"
        );
        let progress: Vec<u64> = of("progress", image)
            .iter()
            .map(|l| l["fetched_bytes"].as_u64().unwrap())
            .collect();
        assert!(!progress.is_empty() && progress.windows(2).all(|w| w[0] <= w[1]));
        let finished = of("finished", image);
        assert_eq!(finished.len(), 1);
        assert_eq!(finished[0]["status"], "pulled");
    }
    let finished = of("finished", &missing);
    assert_eq!(finished[0]["status"], "failed");
    assert!(finished[0]["reason"]
        .as_str()
        .unwrap()
        .contains("not found"));
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "summary");
    assert_eq!(
        (last["pulled"].as_u64(), last["failed"].as_u64()),
        (Some(2), Some(1))
    );

    // kubelet's view.
    let mut cri = ctrpull::cri::ImageService::connect(&env.containerd.socket())
        .await
        .expect("connect CRI");
    for pushed in [&first, &second] {
        let mut status = None;
        for _ in 0..50 {
            status = cri
                .image_status(&pushed.reference)
                .await
                .expect("ImageStatus");
            if status.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let image = status.unwrap_or_else(|| panic!("CRI does not see {}", pushed.reference));
        assert_eq!(
            image.id,
            pushed.image.config_descriptor.digest().to_string()
        );
    }

    // Second warm without the bad one: present, fast, no blob GET.
    let before: Vec<usize> = [&first, &second]
        .iter()
        .map(|p| blob_gets(&repo_of(p)))
        .collect();
    std::fs::write(
        &list,
        format!("{}\n{}\n", first.reference, second.reference),
    )
    .unwrap();
    let out = warm(
        &env.containerd,
        ns,
        &[
            "-f",
            list.to_str().unwrap(),
            "--progress",
            "none",
            "--report",
            report_path.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let after: Vec<usize> = [&first, &second]
        .iter()
        .map(|p| blob_gets(&repo_of(p)))
        .collect();
    assert_eq!(before, after, "the second warm fetched blobs");
    let report = read_json(&report_path);
    for pushed in [&first, &second] {
        let image = entry(&report, &pushed.reference);
        assert_eq!(image["status"], "present", "{image}");
        assert_eq!(image["digest"], pushed.digest.as_str());
    }
    let stdout = text(&out.stdout);
    assert!(stdout.contains("already present"), "{stdout}");
    assert!(
        stdout.contains("2 images: 0 pulled, 2 present, 0 failed"),
        "{stdout}"
    );

    for pushed in [&first, &second] {
        let name = pushed.reference.rsplit_once(':').unwrap().0;
        for record in [
            pushed.reference.clone(),
            format!("{name}@{}", pushed.digest),
            pushed.image.config_descriptor.digest().to_string(),
        ] {
            env.containerd.ctr_ok(&["-n", ns, "images", "rm", &record]);
        }
    }
}

/// `--fail-fast`: the first failure cancels the rest; images not started stay unpulled.
#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn fail_fast_stops_at_the_first_failure(#[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("warm-failfast");
    let good = push(&harness::unique("test/ff-good"), busybox_with(vec![])).await;
    let also = push(&harness::unique("test/ff-also"), busybox_with(vec![])).await;
    let missing = format!(
        "{}/{}:latest",
        env.registry.addr(),
        harness::unique("test/ff-missing")
    );
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.yaml");
    std::fs::write(
        &list,
        format!(
            "images:\n  - {missing}\n  - image: {}\n  - {}\n",
            good.reference, also.reference
        ),
    )
    .unwrap();
    let report_path = dir.path().join("report.json");
    let out = warm(
        &env.containerd,
        ns.name(),
        &[
            "-f",
            list.to_str().unwrap(),
            "--fail-fast",
            "--parallel-images",
            "1",
            "-q",
            "--report",
            report_path.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report = read_json(&report_path);
    assert_eq!(entry(&report, &missing)["status"], "failed");
    for pushed in [&good, &also] {
        let image = entry(&report, &pushed.reference);
        assert_eq!(image["status"], "cancelled", "{image}");
        let reason = image["reason"].as_str().unwrap();
        assert!(
            reason.contains(&missing) && reason.contains("fail-fast"),
            "{reason}"
        );
        assert_eq!(
            blob_gets(&repo_of(pushed)),
            0,
            "{} was fetched",
            pushed.reference
        );
    }
    assert!(records(&env.containerd, ns.name()).is_empty());
    assert!(leases(&env.containerd, ns.name()).is_empty());

    // Keep-going (the default) pulls the others.
    let out = warm(
        &env.containerd,
        ns.name(),
        &["-f", list.to_str().unwrap(), "-q"],
    );
    assert_eq!(out.status.code(), Some(1));
    let listed = records(&env.containerd, ns.name());
    assert!(listed.contains_key(&good.reference) && listed.contains_key(&also.reference));
}

/// The `ci_warmer` example's own code path, against the real daemon and registry.
#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn the_ci_warmer_example_warms_a_list(#[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("warm-example");
    let (first, second, _) = two_sharing_a_layer("test/example").await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(
        &list,
        format!("{}\n{}\n", first.reference, second.reference),
    )
    .unwrap();
    let settings = ci_warmer::Settings {
        address: env.containerd.socket(),
        namespace: ns.name().to_string(),
        plain_http: true,
        config_file: Some(empty_config()),
        list,
    };
    let outcome = ci_warmer::run(&settings).await.expect("warm");
    assert!(outcome.report.all_ok(), "{:#?}", outcome.report.images);
    let mut finished = outcome.finished.clone();
    finished.sort();
    let mut expected = vec![first.reference.clone(), second.reference.clone()];
    expected.sort();
    assert_eq!(finished, expected, "a finished event per image");
    let summary = ci_warmer::summary(&outcome.report);
    assert!(
        summary.contains("2 images, 2 pulled, 0 present, 0 failed"),
        "{summary}"
    );
    let listed = records(&env.containerd, ns.name());
    for pushed in [&first, &second] {
        assert_eq!(listed[&pushed.reference].0, pushed.digest);
    }
    let again = ci_warmer::run(&settings).await.expect("warm again");
    assert_eq!(again.report.count(ctrpull::ImageStatus::Present), 2);
}

/// A dead mirror in front of the registry: the failovers it caused are counted against
/// it in the report, the metrics and the `failover` events.
#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn failovers_are_counted_per_endpoint(#[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("warm-failover");
    let pushed = push(&harness::unique("test/warm-fo"), busybox_with(vec![])).await;
    let dead = harness::ClosedPort::new();
    let dead_url = format!("http://{}", dead.addr());
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.txt");
    std::fs::write(&list, format!("{}\n", pushed.reference)).unwrap();
    let report_path = dir.path().join("report.json");
    let metrics_path = dir.path().join("ctrpull.prom");
    let mirror = format!("{}={dead_url}", env.registry.addr());
    let out = warm(
        &env.containerd,
        ns.name(),
        &[
            "-f",
            list.to_str().unwrap(),
            "--mirror",
            &mirror,
            "--progress",
            "json",
            "--report",
            report_path.to_str().unwrap(),
            "--metrics-file",
            metrics_path.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = read_json(&report_path);
    let image = entry(&report, &pushed.reference);
    assert_eq!(image["status"], "pulled");
    let failovers = image["endpoint_stats"][&dead_url]["failovers"]
        .as_u64()
        .unwrap_or_else(|| panic!("no stats for {dead_url}: {image}"));
    assert!(failovers >= 1, "{image}");
    assert_eq!(
        image["endpoints"],
        serde_json::json!([format!("http://{}", env.registry.addr())]),
        "only the registry answered"
    );
    let values = metrics(&metrics_path);
    assert_eq!(
        values[&format!("ctrpull_endpoint_failovers{{endpoint=\"{dead_url}\"}}")],
        failovers as f64
    );
    assert_eq!(
        values[&format!("ctrpull_endpoint_requests{{endpoint=\"{dead_url}\"}}")],
        0.0
    );
    let events = text(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"event\":\"failover\""))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect::<Vec<_>>();
    assert_eq!(events.len() as u64, failovers);
    assert!(events.iter().all(|e| e["endpoint"] == dead_url.as_str()
        && e["reason"].as_str().unwrap().contains("cannot connect")));
}
