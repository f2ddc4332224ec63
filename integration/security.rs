//! Security properties, against the real containerd and docker-registry: secrets are
//! never printed at any verbosity nor by `ctrpull hosts`; Authorization never follows
//! a redirect to another host; TLS is verified unless `skip_verify` is configured for
//! that very host.
//!
//! Related tests elsewhere: `redirect.rs` (Basic credentials and a blob redirect to a
//! storage host), `mirrors.rs` (`https_registry`: CA from hosts.toml and config.toml,
//! client certificates, no CA refused; wrong passwords not printed), `hosts_cli.rs`
//! (`ctrpull hosts` on files alone).

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ctrpull::builder::LayerSource;

use crate::harness::{self, FileServer, Registry, TestCa, TokenServer, Version};
use crate::mirrors::{assert_runs, pull, Files, CRI};
use crate::pull::{busybox_with, fresh_seed, push_to, records};

/// How each pull of the secrets test is run: its flags and environment.
const VERBOSITIES: [(&str, &[&str], Option<&str>); 5] = [
    ("-q", &["-q"], None),
    ("default", &[], None),
    ("-v", &["-v"], None),
    ("-vv", &["-vv"], None),
    ("RUST_LOG=trace", &[], Some("trace")),
];

/// busybox and one small fresh layer, so each pull downloads (and authenticates for)
/// a blob no earlier pull put into containerd's shared content store.
fn fresh_image() -> ctrpull::builder::ImageSpec {
    busybox_with(vec![LayerSource::Random {
        size: 16 << 10,
        seed: fresh_seed(),
    }])
}

/// Everything ctrpull wrote that a secret could leak into, by where it came from.
#[derive(Default)]
struct Outputs {
    texts: Vec<(String, String)>,
}

impl Outputs {
    /// Adds a process's stdout and stderr.
    fn output(&mut self, what: &str, output: &Output) {
        self.text(
            &format!("{what} stdout"),
            String::from_utf8_lossy(&output.stdout),
        );
        self.text(
            &format!("{what} stderr"),
            String::from_utf8_lossy(&output.stderr),
        );
    }

    /// Adds any text ctrpull wrote, e.g. a file's contents.
    fn text(&mut self, what: &str, text: impl Into<String>) {
        self.texts.push((what.to_owned(), text.into()));
    }

    /// Panics naming the output and the kind of secret when any output holds any.
    fn assert_free_of(&self, secrets: &[(String, String)]) {
        for (what, text) in &self.texts {
            for (kind, secret) in secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "{what} contains the {kind}:\n{text}"
                );
            }
        }
    }
}

