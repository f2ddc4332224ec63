//! The registry daemon: CNCF distribution (`docker-registry`) on loopback.

use std::fmt;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread::sleep;
use std::time::Instant;

use url::Url;

use super::process::{private_dir, remove_daemon_dir, Daemon};
use super::{http_status, unique, POLL, REGISTRY_READY_TIMEOUT};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A `docker-registry` on `127.0.0.1:<free port>`, plain HTTP, stopped when dropped.
pub struct Registry {
    daemon: Daemon,
    dir: PathBuf,
    addr: String,
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
        Self::start_with("")
    }

    /// Starts a pull-through cache of `upstream` (`proxy.remoteurl`).
    pub fn start_proxy(upstream: &Url) -> Registry {
        Self::start_with(&format!("proxy:\n  remoteurl: {upstream}\n"))
    }

    fn start_with(extra_config: &str) -> Registry {
        if !Path::new(REGISTRY_BIN).is_file() {
            panic!("{REGISTRY_BIN} is missing: run `bash scripts/deps.sh` (as root) first");
        }
        // Another process may take the port between our probe and the registry's bind.
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let dir = private_dir("registry");
            let addr = free_loopback_addr();
            let config = dir.join("config.yml");
            let yaml = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  formatter: text\n\
                 storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: {addr}\n  secret: {secret}\n\
                 {extra_config}",
                data = dir.join("data").display(),
                secret = unique("secret"),
            );
            fs::write(&config, yaml)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
            let mut cmd = Command::new(REGISTRY_BIN);
            cmd.arg("serve").arg(&config);
            let daemon = Daemon::spawn("registry", cmd, &dir.join("registry.log"));
            // From here on, Drop stops the daemon and removes `dir`, panic or not.
            let registry = Registry { daemon, dir, addr };
            match registry.wait_ready() {
                Ok(()) => return registry,
                Err(NotReady::PortTaken) if attempt < ATTEMPTS => continue,
                Err(reason) => {
                    let why = match reason {
                        NotReady::PortTaken => "its port was taken every time".to_owned(),
                        NotReady::Exited(status) => format!("it exited ({status})"),
                        NotReady::Timeout => {
                            format!("no 200 from GET /v2/ within {REGISTRY_READY_TIMEOUT:?}")
                        }
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

    fn wait_ready(&self) -> Result<(), NotReady> {
        let deadline = Instant::now() + REGISTRY_READY_TIMEOUT;
        loop {
            if let Some(status) = self.daemon.exit_status() {
                return Err(if self.daemon.log().contains("address already in use") {
                    NotReady::PortTaken
                } else {
                    NotReady::Exited(status)
                });
            }
            if matches!(http_status(&self.addr, "/v2/"), Ok(200)) {
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

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> Url {
        Url::parse(&format!("http://{}/", self.addr)).expect("a loopback address makes a valid URL")
    }

    /// The registry's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid
    }

    /// The registry's private directory (config, storage, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything the registry logged so far, access log included: tests may count
    /// the requests a mirror served.
    pub fn log(&self) -> String {
        self.daemon.log()
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

/// A loopback address with a port the kernel just found free.
fn free_loopback_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("a bound socket has an address")
        .to_string()
}
