//! `ctrpull pull` against the real containerd (1.6 and 1.7) and docker-registry,
//! asserted through `ctr`, the CRI ImageService and the registry's own log.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Output};
use std::time::Duration;

use ctrpull::builder::{self, BuiltImage, FileEntry, ImageSpec, LayerSource};
use rstest::rstest;
use sha2::{Digest, Sha256};

use crate::harness::{self, Containerd, Registry, Version};

/// A built image and the directory holding its layer files.
pub struct Pushed {
    pub reference: String,
    pub image: BuiltImage,
    pub digest: String,
    pub(crate) _workdir: tempfile::TempDir,
}

/// Builds `spec` and pushes it as `<repo>:latest` to the shared registry.
pub async fn push(repo: &str, spec: ImageSpec) -> Pushed {
    push_to(harness::shared_registry(), repo, spec).await
}

/// Builds `spec` and pushes it as `<repo>:latest` to `registry` (any kind: the harness's
/// push client brings its CA, client certificate or credentials).
pub async fn push_to(registry: &Registry, repo: &str, spec: ImageSpec) -> Pushed {
    let workdir = tempfile::tempdir().unwrap();
    let path = workdir.path().to_owned();
    let image = tokio::task::spawn_blocking(move || builder::build(&spec, &path))
        .await
        .unwrap()
        .expect("build image");
    let descriptor = builder::push(
        &registry.push_client(repo),
        &registry.url(),
        repo,
        "latest",
        &image,
    )
    .await
    .expect("push image");
    Pushed {
        reference: format!("{}/{repo}:latest", registry.addr()),
        digest: descriptor.digest().to_string(),
        image,
        _workdir: workdir,
    }
}

/// The busybox-static image plus `extra` layers.
pub fn busybox_with(extra: Vec<LayerSource>) -> ImageSpec {
    let mut spec = builder::busybox_image(std::path::Path::new("/bin/busybox"));
    spec.layers.extend(extra);
    spec
}

/// Random layers of these sizes, each with a seed of its own.
pub fn random_layers(sizes: impl IntoIterator<Item = u64>) -> Vec<LayerSource> {
    sizes
        .into_iter()
        .map(|size| LayerSource::Random {
            size,
            seed: fresh_seed(),
        })
        .collect()
}

/// A random-layer seed no other test uses, so no other test's pull has put the
/// layer into containerd's (namespace-shared) content store already.
pub fn fresh_seed() -> u64 {
    rand::random::<u64>() | 1
}

/// Runs `ctrpull pull --plain-http` against `containerd` in `namespace`, with an
/// empty config.toml so the host's /etc/containerd/config.toml plays no part.
pub fn ctrpull_pull(containerd: &Containerd, namespace: &str, args: &[&str]) -> Output {
    ctrpull_pull_command(containerd, namespace, args)
        .output()
        .expect("run ctrpull")
}

/// The command [`ctrpull_pull`] runs.
pub fn ctrpull_pull_command(containerd: &Containerd, namespace: &str, args: &[&str]) -> Command {
    let socket = containerd.socket();
    static CONFIG: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let path = harness::run_dir().join(format!("empty-config-{}.toml", std::process::id()));
        std::fs::write(&path, "version = 2\n").expect("write an empty config.toml");
        path
    });
    let mut cmd = harness::ctrpull();
    cmd.arg("pull")
        .arg("--address")
        .arg(&socket)
        .arg("--config")
        .arg(config)
        .args(["--namespace", namespace, "--plain-http"])
        .args(args);
    cmd
}

/// Asserts the command succeeded and returns its stdout.
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "ctrpull failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Image records of `namespace` as `name -> (target digest, labels)`, from `ctr images ls`.
pub fn records(containerd: &Containerd, namespace: &str) -> HashMap<String, (String, String)> {
    containerd
        .ctr_ok(&["-n", namespace, "images", "ls"])
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // REF TYPE DIGEST SIZE(2 cols) PLATFORMS LABELS
            Some((
                cols.first()?.to_string(),
                (cols.get(2)?.to_string(), cols.last()?.to_string()),
            ))
        })
        .collect()
}

/// Labels of every blob in `namespace`, from `ctr content ls`.
pub fn content_labels(
    containerd: &Containerd,
    namespace: &str,
) -> HashMap<String, HashMap<String, String>> {
    containerd
        .ctr_ok(&["-n", namespace, "content", "ls"])
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let digest = cols.first()?.to_string();
            let labels = cols
                .last()?
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Some((digest, labels))
        })
        .collect()
}