/// Pulls with credentials from every source ctrpull reads — config.toml
/// `registry.configs` (username/password for a Basic registry, base64 `auth` for a
/// second), and Docker's config.json (for a Bearer registry, whose token server
/// issues tokens) — at every verbosity, and runs `ctrpull hosts` (text and JSON) for
/// each registry. No output holds a password, a base64 `user:password`, an issued
/// token or the token server's refresh token.
#[tokio::test]
async fn secrets_are_never_printed_at_any_verbosity() {
    let env = harness::shared(Version::V1_7);
    let ca = TestCa::new();
    let basic_password = harness::unique("BasicSecret");
    let basic = Registry::builder()
        .htpasswd("erin", &basic_password)
        .start();
    let encoded_password = harness::unique("EncodedSecret");
    let encoded = Registry::builder()
        .htpasswd("frank", &encoded_password)
        .start();
    let token_password = harness::unique("TokenSecret");
    let tokens = TokenServer::start(&ca, "dave", &token_password);
    let bearer = Registry::builder().token_auth(&tokens).start();

    let basic_auth = STANDARD.encode(format!("erin:{basic_password}"));
    let encoded_auth = STANDARD.encode(format!("frank:{encoded_password}"));
    let docker_auth = STANDARD.encode(format!("dave:{token_password}"));
    let files = Files::new();
    let config = files.config(&format!(
        "[{CRI}.configs.\"{basic}\".auth]\n  username = \"erin\"\n  password = \"{basic_password}\"\n\n\
         [{CRI}.configs.\"{encoded}\".auth]\n  auth = \"{encoded_auth}\"\n",
        basic = basic.addr(),
        encoded = encoded.addr(),
    ));
    // `pull` points DOCKER_CONFIG at config.toml's directory.
    let docker_config = config.with_file_name("config.json");
    std::fs::write(
        &docker_config,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{docker_auth}"}}}}}}"#,
            bearer.addr()
        ),
    )
    .expect("write config.json");

    let mut outputs = Outputs::default();
    for (label, flags, rust_log) in VERBOSITIES {
        let ns = env.containerd.namespace("security-secrets");
        let mut references = Vec::new();
        for registry in [&basic, &encoded, &bearer] {
            let repo = harness::unique("test/secrets");
            let pushed = push_to(registry, &repo, fresh_image()).await;
            references.push((pushed.reference.clone(), pushed.digest.clone()));
        }
        let mut args: Vec<&str> = flags.to_vec();
        args.push("--plain-http");
        args.extend(references.iter().map(|(r, _)| r.as_str()));
        let run = match rust_log {
            Some(level) => crate::mirrors::pull_with_env(
                &env.containerd,
                ns.name(),
                &config,
                &args,
                &[("RUST_LOG", level)],
            ),
            None => pull(&env.containerd, ns.name(), &config, &args),
        };
        run.ok();
        let records = records(&env.containerd, ns.name());
        for (reference, digest) in &references {
            assert_eq!(
                records.get(reference).map(|r| r.0.as_str()),
                Some(digest.as_str()),
                "{label}: {reference}"
            );
        }
        let stderr = run.stderr();
        if label == "-q" {
            assert!(
                run.stdout().is_empty() && stderr.is_empty(),
                "-q printed something:\n{}{stderr}",
                run.stdout()
            );
        } else if label != "default" {
            // A log that never mentions the images could not have leaked much.
            for (reference, _) in &references {
                assert!(
                    stderr.contains(reference.as_str()),
                    "{label} logged nothing about {reference}:\n{stderr}"
                );
            }
        }
        outputs.text(&format!("pull {label} stdout"), run.stdout());
        outputs.text(&format!("pull {label} stderr"), stderr);
    }
    for registry in [&basic, &encoded, &bearer] {
        for format in ["text", "json"] {
            let reference = format!("{}/test/any:latest", registry.addr());
            let output = hosts(&config, &docker_config, format, &reference);
            assert!(
                output.status.success(),
                "ctrpull hosts {reference} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                stdout.contains(&registry.addr()),
                "ctrpull hosts does not show {}: {stdout}",
                registry.addr()
            );
            outputs.output(&format!("hosts --output {format} {reference}"), &output);
        }
    }
    // Every credential was used: each registry authenticated its user, tokens were issued.
    assert!(basic.log().contains("auth.user.name=erin"));
    assert!(encoded.log().contains("auth.user.name=frank"));
    let issued: Vec<String> = tokens
        .requests()
        .into_iter()
        .filter_map(|r| r.token)
        .collect();
    assert!(!issued.is_empty(), "no token was issued");
    let mut secrets = vec![
        ("Basic password".to_owned(), basic_password.clone()),
        ("base64 auth password".to_owned(), encoded_password.clone()),
        ("token server password".to_owned(), token_password.clone()),
        ("base64 user:password".to_owned(), basic_auth),
        ("config.toml base64 auth".to_owned(), encoded_auth),
        ("config.json base64 auth".to_owned(), docker_auth),
        (
            "refresh token".to_owned(),
            tokens.refresh_token().to_owned(),
        ),
    ];
    for token in issued {
        // A JWT's signature alone identifies it.
        let signature = token.rsplit('.').next().unwrap_or_default().to_owned();
        secrets.push(("issued token's signature".to_owned(), signature));
        secrets.push(("issued token".to_owned(), token));
    }
    outputs.assert_free_of(&secrets);
}

/// `ctrpull hosts --output <format> <reference>` with the test's files.
fn hosts(config: &Path, docker_config: &Path, format: &str, reference: &str) -> Output {
    harness::ctrpull()
        .arg("hosts")
        .arg("--config")
        .arg(config)
        .arg("--docker-config")
        .arg(docker_config)
        .args(["--plain-http", "--output", format, reference])
        .output()
        .expect("run ctrpull hosts")
}

