//! Unpacking while downloading: the tree written straight into the snapshots must be
//! the one containerd's own applier (`Diff.Apply`) makes of the same layers.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use ctrpull::builder::LayerSource;
use ctrpull::containerd::chain_ids;
use rstest::rstest;
use sha2::{Digest, Sha256};
use tar::{Builder, EntryType, Header};

use crate::harness::{self, Containerd, Version};
use crate::pull::{
    busybox_with, ctrpull_pull, ctrpull_pull_command, file_digest_in_layer, ok, push, random_layers,
};

#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn unpacking_while_downloading_writes_what_containerd_writes(#[case] version: Version) {
    let env = harness::shared(version);
    let streamed = env.containerd.namespace("unpack-streamed");
    let applied = env.containerd.namespace("unpack-applied");
    let repo = harness::unique("test/unpack");
    // Layers of their own (no other pull has them in the store), all written here.
    let mut extra = vec![
        LayerSource::Tar(lower_layer(&repo).into()),
        LayerSource::Tar(upper_layer(&repo).into()),
        LayerSource::Tar(unlisted_parent_layer(&repo).into()),
        LayerSource::Tar(through_symlink_layer(&repo).into()),
    ];
    // Big enough to come as parallel Range requests.
    extra.extend(random_layers([6 << 20]));
    let pushed = push(&repo, busybox_with(extra)).await;
    let layers = pushed.image.layers.len();

    let streaming = ok_stderr(ctrpull_pull(
        &env.containerd,
        streamed.name(),
        &["-vv", &pushed.reference],
    ));
    // busybox's layer may be in the store already (other tests pull it): it is
    // applied by containerd then, having never been downloaded here. The layer that
    // writes through a symlink (the fourth above busybox) is given up half-written and handed to
    // containerd; every other one is written while it downloads.
    let through_symlink = 4;
    for layer in (1..layers).filter(|l| *l != through_symlink) {
        assert!(
            streaming.contains(&format!("layer unpacked while downloading layer={layer} ")),
            "layer {layer} should have been unpacked while it downloaded:\n{streaming}"
        );
    }
    let gave_up: Vec<&str> = streaming
        .lines()
        .filter(|l| l.contains("unpacking while downloading gave up"))
        .collect();
    assert!(
        gave_up.len() == 1
            && gave_up[0].contains(&format!("layer={through_symlink} "))
            && gave_up[0].contains("is a symlink"),
        "only the layer writing through a symlink should be left to containerd:\n{streaming}"
    );
    assert!(
        streaming.contains(&format!("layer={through_symlink} applied=true")),
        "{streaming}"
    );
    let after = ok_stderr(ctrpull_pull(
        &env.containerd,
        applied.name(),
        &["-vv", "--unpack-after-download", &pushed.reference],
    ));
    assert_eq!(
        after.matches("applied=true").count(),
        layers,
        "containerd should have applied every layer itself:\n{after}"
    );
    assert!(!after.contains("unpacked while downloading"), "{after}");

    let diff_ids = diff_ids(&pushed);
    let top = chain_ids(&diff_ids).pop().unwrap();
    let ours = Tree::of(&env.containerd, streamed.name(), &top);
    let theirs = Tree::of(&env.containerd, applied.name(), &top);
    assert_same_tree(&ours, &theirs);
    // The layers did what they say, so the comparison covered each case.
    for (path, expected) in [
        ("/gone", None),
        ("/gonedir", None),
        ("/data/fifo", None),
        ("/opq/a", None),
        ("/opq/c", Some("file")),
        ("/f2d/x", Some("file")),
        ("/d2f", Some("file")),
        ("/implicit/deep/file", Some("file")),
        ("/opq/sub/late", Some("file")),
        ("/data/through", Some("file")),
        ("/to-data", Some("symlink")),
        ("/data/null", Some("char")),
        ("/data/loop", Some("block")),
        ("/data/link", Some("symlink")),
    ] {
        let entry = ours.entries.get(path);
        match expected {
            None => assert!(entry.is_none(), "{path} should be gone: {entry:?}"),
            Some(kind) => assert!(
                entry.is_some_and(|e| e.starts_with(kind)),
                "{path} should be a {kind}: {entry:?}"
            ),
        }
    }
    let owned = &ours.entries["/data/owned"];
    assert!(owned.contains("uid=1234 gid=5678"), "{owned}");
    assert!(owned.contains("user.note=hello"), "{owned}");
    assert!(ours.entries["/data/setuid"].contains("mode=104755"));
    assert!(ours.entries["/d2f"].contains("mtime=1700000000.123456789"));
    let sub = &ours.entries["/opq/sub"];
    assert!(
        sub.contains("mode=40700") && sub.contains("user.kept=on a directory"),
        "copied up from the layer below: {sub}"
    );

    // And the image runs.
    let out = env.containerd.run_busybox(
        streamed.name(),
        &pushed.reference,
        &["cat", "/keep", "/opq/c"],
    );
    assert!(out.contains("two\nnew in opq\n"), "{out}");
}

