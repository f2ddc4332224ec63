//! Daemon processes: spawned with a death signal, tracked by PID files, stopped by
//! PID, and their directories and mounts cleaned up.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, OnceLock, PoisonError};
use std::thread::sleep;
use std::time::Instant;

use super::{run_dir, POLL, STOP_GRACE};

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
pub(super) struct Daemon {
    name: String,
    pub(super) pid: u32,
    child: Mutex<Option<Child>>,
    pid_file: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` with stdout and stderr appended to `log`, and writes its PID file.
    pub(super) fn spawn(name: &str, mut cmd: Command, log: &Path) -> Daemon {
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
    pub(super) fn exit_status(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        child.as_mut()?.try_wait().ok().flatten()
    }

    pub(super) fn log(&self) -> String {
        fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log.display()))
    }

    pub(super) fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, [`STOP_GRACE`] to exit, then SIGKILL. Idempotent; never panics.
    pub(super) fn stop(&self) {
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
pub(super) fn private_dir(prefix: &str) -> PathBuf {
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
pub(super) fn remove_daemon_dir(dir: &Path) {
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
pub(super) fn kill_shims(socket: &Path) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_octal() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_mountinfo(r"/plain\09"), r"/plain\09");
    }
}
