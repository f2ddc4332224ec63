//! Mirrors, failover, auth and TLS: `ctrpull pull` against real containerd and real
//! docker-registry instances configured through config.toml, hosts.toml and `--mirror`,
//! asserted through `ctr`, the registries' logs, the fault endpoints' counters and the
//! token server's records.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ctrpull::builder::{ImageSpec, LayerSource};
use rstest::rstest;

use crate::harness::{self, Containerd, Registry, TestCa, TokenServer, Version};
use crate::pull::{busybox_with, fresh_seed, leases, push_to, records};

/// The response timeout ctrpull documents as its default: a black hole costs this much.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A registry name no resolver knows (RFC 2606): the implicit upstream of a mirrored
/// name can never be what served a pull.
const NOWHERE: &str = "nowhere.invalid";

/// busybox plus `extra` small random layers, each with a seed of its own.
fn layered(extra: usize) -> ImageSpec {
    busybox_with(
        (0..extra)
            .map(|_| LayerSource::Random {
                size: 4096,
                seed: fresh_seed(),
            })
            .collect(),
    )
}

/// A directory of configuration files for one test, removed when dropped.
pub(crate) struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    pub(crate) fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Where `relative` is in the directory (for a file a command will write).
    pub(crate) fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes `contents` to `relative` (creating directories) and returns its path.
    fn write(&self, relative: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// A hosts.toml directory root (`--hosts-dir` / `config_path`).
    pub(crate) fn hosts_dir(&self) -> PathBuf {
        let dir = self.dir.path().join("certs.d");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes `<hosts dir>/<registry>/hosts.toml`.
    pub(crate) fn hosts_toml(&self, registry: &str, contents: &str) -> PathBuf {
        self.write(&format!("certs.d/{registry}/hosts.toml"), contents)
    }

    /// Writes config.toml: `version = 2` and the CRI registry section `body`.
    pub(crate) fn config(&self, body: &str) -> PathBuf {
        self.write("config.toml", format!("version = 2\n\n{body}"))
    }
}

/// The outcome of one `ctrpull pull`.
pub(crate) struct Run {
    output: Output,
    elapsed: Duration,
}

impl Run {
    pub(crate) fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Panics with the output unless the pull succeeded.
    pub(crate) fn ok(&self) -> &Self {
        assert!(
            self.output.status.success(),
            "ctrpull failed ({}) after {:.1?}:\nstdout: {}\nstderr: {}",
            self.output.status,
            self.elapsed,
            self.stdout(),
            self.stderr()
        );
        self
    }

    /// Panics unless the pull failed with exit code 1; returns stderr.
    pub(crate) fn failed(&self) -> String {
        eprintln!("ctrpull failed as expected:\n{}", self.stderr());
        assert_eq!(
            self.output.status.code(),
            Some(1),
            "expected a failed pull (exit 1):\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self.stderr()
    }
}

/// Runs `ctrpull pull --config <config> <args>` against `containerd` in `namespace`.
/// The explicit `--config` keeps the host's /etc/containerd/config.toml out of it, and
/// `DOCKER_CONFIG` pointing at the config's directory (which has no config.json) the
/// host's Docker credentials.
pub(crate) fn pull(containerd: &Containerd, namespace: &str, config: &Path, args: &[&str]) -> Run {
    pull_with_env(containerd, namespace, config, args, &[])
}

pub(crate) fn pull_with_env(
    containerd: &Containerd,
    namespace: &str,
    config: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Run {
    let mut cmd = harness::ctrpull();
    cmd.arg("pull")
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
        .envs(env.iter().copied());
    let start = Instant::now();
    let output = cmd.output().expect("run ctrpull");
    Run {
        output,
        elapsed: start.elapsed(),
    }
}

/// Asserts that `name` (as pulled, `<registry>/<repo>:latest`) is recorded in
/// `namespace` pointing at `digest`, and that no lease was left behind.
fn assert_recorded(containerd: &Containerd, namespace: &str, name: &str, digest: &str) {
    let records = records(containerd, namespace);
    let (target, _) = records
        .get(name)
        .unwrap_or_else(|| panic!("no image record {name}: {records:?}"));
    assert_eq!(target, digest, "record {name}");
    assert!(
        leases(containerd, namespace).is_empty(),
        "a lease was left behind"
    );
}

/// Asserts that a failed pull left no image record and no lease.
fn assert_nothing_left(containerd: &Containerd, namespace: &str) {
    let records = records(containerd, namespace);
    assert!(records.is_empty(), "records left: {records:?}");
    assert!(
        leases(containerd, namespace).is_empty(),
        "a lease was left behind"
    );
}

/// Runs `/bin/busybox echo ok` in `name` and asserts it printed "ok".
pub(crate) fn assert_runs(containerd: &Containerd, namespace: &str, name: &str) {
    let out = containerd.run_busybox(namespace, name, &["echo", "ok"]);
    assert_eq!(out.trim(), "ok");
}

/// A failed pull's message should name the problem; compared case-insensitively.
fn assert_mentions(stderr: &str, any_of: &[&str]) {
    let lower = stderr.to_lowercase();
    assert!(
        any_of
            .iter()
            .any(|word| lower.contains(&word.to_lowercase())),
        "stderr mentions none of {any_of:?}:\n{stderr}"
    );
}

/// How a dead first mirror fails.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Nothing listens: connection refused at once.
    ClosedPort,
    /// Answers 500 to everything.
    Status500,
    /// An empty docker-registry: 404 for every manifest and blob.
    NotFound,
    /// Accepts connections and never answers: the response timeout fires.
    BlackHole,
}

/// A running dead endpoint (kept alive for the test).
enum Dead {
    Closed(harness::ClosedPort),
    Status(harness::StatusServer),
    Empty(Box<Registry>),
    Hole(harness::BlackHole),
}

impl Dead {
    fn start(fault: Fault) -> Dead {
        match fault {
            Fault::ClosedPort => Dead::Closed(harness::ClosedPort::new()),
            Fault::Status500 => Dead::Status(harness::StatusServer::start(500)),
            Fault::NotFound => Dead::Empty(Box::new(Registry::start())),
            Fault::BlackHole => Dead::Hole(harness::BlackHole::start()),
        }
    }

    fn addr(&self) -> String {
        match self {
            Dead::Closed(c) => c.addr(),
            Dead::Status(s) => s.addr(),
            Dead::Empty(r) => r.addr(),
            Dead::Hole(h) => h.addr(),
        }
    }
}

/// At most this many connections to (or requests of) a demoted endpoint in one pull:
/// the resolve and a few blobs already in flight when it failed, never one per blob.
const HANDFUL: usize = 5;

/// Two mirrors, the first dead: the pull succeeds from the second, paying the dead
/// one's failure once per run rather than once per layer (20 layers here).
#[rstest]
#[case::closed_port_v1_6(Fault::ClosedPort, Version::V1_6)]
#[case::closed_port_v1_7(Fault::ClosedPort, Version::V1_7)]
#[case::status_500_v1_6(Fault::Status500, Version::V1_6)]
#[case::status_500_v1_7(Fault::Status500, Version::V1_7)]
#[case::not_found_v1_6(Fault::NotFound, Version::V1_6)]
#[case::not_found_v1_7(Fault::NotFound, Version::V1_7)]
#[case::black_hole_v1_7(Fault::BlackHole, Version::V1_7)]
#[tokio::test]
async fn first_mirror_dead_pulls_from_the_second(#[case] fault: Fault, #[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("mirror-failover");
    let repo = harness::unique("test/failover");
    let pushed = crate::pull::push(&repo, layered(19)).await;
    assert_eq!(pushed.image.layers.len(), 20);
    let dead = Dead::start(fault);
    let files = Files::new();
    files.hosts_toml(
        NOWHERE,
        &format!(
            r#"# No server: the implicit upstream https://{NOWHERE}/v2 cannot answer.
[host."http://{dead}"]
  capabilities = ["pull", "resolve"]

[host."http://{good}"]
  capabilities = ["pull", "resolve"]
"#,
            dead = dead.addr(),
            good = env.registry.addr(),
        ),
    );
    let config = files.config("");
    let name = format!("{NOWHERE}/{repo}:latest");
    let hosts = files.hosts_dir();
    let run = pull(
        &env.containerd,
        ns.name(),
        &config,
        &["--hosts-dir", hosts.to_str().unwrap(), &name],
    );
    run.ok();
    eprintln!(
        "{fault:?} first, {version}: 20-layer pull took {:.2?}",
        run.elapsed
    );
    // One response timeout at most, never one per layer (or per batch of layers).
    assert!(
        run.elapsed < RESPONSE_TIMEOUT * 2,
        "{fault:?}: the pull took {:.1?}",
        run.elapsed
    );
    assert_recorded(&env.containerd, ns.name(), &name, &pushed.digest);
    assert_runs(&env.containerd, ns.name(), &name);

    // The second mirror served every blob and was told whose content it was.
    let gets = env.registry.blob_gets(&repo);
    // busybox's layer may already be in containerd's (shared) content store.
    assert!(
        gets.len() >= 20,
        "the good mirror served {} blob GETs for 19 fresh layers and a config",
        gets.len()
    );
    assert!(
        gets.iter()
            .all(|a| a.by_ctrpull() && a.query("ns").as_deref() == Some(NOWHERE)),
        "a mirror request lacks ns={NOWHERE}: {gets:#?}"
    );

    // The dead mirror was asked first, and (when it is unhealthy rather than merely
    // missing the image) not again for every blob.
    match &dead {
        Dead::Closed(_) => {}
        Dead::Hole(hole) => {
            let accepted = hole.accepted();
            eprintln!("black hole accepted {accepted} connection(s)");
            assert!(
                (1..=HANDFUL).contains(&accepted),
                "the black hole accepted {accepted} connections"
            );
        }
        Dead::Status(server) => {
            let requests = server.requests();
            eprintln!("the 500 mirror got {} request(s)", requests.len());
            assert!(
                (1..=HANDFUL).contains(&requests.len()),
                "the 500 mirror got {} requests: {:#?}",
                requests.len(),
                requests.iter().map(|r| &r.target).collect::<Vec<_>>()
            );
            assert!(
                requests[0].query().contains(&("ns".into(), NOWHERE.into())),
                "{}",
                requests[0].target
            );
        }
        Dead::Empty(registry) => {
            let asked = registry.access_log();
            assert!(
                asked.iter().any(|a| a.by_ctrpull()
                    && a.status == 404
                    && a.uri.starts_with(&format!("/v2/{repo}/manifests/latest"))),
                "the empty mirror was never asked to resolve: {asked:#?}"
            );
        }
    }
}

/// `--mirror HOST=URL` endpoints come first, in flag order, before hosts.toml's.
#[tokio::test]
async fn mirror_flags_come_first_in_order() {
    let env = harness::shared(Version::V1_6);
    let ns = env.containerd.namespace("mirror-flags");
    let repo = harness::unique("test/flags");
    let pushed = crate::pull::push(&repo, layered(1)).await;
    let closed = harness::ClosedPort::new();
    // hosts.toml names a mirror without the image: asked only if the flags' are not first.
    let empty = Registry::start();
    let files = Files::new();
    files.hosts_toml(
        NOWHERE,
        &format!(
            "[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            empty.addr()
        ),
    );
    let config = files.config("");
    let hosts = files.hosts_dir();
    let name = format!("{NOWHERE}/{repo}:latest");
    let dead_flag = format!("{NOWHERE}=http://{}", closed.addr());
    let good_flag = format!("{NOWHERE}=http://{}", env.registry.addr());
    pull(
        &env.containerd,
        ns.name(),
        &config,
        &[
            "--hosts-dir",
            hosts.to_str().unwrap(),
            "--mirror",
            &dead_flag,
            "--mirror",
            &good_flag,
            &name,
        ],
    )
    .ok();
    assert_recorded(&env.containerd, ns.name(), &name, &pushed.digest);
    assert!(env.registry.blob_gets(&repo).len() >= 2);
    let asked: Vec<_> = empty
        .access_log()
        .into_iter()
        .filter(|a| a.uri.contains(&repo))
        .collect();
    assert!(
        asked.is_empty(),
        "hosts.toml's mirror was asked before the flags' good one: {asked:#?}"
    );
}

/// A pull-through cache (distribution's `proxy.remoteurl`) in front of the origin: all
/// blobs come through the cache, and requests carry `?ns=<registry>`.
#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn pull_through_cache_serves_the_blobs(#[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("mirror-cache");
    let origin = env.registry;
    let cache = Registry::start_proxy(&origin.url());
    let repo = harness::unique("test/cached");
    let pushed = crate::pull::push(&repo, layered(2)).await;
    let files = Files::new();
    files.hosts_toml(
        &origin.addr(),
        &format!(
            r#"server = "http://{origin}"

[host."http://{cache}"]
  capabilities = ["pull", "resolve"]
"#,
            origin = origin.addr(),
            cache = cache.addr()
        ),
    );
    let config = files.config("");
    let hosts = files.hosts_dir();
    pull(
        &env.containerd,
        ns.name(),
        &config,
        &["--hosts-dir", hosts.to_str().unwrap(), &pushed.reference],
    )
    .ok();
    assert_recorded(
        &env.containerd,
        ns.name(),
        &pushed.reference,
        &pushed.digest,
    );
    assert_runs(&env.containerd, ns.name(), &pushed.reference);

    let cache_gets = cache.blob_gets(&repo);
    assert!(
        cache_gets.len() >= 3,
        "the cache served {} blob GETs for 2 fresh layers and a config",
        cache_gets.len()
    );
    for get in &cache_gets {
        assert!(get.by_ctrpull(), "{get:?}");
        assert_eq!(get.query("ns"), Some(origin.addr()), "{get:?}");
        assert_eq!(get.status, 200, "{get:?}");
    }
    // The origin saw the cache fetch the blobs, never ctrpull.
    let origin_gets = origin.blob_gets(&repo);
    assert!(
        !origin_gets.is_empty(),
        "the cache never went to the origin"
    );
    assert!(
        origin_gets.iter().all(|a| !a.by_ctrpull()),
        "ctrpull fetched blobs from the origin past the cache: {origin_gets:#?}"
    );
}

/// The legacy CRI section every config.toml below writes under.
pub(crate) const CRI: &str = r#"plugins."io.containerd.grpc.v1.cri".registry"#;

/// How a test supplies htpasswd credentials in config.toml.
#[derive(Debug, Clone, Copy)]
enum BasicCreds {
    /// `username` + `password`.
    Password,
    /// `auth`: base64 of `user:password`.
    Base64,
    /// `username` + a wrong `password`.
    WrongPassword,
}

/// htpasswd Basic auth with credentials from `configs."<host>".auth`.
#[rstest]
#[case::password_v1_6(BasicCreds::Password, Version::V1_6)]
#[case::base64_auth_v1_7(BasicCreds::Base64, Version::V1_7)]
#[case::wrong_password_v1_7(BasicCreds::WrongPassword, Version::V1_7)]
#[tokio::test]
async fn htpasswd_registry_with_config_toml_auth(
    #[case] creds: BasicCreds,
    #[case] version: Version,
) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("mirror-basic");
    let password = harness::unique("Secret");
    let registry = Registry::builder().htpasswd("alice", &password).start();
    let repo = harness::unique("test/basic");
    let pushed = push_to(&registry, &repo, layered(1)).await;
    let auth = match creds {
        BasicCreds::Password => format!("username = \"alice\"\npassword = \"{password}\""),
        BasicCreds::Base64 => format!(
            "auth = \"{}\"",
            STANDARD.encode(format!("alice:{password}"))
        ),
        BasicCreds::WrongPassword => "username = \"alice\"\npassword = \"not-it\"".to_owned(),
    };
    let files = Files::new();
    let config = files.config(&format!(
        "[{CRI}.configs.\"{}\".auth]\n{auth}\n",
        registry.addr()
    ));
    let run = pull(
        &env.containerd,
        ns.name(),
        &config,
        &["--plain-http", &pushed.reference],
    );
    let ours: Vec<_> = registry
        .access_log()
        .into_iter()
        .filter(|a| a.by_ctrpull())
        .collect();
    match creds {
        BasicCreds::Password | BasicCreds::Base64 => {
            run.ok();
            assert_recorded(
                &env.containerd,
                ns.name(),
                &pushed.reference,
                &pushed.digest,
            );
            assert!(
                ours.iter()
                    .any(|a| a.status == 200 && a.uri.contains("/blobs/")),
                "{ours:#?}"
            );
            // distribution logs the user it authenticated.
            assert!(
                registry.log().contains("auth.user.name=alice"),
                "the registry never authenticated alice"
            );
        }
        BasicCreds::WrongPassword => {
            let stderr = run.failed();
            assert_mentions(&stderr, &["401", "unauthorized", "authentication"]);
            assert!(stderr.contains(&registry.addr()), "{stderr}");
            assert!(
                !stderr.contains("not-it"),
                "the password was printed: {stderr}"
            );
            assert_nothing_left(&env.containerd, ns.name());
            assert!(
                !ours.is_empty() && ours.iter().all(|a| a.status == 401),
                "{ours:#?}"
            );
        }
    }
}

