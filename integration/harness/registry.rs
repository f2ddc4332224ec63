//! The registry daemon: CNCF distribution (`docker-registry`) on loopback, plain or
//! HTTPS (with client certificates), open or behind htpasswd or token auth, or a
//! pull-through cache.

use std::fmt;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread::sleep;
use std::time::Instant;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use url::Url;

use super::process::{private_dir, remove_daemon_dir, Daemon};
use super::tls::TestCa;
use super::token::{Signer, TokenServer};
use super::{http_status, unique, POLL, REGISTRY_READY_TIMEOUT};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A `docker-registry` on `127.0.0.1:<free port>`, stopped when dropped.
pub struct Registry {
    daemon: Daemon,
    dir: PathBuf,
    addr: String,
    access: Access,
}

/// How the registry is configured, kept so the harness can push to it.
#[derive(Clone, Default)]
struct Access {
    /// HTTPS: the CA that issued the server certificate.
    ca_pem: Option<String>,
    /// mTLS: a client certificate and key (PEM) the registry accepts.
    identity_pem: Option<Vec<u8>>,
    /// htpasswd: the one user.
    basic: Option<(String, String)>,
    /// Token auth: the token server's signer.
    signer: Option<Signer>,
}

/// Options of a registry started by [`RegistryBuilder::start`].
#[derive(Default)]
pub struct RegistryBuilder {
    tls: Option<(String, String)>,
    client_ca: Option<String>,
    access: Access,
    realm: Option<String>,
    proxy: Option<Url>,
    redirect: Option<Url>,
}

impl RegistryBuilder {
    /// Serve HTTPS with a certificate for `127.0.0.1`/`localhost` issued by `ca`.
    pub fn tls(mut self, ca: &TestCa) -> Self {
        let files = ca.server_cert(&unique("registry"));
        let read = |p: &Path| {
            fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        };
        self.tls = Some((read(&files.cert), read(&files.key)));
        self.access.ca_pem = Some(ca.ca_pem());
        self
    }

    /// Require client certificates issued by `ca` (`http.tls.clientcas`); implies
    /// nothing about the server certificate, so call [`RegistryBuilder::tls`] too.
    pub fn client_ca(mut self, ca: &TestCa) -> Self {
        self.client_ca = Some(ca.ca_pem());
        self.access.identity_pem = Some(ca.client_cert(&unique("harness")).identity_pem());
        self
    }

    /// Basic auth with one user (`auth.htpasswd`, bcrypt).
    pub fn htpasswd(mut self, username: &str, password: &str) -> Self {
        self.access.basic = Some((username.into(), password.into()));
        self
    }

    /// Bearer auth with `tokens` as realm, service, issuer and root bundle (`auth.token`).
    pub fn token_auth(mut self, tokens: &TokenServer) -> Self {
        self.access.signer = Some(tokens.signer().clone());
        self.realm = Some(tokens.realm());
        self
    }

    /// A pull-through cache of `upstream` (`proxy.remoteurl`).
    pub fn proxy(mut self, upstream: &Url) -> Self {
        self.proxy = Some(upstream.clone());
        self
    }

    /// Answer blob GETs with a 307 to `<base_url><storage path>` (distribution's
    /// `redirect` storage middleware), as registries backed by S3 or a CDN do. The
    /// storage path is relative to [`Registry::storage_dir`]: a [`FileServer`]
    /// serving that directory at `base_url` completes the download.
    ///
    /// [`FileServer`]: super::FileServer
    pub fn redirect(mut self, base_url: &Url) -> Self {
        self.redirect = Some(base_url.clone());
        self
    }

    /// Starts the registry and waits until it answers (see [`Registry::start`]).
    pub fn start(self) -> Registry {
        Registry::start_with(self)
    }
}

/// One request from a registry's access log.
#[derive(Debug, Clone)]
pub struct AccessLine {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// Path and query as the client sent them (query still percent-encoded).
    pub uri: String,
    /// The status answered.
    pub status: u16,
    /// Body bytes the registry wrote (the log's size field). For a response cut off
    /// mid-body this is what it handed to the kernel, which may be more than the
    /// client read.
    pub bytes: u64,
    /// The client's `User-Agent`.
    pub agent: String,
}

impl AccessLine {
    /// True when ctrpull sent it (its `User-Agent` is `ctrpull/<version>`).
    pub fn by_ctrpull(&self) -> bool {
        self.agent.starts_with("ctrpull/")
    }

    /// The decoded query parameter `name` (containerd sends `ns=` with `:` as `%3A`).
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.uri.split_once('?')?.1;
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// Why a registry did not come up.
enum NotReady {
    PortTaken,
    Exited(ExitStatus),
    Timeout,
}

impl Registry {
    /// Starts an empty registry and waits until `GET /v2/` answers 200.
    pub fn start() -> Registry {
        Self::builder().start()
    }