/// Leases left in `namespace`.
pub fn leases(containerd: &Containerd, namespace: &str) -> Vec<String> {
    containerd
        .ctr_ok(&["-n", namespace, "leases", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// How many blob GETs for `repo` the registry has logged so far.
pub fn blob_gets(repo: &str) -> usize {
    let needle = format!("GET /v2/{repo}/blobs/");
    harness::shared_registry()
        .log()
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

/// sha256 of the file `name` inside a gzip layer blob.
pub fn file_digest_in_layer(layer: &std::path::Path, name: &str) -> String {
    let file = std::fs::File::open(layer).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            == name
        {
            let mut hasher = Sha256::new();
            let mut buf = vec![0; 1 << 20];
            loop {
                let n = entry.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            return hex::encode(hasher.finalize());
        }
    }
    panic!("{name} not in {}", layer.display());
}

#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn busybox_image_runs_with_the_records_ctr_expects(#[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("pull-run");
    let repo = harness::unique("test/busybox");
    let pushed = push(&repo, busybox_with(vec![])).await;

    let out = ok(ctrpull_pull(
        &env.containerd,
        ns.name(),
        &[&pushed.reference],
    ));
    assert!(
        out.contains(&pushed.reference) && out.contains(&pushed.digest),
        "summary: {out}"
    );

    let run = env
        .containerd
        .run_busybox(ns.name(), &pushed.reference, &["echo", "ok"]);
    assert_eq!(run.trim(), "ok");

    let records = records(&env.containerd, ns.name());
    let name = format!("{}/{repo}", env.registry.addr());
    let config = pushed.image.config_descriptor.digest().to_string();
    for record in [
        format!("{name}:latest"),
        format!("{name}@{}", pushed.digest),
        config.clone(),
    ] {
        let (target, labels) = records
            .get(&record)
            .unwrap_or_else(|| panic!("no record {record}: {records:?}"));
        assert_eq!(target, &pushed.digest, "{record}");
        assert!(
            labels.contains("io.cri-containerd.image=managed"),
            "{record}: {labels}"
        );
    }
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(
        leases(&env.containerd, ns.name()).is_empty(),
        "a lease was left behind"
    );

    // GC labels as containerd's own pull sets them.
    let labels = content_labels(&env.containerd, ns.name());
    let source_key = format!("containerd.io/distribution.source.{}", env.registry.addr());
    let manifest = &labels[&pushed.digest];
    assert_eq!(manifest["containerd.io/gc.ref.content.config"], config);
    for (i, layer) in pushed.image.layers.iter().enumerate() {
        let digest = layer.descriptor.digest().to_string();
        assert_eq!(
            manifest[&format!("containerd.io/gc.ref.content.l.{i}")],
            digest
        );
        assert_eq!(
            labels[&digest]["containerd.io/uncompressed"],
            layer.diff_id.to_string()
        );
        assert_eq!(labels[&digest][&source_key], repo);
    }
    assert_eq!(manifest[&source_key], repo);
    let top_chain = labels[&config]["containerd.io/gc.ref.snapshot.overlayfs"].clone();
    let snapshots = env.containerd.ctr_ok(&["-n", ns.name(), "snapshots", "ls"]);
    assert!(
        snapshots
            .lines()
            .any(|l| l.starts_with(&top_chain) && l.contains("Committed")),
        "snapshot {top_chain} missing:\n{snapshots}"
    );
}

#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn cri_image_service_finds_the_image_by_name(#[case] version: Version) {
    let env = harness::shared(version);
    let repo = harness::unique("test/cri");
    let pushed = push(
        &repo,
        busybox_with(vec![LayerSource::Random {
            size: 4096,
            seed: fresh_seed(),
        }]),
    )
    .await;
    // kubelet's namespace, where CRI looks.
    ok(ctrpull_pull(
        &env.containerd,
        "k8s.io",
        &[&pushed.reference],
    ));

    let mut cri = ctrpull::cri::ImageService::connect(&env.containerd.socket())
        .await
        .expect("connect CRI");
    // CRI refreshes its cache from containerd's image events: give it a moment.
    let mut status = None;
    for _ in 0..50 {
        status = cri
            .image_status(&pushed.reference)
            .await
            .expect("ImageStatus");
        if status.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let image =
        status.unwrap_or_else(|| panic!("CRI ImageStatus does not find {}", pushed.reference));
    assert_eq!(
        image.id,
        pushed.image.config_descriptor.digest().to_string()
    );
    assert!(
        image.repo_tags.contains(&pushed.reference),
        "{:?}",
        image.repo_tags
    );
    let repo_digest = format!("{}/{repo}@{}", env.registry.addr(), pushed.digest);
    assert!(
        image.repo_digests.contains(&repo_digest),
        "{:?}",
        image.repo_digests
    );
    let listed = cri.list_images().await.expect("ListImages");
    assert!(
        listed.iter().any(|i| i.id == image.id),
        "ListImages lacks {}",
        image.id
    );

    for name in [pushed.reference.clone(), repo_digest, image.id.clone()] {
        env.containerd
            .ctr_ok(&["-n", "k8s.io", "images", "rm", &name]);
    }
}

#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn second_pull_fetches_no_layer_bytes(#[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("pull-twice");
    let repo = harness::unique("test/twice");
    let pushed = push(
        &repo,
        busybox_with(vec![LayerSource::Random {
            size: 3 << 20,
            seed: fresh_seed(),
        }]),
    )
    .await;

    ok(ctrpull_pull(
        &env.containerd,
        ns.name(),
        &[&pushed.reference],
    ));
    let first = blob_gets(&repo);
    assert!(
        first >= 2,
        "the first pull should fetch config and layers, saw {first} blob GETs"
    );

    let out = ok(ctrpull_pull(
        &env.containerd,
        ns.name(),
        &[&pushed.reference],
    ));
    assert_eq!(
        blob_gets(&repo),
        first,
        "the second pull fetched blobs again"
    );
    assert!(out.contains("fetched 0.0 MB"), "summary: {out}");
    assert!(leases(&env.containerd, ns.name()).is_empty());
}

#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn many_layers_unpack_with_the_right_content(#[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("pull-layers");
    let repo = harness::unique("test/layers");
    let seeds: Vec<u64> = (0..3).map(|_| fresh_seed()).collect();
    let mut extra = vec![
        LayerSource::Random {
            size: 33 << 20,
            seed: seeds[0],
        },
        LayerSource::Random {
            size: 40 << 20,
            seed: seeds[1],
        },
        LayerSource::Random {
            size: 100 << 10,
            seed: seeds[2],
        },
    ];
    for i in 0..5 {
        extra.push(LayerSource::Files(vec![FileEntry::file(
            &format!("etc/layer-{i}"),
            format!("layer {i}\n").into_bytes(),
            0o644,
        )]));
    }
    // A later layer replaces a file of an earlier one: order matters.
    extra.push(LayerSource::Files(vec![FileEntry::file(
        "etc/layer-0",
        b"replaced\n".to_vec(),
        0o644,
    )]));
    let pushed = push(&repo, busybox_with(extra)).await;
    assert!(pushed.image.layers.len() >= 8);

    ok(ctrpull_pull(
        &env.containerd,
        ns.name(),
        &["--concurrency", "3", &pushed.reference],
    ));

    let mut script = String::new();
    for seed in &seeds {
        script.push_str(&format!("/bin/busybox sha256sum /random-{seed}.bin; "));
    }
    script.push_str("/bin/busybox cat /etc/layer-0 /etc/layer-4");
    let out = env
        .containerd
        .run_busybox(ns.name(), &pushed.reference, &["sh", "-c", &script]);
    for (i, seed) in seeds.iter().enumerate() {
        let layer = &pushed.image.layers[1 + i];
        let expected = file_digest_in_layer(&layer.path, &format!("random-{seed}.bin"));
        assert!(
            out.contains(&format!("{expected}  /random-{seed}.bin")),
            "random-{seed}: {out}"
        );
    }
    assert!(out.contains("replaced\nlayer 4"), "{out}");
}

#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn index_pull_chooses_the_host_platform(#[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("pull-index");
    let repo = harness::unique("test/multi");
    let registry = harness::shared_registry();
    let workdir = tempfile::tempdir().unwrap();
    let host = busybox_with(vec![]);
    let mut foreign = Vec::new();
    for (os, arch, variant) in [("linux", "arm64", Some("v8")), ("linux", "s390x", None)] {
        let platform = builder::Platform::new(os, arch, variant.unwrap_or(""));
        foreign.push(ImageSpec {
            layers: vec![LayerSource::Random {
                size: 1 << 20,
                seed: fresh_seed(),
            }],
            platform,
            ..ImageSpec::default()
        });
    }
    let path = workdir.path().to_owned();
    let images: Vec<BuiltImage> = tokio::task::spawn_blocking(move || {
        // The host's entry in the middle: first-match would be wrong.
        [&foreign[0], &host, &foreign[1]]
            .into_iter()
            .enumerate()
            .map(|(i, spec)| builder::build(spec, &path.join(i.to_string())).unwrap())
            .collect()
    })
    .await
    .unwrap();
    let index = builder::push_index(
        &reqwest::Client::new(),
        &registry.url(),
        &repo,
        "latest",
        &images,
    )
    .await
    .expect("push index");
    let reference = format!("{}/{repo}:latest", registry.addr());

    ok(ctrpull_pull(&env.containerd, ns.name(), &[&reference]));

    let records = records(&env.containerd, ns.name());
    assert_eq!(
        records[&reference].0,
        index.digest().to_string(),
        "the tag record must point at the index"
    );
    let host_config = images[1].config_descriptor.digest().to_string();
    assert!(
        records.contains_key(&host_config),
        "image ID should be the host config: {records:?}"
    );
    let labels = content_labels(&env.containerd, ns.name());
    for foreign in [&images[0], &images[2]] {
        let layer = foreign.layers[0].descriptor.digest().to_string();
        assert!(
            !labels.contains_key(&layer),
            "a foreign platform's layer was fetched"
        );
    }
    let index_labels = &labels[&index.digest().to_string()];
    for (i, image) in images.iter().enumerate() {
        assert_eq!(
            index_labels[&format!("containerd.io/gc.ref.content.m.{i}")],
            image.manifest_descriptor.digest().to_string()
        );
    }
    let run = env
        .containerd
        .run_busybox(ns.name(), &reference, &["echo", "ok"]);
    assert_eq!(run.trim(), "ok");
}

