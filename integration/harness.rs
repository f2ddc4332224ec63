//! Real daemons for the integration tests: docker-registry and containerd 1.6 / 1.7.
//!
//! # What it starts
//!
//! - [`Registry`]: Debian's `docker-registry` (CNCF distribution 2.8), plain HTTP on
//!   `127.0.0.1:<free port>`, storage in a private directory. [`Registry::start_proxy`]
//!   runs it as a pull-through cache, the way real mirrors run.
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

// Each test area uses a different part of the harness; no single one uses it all.
#![allow(dead_code)]

use std::ffi::{CString, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, Once, OnceLock, PoisonError};
use std::thread::sleep;
use std::time::{Duration, Instant};

use url::Url;

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

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
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
/// are cleared so a test can never reach the host's containerd by accident.
pub fn ctrpull() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ctrpull"));
    cmd.env_remove("CONTAINERD_ADDRESS")
        .env_remove("CONTAINERD_NAMESPACE");
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

// ---------------------------------------------------------------------------
// Shared daemons
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` from the one thread that lives as long as the process, with
/// `PR_SET_PDEATHSIG(SIGKILL)`, so the child dies with the test binary but not with
/// the test thread that asked for it.
fn spawn_with_deathsig(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the harness spawner thread");
        tx
    });
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec this calls only async-signal-safe functions.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl: then no signal would ever come.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner
        .send((cmd, tx))
        .expect("the harness spawner thread is gone");
    rx.recv()
        .expect("the harness spawner thread dropped a request")
}

/// One daemon process: its log file, its PID file, and how to stop it.
struct Daemon {
    name: String,
    pid: u32,
    child: Mutex<Option<Child>>,
    pid_file: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` with stdout and stderr appended to `log`, and writes its PID file.
    fn spawn(name: &str, mut cmd: Command, log: &Path) -> Daemon {
        let out = fs::File::create(log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = out.try_clone().expect("cannot clone a log file handle");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let program = cmd.get_program().to_owned();
        let mut child = spawn_with_deathsig(cmd)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", Path::new(&program).display()));
        let pid = child.id();
        let pids = run_dir().join("pids");
        let pid_file = pids.join(format!("{name}-{pid}.pid"));
        if let Err(e) =
            fs::create_dir_all(&pids).and_then(|()| fs::write(&pid_file, format!("{pid}\n")))
        {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cannot write {}: {e}", pid_file.display());
        }
        Daemon {
            name: name.to_owned(),
            pid,
            child: Mutex::new(Some(child)),
            pid_file,
            log: log.to_owned(),
        }
    }

    /// The exit status, once the daemon has exited (or been stopped).
    fn exit_status(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        child.as_mut()?.try_wait().ok().flatten()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log.display()))
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, [`STOP_GRACE`] to exit, then SIGKILL. Idempotent; never panics.
    fn stop(&self) {
        let taken = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut child) = taken {
            if matches!(child.try_wait(), Ok(None)) {
                // SAFETY: kill(2) on our own child, which is not reaped yet, so the PID
                // cannot have been reused.
                unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
                let deadline = Instant::now() + STOP_GRACE;
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    sleep(POLL);
                }
                if matches!(child.try_wait(), Ok(None)) {
                    eprintln!(
                        "harness: {} (pid {}) ignored SIGTERM; killing",
                        self.name, self.pid
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        let _ = fs::remove_file(&self.pid_file);
    }
}

/// A fresh directory `<run dir>/<prefix>-XXXXXX`, kept until the daemon's `stop`.
fn private_dir(prefix: &str) -> PathBuf {
    let parent = run_dir();
    fs::create_dir_all(&parent)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .tempdir_in(&parent)
        .unwrap_or_else(|e| panic!("cannot create a directory in {}: {e}", parent.display()))
        .keep()
}

/// Detaches every mount at or below `dir`, deepest first, then removes `dir`.
fn remove_daemon_dir(dir: &Path) {
    for mount in mounts_under(dir).into_iter().rev() {
        let Ok(path) = CString::new(mount.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: umount2 with a valid NUL-terminated path.
        if unsafe { libc::umount2(path.as_ptr(), 0) } != 0 {
            // Busy (a leftover container process): detach it lazily instead.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            eprintln!("harness: cannot remove {}: {e}", dir.display());
        }
    }
}

/// Mount points at or below `dir`, in the order of /proc/self/mountinfo (parents first).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|mount| mount.starts_with(dir))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// SIGKILLs containerd shims started for `socket` (found by their `-address`
/// argument) and the container processes they parent. Shims outlive containerd by
/// design, so a test that left a container running would otherwise leak them.
fn kill_shims(socket: &Path) {
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    let mut shims = Vec::new();
    let mut parents = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_ours = args
            .windows(2)
            .any(|w| w[0] == b"-address" && w[1] == socket.as_os_str().as_bytes());
        if is_ours && args[0].ends_with(b"shim-runc-v2") {
            shims.push(pid);
        }
        let ppid = fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
            });
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    for &shim in &shims {
        for &(pid, _) in parents.iter().filter(|(_, ppid)| *ppid == shim) {
            // SAFETY: plain kill(2); the PID was just read as a child of our shim.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // SAFETY: as above.
        unsafe { libc::kill(shim, libc::SIGKILL) };
    }
}

// ---------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// containerd
// ---------------------------------------------------------------------------

/// The containerd versions the tests run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// Debian bookworm's containerd, `/usr/bin/containerd`.
    V1_6,
    /// Debian trixie's containerd, unpacked under `$CTRPULL_CONTAINERD17_PREFIX`.
    V1_7,
}