    /// Starts a pull-through cache of `upstream` (`proxy.remoteurl`).
    pub fn start_proxy(upstream: &Url) -> Registry {
        Self::builder().proxy(upstream).start()
    }

    /// A registry configured step by step: HTTPS, mTLS, htpasswd, token auth, proxy.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    fn start_with(options: RegistryBuilder) -> Registry {
        if !Path::new(REGISTRY_BIN).is_file() {
            panic!("{REGISTRY_BIN} is missing: run `bash scripts/deps.sh` (as root) first");
        }
        assert!(
            options.client_ca.is_none() || options.tls.is_some(),
            "RegistryBuilder::client_ca needs RegistryBuilder::tls"
        );
        assert!(
            options.access.basic.is_none() || options.access.signer.is_none(),
            "a registry has one auth method: htpasswd or token, not both"
        );
        // What `GET /v2/` over plain HTTP answers once the registry is up: Go's TLS
        // server tells a plain-HTTP client 400 ("Client sent an HTTP request to an HTTPS
        // server"), before any client certificate is asked for; auth answers 401.
        let ready_status = if options.tls.is_some() {
            400
        } else if options.access.basic.is_some() || options.access.signer.is_some() {
            401
        } else {
            200
        };
        // Another process may take the port between our probe and the registry's bind.
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let dir = private_dir("registry");
            let addr = free_loopback_addr();
            let config = dir.join("config.yml");
            fs::write(&config, config_yaml(&options, &dir, &addr))
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
            let mut cmd = Command::new(REGISTRY_BIN);
            cmd.arg("serve").arg(&config);
            let daemon = Daemon::spawn("registry", cmd, &dir.join("registry.log"));
            // From here on, Drop stops the daemon and removes `dir`, panic or not.
            let registry = Registry {
                daemon,
                dir,
                addr,
                access: options.access.clone(),
            };
            match registry.wait_ready(ready_status) {
                Ok(()) => return registry,
                Err(NotReady::PortTaken) if attempt < ATTEMPTS => continue,
                Err(reason) => {
                    let why = match reason {
                        NotReady::PortTaken => "its port was taken every time".to_owned(),
                        NotReady::Exited(status) => format!("it exited ({status})"),
                        NotReady::Timeout => format!(
                            "no {ready_status} from GET /v2/ within {REGISTRY_READY_TIMEOUT:?}"
                        ),
                    };
                    panic!(
                        "docker-registry on {} did not start: {why}; its log ends:\n{}",
                        registry.addr,
                        registry.daemon.log_tail(40)
                    );
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn wait_ready(&self, ready_status: u16) -> Result<(), NotReady> {
        let deadline = Instant::now() + REGISTRY_READY_TIMEOUT;
        loop {
            if let Some(status) = self.daemon.exit_status() {
                return Err(if self.daemon.log().contains("address already in use") {
                    NotReady::PortTaken
                } else {
                    NotReady::Exited(status)
                });
            }
            if http_status(&self.addr, "/v2/").is_ok_and(|status| status == ready_status) {
                // Someone else's server could answer on a port we failed to bind: make
                // sure ours is still alive after a beat.
                sleep(POLL);
                if self.daemon.exit_status().is_none() {
                    return Ok(());
                }
                continue;
            }
            if Instant::now() > deadline {
                return Err(NotReady::Timeout);
            }
            sleep(POLL);
        }
    }

    /// "127.0.0.1:PORT", as it appears in image references.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// `http://127.0.0.1:PORT/`, or `https://` when it serves TLS.
    pub fn url(&self) -> Url {
        let scheme = if self.access.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        Url::parse(&format!("{scheme}://{}/", self.addr))
            .expect("a loopback address makes a valid URL")
    }

    /// An HTTP client that can push `repository` here: it trusts the test CA, presents
    /// the harness's client certificate, and sends the htpasswd user's Basic auth or a
    /// pull+push token minted for `repository`.
    pub fn push_client(&self, repository: &str) -> reqwest::Client {
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = &self.access.ca_pem {
            builder = builder.add_root_certificate(
                reqwest::Certificate::from_pem(pem.as_bytes()).expect("the test CA parses"),
            );
        }
        if let Some(pem) = &self.access.identity_pem {
            builder = builder
                .identity(reqwest::Identity::from_pem(pem).expect("the client identity parses"));
        }
        let mut headers = HeaderMap::new();
        let authorization = if let Some((user, password)) = &self.access.basic {
            Some(format!(
                "Basic {}",
                STANDARD.encode(format!("{user}:{password}"))
            ))
        } else {
            self.access.signer.as_ref().map(|signer| {
                let token = signer.mint(
                    "harness",
                    &[(repository.to_owned(), vec!["pull".into(), "push".into()])],
                );
                format!("Bearer {token}")
            })
        };
        if let Some(value) = authorization {
            headers.insert(
                AUTHORIZATION,
                HeaderValue::from_str(&value).expect("a valid header value"),
            );
        }
        builder
            .default_headers(headers)
            .build()
            .expect("build the push client")
    }

    /// The registry's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid
    }

    /// The registry's private directory (config, storage, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The storage driver's root directory (`storage.filesystem.rootdirectory`): the
    /// paths of [`RegistryBuilder::redirect`]'s redirects are relative to it.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Everything the registry logged so far, access log included: tests may count
    /// the requests a mirror served.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// The requests logged so far, in order, from the access log (Apache combined
    /// format: `127.0.0.1 - - [date] "GET /v2/... HTTP/1.1" 200 12 "" "agent"`).
    pub fn access_log(&self) -> Vec<AccessLine> {
        self.log()
            .lines()
            .filter(|line| line.starts_with("127.0.0.1 - "))
            .filter_map(|line| {
                let quoted: Vec<&str> = line.split('"').collect();
                let mut request = quoted.get(1)?.split_whitespace();
                Some(AccessLine {
                    method: request.next()?.to_owned(),
                    uri: request.next()?.to_owned(),
                    status: quoted.get(2)?.split_whitespace().next()?.parse().ok()?,
                    bytes: quoted
                        .get(2)?
                        .split_whitespace()
                        .nth(1)
                        .and_then(|size| size.parse().ok())
                        .unwrap_or(0),
                    agent: quoted.get(5)?.to_string(),
                })
            })
            .collect()
    }

    /// The blob GETs for `repository` logged so far.
    pub fn blob_gets(&self, repository: &str) -> Vec<AccessLine> {
        let prefix = format!("/v2/{repository}/blobs/");
        self.access_log()
            .into_iter()
            .filter(|a| a.method == "GET" && a.uri.starts_with(&prefix))
            .collect()
    }

    /// Body bytes of blob `digest` served by successful GETs, in any repository:
    /// a blob fetched once, whether whole or as Range requests, adds up to its size.
    pub fn blob_bytes_served(&self, digest: &str) -> u64 {
        let suffix = format!("/blobs/{digest}");
        self.access_log()
            .iter()
            .filter(|a| a.method == "GET" && a.uri.ends_with(&suffix))
            .filter(|a| a.status == 200 || a.status == 206)
            .map(|a| a.bytes)
            .sum()
    }

    /// Stops the registry and removes its directory. Idempotent.
    pub fn stop(&self) {
        self.daemon.stop();
        remove_daemon_dir(&self.dir);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("addr", &self.addr)
            .field("pid", &self.daemon.pid)
            .field("dir", &self.dir)
            .finish()
    }
}

/// The registry's config.yml; certificates, htpasswd and root bundle are written into
/// `dir` so the registry depends on no file of the test's.
fn config_yaml(options: &RegistryBuilder, dir: &Path, addr: &str) -> String {
    let write = |name: &str, contents: &[u8]| -> String {
        let path = dir.join(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.display().to_string()
    };
    let mut yaml = format!(
        "version: 0.1\n\
         log:\n  level: info\n  formatter: text\n\
         storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {addr}\n  secret: {secret}\n",
        data = dir.join("data").display(),
        secret = unique("secret"),
    );
    if let Some((cert, key)) = &options.tls {
        yaml.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            write("server.crt", cert.as_bytes()),
            write("server.key", key.as_bytes()),
        ));
        if let Some(ca) = &options.client_ca {
            yaml.push_str(&format!(
                "    clientcas:\n      - {}\n",
                write("client-ca.pem", ca.as_bytes())
            ));
        }
    }
    if let Some((user, password)) = &options.access.basic {
        // The cost is bcrypt's minimum: every request verifies it.
        let hash = bcrypt::hash(password, 4).expect("bcrypt");
        let path = write("htpasswd", format!("{user}:{hash}\n").as_bytes());
        yaml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: ctrpull-test\n    path: {path}\n"
        ));
    }
    if let (Some(signer), Some(realm)) = (&options.access.signer, &options.realm) {
        yaml.push_str(&format!(
            "auth:\n  token:\n    realm: {realm}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            signer.service(),
            signer.issuer(),
            write("token-roots.pem", signer.root_pem().as_bytes()),
        ));
    }
    if let Some(upstream) = &options.proxy {
        yaml.push_str(&format!("proxy:\n  remoteurl: {upstream}\n"));
    }
    if let Some(base_url) = &options.redirect {
        yaml.push_str(&format!(
            "middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: {base_url}\n"
        ));
    }
    yaml
}

/// A loopback address with a port the kernel just found free.
fn free_loopback_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("a bound socket has an address")
        .to_string()
}
