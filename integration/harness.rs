//! Real daemons for the integration tests: docker-registry and containerd 1.6 / 1.7.
//!
//! # What it starts
//!
//! - [`Registry`]: Debian's `docker-registry` (CNCF distribution 2.8), plain HTTP on
//!   `127.0.0.1:<free port>`, storage in a private directory. [`Registry::start_proxy`]
//!   runs it as a pull-through cache, the way real mirrors run.
//!   [`Registry::builder`] adds HTTPS with a certificate from a [`TestCa`], client
//!   certificates (mTLS), htpasswd Basic auth, or token auth against a [`TokenServer`].
//! - [`TokenServer`]: a Docker token server (GET with Basic auth, POST OAuth2 form)
//!   whose ES256 tokens the registry verifies, recording every request it answered.
//! - Fault endpoints for failover: [`ClosedPort`] (connection refused), [`BlackHole`]
//!   (accepts, never answers, counts connections), [`StatusServer`] (one status, e.g.
//!   500, to everything). An empty [`Registry`] is the endpoint that answers 404.
//! - [`FileServer`]: static files from a registry's storage directory, recording every
//!   request: the other host that [`RegistryBuilder::redirect`] sends blob GETs to.
//! - [`Containerd`]: Debian's containerd 1.6 (`/usr/bin`) or trixie's 1.7, unpacked by
//!   `scripts/deps.sh` under `$CTRPULL_CONTAINERD17_PREFIX` (default
//!   [`DEFAULT_CONTAINERD17_PREFIX`]). Private root, state, sockets, and the CRI plugin
//!   loaded, so the CRI ImageService answers on the same socket.
//!
//! Each daemon gets its own directory under [`run_dir`] (`$CTRPULL_TEST_RUN_DIR`,
//! default [`DEFAULT_RUN_DIR`]). A missing binary is a panic that says to run
//! `scripts/deps.sh`: in CI the tests fail, they never skip.
//!
//! # Sharing
//!
//! containerd with CRI takes about a second to start, so tests share daemons: [`shared`]
//! gives one registry for the whole process and one containerd per [`Version`], started
//! on first use. Tests keep apart by name instead: each uses its own containerd
//! namespace ([`Containerd::namespace`], purged when dropped) and its own repository
//! names ([`unique`]), so they run in parallel. A test that needs a daemon configured
//! differently, or one it can stop (mirror failover, a registry dying mid-pull), starts
//! its own with [`Registry::start`] / [`Containerd::start`]; those stop when dropped.
//!
//! # Nothing outlives the test process
//!
//! Three layers, because each alone has a hole:
//!
//! 1. Owned daemons stop in `Drop` (SIGTERM, [`STOP_GRACE`], then SIGKILL); then
//!    containerd's shims are killed, its mounts detached and its directory removed.
//!    Shared daemons live in statics, which Rust never drops, so an `atexit` hook stops
//!    them the same way when the test binary exits (libtest's `process::exit` included).
//! 2. Every daemon gets `PR_SET_PDEATHSIG(SIGKILL)` for a test binary that is killed.
//!    That signal fires when the *thread* that forked the child exits, and libtest runs
//!    each test on a thread of its own, so all daemons are forked by one dedicated thread
//!    that lives as long as the process.
//! 3. Every daemon writes `<run dir>/pids/<name>-<pid>.pid`, removed when it stops;
//!    `scripts/test.sh` kills whatever those files still name after `cargo test`, and
//!    the shims whose `-address` lies under the run dir, then unmounts and removes what
//!    is left there.
//!
//! # Layout
//!
//! This file holds what tests call most (`shared`, `unique`, `ctrpull`, `http_status`);
//! `registry` and `containerd` hold the two daemons; `process` spawns, tracks and
//! stops them and cleans up their directories and mounts; `tls` makes test
//! certificates, `token` is the token server, `fake` the fault endpoints (and the
//! small HTTP responder under them and the token server); `self_test` checks that
//! each registry variant enforces what it is configured for. Everything listens on
//! 127.0.0.1 and stops when dropped.

// Each test area uses a different part of the harness; no single one uses it all.
#![allow(dead_code)]

mod containerd;
mod fake;
pub mod faulty;
mod process;
mod registry;
mod tls;
mod token;

pub use containerd::{Containerd, Version};
// Returned by `Containerd::namespace`; named only by tests that store one.
#[allow(unused_imports)]
pub use containerd::Namespace;
pub use fake::{BlackHole, ClosedPort, FileServer, Responder, StatusServer};
pub use faulty::FaultyProxy;
pub use process::mounts_under;
pub use registry::Registry;
pub use tls::TestCa;
pub use token::{Credentials, TokenServer};
// Returned by the harness's methods; named only by tests that store one.
#[allow(unused_imports)]
pub use {
    fake::Request, fake::Response, registry::AccessLine, registry::RegistryBuilder, tls::CertFiles,
    token::Signer, token::TokenRequest,
};

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Once, OnceLock};
use std::time::Duration;