impl Version {
    /// "1.6" or "1.7", as `containerd --version` starts.
    pub fn major_minor(self) -> &'static str {
        match self {
            Version::V1_6 => "1.6",
            Version::V1_7 => "1.7",
        }
    }

    /// The directory holding this version's `containerd`, `ctr` and shims.
    pub fn bin_dir(self) -> PathBuf {
        match self {
            Version::V1_6 => PathBuf::from("/usr/bin"),
            Version::V1_7 => {
                let prefix = std::env::var_os("CTRPULL_CONTAINERD17_PREFIX")
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| DEFAULT_CONTAINERD17_PREFIX.into());
                PathBuf::from(prefix).join("usr/bin")
            }
        }
    }

    /// PATH for the daemon and `ctr`: this version's bin dir first, so containerd
    /// starts its own shim, then the caller's PATH, then the sbin dirs where runc is.
    fn path_env(self) -> OsString {
        let mut dirs = vec![self.bin_dir()];
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        for sbin in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
            if !dirs.iter().any(|d| d == Path::new(sbin)) {
                dirs.push(sbin.into());
            }
        }
        std::env::join_paths(dirs).expect("PATH entries contain no ':'")
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "containerd {}", self.major_minor())
    }
}

/// A private containerd with the CRI plugin, on a socket in its own directory.
pub struct Containerd {
    version: Version,
    daemon: Daemon,
    dir: PathBuf,
}