/// How a test supplies token-auth credentials.
#[derive(Debug, Clone, Copy)]
enum TokenCreds {
    /// config.toml `username` + `password`: the OAuth2 password grant.
    Password,
    /// config.toml `identitytoken`: the refresh-token grant.
    IdentityToken,
    /// No credentials at all.
    Anonymous,
    /// The right user, a wrong password.
    WrongPassword,
}

/// Bearer token auth against distribution's `auth.token` and the test token server.
#[rstest]
#[case::password_v1_6(TokenCreds::Password, Version::V1_6)]
#[case::password_v1_7(TokenCreds::Password, Version::V1_7)]
#[case::identity_token_v1_7(TokenCreds::IdentityToken, Version::V1_7)]
#[case::anonymous_v1_6(TokenCreds::Anonymous, Version::V1_6)]
#[case::wrong_password_v1_7(TokenCreds::WrongPassword, Version::V1_7)]
#[tokio::test]
async fn token_auth_registry(#[case] creds: TokenCreds, #[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("mirror-token");
    let ca = TestCa::new();
    let password = harness::unique("Secret");
    let tokens = TokenServer::start(&ca, "bob", &password);
    let registry = Registry::builder().token_auth(&tokens).start();
    let repo = harness::unique("test/token");
    let pushed = push_to(&registry, &repo, layered(1)).await;
    let auth = match creds {
        TokenCreds::Password => format!("username = \"bob\"\npassword = \"{password}\""),
        TokenCreds::IdentityToken => format!("identitytoken = \"{}\"", tokens.refresh_token()),
        TokenCreds::Anonymous => String::new(),
        TokenCreds::WrongPassword => "username = \"bob\"\npassword = \"not-it\"".to_owned(),
    };
    let files = Files::new();
    let config = if auth.is_empty() {
        files.config("")
    } else {
        files.config(&format!(
            "[{CRI}.configs.\"{}\".auth]\n{auth}\n",
            registry.addr()
        ))
    };
    let run = pull(
        &env.containerd,
        ns.name(),
        &config,
        &["--plain-http", &pushed.reference],
    );
    let requests = tokens.requests();
    let scope = format!("repository:{repo}:pull");
    assert!(!requests.is_empty(), "the token server was never asked");
    for request in &requests {
        assert_eq!(
            request.service.as_deref(),
            Some(tokens.signer().service()),
            "{request:?}"
        );
        assert!(request.scopes.contains(&scope), "{request:?}");
    }
    use harness::Credentials::{Anonymous, Invalid, Valid};
    match creds {
        TokenCreds::Password | TokenCreds::IdentityToken => {
            run.ok();
            assert_recorded(
                &env.containerd,
                ns.name(),
                &pushed.reference,
                &pushed.digest,
            );
            let grant = match creds {
                TokenCreds::Password => "password",
                _ => "refresh_token",
            };
            assert!(
                requests.iter().any(|r| r.method == "POST"
                    && r.grant_type.as_deref() == Some(grant)
                    && r.credentials == Valid),
                "no POST {grant} grant: {requests:#?}"
            );
            if matches!(creds, TokenCreds::Password) {
                assert!(
                    requests
                        .iter()
                        .filter(|r| r.username.is_some())
                        .all(|r| r.username.as_deref() == Some("bob")),
                    "{requests:#?}"
                );
            }
            assert!(
                requests.iter().all(|r| r.credentials == Valid),
                "{requests:#?}"
            );
        }
        TokenCreds::Anonymous => {
            let stderr = run.failed();
            assert_mentions(
                &stderr,
                &[
                    "401",
                    "unauthorized",
                    "denied",
                    "authorization",
                    "credentials",
                ],
            );
            assert!(stderr.contains(&repo), "{stderr}");
            assert_nothing_left(&env.containerd, ns.name());
            assert!(
                requests
                    .iter()
                    .all(|r| r.method == "GET" && r.credentials == Anonymous),
                "credentials appeared from nowhere: {requests:#?}"
            );
        }
        TokenCreds::WrongPassword => {
            let stderr = run.failed();
            assert_mentions(&stderr, &["401", "unauthorized", "credentials"]);
            assert!(
                !stderr.contains("not-it"),
                "the password was printed: {stderr}"
            );
            assert_nothing_left(&env.containerd, ns.name());
            assert!(
                requests.iter().all(|r| r.credentials == Invalid),
                "{requests:#?}"
            );
        }
    }
}