/// ctrpull run where containerd's snapshot directories are, at the same paths, other
/// (empty) directories, as for a containerd in another mount namespace: a kind node,
/// or ctrpull in a container without the host's directories. Nothing may be written
/// there; containerd applies every layer, and the image is whole.
#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn snapshot_directories_that_are_not_containerds_are_never_written(#[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("unpack-elsewhere");
    let repo = harness::unique("test/unpack-elsewhere");
    let seed = crate::pull::fresh_seed();
    let pushed = push(
        &repo,
        busybox_with(vec![LayerSource::Random {
            size: 3 << 20,
            seed,
        }]),
    )
    .await;
    let snapshots = env
        .containerd
        .root()
        .join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    // Snapshot IDs only grow: every one this pull (or a test running alongside) can
    // be given has a decoy.
    let next: u64 = std::fs::read_dir(&snapshots)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .max()
        .unwrap_or(0)
        + 1;
    let pull = ctrpull_pull_command(&env.containerd, ns.name(), &["-vv", &pushed.reference]);
    let script = r#"
        set -e
        dir=$1; last=$2; shift 2
        mount -t tmpfs decoys "$dir"
        i=1; while [ "$i" -le "$last" ]; do mkdir -p "$dir/$i/fs"; i=$((i + 1)); done
        "$@"
        echo "written in decoys: $(find "$dir" -mindepth 3 | head -5)"
    "#;
    let output = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&snapshots)
        .arg((next + 2000).to_string())
        .arg(pull.get_program())
        .args(pull.get_args())
        .envs(pull.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .output()
        .unwrap();
    let stdout = ok(output.clone());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.contains("written in decoys: \n"),
        "the decoy directories were written into: {stdout}"
    );
    let layers = pushed.image.layers.len();
    // The random layer is this test's own, so always downloaded here (busybox's may
    // be in the store already, and is then applied by containerd at once).
    assert!(
        stderr.contains("cannot be written from here: applying the layer once downloaded layer=1 "),
        "{stderr}"
    );
    assert_eq!(stderr.matches("applied=true").count(), layers, "{stderr}");
    assert!(!stderr.contains("unpacked while downloading"), "{stderr}");

    let name = format!("random-{seed}.bin");
    let out = env.containerd.run_busybox(
        ns.name(),
        &pushed.reference,
        &["sha256sum", &format!("/{name}")],
    );
    let expected = file_digest_in_layer(&pushed.image.layers[1].path, &name);
    assert!(out.contains(&expected), "{out}");
}