/// Bad input: a clear message, a non-zero exit, and nothing left in containerd.
#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn bad_input_fails_clearly_and_leaves_nothing(#[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("pull-bad");
    let registry = env.registry.addr();
    let repo = harness::unique("test/exists");
    push(&repo, busybox_with(vec![])).await;
    // A port that nothing listens on: bind, read the port, close.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let cases: Vec<(String, Vec<String>, i32, &str)> = vec![
        (
            "malformed reference".into(),
            vec!["Not A Reference!".into()],
            2,
            "invalid reference",
        ),
        (
            "uppercase repository".into(),
            vec![format!("{registry}/Test/Upper:1")],
            2,
            "invalid reference",
        ),
        (
            "unknown repository".into(),
            vec![format!("{registry}/test/no-such-repo:latest")],
            1,
            "not found",
        ),
        (
            "missing tag".into(),
            vec![format!("{registry}/{repo}:no-such-tag")],
            1,
            "not found",
        ),
        (
            "registry down".into(),
            vec![format!("{dead}/test/busybox:latest")],
            1,
            "cannot connect",
        ),
    ];
    for (what, args, code, message) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ctrpull_pull(&env.containerd, ns.name(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{what}: {stderr}");
        assert!(
            stderr.contains(message),
            "{what}: stderr lacks {message:?}: {stderr}"
        );
        assert!(
            records(&env.containerd, ns.name()).is_empty(),
            "{what}: an image record was left"
        );
        assert!(
            leases(&env.containerd, ns.name()).is_empty(),
            "{what}: a lease was left"
        );
    }

    // No containerd at the socket.
    let out = harness::ctrpull()
        .args([
            "pull",
            "--address",
            "/nonexistent/containerd.sock",
            "--plain-http",
        ])
        .arg(format!("{registry}/{repo}:latest"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no containerd socket at /nonexistent/containerd.sock"),
        "{stderr}"
    );
}

/// `ctrpull pull A B` pulls both images at once under one budget; a layer they share
/// is downloaded once (the second writer waits on containerd's ingest lock and then
/// finds the blob committed).
#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn two_images_sharing_a_layer_fetch_it_once(#[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("pull-shared");
    let shared = fresh_seed();
    let first_repo = harness::unique("test/shared-a");
    let second_repo = harness::unique("test/shared-b");
    let shared_layer = || LayerSource::Random {
        size: 3 << 20,
        seed: shared,
    };
    let first = push(
        &first_repo,
        busybox_with(vec![
            shared_layer(),
            LayerSource::Random {
                size: 4096,
                seed: fresh_seed(),
            },
        ]),
    )
    .await;
    let second = push(
        &second_repo,
        busybox_with(vec![
            shared_layer(),
            LayerSource::Random {
                size: 4096,
                seed: fresh_seed(),
            },
        ]),
    )
    .await;
    let digest = first.image.layers[1].descriptor.digest().to_string();
    assert_eq!(
        digest,
        second.image.layers[1].descriptor.digest().to_string()
    );

    let out = ok(ctrpull_pull(
        &env.containerd,
        ns.name(),
        &[&first.reference, &second.reference],
    ));
    assert!(
        out.contains(&first.reference) && out.contains(&second.reference),
        "{out}"
    );
    // Once, whether in one response or as Range requests.
    let size = first.image.layers[1].descriptor.size();
    let served = harness::shared_registry().blob_bytes_served(&digest);
    assert_eq!(
        served, size,
        "{served} bytes served for the {size}-byte shared layer"
    );
    let records = records(&env.containerd, ns.name());
    assert!(records.contains_key(&first.reference) && records.contains_key(&second.reference));
}

