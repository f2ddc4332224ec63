//! How `ctrpull warm` writes `--report`, `--metrics-file` and `--ready-file`: mode
//! 0644 whatever the umask, and an existing file replaced by renaming a finished
//! temporary file of the same directory over it, so that a reader (node-exporter's
//! textfile collector, a log shipper, a readiness probe) sees the old file or the new
//! one, never a part of one. Watched with inotify on the output directory.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{File, Permissions};
use std::io::Read;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;

use ctrpull::builder::LayerSource;
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;
use serde_json::Value;

use crate::harness::{self, Version};
use crate::pull::{busybox_with, fresh_seed, push, records};
use crate::warm::warm_command;

/// A restrictive umask (nothing for group and others) and a permissive one (files
/// world-writable unless created with a narrower mode).
const UMASKS: [libc::mode_t; 2] = [0o077, 0o000];

/// The files the warm writes, in a directory that holds nothing else.
const OUTPUTS: [&str; 3] = ["report.json", "ctrpull.prom", "ready"];

/// The mode each output exists with beforehand: world-writable and executable, which
/// the replacement must not inherit.
const OLD_MODE: u32 = 0o777;

/// Under each umask, a warm replaces a report, a metrics file and a ready file that
/// already exist (mode 0777, held open by a reader): each ends with mode 0644 and the
/// new content; it is a new inode, while the reader of the old one still reads the
/// old content whole; no temporary file is left; and inotify saw the output's name
/// appear only by a rename from another name of the same directory, which had been
/// created, written and given its mode before that rename, never a create, write,
/// mode change or deletion under the output's own name.
#[tokio::test]
async fn outputs_are_0644_and_replaced_atomically_under_any_umask() {
    let env = harness::shared(Version::V1_6);
    let pushed = push(
        &harness::unique("test/outputs"),
        busybox_with(vec![LayerSource::Random {
            size: 4096,
            seed: fresh_seed(),
        }]),
    )
    .await;
    for umask in UMASKS {
        let ns = env.containerd.namespace("security-outputs");
        let dir = tempfile::tempdir().expect("a scratch directory");
        let list = dir.path().join("images.txt");
        std::fs::write(&list, format!("{}\n", pushed.reference)).expect("write the list");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).expect("create the output directory");
        let mut readers = Vec::new();
        for name in OUTPUTS {
            let path = out.join(name);
            std::fs::write(&path, old_content(name)).expect("write an old output");
            std::fs::set_permissions(&path, Permissions::from_mode(OLD_MODE))
                .expect("chmod an old output");
            let reader = File::open(&path).expect("open an old output");
            let inode = reader.metadata().expect("stat an old output").ino();
            readers.push((name, inode, reader));
        }
        let watch = Watch::new(&out);
        let arg = |name: &str| out.join(name).display().to_string();
        let mut cmd = warm_command(
            &env.containerd,
            ns.name(),
            &[
                "-q",
                "-f",
                &list.display().to_string(),
                "--report",
                &arg("report.json"),
                "--metrics-file",
                &arg("ctrpull.prom"),
                "--ready-file",
                &arg("ready"),
            ],
        );
        // SAFETY: umask(2) is async-signal-safe, and it is all that runs between fork
        // and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(umask);
                Ok(())
            });
        }
        let output = cmd.output().expect("run ctrpull warm");
        let events = watch.events();
        assert!(
            output.status.success(),
            "umask {umask:03o}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            records(&env.containerd, ns.name())
                .get(&pushed.reference)
                .map(|r| r.0.as_str()),
            Some(pushed.digest.as_str()),
            "umask {umask:03o}"
        );

        let left: BTreeSet<OsString> = std::fs::read_dir(&out)
            .expect("list the output directory")
            .map(|e| e.expect("a directory entry").file_name())
            .collect();
        let expected: BTreeSet<OsString> = OUTPUTS.iter().map(OsString::from).collect();
        assert_eq!(
            left, expected,
            "umask {umask:03o}: a temporary file was left behind"
        );
        for (name, old_inode, mut reader) in readers {
            let path = out.join(name);
            let meta = std::fs::symlink_metadata(&path).expect("stat an output");
            assert!(meta.is_file(), "umask {umask:03o}: {name} is not a file");
            assert_eq!(
                meta.mode() & 0o7777,
                0o644,
                "umask {umask:03o}: {name} has mode {:o}",
                meta.mode() & 0o7777
            );
            assert_ne!(
                meta.ino(),
                old_inode,
                "umask {umask:03o}: {name} was rewritten in place, not replaced"
            );
            let mut old = String::new();
            reader
                .read_to_string(&mut old)
                .expect("read the old output");
            assert_eq!(
                old,
                old_content(name),
                "umask {umask:03o}: the replaced {name} changed under its reader"
            );
            assert_renamed_into_place(&events, name, umask);
        }

        let report: Value =
            serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap())
                .expect("the new report is JSON");
        assert_eq!(report["images"][0]["reference"], pushed.reference.as_str());
        assert_eq!(report["images"][0]["status"], "pulled");
        let metrics = std::fs::read_to_string(out.join("ctrpull.prom")).unwrap();
        assert!(
            metrics.contains("ctrpull_run_success 1"),
            "umask {umask:03o}: {metrics}"
        );
        let ready = std::fs::read_to_string(out.join("ready")).unwrap();
        assert!(ready.starts_with("1 images ready at "), "{ready}");
    }
}

