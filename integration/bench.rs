//! `ctrpull bench`, scaled down, against a private containerd: every cell of the
//! report is present and sane.

use std::collections::HashSet;

use rstest::rstest;
use serde_json::Value;

use crate::harness::{self, Containerd, Version};

#[rstest]
#[case::v1_6_cri(Version::V1_6, "cri")]
#[case::v1_7_cri(Version::V1_7, "cri")]
fn scaled_down_bench_reports_every_cell(#[case] version: Version, #[case] baseline: &str) {
    // A private daemon: the bench empties the content store of its images in every
    // namespace between pulls, which must not race other tests.
    let containerd = Containerd::start(version);
    let out = tempfile::tempdir().unwrap();
    let output = harness::ctrpull()
        .arg("bench")
        .arg("--address")
        .arg(containerd.socket())
        .args([
            "--scale",
            "0.02",
            "--tiers",
            "100mbit,unshaped",
            "--profiles",
            "typical,many",
        ])
        .args([
            "--concurrency",
            "1,auto",
            "--baseline",
            baseline,
            "--quiet",
            "--out",
        ])
        .arg(out.path())
        .arg("--logs")
        .arg(out.path().join("logs"))
        .arg("--wire")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{stdout}\n{stderr}");
    // `--logs`: each timed ctrpull pull's -v log, named after its cell.
    let log = std::fs::read_to_string(out.path().join("logs/100mbit-typical-auto-1.log"))
        .expect("the log of the 100mbit/typical/auto pull");
    assert!(log.contains("resolved"), "not a -v pull log:\n{log}");
    for file in [
        "results.json",
        "results.csv",
        "results.md",
        "throughput.svg",
    ] {
        let path = out.path().join(file);
        assert!(
            path.metadata().is_ok_and(|m| m.len() > 0),
            "{file} missing or empty"
        );
    }
    let json: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    assert!(json["containerd_version"]
        .as_str()
        .unwrap()
        .starts_with(version.major_minor()));
    let cells = json["cells"].as_array().unwrap();
    let mut seen = HashSet::new();
    for cell in cells {
        let tier = cell["tier"].as_str().unwrap();
        let profile = cell["profile"].as_str().unwrap();
        let tool = cell["tool"].as_str().unwrap();
        let setting = cell["setting"].as_str().unwrap();
        let what = format!("{tier}/{profile}/{tool}/{setting}");
        let seconds = cell["seconds"].as_f64().unwrap();
        let rate = cell["megabytes_per_second"].as_f64().unwrap();
        assert!(seconds > 0.0 && seconds < 120.0, "{what}: {seconds} s");
        assert!(rate > 0.0, "{what}: {rate} MB/s");
        let image_bytes = cell["image_bytes"].as_f64().unwrap();
        assert!(
            (rate * 1e6 * seconds - image_bytes).abs() < image_bytes * 0.01,
            "{what}: MB/s is not bytes/time"
        );
        assert!(
            cell["connections"].as_u64().unwrap() >= 1,
            "{what}: no connection through the link"
        );
        let link_bytes: u64 = cell["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["link_bytes"].as_u64().unwrap())
            .sum();
        assert!(
            link_bytes as f64 >= image_bytes,
            "{what}: only {link_bytes} bytes crossed the link for {image_bytes}"
        );
        match tier {
            // Nothing crosses an emulated 100 Mbit/s link faster than 100 Mbit/s.
            "100mbit" => {
                let percent = cell["percent_of_link"].as_f64().unwrap();
                assert!(
                    percent > 0.0 && percent <= 105.0,
                    "{what}: {percent}% of the link"
                );
            }
            _ => assert!(
                cell["percent_of_link"].is_null(),
                "{what}: unshaped has no link rate"
            ),
        }
        if tool == "ctrpull" {
            let rss = cell["peak_rss_mib"].as_f64().unwrap();
            assert!(rss > 1.0 && rss < 1024.0, "{what}: peak RSS {rss} MiB");
            assert!(
                cell["speedup"].as_f64().unwrap() > 0.0,
                "{what}: no speedup against the baseline"
            );
        } else if tool == "wire" {
            // Twice the 4 connections of 25 Mbit/s that fill 100 Mbit/s; 8 unshaped.
            assert_eq!(setting, "8", "{what}");
            assert!(cell["speedup"].is_null(), "{what}: wire is not a baseline");
            assert!(cell["peak_rss_mib"].is_null(), "{what}");
        } else {
            assert_eq!(tool, baseline, "{what}");
            assert_eq!(setting, "default");
        }
        seen.insert((
            tier.to_string(),
            profile.to_string(),
            tool.to_string(),
            setting.to_string(),
        ));
    }
    for tier in ["100mbit", "unshaped"] {
        for profile in ["typical", "many"] {
            for (tool, setting) in [
                (baseline, "default"),
                ("ctrpull", "1"),
                ("ctrpull", "auto"),
                ("wire", "8"),
            ] {
                let key = (
                    tier.to_string(),
                    profile.to_string(),
                    tool.to_string(),
                    setting.to_string(),
                );
                assert!(seen.contains(&key), "cell {key:?} missing");
            }
        }
    }
    assert_eq!(cells.len(), 16);
    assert!(
        stdout.contains("100mbit") && stdout.contains("speedup"),
        "no table on stdout:\n{stdout}"
    );
    // Nothing of the benchmark is left in containerd.
    for namespace in ["ctrpull-bench", "k8s.io"] {
        let images = containerd.ctr(&["-n", namespace, "images", "ls", "-q"]);
        let listed = String::from_utf8_lossy(&images.stdout);
        assert!(
            !listed.contains("ctrpull-bench/"),
            "{namespace} still lists {listed}"
        );
    }
}

/// containerd 1.7's Transfer service cannot reach a plain-HTTP registry: the bench
/// says so up front instead of failing midway.
#[test]
fn transfer_baseline_on_1_7_is_refused_clearly() {
    let containerd = Containerd::start(Version::V1_7);
    let out = tempfile::tempdir().unwrap();
    let output = harness::ctrpull()
        .arg("bench")
        .arg("--address")
        .arg(containerd.socket())
        .args([
            "--scale",
            "0.01",
            "--tiers",
            "unshaped",
            "--profiles",
            "many",
            "--baseline",
            "transfer",
            "--quiet",
            "--out",
        ])
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("containerd 2.0") && stderr.contains("--baseline cri"),
        "{stderr}"
    );
}