/// How a test configures (or fails to configure) TLS to an HTTPS registry.
#[derive(Debug, Clone, Copy)]
enum Tls {
    /// hosts.toml `ca = "ca.pem"`, relative to the host directory.
    HostsCa,
    /// config.toml mirror endpoint `https://…` and `configs."<host>".tls.ca_file`.
    ConfigCaFile,
    /// hosts.toml with no CA: the test CA is unknown, the pull must refuse.
    NoCa,
    /// hosts.toml `skip_verify = true` and no CA.
    SkipVerify,
    /// mTLS registry; hosts.toml `ca` and `client = [[cert, key]]`.
    ClientCert,
    /// mTLS registry; hosts.toml `ca` but no client certificate.
    NoClientCert,
    /// mTLS registry; config.toml `tls.ca_file`, `cert_file`, `key_file`.
    ConfigClientCert,
}

/// HTTPS registries with the test CA, client certificates and skip_verify.
#[rstest]
#[case::hosts_ca_v1_6(Tls::HostsCa, Version::V1_6)]
#[case::config_ca_file_v1_7(Tls::ConfigCaFile, Version::V1_7)]
#[case::no_ca_v1_7(Tls::NoCa, Version::V1_7)]
#[case::skip_verify_v1_6(Tls::SkipVerify, Version::V1_6)]
#[case::client_cert_v1_7(Tls::ClientCert, Version::V1_7)]
#[case::no_client_cert_v1_6(Tls::NoClientCert, Version::V1_6)]
#[case::config_client_cert_v1_6(Tls::ConfigClientCert, Version::V1_6)]
#[tokio::test]
async fn https_registry(#[case] tls: Tls, #[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("mirror-tls");
    let ca = TestCa::new();
    let mtls = matches!(
        tls,
        Tls::ClientCert | Tls::NoClientCert | Tls::ConfigClientCert
    );
    let mut registry = Registry::builder().tls(&ca);
    if mtls {
        registry = registry.client_ca(&ca);
    }
    let registry = registry.start();
    let repo = harness::unique("test/tls");
    let pushed = push_to(&registry, &repo, layered(1)).await;
    let addr = registry.addr();
    let url = format!("https://{addr}");
    let files = Files::new();
    let client = ca.client_cert("ctrpull-client");
    let path = |p: &Path| format!("{:?}", p.display().to_string());
    // The registry's own name with `server` and its TLS settings at the top level: one
    // endpoint, so a failure's message is about that endpoint alone.
    let top_level = |settings: &str| {
        files.hosts_toml(&addr, &format!("server = \"{url}\"\n{settings}"));
    };
    let mut name = pushed.reference.clone();
    let mut config_body = String::new();
    match tls {
        Tls::HostsCa => {
            // The mirror form, with the CA relative to the host directory.
            files.write(&format!("certs.d/{NOWHERE}/ca.pem"), ca.ca_pem());
            files.hosts_toml(
                NOWHERE,
                &format!(
                    "[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"ca.pem\"\n"
                ),
            );
            name = format!("{NOWHERE}/{repo}:latest");
        }
        Tls::NoCa => top_level(""),
        Tls::SkipVerify => top_level("skip_verify = true\n"),
        Tls::ClientCert => top_level(&format!(
            "ca = {}\nclient = [[{}, {}]]\n",
            path(&ca.ca_file()),
            path(&client.cert),
            path(&client.key)
        )),
        Tls::NoClientCert => top_level(&format!("ca = {}\n", path(&ca.ca_file()))),
        Tls::ConfigCaFile | Tls::ConfigClientCert => {
            config_body = format!(
                "[{CRI}.mirrors.\"{addr}\"]\n  endpoint = [\"{url}\"]\n\n\
                 [{CRI}.configs.\"{addr}\".tls]\n  ca_file = {}\n",
                path(&ca.ca_file())
            );
            if matches!(tls, Tls::ConfigClientCert) {
                config_body.push_str(&format!(
                    "  cert_file = {}\n  key_file = {}\n",
                    path(&client.cert),
                    path(&client.key)
                ));
            }
        }
    }
    let config = files.config(&config_body);
    let hosts = files.hosts_dir();
    let mut args = vec![];
    if !matches!(tls, Tls::ConfigCaFile | Tls::ConfigClientCert) {
        args.extend(["--hosts-dir", hosts.to_str().unwrap()]);
    }
    args.push(&name);
    let run = pull(&env.containerd, ns.name(), &config, &args);
    match tls {
        Tls::NoCa | Tls::NoClientCert => {
            let stderr = run.failed();
            assert_mentions(&stderr, &["certificate"]);
            assert!(stderr.contains(&addr), "{stderr}");
            assert_nothing_left(&env.containerd, ns.name());
            assert!(
                registry.blob_gets(&repo).is_empty(),
                "a blob was served over an unverified connection"
            );
        }
        _ => {
            run.ok();
            assert_recorded(&env.containerd, ns.name(), &name, &pushed.digest);
            let served: Vec<_> = registry
                .access_log()
                .into_iter()
                .filter(|a| a.by_ctrpull() && a.uri.contains("/blobs/") && a.status == 200)
                .collect();
            assert!(served.len() >= 2, "{served:#?}");
        }
    }
}

