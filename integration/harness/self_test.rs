//! Checks of the harness itself: the registry variants and the token server behave
//! as the tests that rely on them assume.

use ctrpull::builder::{self, FileEntry, ImageSpec, LayerSource};

use super::{unique, Registry, TestCa, TokenServer};

/// Builds a one-file image and pushes it as `<repo>:latest`; its manifest digest.
async fn push(registry: &Registry, repo: &str) -> String {
    let workdir = tempfile::tempdir().unwrap();
    let path = workdir.path().to_owned();
    let spec = ImageSpec {
        layers: vec![LayerSource::Files(vec![FileEntry::file(
            "hello",
            b"hello\n".to_vec(),
            0o644,
        )])],
        ..ImageSpec::default()
    };
    let image = tokio::task::spawn_blocking(move || builder::build(&spec, &path))
        .await
        .unwrap()
        .expect("build image");
    builder::push(
        &registry.push_client(repo),
        &registry.url(),
        repo,
        "latest",
        &image,
    )
    .await
    .expect("push image")
    .digest()
    .to_string()
}

/// Each registry variant enforces what it is configured for, checked with a plain
/// reqwest client: no ctrpull test can pass because, say, the htpasswd registry
/// quietly served anonymous pulls or the mTLS one took connections without a
/// client certificate.
#[tokio::test]
async fn registries_enforce_their_configuration() {
    let ca = TestCa::new();
    let repo = unique("test/harness");

    // HTTPS with client certificates.
    let mtls = Registry::builder().tls(&ca).client_ca(&ca).start();
    let digest = push(&mtls, &repo).await;
    let v2 = mtls.url().join("v2/").unwrap();
    let no_ca = reqwest::Client::new().get(v2.clone()).send().await;
    assert!(no_ca.is_err(), "an unknown CA was accepted: {no_ca:?}");
    let ca_only = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let without_cert = ca_only.get(v2.clone()).send().await;
    assert!(
        without_cert.is_err(),
        "mTLS registry answered without a client certificate: {without_cert:?}"
    );
    let status = mtls
        .push_client(&repo)
        .get(v2)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    assert!(digest.starts_with("sha256:"));

    // htpasswd.
    let basic = Registry::builder().htpasswd("alice", "wonderland").start();
    push(&basic, &repo).await;
    let anonymous = reqwest::get(basic.url().join("v2/").unwrap())
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let challenge = anonymous.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Basic "), "{challenge}");

    // Token auth: the registry accepts the token server's tokens and nothing else.
    let tokens = TokenServer::start(&ca, "bob", "builder");
    let bearer = Registry::builder().token_auth(&tokens).start();
    let digest = push(&bearer, &repo).await;
    let manifest = bearer
        .url()
        .join(&format!("v2/{repo}/manifests/latest"))
        .unwrap();
    let client = reqwest::Client::new();
    let denied = client.get(manifest.clone()).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    let challenge = denied.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains(&format!("realm=\"{}\"", tokens.realm()))
            && challenge.contains(&format!("service=\"{}\"", tokens.signer().service())),
        "{challenge}"
    );
    let scope = format!("repository:{repo}:pull");
    let token_answer = |user: &str, password: &str| {
        client
            .get(tokens.realm())
            .query(&[("service", tokens.signer().service()), ("scope", &scope)])
            .basic_auth(user, Some(password))
            .send()
    };
    assert_eq!(token_answer("bob", "wrong").await.unwrap().status(), 401);
    let body: serde_json::Value = token_answer("bob", "builder")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = body["token"].as_str().unwrap();
    let fetched = client
        .get(manifest.clone())
        .bearer_auth(token)
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200, "{}", bearer.log());
    assert_eq!(
        fetched.headers()["docker-content-digest"].to_str().unwrap(),
        digest
    );
    let form = client
        .post(tokens.realm())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens.refresh_token()),
            ("service", tokens.signer().service()),
            ("scope", &scope),
            ("client_id", "harness"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);
    let requests = tokens.requests();
    let seen: Vec<_> = requests
        .iter()
        .map(|r| {
            (
                r.method.as_str(),
                r.grant_type.as_deref(),
                r.credentials,
                r.status,
            )
        })
        .collect();
    use super::Credentials::{Invalid, Valid};
    assert_eq!(
        seen,
        [
            ("GET", None, Invalid, 401),
            ("GET", None, Valid, 200),
            ("POST", Some("refresh_token"), Valid, 200),
        ]
    );
    // An anonymous token grants nothing.
    let anonymous: serde_json::Value = client
        .get(tokens.realm())
        .query(&[("service", tokens.signer().service()), ("scope", &scope)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refused = client
        .get(manifest)
        .bearer_auth(anonymous["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
}
