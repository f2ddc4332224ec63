//! Hostile registries against the real containerd: a mirror serving documents that
//! are not what they claim is skipped and the image comes from the real
//! docker-registry behind it; a registry serving a manifest no node could use fails
//! the pull with a clear reason before any blob is fetched, leaving nothing behind.

use rstest::rstest;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::harness::{self, Request, Responder, Response, Version};
use crate::pull::{busybox_with, ctrpull_pull, leases, ok, push, records};

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