/// Where daemons keep their directories and PID files unless `$CTRPULL_TEST_RUN_DIR` says.
pub const DEFAULT_RUN_DIR: &str = "/tmp/ctrpull-test";
/// Where `scripts/deps.sh` unpacks containerd 1.7 unless `$CTRPULL_CONTAINERD17_PREFIX` says.
pub const DEFAULT_CONTAINERD17_PREFIX: &str = "/opt/ctrpull/containerd-1.7";
/// How long a registry may take to answer `GET /v2/`.
pub const REGISTRY_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long containerd may take to answer `ctr version`.
pub const CONTAINERD_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon may take to exit after SIGTERM before it gets SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// How often readiness and exit are polled.
const POLL: Duration = Duration::from_millis(50);

/// The directory for daemon directories and PID files: `$CTRPULL_TEST_RUN_DIR`, or
/// [`DEFAULT_RUN_DIR`].
pub fn run_dir() -> PathBuf {
    std::env::var_os("CTRPULL_TEST_RUN_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), PathBuf::from)
}

/// A name no other call in this process returns: `<prefix>-<pid>-<n>-<random>`,
/// lowercase, so it is valid as a containerd namespace, a repository path component
/// and a container id as long as `prefix` is.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let salt = rand::random::<u32>() & 0xff_ffff;
    format!(
        "{}-{}-{n}-{salt:06x}",
        prefix.to_ascii_lowercase(),
        std::process::id()
    )
}

/// The `ctrpull` binary under test. `CONTAINERD_ADDRESS` and `CONTAINERD_NAMESPACE`
/// are cleared so a test can never reach the host's containerd by accident, and
/// `DOCKER_CONFIG` points at an empty directory so the host's Docker credentials
/// never reach a test (tests that want a config.json set their own).
pub fn ctrpull() -> Command {
    static EMPTY: OnceLock<PathBuf> = OnceLock::new();
    let empty = EMPTY.get_or_init(|| {
        let dir = run_dir().join(format!("no-docker-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create an empty DOCKER_CONFIG directory");
        dir
    });
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ctrpull"));
    cmd.env_remove("CONTAINERD_ADDRESS")
        .env_remove("CONTAINERD_NAMESPACE")
        .env("DOCKER_CONFIG", empty);
    cmd
}

/// `GET <path>` over plain HTTP/1.1 to `addr` ("127.0.0.1:PORT"); the status code.
/// Deliberately not our own HTTP client: the harness checks daemons independently.
pub fn http_status(addr: &str, path: &str) -> io::Result<u16> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {line:?}"),
            )
        })
}

/// The daemons shared by all tests of this process for one containerd version.
pub struct Env {
    /// The process-wide registry (the same for both versions).
    pub registry: &'static Registry,
    /// This version's containerd.
    pub containerd: Containerd,
}

static SHARED_REGISTRY: OnceLock<Registry> = OnceLock::new();
static SHARED_V1_6: OnceLock<Env> = OnceLock::new();
static SHARED_V1_7: OnceLock<Env> = OnceLock::new();

/// The shared registry and the shared containerd of `version`, started on first use and
/// stopped when the process exits (see the module docs).
pub fn shared(version: Version) -> &'static Env {
    let cell = match version {
        Version::V1_6 => &SHARED_V1_6,
        Version::V1_7 => &SHARED_V1_7,
    };
    cell.get_or_init(|| {
        register_shared_teardown();
        Env {
            registry: shared_registry(),
            containerd: Containerd::start(version),
        }
    })
}

/// The process-wide registry alone, for tests that need no containerd.
pub fn shared_registry() -> &'static Registry {
    SHARED_REGISTRY.get_or_init(|| {
        register_shared_teardown();
        Registry::start()
    })
}

fn register_shared_teardown() {
    static REGISTER: Once = Once::new();
    extern "C" fn teardown() {
        for env in [SHARED_V1_6.get(), SHARED_V1_7.get()].into_iter().flatten() {
            env.containerd.stop();
        }
        if let Some(registry) = SHARED_REGISTRY.get() {
            registry.stop();
        }
    }
    REGISTER.call_once(|| {
        // SAFETY: `teardown` is a plain `extern "C" fn` that takes no arguments.
        if unsafe { libc::atexit(teardown) } != 0 {
            panic!("atexit: cannot register the teardown of the shared test daemons");
        }
    });
}

#[cfg(test)]
mod self_test;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_are_lowercase() {
        let (a, b) = (unique("NS"), unique("NS"));
        assert_ne!(a, b);
        assert!(a.starts_with("ns-"), "{a}");
    }
}