/// Layers whose unpack must wait keep their bytes in a temporary file instead of
/// giving up. With no memory at all for waiting layers, every piece that comes
/// before its layer's unpack starts goes through a spill file (the library's log
/// says so), and still every layer above busybox is unpacked while it downloads and
/// the tree is the one containerd's own applier makes of the same layers.
#[tokio::test]
async fn layers_waiting_for_their_unpack_spill_to_a_file() {
    let env = harness::shared(Version::V1_7);
    let spilled = env.containerd.namespace("unpack-spilled");
    let applied = env.containerd.namespace("unpack-spill-applied");
    let repo = harness::unique("test/spill");
    let pushed = push(
        &repo,
        busybox_with(random_layers([3 << 20, 6 << 20, 5 << 20])),
    )
    .await;
    let layers = pushed.image.layers.len();

    // The pull runs on this thread (a current-thread runtime), so a thread-local
    // subscriber sees the library's log.
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("ctrpull=debug")
        .with_writer(log.clone())
        .with_ansi(false)
        .finish();
    let report = {
        let _guard = tracing::subscriber::set_default(subscriber);
        let puller = ctrpull::Puller::builder()
            .address(env.containerd.socket())
            .namespace(spilled.name())
            .plain_http(true)
            .unpack_waiting_memory(0)
            .build()
            .expect("build a puller");
        let reference = pushed.reference.parse().expect("a reference");
        puller.pull(&reference).await.expect("the pull")
    };
    let log = log.text();
    assert!(
        log.contains("spills to a temporary file"),
        "no layer spilled, so this proves nothing:\n{log}"
    );
    // busybox's layer may be in the store already (other tests pull it), and is
    // then applied by containerd without a download.
    assert!(
        report.layers_unpacked_while_downloading >= layers - 1,
        "{} of {layers} layers unpacked while downloading:\n{log}",
        report.layers_unpacked_while_downloading
    );
    ok(ctrpull_pull(
        &env.containerd,
        applied.name(),
        &["--unpack-after-download", &pushed.reference],
    ));
    let diff_ids = diff_ids(&pushed);
    let top = chain_ids(&diff_ids).pop().unwrap();
    assert_same_tree(
        &Tree::of(&env.containerd, spilled.name(), &top),
        &Tree::of(&env.containerd, applied.name(), &top),
    );
}

/// A snapshot an unpack makes stays held by the pull's lease until an image refers
/// to it, and one a later pull finds already committed is held by that pull's lease
/// too: containerd's garbage collection in between removes neither. ctrpull adds a
/// snapshot to its lease only when it finds it committed; one it prepares and
/// commits itself is added by containerd (`Snapshots.Prepare` and `Commit` under a
/// lease). Once both leases are gone the snapshot is collected, so it was the
/// leases that kept it.
#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn snapshots_stay_held_by_the_pull_lease_until_an_image_refers_to_them(
    #[case] version: Version,
) {
    use ctrpull::containerd::{Connection, Leases, Unpacker};
    use std::time::Duration;

    let env = harness::shared(version);
    let ns = env.containerd.namespace("unpack-lease");
    let repo = harness::unique("test/lease");
    let pushed = push(&repo, busybox_with(random_layers([64 << 10]))).await;
    // The blobs and records, no snapshot.
    ok(ctrpull_pull(
        &env.containerd,
        ns.name(),
        &["--no-unpack", &pushed.reference],
    ));
    let diff_ids = diff_ids(&pushed);
    let chain = chain_ids(&diff_ids);
    let layer = &pushed.image.layers[0].descriptor;
    let descriptor = containerd_client::types::Descriptor {
        media_type: layer.media_type().to_string(),
        digest: layer.digest().to_string(),
        size: layer.size() as i64,
        annotations: Default::default(),
    };

    let conn = Connection::connect(&env.containerd.socket(), ns.name())
        .await
        .expect("connect to containerd");
    let leases = Leases::new(conn.clone());
    let exists = || async {
        Unpacker::new(conn.clone(), "overlayfs")
            .exists(&chain[0])
            .await
            .expect("Snapshots.Stat")
    };
    // A lease removed with --sync runs a garbage collection.
    let collect = || {
        let trigger = harness::unique("gc-trigger");
        env.containerd
            .ctr_ok(&["-n", ns.name(), "leases", "create", "--id", &trigger]);
        env.containerd
            .ctr_ok(&["-n", ns.name(), "leases", "rm", "--sync", &trigger]);
    };

    // A lease of its own, an hour long, and an unpacker working under it.
    let leased = |prefix: &str| {
        let id = harness::unique(prefix);
        let (leases, conn) = (&leases, &conn);
        async move {
            leases
                .create(&id, Duration::from_secs(3600))
                .await
                .expect("create a lease");
            let unpacker = Unpacker::new(conn.with_lease(&id).unwrap(), "overlayfs");
            (id, unpacker)
        }
    };

    let (first, unpacker) = leased("lease-first").await;
    let made = unpacker
        .apply(&descriptor, &diff_ids[0], &chain[0], None)
        .await
        .expect("apply the bottom layer");
    assert!(made, "the namespace had no snapshot yet");
    for name in crate::pull::records(&env.containerd, ns.name()).keys() {
        env.containerd
            .ctr_ok(&["-n", ns.name(), "images", "rm", name]);
    }
    collect();
    assert!(
        exists().await,
        "with no image, the snapshot made under a lease must be kept by it"
    );

    let (second, unpacker) = leased("lease-second").await;
    let found = unpacker
        .prepare(&chain[0], None)
        .await
        .expect("prepare the bottom layer");
    assert!(found.is_none(), "the snapshot should be found committed");
    leases.delete(&first).await.expect("delete the first lease");
    collect();
    assert!(
        exists().await,
        "the snapshot found committed must be held by the second lease"
    );
    leases
        .delete(&second)
        .await
        .expect("delete the second lease");
    collect();
    assert!(
        !exists().await,
        "with both leases gone the snapshot should be collected"
    );
}