fn old_content(name: &str) -> String {
    format!("the old {name}, which a reader holds open\n")
}

/// Panics unless, in `events`, the name `output` only ever appeared by one rename
/// from another name of the directory, which had been created, written and had its
/// mode set before it was renamed.
fn assert_renamed_into_place(events: &[Event], output: &str, umask: libc::mode_t) {
    let on_output: Vec<&Event> = events.iter().filter(|e| e.name == output).collect();
    let [moved_to] = on_output[..] else {
        panic!("umask {umask:03o}: {output} should see exactly one event, a rename into place: {on_output:?}");
    };
    assert_eq!(
        moved_to.flags,
        ReadFlags::MOVED_TO,
        "umask {umask:03o}: {output}: {on_output:?}"
    );
    let (at, moved_from) = events
        .iter()
        .enumerate()
        .find(|(_, e)| e.flags.contains(ReadFlags::MOVED_FROM) && e.cookie == moved_to.cookie)
        .unwrap_or_else(|| {
            panic!("umask {umask:03o}: {output} was not renamed from this directory: {events:?}")
        });
    let temporary = &moved_from.name;
    assert!(
        !OUTPUTS.iter().any(|o| temporary == o),
        "umask {umask:03o}: {output} came from another output, {temporary}"
    );
    for step in [ReadFlags::CREATE, ReadFlags::MODIFY, ReadFlags::ATTRIB] {
        assert!(
            events[..at]
                .iter()
                .any(|e| &e.name == temporary && e.flags.contains(step)),
            "umask {umask:03o}: {temporary} saw no {step:?} before it became {output}: {events:?}"
        );
    }
}

/// One inotify event of the watched directory.
#[derive(Debug)]
struct Event {
    /// The entry's name.
    name: String,
    /// What happened.
    flags: ReadFlags,
    /// Pairs a `MOVED_FROM` with its `MOVED_TO`.
    cookie: u32,
}

/// An inotify watch of one directory, for entries created, written, changed in mode,
/// deleted and renamed.
struct Watch {
    fd: OwnedFd,
}

impl Watch {
    fn new(dir: &Path) -> Watch {
        let fd =
            inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC).expect("inotify_init1");
        let flags = WatchFlags::CREATE
            | WatchFlags::MODIFY
            | WatchFlags::ATTRIB
            | WatchFlags::DELETE
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO;
        inotify::add_watch(&fd, dir, flags).expect("inotify_add_watch");
        Watch { fd }
    }

    /// Every event so far, in order.
    fn events(&self) -> Vec<Event> {
        let mut buffer = [MaybeUninit::<u8>::uninit(); 8192];
        let mut reader = inotify::Reader::new(&self.fd, &mut buffer);
        let mut events = Vec::new();
        loop {
            match reader.next() {
                Ok(event) => {
                    assert!(
                        !event.events().contains(ReadFlags::QUEUE_OVERFLOW),
                        "inotify dropped events"
                    );
                    let name = event
                        .file_name()
                        .map(|n| String::from_utf8_lossy(n.to_bytes()).into_owned())
                        .unwrap_or_default();
                    events.push(Event {
                        name,
                        flags: event.events(),
                        cookie: event.cookie(),
                    });
                }
                Err(Errno::AGAIN) => return events,
                Err(e) => panic!("reading inotify events: {e}"),
            }
        }
    }
}
