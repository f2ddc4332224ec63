//! What to build: the image spec types, and the busybox image of the tests and quickstart.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use oci_spec::image::{Arch, Os, PlatformBuilder};

use super::Error;
pub use crate::pull::Platform;

/// The gzip level [`Compression::default`] uses: the fastest that still
/// compresses, since these images are for tests and benchmarks.
pub const DEFAULT_GZIP_LEVEL: u32 = 1;

/// `PATH` of the images [`busybox_image`] makes.
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The OCI form of `platform`, for configs and index entries.
pub(super) fn to_oci(platform: &Platform) -> Result<oci_spec::image::Platform, Error> {
    let mut builder = PlatformBuilder::default()
        .os(Os::from(platform.os.as_str()))
        .architecture(Arch::from(platform.architecture.as_str()));
    if !platform.variant.is_empty() {
        builder = builder.variant(platform.variant.clone());
    }
    builder.build().map_err(|source| Error::Spec {
        what: "platform",
        source,
    })
}

/// How layer tarballs are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (`application/vnd.oci.image.layer.v1.tar+gzip`) at `level` 0–9.
    /// Level 0 stores without compressing, which costs almost nothing and
    /// loses nothing on [`LayerSource::Random`] data.
    Gzip {
        /// 0 (store) to 9 (best).
        level: u32,
    },
    /// Plain tar (`application/vnd.oci.image.layer.v1.tar`): digest and diff_id coincide.
    Uncompressed,
}

impl Default for Compression {
    /// gzip at [`DEFAULT_GZIP_LEVEL`].
    fn default() -> Self {
        Self::Gzip {
            level: DEFAULT_GZIP_LEVEL,
        }
    }
}

/// What goes into one layer.
#[derive(Debug, Clone)]
pub enum LayerSource {
    /// These entries, in this order. Parent directories are not added
    /// implicitly (containerd creates missing ones when it unpacks).
    Files(Vec<FileEntry>),
    /// One file, `random-<seed>.bin`, of `size` incompressible bytes that are
    /// the same for the same seed (with the same build of ctrpull: the
    /// generator is `rand`'s `StdRng`).
    Random {
        /// File size in bytes.
        size: u64,
        /// Generator seed.
        seed: u64,
    },
    /// A tar archive made elsewhere, taken as the layer's uncompressed content as
    /// it is: whiteouts, devices, owners, extended attributes, whatever it holds.
    Tar(Bytes),
}

/// One entry of a [`LayerSource::Files`] layer.
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// Path in the image; a leading `/` is dropped.
    pub path: String,
    /// Permission bits, e.g. `0o755`.
    pub mode: u32,
    /// What the entry is.
    pub content: FileContent,
}

/// The kind and content of a [`FileEntry`].
#[derive(Debug, Clone)]
pub enum FileContent {
    /// A regular file with these bytes.
    Bytes(Bytes),
    /// A regular file copied (streamed) from this host path.
    Host(PathBuf),
    /// A directory.
    Dir,
    /// A symbolic link to this target.
    Symlink(String),
}

impl FileEntry {
    /// A regular file holding `data`.
    pub fn file(path: &str, data: impl Into<Bytes>, mode: u32) -> Self {
        Self {
            path: path.to_owned(),
            mode,
            content: FileContent::Bytes(data.into()),
        }
    }

    /// A regular file copied from the host file `host`.
    pub fn host_file(path: &str, host: &Path, mode: u32) -> Self {
        Self {
            path: path.to_owned(),
            mode,
            content: FileContent::Host(host.to_path_buf()),
        }
    }

    /// A directory.
    pub fn dir(path: &str, mode: u32) -> Self {
        Self {
            path: path.to_owned(),
            mode,
            content: FileContent::Dir,
        }
    }

    /// A symbolic link `path` → `target`.
    pub fn symlink(path: &str, target: &str) -> Self {
        Self {
            path: path.to_owned(),
            mode: 0o777,
            content: FileContent::Symlink(target.to_owned()),
        }
    }
}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    /// Layers, bottom first.
    pub layers: Vec<LayerSource>,
    /// Platform recorded in the config (and in an index by [`push_index`](super::push_index));
    /// defaults to [`Platform::host`].
    pub platform: Platform,
    /// `Env` of the config, `KEY=value` strings.
    pub env: Vec<String>,
    /// `Entrypoint` of the config; empty leaves it unset.
    pub entrypoint: Vec<String>,
    /// `Cmd` of the config; empty leaves it unset.
    pub cmd: Vec<String>,
    /// `WorkingDir` of the config.
    pub working_dir: Option<String>,
    /// How layers are compressed.
    pub compression: Compression,
}

/// A one-layer image with the host's static busybox at `/bin/busybox` (plus a
/// `/bin/sh` link to it), the usual top-level directories, `PATH` set to
/// [`DEFAULT_PATH_ENV`] and `Cmd` `["/bin/busybox", "sh"]`, for the host platform.
///
/// `busybox` must be a statically linked binary (Debian's `busybox-static`
/// installs one at `/bin/busybox`): the image has no libraries.
pub fn busybox_image(busybox: &Path) -> ImageSpec {
    let mut entries: Vec<FileEntry> = ["bin", "etc", "proc", "sys", "dev", "root"]
        .into_iter()
        .map(|dir| FileEntry::dir(dir, 0o755))
        .collect();
    entries.push(FileEntry::dir("tmp", 0o1777));
    entries.push(FileEntry::host_file("bin/busybox", busybox, 0o755));
    entries.push(FileEntry::symlink("bin/sh", "busybox"));
    ImageSpec {
        layers: vec![LayerSource::Files(entries)],
        env: vec![DEFAULT_PATH_ENV.to_owned()],
        cmd: vec!["/bin/busybox".to_owned(), "sh".to_owned()],
        ..ImageSpec::default()
    }
}