/// The diff IDs of a pushed image's layers, bottom first.
fn diff_ids(pushed: &crate::pull::Pushed) -> Vec<String> {
    pushed
        .image
        .layers
        .iter()
        .map(|l| l.diff_id.to_string())
        .collect()
}

/// A log sink shared with the test.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Asserts two snapshot trees are the same, entry by entry, naming every difference.
fn assert_same_tree(ours: &Tree, theirs: &Tree) {
    let paths: std::collections::BTreeSet<&String> =
        ours.entries.keys().chain(theirs.entries.keys()).collect();
    let differences: Vec<String> = paths
        .into_iter()
        .filter(|path| ours.entries.get(*path) != theirs.entries.get(*path))
        .map(|path| {
            format!(
                "{path}:\n  streamed: {:?}\n  applied:  {:?}",
                ours.entries.get(path),
                theirs.entries.get(path)
            )
        })
        .collect();
    assert!(
        differences.is_empty(),
        "the trees differ:\n{}",
        differences.join("\n")
    );
}

/// Asserts ctrpull succeeded and returns what it logged.
fn ok_stderr(output: std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ok(output);
    stderr
}

/// Every entry of a mounted snapshot chain, described in full: type, mode, owner,
/// times, device numbers, link target, content digest, extended attributes and
/// which earlier path a hard link shares its inode with.
struct Tree {
    entries: BTreeMap<String, String>,
    /// Directory times after this (seconds since the epoch) are this test's own.
    since: i64,
}

impl Tree {
    /// Mounts a read-only view of snapshot `chain_id` in `namespace` and reads it.
    fn of(containerd: &Containerd, namespace: &str, chain_id: &str) -> Tree {
        let key = harness::unique("view");
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().to_str().unwrap();
        // One call makes the view and prints its mount command: the view has no
        // lease, and containerd's garbage collection (after any other test's pull)
        // may remove it before a second call could ask for its mounts. The mount
        // itself reads the committed layers, which the image keeps.
        let mount = containerd.ctr_ok(&[
            "-n",
            namespace,
            "snapshots",
            "view",
            "--target",
            target,
            &key,
            chain_id,
        ]);
        let mounted = Command::new("sh").arg("-c").arg(&mount).status().unwrap();
        assert!(mounted.success(), "{mount}");
        let _unmount = Unmount(dir.path().to_path_buf());
        let mut tree = Tree {
            entries: BTreeMap::new(),
            since: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
                - 3600,
        };
        let mut inodes = BTreeMap::new();
        tree.walk(dir.path(), dir.path(), &mut inodes);
        tree
    }

