//! Security properties, against the real containerd and docker-registry: secrets are
//! never printed at any verbosity, nor written to a report, metrics file or JSON
//! progress, nor shown by `ctrpull hosts`; Authorization never follows a redirect to
//! another host; TLS is verified unless `skip_verify` is configured for that very
//! host. `output_files` checks how report, metrics and ready files are written.
//!
//! Related tests elsewhere: `redirect.rs` (Basic credentials and a blob redirect to a
//! storage host), `mirrors.rs` (`https_registry`: CA from hosts.toml and config.toml,
//! client certificates, no CA refused; wrong passwords not printed), `hosts_cli.rs`
//! (`ctrpull hosts` on files alone).

mod output_files;

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ctrpull::builder::LayerSource;
use serde_json::Value;

use crate::harness::{self, Containerd, FileServer, Registry, TestCa, TokenServer, Version};
use crate::mirrors::{assert_runs, pull, Files, CRI};
use crate::pull::{busybox_with, fresh_seed, push_to, records};

/// Where a run must name the images it pulled: a run that never names them could not
/// have leaked much, so each is checked to have said something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Names {
    /// Nowhere: `-q` prints nothing at all.
    Nowhere,
    /// On stdout: the summary lines, or JSON-lines progress.
    Stdout,
    /// On stderr: the log.
    Stderr,
}

/// How one pull of the secrets test is run.
struct Verbosity {
    /// Its name in failure messages.
    label: &'static str,
    /// Flags of `ctrpull pull`.
    flags: &'static [&'static str],
    /// `RUST_LOG`, when set.
    rust_log: Option<&'static str>,
    /// Where the run names its images.
    names: Names,
}