/// The same image pulled into a second namespace: containerd shares the blobs, which
/// it shows as complete ingests there; the pull commits them without a download.
/// Also by digest, and as `name:tag@digest` (the tag is dropped, as CRI does).
#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn the_same_image_in_a_second_namespace_and_by_digest(#[case] version: Version) {
    let env = harness::shared(version);
    let first = env.containerd.namespace("pull-ns-a");
    let second = env.containerd.namespace("pull-ns-b");
    let third = env.containerd.namespace("pull-ns-c");
    let repo = harness::unique("test/twice-ns");
    let pushed = push(
        &repo,
        busybox_with(vec![LayerSource::Random {
            size: 2 << 20,
            seed: fresh_seed(),
        }]),
    )
    .await;
    ok(ctrpull_pull(
        &env.containerd,
        first.name(),
        &[&pushed.reference],
    ));
    let gets = blob_gets(&repo);

    let by_digest = format!("{}/{repo}@{}", env.registry.addr(), pushed.digest);
    let out = ok(ctrpull_pull(&env.containerd, second.name(), &[&by_digest]));
    assert!(out.contains(&by_digest), "{out}");
    assert_eq!(blob_gets(&repo), gets, "shared blobs were downloaded again");
    let listed = records(&env.containerd, second.name());
    assert!(listed.contains_key(&by_digest), "{listed:?}");
    assert!(
        !listed.keys().any(|k| k.ends_with(":latest")),
        "a digest pull has no tag record: {listed:?}"
    );
    let run = env
        .containerd
        .run_busybox(second.name(), &by_digest, &["echo", "ok"]);
    assert_eq!(run.trim(), "ok");

    let tag_and_digest = format!("{}/{repo}:latest@{}", env.registry.addr(), pushed.digest);
    ok(ctrpull_pull(
        &env.containerd,
        third.name(),
        &[&tag_and_digest],
    ));
    assert!(records(&env.containerd, third.name()).contains_key(&by_digest));
}

