//! `ctrpull verify` against the real containerd (1.6 and 1.7) and its CRI plugin:
//! present after a pull into k8s.io, missing when absent or pulled elsewhere, exit codes.

use std::process::Output;
use std::time::{Duration, Instant};

use ctrpull::builder::LayerSource;
use rstest::rstest;
use serde_json::Value;

use crate::harness::{self, Containerd, Version};
use crate::pull::{busybox_with, ctrpull_pull, fresh_seed, ok, push, Pushed};

/// How long CRI may take to see an image after a pull: its image cache follows
/// containerd's image events, which arrive a moment after the records are written.
const CRI_CACHE_DELAY: Duration = Duration::from_secs(5);

/// Runs `ctrpull verify --address <socket> ARGS`.
fn verify(containerd: &Containerd, args: &[&str]) -> Output {
    harness::ctrpull()
        .arg("verify")
        .arg("--address")
        .arg(containerd.socket())
        .args(args)
        .output()
        .expect("run ctrpull verify")
}

/// Runs `verify` until it exits 0 or [`CRI_CACHE_DELAY`] has passed; the last output.
async fn verify_until_present(containerd: &Containerd, args: &[&str]) -> Output {
    let deadline = Instant::now() + CRI_CACHE_DELAY;
    loop {
        let output = verify(containerd, args);
        if output.status.success() || Instant::now() > deadline {
            return output;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// What containerd's CRI counts as an image's size: manifest, config and the
/// compressed layers, taken here from the image as it was built.
fn built_size(pushed: &Pushed) -> u64 {
    let image = &pushed.image;
    image.manifest_descriptor.size()
        + image.config_descriptor.size()
        + image
            .layers
            .iter()
            .map(|layer| layer.descriptor.size())
            .sum::<u64>()
}

/// A small busybox image of its own, pushed to the shared registry.
async fn push_fresh(prefix: &str) -> (String, Pushed) {
    let repo = harness::unique(prefix);
    let pushed = push(
        &repo,
        busybox_with(vec![LayerSource::Random {
            size: 8192,
            seed: fresh_seed(),
        }]),
    )
    .await;
    (repo, pushed)
}

#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn verify_reports_a_pulled_image_as_the_kubelet_sees_it(#[case] version: Version) {
    let env = harness::shared(version);
    let (repo, pushed) = push_fresh("test/verify").await;
    // k8s.io: the namespace containerd's CRI plugin reads.
    ok(ctrpull_pull(
        &env.containerd,
        "k8s.io",
        &[&pushed.reference],
    ));
    let repo_digest = format!("{}/{repo}@{}", env.registry.addr(), pushed.digest);
    let config_digest = pushed.image.config_descriptor.digest().to_string();
    // Records ctrpull wrote, as containerd itself lists them.
    let listed = env
        .containerd
        .ctr_ok(&["-n", "k8s.io", "images", "ls", "-q"]);
    assert!(listed.lines().any(|l| l == pushed.reference), "{listed}");

    let output = verify_until_present(&env.containerd, &["--json", &pushed.reference]).await;
    assert!(
        output.status.success(),
        "verify did not find {} within {CRI_CACHE_DELAY:?} ({}):\n{}{}",
        pushed.reference,
        output.status,
        stdout(&output),
        stderr(&output)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("verify --json");
    assert_eq!(report["all_present"], true);
    assert_eq!(
        report["address"],
        env.containerd.socket().display().to_string()
    );
    let image = &report["images"][0];
    assert_eq!(image["reference"], pushed.reference);
    assert_eq!(image["present"], true);
    assert_eq!(image["id"], config_digest);
    assert_eq!(image["size"], built_size(&pushed));
    assert_eq!(image["repo_tags"], serde_json::json!([pushed.reference]));
    assert_eq!(image["repo_digests"], serde_json::json!([repo_digest]));

    // By digest too, in text form, alongside one that is not there.
    let absent = format!(
        "{}/{}:latest",
        env.registry.addr(),
        harness::unique("test/absent")
    );
    let output = verify(&env.containerd, &[&repo_digest, &absent]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains(&format!("present {repo_digest}\n")), "{text}");
    assert!(
        text.contains(&format!("  id       {config_digest}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("  size     {} bytes", built_size(&pushed))),
        "{text}"
    );
    assert!(text.contains(&format!("missing {absent}\n")), "{text}");
    let errors = stderr(&output);
    assert!(
        errors.contains("1 of 2 image(s) missing") && errors.contains(&absent),
        "{errors}"
    );

    for name in [pushed.reference.clone(), repo_digest, config_digest] {
        env.containerd
            .ctr_ok(&["-n", "k8s.io", "images", "rm", &name]);
    }
}

/// An image pulled into another namespace is invisible to CRI: verify says missing,
/// names it, and exits 1.
#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn verify_exits_1_naming_an_image_the_kubelet_would_pull(#[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("verify-elsewhere");
    let (_repo, pushed) = push_fresh("test/verify-ns").await;
    ok(ctrpull_pull(
        &env.containerd,
        ns.name(),
        &[&pushed.reference],
    ));
    let listed = env
        .containerd
        .ctr_ok(&["-n", ns.name(), "images", "ls", "-q"]);
    assert!(listed.lines().any(|l| l == pushed.reference), "{listed}");

    // Past the moment CRI would have seen it, were it in k8s.io.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let output = verify(&env.containerd, &["--json", &pushed.reference]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).expect("verify --json");
    assert_eq!(report["all_present"], false);
    assert_eq!(
        report["images"],
        serde_json::json!([{"reference": pushed.reference, "present": false}])
    );
    assert!(
        stderr(&output).contains(&pushed.reference),
        "{}",
        stderr(&output)
    );

    // A familiar name is asked for as CRI normalises it.
    let output = verify(&env.containerd, &["-q", "ctrpull-never-pulled"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "", "-q prints nothing");
    assert!(
        stderr(&output).contains("docker.io/library/ctrpull-never-pulled:latest"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn verify_exits_2_on_a_malformed_reference_without_asking_containerd() {
    let missing_socket = harness::run_dir()
        .join(harness::unique("no-such"))
        .join("c.sock");
    let output = harness::ctrpull()
        .args(["verify", "--address"])
        .arg(&missing_socket)
        .args(["busybox", "Team/App:1", "app:-x"])
        .output()
        .expect("run ctrpull verify");
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let errors = stderr(&output);
    // Both bad references are named; the socket was never reached.
    assert!(errors.contains("\"Team/App:1\""), "{errors}");
    assert!(errors.contains("\"app:-x\""), "{errors}");
    assert!(!errors.contains("c.sock"), "{errors}");
    assert_eq!(stdout(&output), "");
}

#[test]
fn verify_names_a_socket_that_is_not_there() {
    let missing_socket = harness::run_dir()
        .join(harness::unique("no-such"))
        .join("c.sock");
    let output = harness::ctrpull()
        .args(["verify", "--address"])
        .arg(&missing_socket)
        .arg("busybox")
        .output()
        .expect("run ctrpull verify");
    assert_eq!(output.status.code(), Some(1));
    let errors = stderr(&output);
    assert!(
        errors.contains(&missing_socket.display().to_string()) && errors.contains("does not exist"),
        "{errors}"
    );
}

/// containerd running without its CRI plugin (Docker hosts, `ctr`-only hosts): the
/// socket answers, and verify says CRI is not served there.
#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
fn verify_says_when_containerd_runs_without_cri(#[case] version: Version) {
    let containerd = Containerd::start_without_cri(version);
    let output = verify(&containerd, &["busybox"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let errors = stderr(&output);
    assert!(
        errors.contains("CRI ImageStatus is not served at")
            && errors.contains(&containerd.socket().display().to_string())
            && errors.contains("cri plugin disabled"),
        "{errors}"
    );
}