/// The legacy CRI layout of a widely read config.toml guide (its sections 2.1–2.2 and
/// 6.1: mirrors with endpoint lists, configs with auth; 4.1: tls insecure_skip_verify),
/// pointed at local registries. Three images from three registry names in one run.
#[tokio::test]
async fn legacy_config_toml_from_the_guide() {
    let env = harness::shared(Version::V1_6);
    let ns = env.containerd.namespace("mirror-guide");
    let ca = TestCa::new();
    // "myregistry.example.com" of the guide, with its admin / securepassword.
    let private = Registry::builder()
        .htpasswd("admin", "securepassword")
        .start();
    // "private-reg:5000", down; "backup-reg:5000" is the shared registry.
    let private_reg = harness::ClosedPort::new();
    let backup_reg = env.registry;
    // An HTTPS mirror whose certificate nobody configured: insecure_skip_verify.
    let tls_mirror = Registry::builder().tls(&ca).start();

    let nginx = harness::unique("library/nginx");
    let nginx_image = push_to(&private, &nginx, layered(1)).await;
    let busybox = harness::unique("library/busybox");
    let busybox_image = crate::pull::push(&busybox, layered(1)).await;
    let app = harness::unique("team/app");
    let app_image = push_to(&tls_mirror, &app, layered(1)).await;

    let files = Files::new();
    let config = files.config(&format!(
        r#"[plugins."io.containerd.grpc.v1.cri".registry]
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors]
    [plugins."io.containerd.grpc.v1.cri".registry.mirrors."myregistry.example.com"]
      endpoint = ["http://{private}"]
    [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
      endpoint = ["http://{private_reg}", "http://{backup_reg}"]
    [plugins."io.containerd.grpc.v1.cri".registry.mirrors."private.registry"]
      endpoint = ["https://{tls_mirror}"]
  [plugins."io.containerd.grpc.v1.cri".registry.configs]
    [plugins."io.containerd.grpc.v1.cri".registry.configs."{private}".auth]
      username = "admin"
      password = "securepassword"
      auth = ""  # base64 of "username:password"
      identitytoken = ""
    [plugins."io.containerd.grpc.v1.cri".registry.configs."{tls_mirror}".tls]
      insecure_skip_verify = true  # test environments only
"#,
        private = private.addr(),
        private_reg = private_reg.addr(),
        backup_reg = backup_reg.addr(),
        tls_mirror = tls_mirror.addr(),
    ));
    let names = [
        format!("myregistry.example.com/{nginx}:latest"),
        format!("docker.io/{busybox}:latest"),
        format!("private.registry/{app}:latest"),
    ];
    let args: Vec<&str> = names.iter().map(String::as_str).collect();
    pull(&env.containerd, ns.name(), &config, &args).ok();

    for (name, image) in names.iter().zip([&nginx_image, &busybox_image, &app_image]) {
        assert_recorded(&env.containerd, ns.name(), name, &image.digest);
    }
    assert_runs(&env.containerd, ns.name(), &names[1]);
    let gets = backup_reg.blob_gets(&busybox);
    assert!(
        gets.len() >= 2
            && gets
                .iter()
                .all(|a| a.query("ns").as_deref() == Some("docker.io")),
        "{gets:#?}"
    );
    assert!(private.log().contains("auth.user.name=admin"));
}