impl Containerd {
    /// Starts containerd `version` and waits until `ctr version` answers and the CRI
    /// plugin is loaded. Panics (telling to run `scripts/deps.sh`) when the binary is
    /// missing.
    pub fn start(version: Version) -> Containerd {
        let bin = version.bin_dir().join("containerd");
        for needed in [bin.clone(), version.bin_dir().join("ctr")] {
            if !needed.is_file() {
                panic!(
                    "{version}: {} is missing: run `bash scripts/deps.sh` (as root) first",
                    needed.display()
                );
            }
        }
        let dir = private_dir(&format!("containerd-{}", version.major_minor()));
        let socket = dir.join("containerd.sock");
        // sun_path holds 108 bytes; containerd also binds "<socket>.ttrpc".
        if socket.as_os_str().len() + ".ttrpc".len() >= 108 {
            remove_daemon_dir(&dir);
            panic!(
                "socket path {} is too long for a unix socket: set CTRPULL_TEST_RUN_DIR to a shorter directory",
                socket.display()
            );
        }
        for sub in ["certs.d", "cni/bin", "cni/net.d", "opt"] {
            fs::create_dir_all(dir.join(sub))
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.join(sub).display()));
        }
        let config = dir.join("config.toml");
        fs::write(&config, containerd_config(&dir, &socket))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));

        let mut cmd = Command::new(&bin);
        cmd.arg("--config")
            .arg(&config)
            .env("PATH", version.path_env());
        let name = format!("containerd-{}", version.major_minor());
        let daemon = Daemon::spawn(&name, cmd, &dir.join("containerd.log"));
        // From here on, Drop stops the daemon and removes `dir`, panic or not.
        let containerd = Containerd {
            version,
            daemon,
            dir,
        };
        containerd.wait_ready();
        containerd
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + CONTAINERD_READY_TIMEOUT;
        loop {
            if let Some(status) = self.daemon.exit_status() {
                panic!(
                    "{} exited during startup ({status}); its log ends:\n{}",
                    self.version,
                    self.daemon.log_tail(40)
                );
            }
            if UnixStream::connect(self.socket()).is_ok() {
                let out = self
                    .ctr_command()
                    .args(["--connect-timeout", "2s", "version"])
                    .output();
                if out.is_ok_and(|out| out.status.success()) {
                    break;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not answer `ctr version` on {} within {CONTAINERD_READY_TIMEOUT:?}; its log ends:\n{}",
                    self.version,
                    self.socket().display(),
                    self.daemon.log_tail(40)
                );
            }
            sleep(POLL);
        }
        // Tests talk to the CRI ImageService on this socket: a containerd without it
        // is a broken environment, not a test failure to chase.
        let plugins = self.ctr_ok(&["plugins", "ls"]);
        let cri_ok = plugins.lines().any(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() >= 4
                && cols[0] == "io.containerd.grpc.v1"
                && cols[1] == "cri"
                && cols[3] == "ok"
        });
        if !cri_ok {
            panic!(
                "{}: the CRI plugin did not load:\n{plugins}\nits log ends:\n{}",
                self.version,
                self.daemon.log_tail(40)
            );
        }
    }

    /// The version this daemon runs.
    pub fn version(&self) -> Version {
        self.version
    }

    /// containerd's gRPC socket (containerd API and CRI).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The config.toml the daemon runs with (for `ctrpull --config`-style tests).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// The CRI plugin's `registry.config_path`: put `<host>/hosts.toml` here to give
    /// containerd (and ctrpull, reading the same config) mirrors.
    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.join("certs.d")
    }

    /// containerd's root directory (content store, snapshots, metadata).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid
    }

    /// The daemon's private directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything containerd logged so far.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// `ctr` of this version with `--address <socket>`, ready for more arguments.
    pub fn ctr_command(&self) -> Command {
        let mut cmd = Command::new(self.version.bin_dir().join("ctr"));
        cmd.env("PATH", self.version.path_env())
            .env_remove("CONTAINERD_NAMESPACE")
            .arg("--address")
            .arg(self.socket());
        cmd
    }

    /// Runs `ctr --address <socket> <args>` and returns its output, whatever the status.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ctr ({}): {e}", self.version))
    }

    /// Like [`Containerd::ctr`], but panics unless `ctr` succeeds; returns its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        if !out.status.success() {
            panic!(
                "`ctr {}` failed on {} ({}): {}",
                args.join(" "),
                self.version,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates a fresh namespace named [`unique`]`(prefix)`, purged when dropped.
    pub fn namespace(&self, prefix: &str) -> Namespace<'_> {
        let name = unique(prefix);
        self.ctr_ok(&["namespaces", "create", &name]);
        Namespace {
            containerd: self,
            name,
        }
    }

    /// Empties `namespace` (tasks, containers, images, leases, content, snapshots)
    /// and removes it. Errors say what was left behind.
    pub fn purge_namespace(&self, namespace: &str) -> Result<(), String> {
        let list = |args: &[&str]| -> Vec<String> {
            let mut full = vec!["-n", namespace];
            full.extend_from_slice(args);
            let out = self.ctr(&full);
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let run = |args: &[&str], items: &[String]| {
            let mut full = vec!["-n", namespace];
            full.extend_from_slice(args);
            full.extend(items.iter().map(String::as_str));
            let _ = self.ctr(&full);
        };
        for task in list(&["tasks", "ls", "-q"]) {
            run(&["tasks", "delete", "--force"], &[task]);
        }
        for container in list(&["containers", "ls", "-q"]) {
            run(&["containers", "delete"], &[container]);
        }
        let images = list(&["images", "ls", "-q"]);
        if !images.is_empty() {
            run(&["images", "rm", "--sync"], &images);
        }
        let leases = list(&["leases", "ls", "-q"]);
        if !leases.is_empty() {
            run(&["leases", "rm", "--sync"], &leases);
        }
        let content = list(&["content", "ls", "-q"]);
        if !content.is_empty() {
            run(&["content", "rm"], &content);
        }
        // Unreferenced snapshots go with the next GC; remove stragglers children first
        // (`snapshots ls` prints "KEY PARENT KIND" after a header).
        let snapshots: Vec<String> = list(&["snapshots", "ls"])
            .iter()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        for key in snapshots.iter().rev() {
            run(&["snapshots", "rm"], std::slice::from_ref(key));
        }
        // Garbage collection runs in the background after deletions: retry a little.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.ctr(&["namespaces", "remove", namespace]);
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{}: cannot remove namespace {namespace}: {}",
                    self.version,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// Stops containerd, kills its shims, detaches its mounts and removes its
    /// directory. Idempotent.
    pub fn stop(&self) {
        self.daemon.stop();
        kill_shims(&self.socket());
        remove_daemon_dir(&self.dir);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for Containerd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Containerd")
            .field("version", &self.version)
            .field("pid", &self.daemon.pid)
            .field("dir", &self.dir)
            .finish()
    }
}

/// containerd config (version 2, read by 1.6 and 1.7 alike) with everything private
/// to `dir`.
fn containerd_config(dir: &Path, socket: &Path) -> String {
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    format!(
        r#"version = 2
root = {root}
state = {state}
# Snapshotters that cannot work here only add noise to the log.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

# 1.7 only (1.6 ignores it): NRI would listen on a host-wide socket.
[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"

  # No CNI config on purpose: CRI logs "failed to load cni during init" and carries
  # on; only pod sandboxes need networking, and the tests use the ImageService.
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {hosts}
"#,
        root = q(&dir.join("root")),
        state = q(&dir.join("state")),
        socket = q(socket),
        ttrpc = q(&dir.join("containerd.sock.ttrpc")),
        opt = q(&dir.join("opt")),
        cni_bin = q(&dir.join("cni/bin")),
        cni_conf = q(&dir.join("cni/net.d")),
        hosts = q(&dir.join("certs.d")),
    )
}

/// A containerd namespace of one test; purged and removed when dropped.
pub struct Namespace<'a> {
    containerd: &'a Containerd,
    name: String,
}

impl Namespace<'_> {
    /// The namespace's name, for `-n` / `--namespace`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.containerd.purge_namespace(&self.name) {
            // A test that leaks into containerd is a bug, unless it already failed.
            if std::thread::panicking() {
                eprintln!("harness: {e}");
            } else {
                panic!("{e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_octal() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_mountinfo(r"/plain\09"), r"/plain\09");
    }

    #[test]
    fn unique_names_differ_and_are_lowercase() {
        let (a, b) = (unique("NS"), unique("NS"));
        assert_ne!(a, b);
        assert!(a.starts_with("ns-"), "{a}");
    }
}
