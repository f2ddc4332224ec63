//! Hostile registries against the real containerd: a mirror serving documents that
//! are not what they claim is skipped and the image comes from the real
//! docker-registry behind it; a registry serving a manifest no node could use fails
//! the pull with a clear reason before any blob is fetched, leaving nothing behind;
//! a layer that does not unpack to its config's diff ID is never committed.

use std::str::FromStr;

use ctrpull::builder::{self, BuiltImage, LayerSource};
use oci_spec::image::{Descriptor, Digest, MediaType};
use rstest::rstest;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::harness::{self, Request, Responder, Response, Version};
use crate::pull::{busybox_with, ctrpull_pull, fresh_seed, leases, ok, push, records};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An OCI manifest with `layers` gzip layers (digests of nothing that exists).
fn manifest_with_layers(layers: usize) -> Vec<u8> {
    let descriptor = |media_type: &str, i: usize| json!({"mediaType": media_type, "digest": sha256(&i.to_le_bytes()), "size": 1000 + i});
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", 99_999),
        "layers": (0..layers)
            .map(|i| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", i))
            .collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes()
}

/// What a hostile mirror serves for manifests.
#[derive(Debug, Clone, Copy)]
enum Lie {
    /// `Content-Type` says index; the body is an image manifest.
    IndexHeaderManifestBody,
    /// An HTML error page with a manifest `Content-Type`.
    NotJson,
    /// A `Docker-Content-Digest` with an unknown algorithm.
    BadDigestHeader,
}

fn lie(lie: Lie, request: &Request) -> Response {
    if !request.path().contains("/manifests/") {
        return Response::json(404, &json!({"errors": [{"code": "BLOB_UNKNOWN"}]}));
    }
    let manifest = manifest_with_layers(1);
    let (content_type, body, digest) = match lie {
        Lie::IndexHeaderManifestBody => (OCI_INDEX, manifest.clone(), sha256(&manifest)),
        Lie::NotJson => (
            OCI_MANIFEST,
            b"<html>mirror busy</html>".to_vec(),
            String::new(),
        ),
        Lie::BadDigestHeader => (
            OCI_MANIFEST,
            manifest,
            "md5:d41d8cd98f00b204e9800998ecf8427e".into(),
        ),
    };
    let mut headers = vec![("Content-Type".to_string(), content_type.to_string())];
    if !digest.is_empty() {
        headers.push(("Docker-Content-Digest".to_string(), digest));
    }
    Response {
        status: 200,
        headers,
        body,
    }
}

/// A mirror that lies about its manifests comes first; the pull takes the image from
/// the real registry behind it and records the right digest.
#[rstest]
#[case::index_header_manifest_body(Lie::IndexHeaderManifestBody)]
#[case::not_json(Lie::NotJson)]
#[case::bad_digest_header(Lie::BadDigestHeader)]
#[tokio::test]
async fn a_lying_mirror_is_skipped(#[case] kind: Lie) {
    let env = harness::shared(Version::V1_7);
    let ns = env.containerd.namespace("hostile-mirror");
    let repo = harness::unique("test/hostile");
    let pushed = push(&repo, busybox_with(Vec::new())).await;
    let mirror = Responder::start(move |request| lie(kind, request));
    let registry = env.registry.addr();
    let mirror_flag = format!("{registry}=http://{}", mirror.addr());
    let stdout = ok(ctrpull_pull(
        &env.containerd,
        ns.name(),
        &["--mirror", &mirror_flag, &pushed.reference],
    ));
    assert!(stdout.contains(&pushed.digest), "{stdout}");
    let records = records(&env.containerd, ns.name());
    let (target, _) = records
        .get(&pushed.reference)
        .unwrap_or_else(|| panic!("no record {}: {records:?}", pushed.reference));
    assert_eq!(target, &pushed.digest);
    let asked = mirror.requests();
    assert!(
        asked.iter().any(|r| r.path().contains("/manifests/latest")),
        "the mirror was never asked: {asked:?}"
    );
    assert!(leases(&env.containerd, ns.name()).is_empty());
}

/// The only registry serves a manifest of 501 layers: the pull fails naming the cap,
/// asks for no blob, and leaves no image record and no lease.
#[tokio::test]
async fn too_many_layers_fail_before_any_blob() {
    let env = harness::shared(Version::V1_7);
    let ns = env.containerd.namespace("hostile-layers");
    let manifest = manifest_with_layers(501);
    let digest = sha256(&manifest);
    let registry = Responder::start(move |request| {
        if request.path().ends_with("/manifests/latest") {
            Response {
                status: 200,
                headers: vec![
                    ("Content-Type".into(), OCI_MANIFEST.into()),
                    ("Docker-Content-Digest".into(), digest.clone()),
                ],
                body: manifest.clone(),
            }
        } else {
            Response::json(404, &json!({"errors": [{"code": "BLOB_UNKNOWN"}]}))
        }
    });
    let reference = format!("{}/test/hostile:latest", registry.addr());
    let output = ctrpull_pull(&env.containerd, ns.name(), &[&reference]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("it lists 501 layers, more than the 500 an overlay filesystem can stack"),
        "{stderr}"
    );
    let asked = registry.requests();
    assert!(
        asked.iter().all(|r| !r.path().contains("/blobs/")),
        "a blob was fetched: {asked:?}"
    );
    assert!(records(&env.containerd, ns.name()).is_empty());
    assert!(leases(&env.containerd, ns.name()).is_empty());
}

/// `image` with diff ID `layer` of its config replaced by a digest that matches no
/// tar: the config and manifest are rewritten, and their descriptors follow.
fn with_wrong_diff_id(mut image: BuiltImage, layer: usize) -> BuiltImage {
    let descriptor = |media_type: MediaType, bytes: &[u8]| {
        let digest = Digest::from_str(&sha256(bytes)).expect("a sha256 digest");
        Descriptor::new(media_type, bytes.len() as u64, digest)
    };
    let mut config: Value = serde_json::from_slice(&image.config).expect("config JSON");
    config["rootfs"]["diff_ids"][layer] = json!(sha256(b"no layer unpacks to this"));
    let config = serde_json::to_vec(&config).expect("config JSON");
    image.config_descriptor = descriptor(MediaType::ImageConfig, &config);
    let mut manifest: Value = serde_json::from_slice(&image.manifest).expect("manifest JSON");
    manifest["config"]["digest"] = json!(image.config_descriptor.digest().to_string());
    manifest["config"]["size"] = json!(config.len());
    let manifest = serde_json::to_vec(&manifest).expect("manifest JSON");
    image.manifest_descriptor = descriptor(MediaType::ImageManifest, &manifest);
    image.config = config.into();
    image.manifest = manifest.into();
    image
}

/// The config's diff ID of the top layer is wrong (the registry serves every blob
/// as pushed, so each digest checks out): the pull fails naming the layer and both
/// diff IDs, and no snapshot is committed for that layer. The busybox layer below it
/// may be committed (its chain ID is its own diff ID); nothing else is, no snapshot
/// is left active, and no image record or lease is left.
#[tokio::test]
async fn a_layer_that_does_not_match_its_diff_id_is_not_committed() {
    let env = harness::shared(Version::V1_7);
    let ns = env.containerd.namespace("hostile-diffid");
    let spec = busybox_with(vec![LayerSource::Random {
        size: 4096,
        seed: fresh_seed(),
    }]);
    let dir = tempfile::tempdir().expect("a build directory");
    let built = builder::build(&spec, dir.path()).expect("build the image");
    let bottom = built.layers[0].diff_id.to_string();
    let top = built.layers[1].clone();
    let image = with_wrong_diff_id(built, 1);
    let repo = harness::unique("test/diffid");
    let registry = env.registry;
    builder::push(
        &registry.push_client(&repo),
        &registry.url(),
        &repo,
        "latest",
        &image,
    )
    .await
    .expect("push the image");
    let reference = format!("{}/{repo}:latest", registry.addr());

    let output = ctrpull_pull(&env.containerd, ns.name(), &[&reference]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "layer {} unpacked to {}, but the image config says its diff ID is {}",
        top.descriptor.digest(),
        top.diff_id,
        sha256(b"no layer unpacks to this")
    );
    assert!(stderr.contains(&expected), "{stderr}");
    let snapshots = env.containerd.ctr_ok(&["-n", ns.name(), "snapshots", "ls"]);
    for line in snapshots.lines().skip(1) {
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert!(
            columns.first() == Some(&bottom.as_str()) && columns.last() == Some(&"Committed"),
            "only the busybox layer may be committed, and nothing left active:\n{snapshots}"
        );
    }
    assert!(records(&env.containerd, ns.name()).is_empty());
    assert!(leases(&env.containerd, ns.name()).is_empty());
}