/// hosts.toml in containerd's documented shape (`docs/hosts.md`): `server` plus
/// `[host."…"]` entries with capabilities and headers. A resolve-capable mirror that
/// fails (and gets the custom header), a pull-only cache that must never be asked for a
/// tag, and the server that resolves.
#[tokio::test]
async fn documented_hosts_toml_with_capabilities_and_headers() {
    let env = harness::shared(Version::V1_7);
    let ns = env.containerd.namespace("mirror-hosts");
    let origin = env.registry;
    let failing = harness::StatusServer::start(500);
    let cache = Registry::start_proxy(&origin.url());
    let repo = harness::unique("test/documented");
    let pushed = crate::pull::push(&repo, layered(2)).await;
    let files = Files::new();
    files.hosts_toml(
        &origin.addr(),
        &format!(
            r#"server = "http://{origin}"  # tried last

[host."http://{failing}"]
  capabilities = ["pull", "resolve"]
  [host."http://{failing}".header]
    x-custom-1 = "value"

[host."http://{cache}"]
  capabilities = ["pull"]  # not trusted to resolve tag -> digest
"#,
            origin = origin.addr(),
            failing = failing.addr(),
            cache = cache.addr(),
        ),
    );
    let config = files.config("");
    let hosts = files.hosts_dir();
    pull(
        &env.containerd,
        ns.name(),
        &config,
        &["--hosts-dir", hosts.to_str().unwrap(), &pushed.reference],
    )
    .ok();
    assert_recorded(
        &env.containerd,
        ns.name(),
        &pushed.reference,
        &pushed.digest,
    );

    // The first host was asked to resolve the tag, with its header and ?ns=.
    let first = failing
        .requests()
        .into_iter()
        .next()
        .expect("the first host was never asked");
    assert_eq!(first.header("x-custom-1"), Some("value"), "{first:?}");
    assert!(
        first
            .target
            .starts_with(&format!("/v2/{repo}/manifests/latest")),
        "{first:?}"
    );
    assert!(
        first.query().contains(&("ns".into(), origin.addr())),
        "{first:?}"
    );
    // The pull-only cache served the content but never a tag.
    let cached: Vec<_> = cache
        .access_log()
        .into_iter()
        .filter(|a| a.uri.starts_with(&format!("/v2/{repo}/")))
        .collect();
    assert!(
        cached.iter().all(|a| !a.uri.contains("/manifests/latest")),
        "the pull-only host was asked to resolve: {cached:#?}"
    );
    assert!(
        cached.iter().filter(|a| a.uri.contains("/blobs/")).count() >= 3,
        "{cached:#?}"
    );
    // The server resolved the tag for ctrpull and served no blob to it.
    let direct: Vec<_> = origin
        .access_log()
        .into_iter()
        .filter(|a| a.by_ctrpull() && a.uri.starts_with(&format!("/v2/{repo}/")))
        .collect();
    assert!(
        direct
            .iter()
            .any(|a| a.uri.starts_with(&format!("/v2/{repo}/manifests/latest")) && a.status == 200),
        "{direct:#?}"
    );
    assert!(
        direct.iter().all(|a| !a.uri.contains("/blobs/")),
        "{direct:#?}"
    );
}