/// A Bearer-token registry whose blob GETs redirect to a storage host: the pull
/// completes through the storage host, which never receives the token (or any
/// Authorization), while the registry received it. `redirect.rs` proves the same for
/// Basic credentials.
#[tokio::test]
async fn bearer_token_is_not_sent_to_the_redirect_target() {
    let env = harness::shared(Version::V1_6);
    let ns = env.containerd.namespace("security-redirect");
    let ca = TestCa::new();
    let password = harness::unique("Secret");
    let tokens = TokenServer::start(&ca, "grace", &password);
    let storage = FileServer::start();
    let registry = Registry::builder()
        .token_auth(&tokens)
        .redirect(&storage.url())
        .start();
    storage.serve(&registry.storage_dir());
    let repo = harness::unique("test/redirect-token");
    let pushed = push_to(&registry, &repo, fresh_image()).await;
    let files = Files::new();
    let config = files.config(&format!(
        "[{CRI}.configs.\"{}\".auth]\n  username = \"grace\"\n  password = \"{password}\"\n",
        registry.addr()
    ));
    pull(
        &env.containerd,
        ns.name(),
        &config,
        &["--plain-http", &pushed.reference],
    )
    .ok();
    assert_runs(&env.containerd, ns.name(), &pushed.reference);

    let redirected: Vec<_> = registry
        .blob_gets(&repo)
        .into_iter()
        .filter(|a| a.by_ctrpull() && a.status == 307)
        .collect();
    assert!(!redirected.is_empty(), "no blob GET was redirected");
    let served = storage.requests();
    assert!(
        served.iter().any(|r| r.method == "GET"),
        "the storage host served nothing"
    );
    for request in &served {
        assert_eq!(
            request.header("authorization"),
            None,
            "the storage host got an Authorization header: {request:#?}"
        );
    }
    // The registry itself got the token: distribution accepted it for grace.
    let issued = tokens
        .requests()
        .into_iter()
        .filter_map(|r| r.token)
        .count();
    assert!(issued >= 1, "no token was issued");
    assert!(
        registry
            .access_log()
            .iter()
            .any(|a| a.by_ctrpull() && a.status == 307),
        "the registry never accepted the token"
    );
}

/// Two HTTPS registries with self-signed certificates from two test CAs; hosts.toml
/// sets `skip_verify` for the first only and gives the second the *first* one's CA.
/// The first is pulled from; the second is refused with a message about its
/// certificate and address, serving no blob; given its own CA, it is pulled from.
#[tokio::test]
async fn tls_is_verified_unless_skip_verify_is_set_for_that_host() {
    let env = harness::shared(Version::V1_7);
    let ns = env.containerd.namespace("security-tls");
    let (ca_one, ca_two) = (TestCa::new(), TestCa::new());
    let skipped = Registry::builder().tls(&ca_one).start();
    let verified = Registry::builder().tls(&ca_two).start();
    let repo = harness::unique("test/tls");
    let skipped_image = push_to(&skipped, &repo, fresh_image()).await;
    let verified_image = push_to(&verified, &repo, fresh_image()).await;
    let files = Files::new();
    let quoted = |p: PathBuf| format!("{:?}", p.display().to_string());
    let hosts_toml = |registry: &Registry, settings: &str| {
        let addr = registry.addr();
        files.hosts_toml(&addr, &format!("server = \"https://{addr}\"\n{settings}"));
    };
    hosts_toml(&skipped, "skip_verify = true\n");
    hosts_toml(&verified, &format!("ca = {}\n", quoted(ca_one.ca_file())));
    let hosts = files.hosts_dir();
    let config = files.config("");
    let args = |reference: &str| -> Vec<String> {
        vec![
            "--hosts-dir".into(),
            hosts.display().to_string(),
            reference.to_owned(),
        ]
    };
    let run = |reference: &str| {
        let args = args(reference);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pull(&env.containerd, ns.name(), &config, &args)
    };

    run(&skipped_image.reference).ok();
    let refused = run(&verified_image.reference);
    let stderr = refused.failed();
    assert!(
        stderr.to_lowercase().contains("certificate") && stderr.contains(&verified.addr()),
        "the refusal should name the certificate and the registry:\n{stderr}"
    );
    assert!(
        verified.blob_gets(&repo).is_empty(),
        "a blob was served over an unverified connection"
    );
    let records = records(&env.containerd, ns.name());
    assert!(
        records.contains_key(&skipped_image.reference),
        "{records:?}"
    );
    assert!(
        !records.contains_key(&verified_image.reference),
        "{records:?}"
    );

    // With its own CA the same registry is accepted.
    hosts_toml(&verified, &format!("ca = {}\n", quoted(ca_two.ca_file())));
    run(&verified_image.reference).ok();
    let records = crate::pull::records(&env.containerd, ns.name());
    assert_eq!(
        records.get(&verified_image.reference).map(|r| r.0.as_str()),
        Some(verified_image.digest.as_str())
    );
}
