//! Blob redirects to another host, against the real docker-registry: distribution's
//! `redirect` storage middleware answers every blob GET with a 307 to a static file
//! server, as registries backed by S3 or a CDN do. The pull must complete through that
//! host and never hand it the registry's credentials (CVE-2020-15157 is why).

use ctrpull::builder::LayerSource;

use crate::harness::{self, FileServer, Registry, Version};
use crate::mirrors::{assert_runs, pull, Files, CRI};
use crate::pull::{busybox_with, fresh_seed, push_to};

/// One containerd version: following the redirect is ctrpull's work, not containerd's.
#[tokio::test]
async fn redirected_blobs_come_from_storage_without_credentials() {
    let env = harness::shared(Version::V1_7);
    let ns = env.containerd.namespace("redirect");
    let storage = FileServer::start();
    let password = harness::unique("Secret");
    let registry = Registry::builder()
        .htpasswd("alice", &password)
        .redirect(&storage.url())
        .start();
    storage.serve(&registry.storage_dir());
    let repo = harness::unique("test/redirect");
    // Fresh layers (and so a fresh config): blobs no earlier pull left in containerd's
    // content store, so they must come through the redirect.
    let fresh: Vec<LayerSource> = (0..2)
        .map(|_| LayerSource::Random {
            size: 64 << 10,
            seed: fresh_seed(),
        })
        .collect();
    let pushed = push_to(&registry, &repo, busybox_with(fresh)).await;

    let files = Files::new();
    let config = files.config(&format!(
        "[{CRI}.configs.\"{}\".auth]\nusername = \"alice\"\npassword = \"{password}\"\n",
        registry.addr()
    ));
    let run = pull(
        &env.containerd,
        ns.name(),
        &config,
        &["--plain-http", &pushed.reference],
    );
    run.ok();
    assert!(
        !run.stdout().contains(&password) && !run.stderr().contains(&password),
        "the password was printed"
    );
    assert_runs(&env.containerd, ns.name(), &pushed.reference);

    // Every blob GET of ours was redirected, and the file server served each one.
    let redirected: Vec<_> = registry
        .blob_gets(&repo)
        .into_iter()
        .filter(|a| a.by_ctrpull())
        .collect();
    assert!(
        !redirected.is_empty() && redirected.iter().all(|a| a.status == 307),
        "{redirected:#?}"
    );
    let served = storage.requests();
    let served_hex = |digest: &str| {
        let data = format!("/{}/data", digest.trim_start_matches("sha256:"));
        served
            .iter()
            .any(|r| r.method == "GET" && r.path().ends_with(&data))
    };
    for get in &redirected {
        let digest = get.uri.rsplit('/').next().unwrap_or_default();
        assert!(served_hex(digest), "{digest} not served: {served:#?}");
    }
    let mut fresh_blobs = vec![pushed.image.config_descriptor.digest().to_string()];
    fresh_blobs.extend(
        pushed.image.layers[1..]
            .iter()
            .map(|l| l.descriptor.digest().to_string()),
    );
    for digest in &fresh_blobs {
        assert!(served_hex(digest), "{digest} not served: {served:#?}");
    }

    // The other host never saw the registry's credentials.
    for request in &served {
        assert!(
            request
                .header("user-agent")
                .is_some_and(|a| a.starts_with("ctrpull/")),
            "{request:#?}"
        );
        assert_eq!(
            request.header("authorization"),
            None,
            "credentials sent to the redirect target: {request:#?}"
        );
    }
    // The registry did: it authenticated alice.
    assert!(
        registry.log().contains("auth.user.name=alice"),
        "the registry never authenticated alice"
    );
}