/// Every verbosity and progress mode a pull of the secrets test runs at; each also
/// writes `--report` and `--metrics-file`.
const VERBOSITIES: [Verbosity; 6] = [
    Verbosity {
        label: "-q",
        flags: &["-q"],
        rust_log: None,
        names: Names::Nowhere,
    },
    Verbosity {
        label: "default",
        flags: &[],
        rust_log: None,
        names: Names::Stdout,
    },
    Verbosity {
        label: "-v",
        flags: &["-v"],
        rust_log: None,
        names: Names::Stderr,
    },
    Verbosity {
        label: "-vv",
        flags: &["-vv"],
        rust_log: None,
        names: Names::Stderr,
    },
    Verbosity {
        label: "RUST_LOG=trace",
        flags: &[],
        rust_log: Some("trace"),
        names: Names::Stderr,
    },
    Verbosity {
        label: "--progress json",
        flags: &["--progress", "json"],
        rust_log: None,
        names: Names::Stdout,
    },
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

    /// Adds the `--report` and `--metrics-file` files of the run `what`, after checking
    /// that each names every one of `references` (an empty file would prove nothing).
    fn files(&mut self, what: &str, report: &Path, metrics: &Path, references: &[&str]) {
        for (kind, path) in [("report", report), ("metrics", metrics)] {
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
                panic!("{what}: reading the {kind} file {}: {e}", path.display())
            });
            assert_names(what, &format!("the {kind} file"), &text, references);
            self.text(&format!("{what} {kind} file"), text);
        }
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
/// issues tokens) — at every verbosity and with JSON-lines progress, each pull
/// writing `--report` and `--metrics-file`. Then `ctrpull warm` of the three and of a
/// fourth registry for which config.toml holds a wrong password, so that the warm's
/// log, progress, report and metrics hold a failed authentication too. Last,
/// `ctrpull hosts` (text and JSON) for each registry. No output and no file holds a
/// password, a base64 `user:password`, an issued token or the token server's refresh
/// token.
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
    let locked = Registry::builder()
        .htpasswd("gina", &harness::unique("LockedPassword"))
        .start();
    let wrong_password = harness::unique("WrongSecret");

    let basic_auth = STANDARD.encode(format!("erin:{basic_password}"));
    let encoded_auth = STANDARD.encode(format!("frank:{encoded_password}"));
    let docker_auth = STANDARD.encode(format!("dave:{token_password}"));
    let wrong_auth = STANDARD.encode(format!("gina:{wrong_password}"));
    let files = Files::new();
    let config = files.config(&format!(
        "[{CRI}.configs.\"{basic}\".auth]\n  username = \"erin\"\n  password = \"{basic_password}\"\n\n\
         [{CRI}.configs.\"{encoded}\".auth]\n  auth = \"{encoded_auth}\"\n\n\
         [{CRI}.configs.\"{locked}\".auth]\n  username = \"gina\"\n  password = \"{wrong_password}\"\n",
        basic = basic.addr(),
        encoded = encoded.addr(),
        locked = locked.addr(),
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
    let written = tempfile::tempdir().expect("a directory for reports and metrics");

    let mut outputs = Outputs::default();
    for (n, verbosity) in VERBOSITIES.iter().enumerate() {
        let label = verbosity.label;
        let ns = env.containerd.namespace("security-secrets");
        let mut references = Vec::new();
        for registry in [&basic, &encoded, &bearer] {
            let repo = harness::unique("test/secrets");
            let pushed = push_to(registry, &repo, fresh_image()).await;
            references.push((pushed.reference.clone(), pushed.digest.clone()));
        }
        let names: Vec<&str> = references.iter().map(|(r, _)| r.as_str()).collect();
        let report = written.path().join(format!("pull-{n}.json"));
        let metrics = written.path().join(format!("pull-{n}.prom"));
        let report_arg = report.display().to_string();
        let metrics_arg = metrics.display().to_string();
        let mut args: Vec<&str> = verbosity.flags.to_vec();
        args.extend([
            "--plain-http",
            "--report",
            &report_arg,
            "--metrics-file",
            &metrics_arg,
        ]);
        args.extend(&names);
        let vars: Vec<(&str, &str)> = verbosity
            .rust_log
            .map(|level| ("RUST_LOG", level))
            .into_iter()
            .collect();
        let run = crate::mirrors::pull_with_env(&env.containerd, ns.name(), &config, &args, &vars);
        run.ok();
        let records = records(&env.containerd, ns.name());
        for (reference, digest) in &references {
            assert_eq!(
                records.get(reference).map(|r| r.0.as_str()),
                Some(digest.as_str()),
                "{label}: {reference}"
            );
        }
        let (stdout, stderr) = (run.stdout(), run.stderr());
        match verbosity.names {
            Names::Nowhere => assert!(
                stdout.is_empty() && stderr.is_empty(),
                "{label} printed something:\n{stdout}{stderr}"
            ),
            Names::Stdout => assert_names(label, "stdout", &stdout, &names),
            Names::Stderr => assert_names(label, "stderr", &stderr, &names),
        }
        if verbosity.flags.contains(&"json") {
            assert_json_lines(label, &stdout);
        }
        outputs.text(&format!("pull {label} stdout"), stdout);
        outputs.text(&format!("pull {label} stderr"), stderr);
        outputs.files(&format!("pull {label}"), &report, &metrics, &names);
    }

    // A warm of fresh images from all four registries, one of which refuses.
    let ns = env.containerd.namespace("security-secrets-warm");
    let mut references = Vec::new();
    for registry in [&basic, &encoded, &bearer] {
        let pushed = push_to(registry, &harness::unique("test/secrets"), fresh_image()).await;
        references.push((pushed.reference.clone(), pushed.digest.clone()));
    }
    let refused = push_to(&locked, &harness::unique("test/secrets"), fresh_image())
        .await
        .reference;
    let mut names: Vec<&str> = references.iter().map(|(r, _)| r.as_str()).collect();
    names.push(&refused);
    let list = written.path().join("images.txt");
    std::fs::write(&list, names.join("\n") + "\n").expect("write the image list");
    let report = written.path().join("warm.json");
    let metrics = written.path().join("warm.prom");
    let output = warm(
        &env.containerd,
        ns.name(),
        &config,
        &[
            "-vv",
            "--progress",
            "json",
            "--plain-http",
            "-f",
            &list.display().to_string(),
            "--report",
            &report.display().to_string(),
            "--metrics-file",
            &metrics.display().to_string(),
        ],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "the warm should fail on {refused} alone:\n{stderr}"
    );
    let records = records(&env.containerd, ns.name());
    for (reference, digest) in &references {
        assert_eq!(
            records.get(reference).map(|r| r.0.as_str()),
            Some(digest.as_str()),
            "warm: {reference}"
        );
    }
    assert_names("warm", "stdout", &stdout, &names);
    assert_names("warm", "stderr", &stderr, &names);
    assert_json_lines("warm", &stdout);
    let warm_report: Value =
        serde_json::from_slice(&std::fs::read(&report).expect("read the report"))
            .expect("the report is JSON");
    let failed = warm_report["images"]
        .as_array()
        .expect("the report lists images")
        .iter()
        .find(|i| i["reference"] == refused.as_str())
        .unwrap_or_else(|| panic!("no {refused} in {warm_report:#}"));
    assert_eq!(failed["status"], "failed", "{failed:#}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&locked.addr()),
        "the failure's reason names the registry: {reason}"
    );
    outputs.output("warm", &output);
    outputs.files("warm", &report, &metrics, &names);

    for registry in [&basic, &encoded, &bearer, &locked] {
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
    // Every credential was used: each registry authenticated its user (or refused the
    // wrong password), tokens were issued.
    assert!(basic.log().contains("auth.user.name=erin"));
    assert!(encoded.log().contains("auth.user.name=frank"));
    assert!(
        locked
            .access_log()
            .iter()
            .any(|a| a.by_ctrpull() && a.status == 401),
        "the locked registry never refused ctrpull"
    );
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
        ("wrong password".to_owned(), wrong_password.clone()),
        ("base64 user:password".to_owned(), basic_auth),
        ("config.toml base64 auth".to_owned(), encoded_auth),
        ("config.json base64 auth".to_owned(), docker_auth),
        ("base64 user:wrong password".to_owned(), wrong_auth),
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

/// Panics unless `text`, the `stream` of the run `label`, names every one of
/// `references`.
fn assert_names(label: &str, stream: &str, text: &str, references: &[&str]) {
    for reference in references {
        assert!(
            text.contains(reference),
            "{label}: {stream} says nothing about {reference}:\n{text}"
        );
    }
}

/// Panics unless every line of `stdout`, of the run `label`, is a JSON object.
fn assert_json_lines(label: &str, stdout: &str) {
    for line in stdout.lines() {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{label}: a stdout line is not JSON ({e}): {line}"));
        assert!(value.is_object(), "{label}: {line}");
    }
}

/// `ctrpull warm <args>` against `containerd` in `namespace` with the test's
/// config.toml, and its directory as `DOCKER_CONFIG`, as [`pull`] does.
fn warm(containerd: &Containerd, namespace: &str, config: &Path, args: &[&str]) -> Output {
    harness::ctrpull()
        .arg("warm")
        .arg("--address")
        .arg(containerd.socket())
        .args(["--namespace", namespace])
        .arg("--config")
        .arg(config)
        .env(
            "DOCKER_CONFIG",
            config.parent().expect("config.toml is in a directory"),
        )
        .args(args)
        .output()
        .expect("run ctrpull warm")
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