/// A config.toml with `config_path` (hosts.toml) and `configs."<host>".auth` together:
/// the mirror comes from hosts.toml, its credentials from config.toml. Both layouts:
/// version 2 (`io.containerd.grpc.v1.cri`) and version 3 (`io.containerd.cri.v1.images`).
#[rstest]
#[case::config_v2_on_v1_6(2, Version::V1_6)]
#[case::config_v3_on_v1_7(3, Version::V1_7)]
#[tokio::test]
async fn config_path_with_configs_auth(#[case] config_version: u32, #[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("mirror-config-path");
    let password = harness::unique("Secret");
    let registry = Registry::builder().htpasswd("carol", &password).start();
    let closed = harness::ClosedPort::new();
    let repo = harness::unique("test/config-path");
    let pushed = push_to(&registry, &repo, layered(1)).await;
    let files = Files::new();
    files.hosts_toml(
        NOWHERE,
        &format!(
            "server = \"http://{closed}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            closed = closed.addr(),
            mirror = registry.addr()
        ),
    );
    let section = match config_version {
        2 => CRI.to_owned(),
        _ => r#"plugins."io.containerd.cri.v1.images".registry"#.to_owned(),
    };
    let config = files.write(
        "config.toml",
        format!(
            "version = {config_version}\n\n[{section}]\n  config_path = {:?}\n\n\
             [{section}.configs.\"{addr}\".auth]\n  username = \"carol\"\n  password = \"{password}\"\n",
            files.hosts_dir().display().to_string(),
            addr = registry.addr(),
        ),
    );
    let name = format!("{NOWHERE}/{repo}:latest");
    pull(&env.containerd, ns.name(), &config, &[&name]).ok();
    assert_recorded(&env.containerd, ns.name(), &name, &pushed.digest);
    assert!(registry.log().contains("auth.user.name=carol"));
}