    fn walk(&mut self, root: &Path, dir: &Path, inodes: &mut BTreeMap<u64, String>) {
        let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        children.sort();
        let mut all = vec![dir.to_path_buf()];
        all.extend(children.iter().cloned());
        for path in all {
            let name = format!("/{}", path.strip_prefix(root).unwrap().display());
            if path != dir && path.is_dir() && !path.is_symlink() {
                self.walk(root, &path, inodes);
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let kind = meta.file_type();
            let mut text = String::new();
            text.push_str(match () {
                _ if kind.is_dir() => "dir",
                _ if kind.is_file() => "file",
                _ if kind.is_symlink() => "symlink",
                _ if kind.is_char_device() => "char",
                _ if kind.is_block_device() => "block",
                _ if kind.is_fifo() => "fifo",
                _ => "other",
            });
            // A directory made for an entry the layer does not list has the time
            // its last child was written: when each pull ran.
            let recent = kind.is_dir() && meta.mtime() > self.since;
            let mtime = match recent {
                true => "(this run)".to_string(),
                false => format!("{}.{:09}", meta.mtime(), meta.mtime_nsec()),
            };
            text.push_str(&format!(
                " mode={:o} uid={} gid={} mtime={mtime}",
                meta.mode(),
                meta.uid(),
                meta.gid(),
            ));
            if kind.is_file() {
                let digest = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
                text.push_str(&format!(" size={} sha256={digest}", meta.len()));
                if meta.nlink() > 1 {
                    let first = inodes.entry(meta.ino()).or_insert_with(|| name.clone());
                    text.push_str(&format!(" nlink={} inode-of={first}", meta.nlink()));
                }
            }
            if kind.is_char_device() || kind.is_block_device() {
                text.push_str(&format!(" rdev={:x}", meta.rdev()));
            }
            if kind.is_symlink() {
                text.push_str(&format!(
                    " -> {}",
                    std::fs::read_link(&path).unwrap().display()
                ));
            }
            for (key, value) in xattrs(&path) {
                text.push_str(&format!(" {key}={value}"));
            }
            self.entries.insert(name, text);
        }
    }
}

/// Unmounts its directory when dropped, so a failing test leaves no mount behind.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Extended attributes of `path` (not following a symlink), sorted.
fn xattrs(path: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = xattr::list(path)
        .unwrap()
        .map(|name| {
            let value = match xattr::get(path, &name) {
                Ok(Some(value)) => String::from_utf8_lossy(&value).into_owned(),
                other => format!("{other:?}"),
            };
            (name.to_string_lossy().into_owned(), value)
        })
        .collect();
    out.sort();
    out
}

/// A tar header of `kind` with every field set.
fn header(kind: EntryType, mode: u32, owner: (u64, u64), mtime: u64) -> Header {
    let mut header = Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(owner.0);
    header.set_gid(owner.1);
    header.set_mtime(mtime);
    header.set_size(0);
    header
}

fn dir(tar: &mut Builder<Vec<u8>>, path: &str, mode: u32, mtime: u64) {
    let mut h = header(EntryType::Directory, mode, (0, 0), mtime);
    tar.append_data(&mut h, path, std::io::empty()).unwrap();
}

fn file(tar: &mut Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32, owner: (u64, u64)) {
    let mut h = header(EntryType::Regular, mode, owner, 1_600_000_000);
    h.set_size(data.len() as u64);
    tar.append_data(&mut h, path, data).unwrap();
}

fn special(tar: &mut Builder<Vec<u8>>, path: &str, kind: EntryType, mode: u32, dev: (u32, u32)) {
    let mut h = header(kind, mode, (0, 0), 1_600_000_000);
    h.set_device_major(dev.0).unwrap();
    h.set_device_minor(dev.1).unwrap();
    tar.append_data(&mut h, path, std::io::empty()).unwrap();
}

fn link(tar: &mut Builder<Vec<u8>>, kind: EntryType, path: &str, target: &str) {
    let mut h = header(kind, 0o777, (1234, 5678), 1_600_000_000);
    tar.append_link(&mut h, path, target).unwrap();
}

/// Owners, modes, special files, links and an extended attribute, plus what the
/// layer above deletes, empties or replaces.
fn lower_layer(unique: &str) -> Vec<u8> {
    let mut tar = Builder::new(Vec::new());
    file(&mut tar, "lower_layer", unique.as_bytes(), 0o644, (0, 0));
    dir(&mut tar, "data/", 0o751, 1_000_000);
    tar.append_pax_extensions([("SCHILY.xattr.user.note", &b"hello"[..])])
        .unwrap();
    file(&mut tar, "data/owned", b"owned\n", 0o640, (1234, 5678));
    file(&mut tar, "data/setuid", b"#!/bin/sh\n", 0o4755, (0, 0));
    link(&mut tar, EntryType::Symlink, "data/link", "owned");
    link(&mut tar, EntryType::Link, "data/hard", "data/owned");
    special(&mut tar, "data/fifo", EntryType::Fifo, 0o600, (0, 0));
    special(&mut tar, "data/null", EntryType::Char, 0o666, (1, 3));
    special(&mut tar, "data/loop", EntryType::Block, 0o660, (7, 0));
    dir(&mut tar, "opq/", 0o755, 2_000_000);
    file(&mut tar, "opq/a", b"a\n", 0o644, (0, 0));
    tar.append_pax_extensions([("SCHILY.xattr.user.kept", &b"on a directory"[..])])
        .unwrap();
    dir(&mut tar, "opq/sub/", 0o700, 2_000_000);
    file(&mut tar, "opq/sub/b", b"b\n", 0o644, (0, 0));
    file(&mut tar, "gone", b"gone\n", 0o644, (0, 0));
    dir(&mut tar, "gonedir/", 0o755, 3_000_000);
    file(&mut tar, "gonedir/x", b"x\n", 0o644, (0, 0));
    file(
        &mut tar,
        "f2d",
        b"a file, then a directory\n",
        0o644,
        (0, 0),
    );
    dir(&mut tar, "d2f/", 0o755, 4_000_000);
    file(&mut tar, "d2f/y", b"y\n", 0o644, (0, 0));
    file(&mut tar, "keep", b"one\n", 0o644, (0, 0));
    tar.into_inner().unwrap()
}

/// Whiteouts (a file, a directory, a special file of the layer below), an opaque
/// directory, type changes (one with a fractional PAX mtime), a rewritten file and
/// a hard link to it whose header has other owners and times, a file whose parents
/// are not listed, and the root.
fn upper_layer(unique: &str) -> Vec<u8> {
    let mut tar = Builder::new(Vec::new());
    file(&mut tar, "upper_layer", unique.as_bytes(), 0o644, (0, 0));
    dir(&mut tar, "./", 0o755, 5_000_000);
    file(&mut tar, ".wh.gone", b"", 0o644, (0, 0));
    file(&mut tar, ".wh.gonedir", b"", 0o644, (0, 0));
    dir(&mut tar, "data/", 0o751, 1_500_000);
    file(&mut tar, "data/.wh.fifo", b"", 0o644, (0, 0));
    dir(&mut tar, "opq/", 0o750, 6_000_000);
    file(&mut tar, "opq/.wh..wh..opq", b"", 0o644, (0, 0));
    file(&mut tar, "opq/c", b"new in opq\n", 0o644, (0, 0));
    dir(&mut tar, "f2d/", 0o755, 7_000_000);
    file(&mut tar, "f2d/x", b"x\n", 0o644, (0, 0));
    tar.append_pax_extensions([("mtime", &b"1700000000.123456789"[..])])
        .unwrap();
    file(
        &mut tar,
        "d2f",
        b"a directory, then a file\n",
        0o600,
        (0, 0),
    );
    file(&mut tar, "keep", b"two\n", 0o600, (42, 42));
    link(&mut tar, EntryType::Link, "data/hard2", "keep");
    file(&mut tar, "implicit/deep/file", b"deep\n", 0o644, (0, 0));
    tar.into_inner().unwrap()
}

/// A file in a directory of a lower layer that this layer does not list: on
/// overlayfs, the directory is recreated in the upper layer with the lower one's
/// owner, mode, times and extended attributes.
fn unlisted_parent_layer(unique: &str) -> Vec<u8> {
    let mut tar = Builder::new(Vec::new());
    file(
        &mut tar,
        "unlisted_parent_layer",
        unique.as_bytes(),
        0o644,
        (0, 0),
    );
    file(&mut tar, "opq/sub/late", b"late\n", 0o644, (0, 0));
    tar.into_inner().unwrap()
}

/// A file written through a symlink the same layer makes: containerd follows it
/// within the snapshot. The unpack has written the layer's first entries when it
/// meets it, and gives the layer up to containerd.
fn through_symlink_layer(unique: &str) -> Vec<u8> {
    let mut tar = Builder::new(Vec::new());
    file(
        &mut tar,
        "through_symlink_layer",
        unique.as_bytes(),
        0o644,
        (0, 0),
    );
    link(&mut tar, EntryType::Symlink, "to-data", "data");
    file(&mut tar, "to-data/through", b"through\n", 0o644, (0, 0));
    tar.into_inner().unwrap()
}
