//! `ctrpull hosts` as a user runs it: the built binary on scratch configuration files, no
//! daemons. Checks the merged order, the exit codes, and that no secret is ever printed.

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use tempfile::TempDir;

use crate::harness;

const PASSWORD: &str = "hosts-cli-password-7f3a";
const TOKEN: &str = "hosts-cli-identity-token-9c2e";
const DOCKER_PASSWORD: &str = "hosts-cli-docker-password-51d0";

/// A version 2 config.toml with a legacy mirror, credentials for both endpoints and a
/// header carrying a token, plus a Docker config.json with credentials of its own.
fn write_files(dir: &Path) {
    std::fs::write(
        dir.join("config.toml"),
        format!(
            r#"version = 2
[plugins."io.containerd.grpc.v1.cri"]
  max_concurrent_downloads = 8
  image_pull_progress_timeout = "2m"
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
  endpoint = ["https://mirror.example:8443"]
[plugins."io.containerd.grpc.v1.cri".registry.configs."mirror.example:8443".auth]
  username = "ops"
  password = "{PASSWORD}"
[plugins."io.containerd.grpc.v1.cri".registry.configs."registry-1.docker.io".auth]
  identitytoken = "{TOKEN}"
[plugins."io.containerd.grpc.v1.cri".registry.headers]
  Authorization = ["Bearer {TOKEN}"]
"#
        ),
    )
    .unwrap();
    let basic = format!("ci:{DOCKER_PASSWORD}");
    std::fs::write(
        dir.join("docker.json"),
        format!(
            r#"{{"auths": {{"first.example": {{"auth": "{}"}}}}}}"#,
            base64_encode(basic.as_bytes())
        ),
    )
    .unwrap();
}

/// Standard base64 with padding; the test does not borrow ctrpull's decoder to check it.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn run(dir: &Path, extra: &[&str]) -> Output {
    let config = dir.join("config.toml");
    let docker = dir.join("docker.json");
    harness::ctrpull()
        .arg("hosts")
        .arg("--config")
        .arg(&config)
        .arg("--docker-config")
        .arg(&docker)
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .expect("run ctrpull hosts")
}

fn assert_no_secret(output: &Output) {
    for stream in [&output.stdout, &output.stderr] {
        let text = String::from_utf8_lossy(stream);
        for secret in [PASSWORD, TOKEN, DOCKER_PASSWORD] {
            assert!(!text.contains(secret), "secret printed:\n{text}");
        }
    }
}

#[test]
fn text_lists_the_merged_endpoints_without_secrets() {
    let dir = TempDir::new().unwrap();
    write_files(dir.path());
    let output = run(
        dir.path(),
        &["--mirror", "docker.io=https://first.example", "nginx"],
    );
    assert_no_secret(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let order: Vec<usize> = [
        "1. https://first.example/v2",
        "2. https://mirror.example:8443/v2",
        "3. https://registry-1.docker.io/v2",
    ]
    .iter()
    .map(|line| {
        stdout
            .find(line)
            .unwrap_or_else(|| panic!("{line} missing:\n{stdout}"))
    })
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{stdout}");
    for expected in [
        "source:       --mirror docker.io=https://first.example/",
        "auth:         basic (",
        "docker.json: auths.\"first.example\")",
        "registry.configs.\"mirror.example:8443\".auth)",
        "auth:         identitytoken (",
        "headers:      Authorization (values not shown)",
        "max_concurrent_downloads:    8 (",
        "image_pull_progress_timeout: 2m0s (",
    ] {
        assert!(stdout.contains(expected), "{expected} missing:\n{stdout}");
    }
}

#[test]
fn json_output_is_one_document() {
    let dir = TempDir::new().unwrap();
    write_files(dir.path());
    let output = run(dir.path(), &["--output", "json", "docker.io/library/nginx"]);
    assert_no_secret(&output);
    assert_eq!(output.status.code(), Some(0));
    let doc: Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    let endpoints = doc["endpoints"].as_array().unwrap();
    let urls: Vec<&str> = endpoints
        .iter()
        .map(|e| e["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            "https://mirror.example:8443/v2",
            "https://registry-1.docker.io/v2"
        ]
    );
    assert_eq!(endpoints[0]["auth"]["kind"], "basic");
    assert_eq!(endpoints[1]["auth"]["kind"], "identitytoken");
    assert_eq!(
        endpoints[0]["capabilities"],
        serde_json::json!(["pull", "resolve"])
    );
    assert_eq!(doc["cri"]["max_concurrent_downloads"]["value"], 8);
    assert_eq!(doc["registry"], "docker.io");
}

#[test]
fn hosts_dirs_are_searched_in_order() {
    let dir = TempDir::new().unwrap();
    write_files(dir.path());
    for (root, host) in [("one", "quay.io"), ("two", "quay.io"), ("two", "ghcr.io")] {
        let host_dir = dir.path().join(root).join(host);
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::write(
            host_dir.join("hosts.toml"),
            format!("[host.\"https://{root}.example\"]\ndial_timeout = \"1500ms\"\n"),
        )
        .unwrap();
    }
    let one = dir.path().join("one").display().to_string();
    let two = dir.path().join("two").display().to_string();
    let roots = ["--hosts-dir", one.as_str(), "--hosts-dir", two.as_str()];
    let quay = run(dir.path(), &[&roots[..], &["quay.io/app"]].concat());
    let stdout = String::from_utf8_lossy(&quay.stdout);
    assert!(stdout.contains("1. https://one.example/v2"), "{stdout}");
    assert!(!stdout.contains("two.example"), "{stdout}");
    assert!(stdout.contains("dial timeout: 1.5s"), "{stdout}");
    let ghcr = run(dir.path(), &[&roots[..], &["ghcr.io/app"]].concat());
    assert!(String::from_utf8_lossy(&ghcr.stdout).contains("1. https://two.example/v2"));
}

#[test]
fn invalid_configuration_exits_2_naming_file_key_and_reason() {
    let dir = TempDir::new().unwrap();
    write_files(dir.path());
    // The image_pull_progress_timeout table a blog post teaches.
    std::fs::write(
        dir.path().join("config.toml"),
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".image_pull_progress_timeout]\ndefault = \"5m\"\n",
    )
    .unwrap();
    let output = run(dir.path(), &["nginx"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let file = dir.path().join("config.toml");
    assert!(
        stderr.contains(&format!(
            "{}: `plugins.\"io.containerd.grpc.v1.cri\".image_pull_progress_timeout`: must be a Go duration string, found a table",
            file.display()
        )),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn bad_reference_and_bad_flag_exit_2() {
    let dir = TempDir::new().unwrap();
    write_files(dir.path());
    assert_eq!(run(dir.path(), &["UPPER/Case"]).status.code(), Some(2));
    assert_eq!(
        run(dir.path(), &["--mirror", "no-equals-sign", "nginx"])
            .status
            .code(),
        Some(2)
    );
}
