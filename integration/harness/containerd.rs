//! The containerd daemon, 1.6 or 1.7, with a private root, state, sockets and CRI.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::process::{kill_shims, private_dir, remove_daemon_dir, Daemon};
use super::{unique, CONTAINERD_READY_TIMEOUT, DEFAULT_CONTAINERD17_PREFIX, POLL};

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
    /// Whether its CRI plugin is loaded.
    cri: bool,
}

impl Containerd {
    /// Starts containerd `version` and waits until `ctr version` answers and the CRI
    /// plugin is loaded. Panics (telling to run `scripts/deps.sh`) when the binary is
    /// missing.
    pub fn start(version: Version) -> Containerd {
        Self::start_with(version, true)
    }

    /// Starts containerd `version` with its CRI plugin disabled, as on hosts that run
    /// containerd for Docker or `ctr` alone: the socket answers, CRI calls do not.
    pub fn start_without_cri(version: Version) -> Containerd {
        Self::start_with(version, false)
    }

    fn start_with(version: Version, cri: bool) -> Containerd {
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
        fs::write(&config, containerd_config(&dir, &socket, cri))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));

        let daemon = spawn_daemon(version, &dir);
        // From here on, Drop stops the daemon and removes `dir`, panic or not.
        let containerd = Containerd {
            version,
            daemon,
            dir,
            cri,
        };
        containerd.wait_ready(cri);
        containerd
    }

    /// Stops the daemon (SIGTERM, as a node's service manager does) and starts it
    /// again on the same root, state and socket; returns once it answers again.
    /// Running shims and everything in the root survive, as on a node.
    pub fn restart(&mut self) {
        self.daemon.stop();
        self.daemon = spawn_daemon(self.version, &self.dir);
        self.wait_ready(self.cri);
    }

    fn wait_ready(&self, cri: bool) {
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
        if !cri {
            return;
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

    /// Runs `/bin/busybox <args>` in a new container of `image` in `namespace`
    /// (`ctr run --rm`) and returns what it printed; panics if `ctr` fails.
    ///
    /// `ctr run` now and then loses the output of a task that exits at once (its
    /// stdout FIFO is attached late), so an empty output is run again, up to three
    /// runs in all; any other output is returned as it is.
    pub fn run_busybox(&self, namespace: &str, image: &str, args: &[&str]) -> String {
        let mut out = String::new();
        for _ in 0..3 {
            let id = super::unique("run");
            let mut run = vec!["-n", namespace, "run", "--rm", image, &id, "/bin/busybox"];
            run.extend_from_slice(args);
            out = self.ctr_ok(&run);
            if !out.trim().is_empty() {
                break;
            }
        }
        out
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

/// Starts containerd `version` with the config.toml in `dir`, logging to
/// `dir/containerd.log`.
fn spawn_daemon(version: Version, dir: &Path) -> Daemon {
    let mut cmd = Command::new(version.bin_dir().join("containerd"));
    cmd.arg("--config")
        .arg(dir.join("config.toml"))
        .env("PATH", version.path_env());
    let name = format!("containerd-{}", version.major_minor());
    Daemon::spawn(&name, cmd, &dir.join("containerd.log"))
}

/// containerd config (version 2, read by 1.6 and 1.7 alike) with everything private
/// to `dir`; with `cri` false, the CRI plugin is disabled.
fn containerd_config(dir: &Path, socket: &Path, cri: bool) -> String {
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    format!(
        r#"version = 2
root = {root}
state = {state}
# Snapshotters that cannot work here only add noise to the log.
disabled_plugins = [{no_cri}
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
        no_cri = if cri {
            ""
        } else {
            "\n  \"io.containerd.grpc.v1.cri\","
        },
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