/// The `(first, last)` of every Range request for `digest` that the `-vv` log in
/// `stderr` says completed ("chunk done"), in order of offset.
fn chunks_done(stderr: &str, digest: &str) -> Vec<(u64, u64)> {
    let field = |line: &str, key: &str| -> Option<u64> {
        let start = line.find(key)? + key.len();
        let digits: String = line[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    let mut chunks: Vec<(u64, u64)> = stderr
        .lines()
        .filter(|line| line.contains("chunk done") && line.contains(digest))
        .filter_map(|line| Some((field(line, " first=")?, field(line, " last=")?)))
        .collect();
    chunks.sort_unstable();
    chunks
}

/// A pull sizes its first Range requests by everything its manifest lists, not by
/// the layers whose downloads happen to have started: a 3 MiB layer below a 40 MiB
/// one, pulled over 16 connections, comes in requests of 1 MiB and more (shared out
/// over the connections, 44 MiB leave 2.75 MiB each), not as the 256 KiB pieces
/// that end a run. The 40 MiB layer is the 67th blob, so its download cannot even
/// start (64 blobs at once) until others are done, and layers cut their requests
/// bottom-up, the tiny ones between included, so it cuts nothing before the 3 MiB
/// one is done.
#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn first_range_requests_are_sized_by_the_whole_image(#[case] version: Version) {
    const MIB: u64 = 1 << 20;
    // Tiny layers between the two: the big one comes after 64 other blobs.
    const TINY: usize = 64;
    let env = harness::shared(version);
    let ns = env.containerd.namespace("pull-first-cuts");
    let repo = harness::unique("test/firstcuts");
    let pushed = push(
        &repo,
        busybox_with(random_layers(
            std::iter::once(3 * MIB)
                .chain(std::iter::repeat_n(16 << 10, TINY))
                .chain(std::iter::once(40 * MIB)),
        )),
    )
    .await;
    let small = pushed.image.layers[1].descriptor.digest().to_string();
    let small_size = pushed.image.layers[1].descriptor.size();

    let output = ctrpull_pull(
        &env.containerd,
        ns.name(),
        &["-vv", "--concurrency", "16", &pushed.reference],
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ok(output);
    let chunks = chunks_done(&stderr, &small);
    assert_eq!(
        chunks
            .iter()
            .map(|(first, last)| last - first + 1)
            .sum::<u64>(),
        small_size,
        "the log should show every Range request of layer {small}: {chunks:?}"
    );
    let about_it: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains(&small) || line.contains("concurrency"))
        .collect();
    assert!(
        chunks.len() >= 2 && chunks.iter().all(|(first, last)| last - first + 1 >= MIB),
        "the {small_size}-byte layer was cut as if it were all the run had left: {chunks:?}\n{}",
        about_it.join("\n")
    );
}

/// A layer whose ingest another writer holds (another ctrpull, or containerd's own
/// pull) is waited for, and while it waits, the layers above it cut and fetch their
/// own requests instead of waiting for its turn: the test holds the lower of two
/// 8 MiB layers open in the content store, and ctrpull commits the upper one
/// meanwhile. A garbage collection then keeps what the pull has (its lease holds
/// it), and once the test lets go, the pull finishes with the lower layer too.
#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn a_layer_held_by_another_writer_does_not_hold_up_the_layers_above(
    #[case] version: Version,
) {
    const MIB: u64 = 1 << 20;
    let env = harness::shared(version);
    let ns = env.containerd.namespace("pull-held");
    let repo = harness::unique("test/held");
    let pushed = push(&repo, busybox_with(random_layers([8 * MIB, 8 * MIB]))).await;
    let lower = &pushed.image.layers[1].descriptor;
    let upper = pushed.image.layers[2].descriptor.digest().to_string();

    // Hold the lower layer's ingest, under the ref ctrpull uses, as another writer.
    let conn = ctrpull::containerd::Connection::connect(&env.containerd.socket(), ns.name())
        .await
        .expect("connect to containerd");
    let content = ctrpull::containerd::ContentStore::new(conn);
    let held = match content
        .open_writer(
            &format!("layer-{}", lower.digest()),
            lower.digest().as_ref(),
            lower.size(),
        )
        .await
        .expect("open the lower layer's ingest")
    {
        ctrpull::containerd::OpenWriter::Writer(writer) => writer,
        ctrpull::containerd::OpenWriter::Exists => panic!("a fresh layer is in the store"),
    };

    let namespace = ns.name().to_string();
    let reference = pushed.reference.clone();
    let pull = tokio::task::spawn_blocking(move || {
        ctrpull_pull(&env.containerd, &namespace, &["-v", &reference])
    });
    let committed = |digest: &str| content_labels(&env.containerd, ns.name()).contains_key(digest);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !committed(&upper) {
        assert!(
            std::time::Instant::now() < deadline,
            "the upper layer {upper} was not fetched in 60 s while the lower one was held"
        );
        if pull.is_finished() {
            let output = pull.await.expect("ctrpull ran");
            panic!(
                "ctrpull ended while a layer was held ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !committed(lower.digest().as_ref()),
        "the held layer was committed by someone else"
    );
    // What the pull has so far is referenced by no image yet, only by its lease: a
    // garbage collection now (a lease removed with --sync runs one) must keep it.
    let trigger = harness::unique("gc-trigger");
    env.containerd
        .ctr_ok(&["-n", ns.name(), "leases", "create", "--id", &trigger]);
    env.containerd
        .ctr_ok(&["-n", ns.name(), "leases", "rm", "--sync", &trigger]);
    assert!(
        committed(&upper),
        "a garbage collection mid-pull removed the upper layer"
    );
    drop(held);

    let output = pull.await.expect("ctrpull ran");
    ok(output);
    let run = env
        .containerd
        .run_busybox(ns.name(), &pushed.reference, &["echo", "ok"]);
    assert_eq!(run.trim(), "ok");
}

/// A big layer's ingest file is written back to the disk while it downloads, so
/// containerd's commit has little left to flush: ctrpull finds containerd's ingest
/// file for the blob (under the root its content plugin exports) and starts the
/// writeback every step, without an error; the image is whole and runs.
#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn big_ingests_are_written_back_while_they_download(#[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("pull-writeback");
    let repo = harness::unique("test/writeback");
    let step = ctrpull::containerd::WRITEBACK_STEP;
    let pushed = push(&repo, busybox_with(random_layers([3 * step + (1 << 20)]))).await;
    let big = pushed.image.layers[1].descriptor.digest().to_string();
    let big_size = pushed.image.layers[1].descriptor.size();

    let output = ctrpull_pull(&env.containerd, ns.name(), &["-vv", &pushed.reference]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ok(output);
    for failure in [
        "no ingest file names this ref",
        "cannot look for the ingest file",
        "cannot start the ingest's writeback",
        "ingest directory is not visible here",
    ] {
        assert!(!stderr.contains(failure), "{failure}:\n{stderr}");
    }
    let written_back: Vec<u64> = stderr
        .lines()
        .filter(|line| line.contains("ingest written back while downloading"))
        .filter(|line| line.contains(big.trim_start_matches("sha256:")))
        .filter_map(|line| {
            line.split(" bytes=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(written_back.len(), 1, "{stderr}");
    // At least one step was asked for; more when each request ends before the next
    // step is written (one runs at a time, so a slow disk may take fewer).
    assert!(
        (step..=big_size).contains(&written_back[0]),
        "{} of {big_size} bytes asked to be written back:\n{stderr}",
        written_back[0]
    );
    let run = env
        .containerd
        .run_busybox(ns.name(), &pushed.reference, &["echo", "ok"]);
    assert_eq!(run.trim(), "ok");
}

/// `--chunk-size` sets the largest Range request: with one connection (so neither
/// the reorder memory nor the run's fair share cuts smaller) a 25 MiB layer comes
/// in requests of exactly 8 MiB but for its last, never the default 4 MiB. The image
/// is whole and runs.
#[tokio::test]
async fn chunk_size_sets_the_largest_range_request() {
    let env = harness::shared(Version::V1_7);
    let ns = env.containerd.namespace("pull-chunk-size");
    let repo = harness::unique("test/chunk-size");
    let pushed = push(&repo, busybox_with(random_layers([25 << 20]))).await;
    let big = pushed.image.layers[1].descriptor.digest().to_string();
    let big_size = pushed.image.layers[1].descriptor.size();

    let output = ctrpull_pull(
        &env.containerd,
        ns.name(),
        &[
            "-vv",
            "--concurrency",
            "1",
            "--chunk-size",
            "8MiB",
            &pushed.reference,
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ok(output);
    let mut chunks: Vec<(u64, u64)> = stderr
        .lines()
        .filter(|line| line.contains("chunk done") && line.contains(&big))
        .filter_map(|line| {
            let field = |name: &str| -> Option<u64> {
                line.split(&format!(" {name}="))
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            };
            Some((field("first")?, field("last")?))
        })
        .collect();
    chunks.sort();
    let lengths: Vec<u64> = chunks
        .iter()
        .map(|(first, last)| last - first + 1)
        .collect();
    assert_eq!(
        lengths.iter().sum::<u64>(),
        big_size,
        "the chunks do not cover the layer: {chunks:?}\n{stderr}"
    );
    let (last, whole) = lengths.split_last().expect("no chunk logged");
    assert!(
        whole.len() >= 2 && whole.iter().all(|&len| len == 8 << 20),
        "expected 8 MiB requests but the last: {lengths:?}"
    );
    assert!(*last <= (8 << 20) + (1 << 20), "{lengths:?}");
    let run = env
        .containerd
        .run_busybox(ns.name(), &pushed.reference, &["echo", "ok"]);
    assert_eq!(run.trim(), "ok");
}
