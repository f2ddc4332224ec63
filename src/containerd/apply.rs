//! Applies one layer tarball straight into a prepared snapshot, as containerd's `Diff.Apply` would.
//!
//! The fast path of unpacking: ctrpull writes a layer's entries into the directory the
//! snapshotter prepared while the blob is still arriving, and computes the diff ID on
//! the way, instead of waiting for containerd's applier to read the blob back out of the
//! content store. The tree must be the one containerd's applier (Go package
//! `github.com/containerd/containerd/archive`, 1.6 and 1.7, as root on Linux) makes:
//! same types, contents, owners, modes, xattrs and times. Whatever this module cannot do
//! exactly that way is an error, never a difference: the caller then removes the
//! snapshot and hands the layer to `Diff.Apply`.
//!
//! A directory the layer writes into without listing it is made as containerd makes
//! it: 0755 and owned by root, or, in an overlay upper directory, with the owner, mode,
//! times and extended attributes of the first lower layer that has it.
//!
//! Left to containerd: parent components that are symlinks (containerd follows them
//! inside the root), GNU sparse files, and headers the `tar` crate and Go's
//! `archive/tar` could read differently.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread;

use containerd_client::types::Mount;
use filetime::FileTime;
use sha2::{Digest, Sha256};

/// Size of reads from the blob, of the chunks passed between threads and of file data
/// copies: a multi-gigabyte layer should not move through tiny syscalls.
const CHUNK: usize = 1 << 20;

/// Chunks queued between two threads: enough to ride out a slow write or a slow read,
/// little enough to keep memory small.
const IN_FLIGHT: usize = 4;

/// A tar block.
const BLOCK: u64 = 512;

/// Names starting with this delete what they name (OCI image spec, "Whiteouts").
const WHITEOUT_PREFIX: &[u8] = b".wh.";

/// The whiteout that hides everything below its directory from the lower layers.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// PAX records holding extended attributes.
const PAX_XATTR: &[u8] = b"SCHILY.xattr.";

/// The xattr overlayfs reads to make a directory opaque.
const OVERLAY_OPAQUE: &CStr = c"trusted.overlay.opaque";

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// How deletions in the layer (whiteouts) are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// Into an overlayfs upper directory: `.wh.NAME` becomes a 0:0 character device NAME
    /// (owned by the header's uid/gid), `.wh..wh..opq` sets xattr `trusted.overlay.opaque`
    /// = "y" on its directory.
    Overlay,
    /// Into a full copy of the parent (bind mount, e.g. native snapshotter or the first
    /// overlay layer): `.wh.NAME` removes NAME (recursively; missing is fine),
    /// `.wh..wh..opq` removes every entry of its directory that this layer did not itself
    /// create.
    Remove,
}

/// A prepared snapshot's directory and its whiteout style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The directory the layer's entries go into.
    pub dir: PathBuf,
    /// How the layer's whiteouts are written there.
    pub whiteouts: Whiteouts,
    /// Overlay: the lower directories, topmost first. A directory the layer writes
    /// into without listing it is recreated in the upper directory with the owner,
    /// mode, times and extended attributes of the first lower one that has it.
    pub lowers: Vec<PathBuf>,
}

impl Target {
    /// From the mounts `Snapshots.Prepare` returned. Exactly one mount, and either a
    /// writable bind mount (type `bind`, or options with `bind`/`rbind`; options with
    /// `rw` or without `ro`): its source, with [`Whiteouts::Remove`]; or an `overlay`
    /// mount with an `upperdir=` option and without `userxattr`: the upper directory,
    /// with [`Whiteouts::Overlay`].
    ///
    /// `None` for anything else, and whenever the result could differ from containerd's:
    /// the directory is not there (ctrpull may run on another host than containerd), the
    /// effective uid is not 0 (owners could not be set), or the process is in a user
    /// namespace (containerd then skips devices and does not write overlay whiteouts
    /// itself). Rootless overlay (`userxattr`) keeps its whiteouts in `user.overlay.*`
    /// xattrs, which this module does not write.
    pub fn from_mounts(mounts: &[Mount]) -> Option<Target> {
        let [mount] = mounts else {
            return None;
        };
        let has = |option: &str| mount.options.iter().any(|o| o == option);
        let target = if mount.r#type == "overlay" {
            if has("userxattr") || has("ro") {
                return None;
            }
            let option = |name: &str| mount.options.iter().find_map(|o| o.strip_prefix(name));
            let upper = option("upperdir=")?;
            let lowers = option("lowerdir=")
                .map(|l| l.split(':').map(PathBuf::from).collect())
                .unwrap_or_default();
            Target {
                dir: PathBuf::from(upper),
                whiteouts: Whiteouts::Overlay,
                lowers,
            }
        } else if mount.r#type == "bind" || has("bind") || has("rbind") {
            if has("ro") && !has("rw") {
                return None;
            }
            Target {
                dir: PathBuf::from(&mount.source),
                whiteouts: Whiteouts::Remove,
                lowers: Vec::new(),
            }
        } else {
            return None;
        };
        let is_dir = |dir: &Path| dir.is_absolute() && fs::metadata(dir).is_ok_and(|m| m.is_dir());
        if !is_dir(&target.dir)
            || !target.lowers.iter().all(|l| is_dir(l))
            || effective_uid() != 0
            || in_user_namespace()
        {
            return None;
        }
        Some(target)
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// A gzip stream (one member or several) of a tar stream.
    Gzip,
}

/// The compression of a layer from its media type:
/// `application/vnd.oci.image.layer.v1.tar` and `...tar+gzip` (and the
/// `.nondistributable.` variants of both), `application/vnd.docker.image.rootfs.diff.tar.gzip`
/// and `application/vnd.docker.image.rootfs.foreign.diff.tar.gzip`. `None` for anything
/// else (zstd, encrypted, unknown): those are left to containerd.
pub fn compression(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
        _ => None,
    }
}

/// Why a layer could not be applied here; the caller falls back to `Diff.Apply`.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Reading the blob failed (the download broke off, or its reader gave up).
    #[error("reading the layer blob failed {at}: {source}")]
    Read {
        /// How far it got: bytes of the uncompressed stream, or the end of the blob.
        at: String,
        /// What the blob reader said.
        #[source]
        source: io::Error,
    },
    /// The stream is not a whole, well-formed (gzip-compressed) tar archive, or holds an
    /// entry containerd's applier refuses too.
    #[error("the layer is corrupt at {at}: {reason}")]
    Corrupt {
        /// Where in the layer: an entry, the header after one, or the end of the stream.
        at: String,
        /// What is wrong there.
        reason: String,
    },
    /// An entry this module does not apply exactly as containerd would.
    #[error("layer entry {path:?}: {reason}")]
    Unsupported {
        /// The entry's name in the layer.
        path: String,
        /// What about it is left to containerd.
        reason: String,
    },
    /// A filesystem operation on the snapshot failed.
    #[error("layer entry {path:?}: cannot {action}: {source}")]
    Io {
        /// The entry's name in the layer.
        path: String,
        /// What was being done, e.g. `create the file`.
        action: String,
        /// What the filesystem said.
        #[source]
        source: io::Error,
    },
}

/// Applies the layer read from `blob` into `target`, returning its diff ID
/// (`sha256:<hex>`, the SHA-256 of the whole uncompressed stream, trailing blocks
/// included).
///
/// `blob` is read to its end: the stream must be a whole tar archive (Go's reader
/// rules: an end-of-archive block, and a second one or nothing after it), and a gzip
/// stream must end with its last member. A read error from `blob` is returned as
/// [`ApplyError::Read`]. On any error the target is left half-written: the caller
/// removes the snapshot.
///
/// Three threads share the work, so that a big file moves at the speed of the slowest
/// step rather than of all of them added up: this one reads (and decompresses) the
/// blob, a second hashes the stream, a third writes the entries.
pub fn apply_layer(
    blob: impl Read,
    compression: Compression,
    target: &Target,
) -> Result<String, ApplyError> {
    let (to_hasher, hasher_in) = mpsc::sync_channel(IN_FLIGHT);
    let (to_writer, writer_in) = mpsc::sync_channel(IN_FLIGHT);
    let (spent, reuse) = mpsc::channel();
    let span = tracing::Span::current();
    thread::scope(|scope| {
        let hasher = scope.spawn(move || hash(hasher_in, to_writer));
        let writer =
            scope.spawn(move || span.in_scope(|| apply_tar(Chunks::new(writer_in, spent), target)));
        let produced = produce(blob, compression, &to_hasher, &reuse);
        if let Ok(true) = produced {
            // Only now, with the whole blob read and checked, may the writer finish.
            let _ = to_hasher.send(Message::End);
        }
        drop(to_hasher);
        let applied = writer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let digest = hasher
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        // A failed read explains a stream the writer found cut short.
        produced?;
        applied?;
        digest.ok_or_else(|| ApplyError::Corrupt {
            at: "the end of the layer".into(),
            reason: "the stream was cut off".into(),
        })
    })
}

/// Reads the blob, decompressed, into chunks for the hasher. Ok(false) when the other
/// threads stopped taking chunks (the writer failed: its error is the one to report).
fn produce(
    blob: impl Read,
    compression: Compression,
    to_hasher: &SyncSender<Message>,
    reuse: &Receiver<Vec<u8>>,
) -> Result<bool, ApplyError> {
    let failure = ReadFailure::default();
    let blob = Tracked {
        inner: blob,
        failure: failure.clone(),
    };
    let mut offset = 0;
    match compression {
        Compression::None => {
            let mut blob = blob;
            send_all(&mut blob, to_hasher, reuse, &mut offset)
                .map_err(|err| failure.classify(err, Some(offset)))
        }
        Compression::Gzip => {
            let mut decoder =
                flate2::bufread::MultiGzDecoder::new(BufReader::with_capacity(CHUNK, blob));
            if !send_all(&mut decoder, to_hasher, reuse, &mut offset)
                .map_err(|err| failure.classify(err, Some(offset)))?
            {
                return Ok(false);
            }
            // The decoder already refuses bytes that do not start another member; this
            // makes sure nothing at all is left behind the last one, as Go's reader does.
            match read_full(&mut decoder.into_inner(), &mut [0u8; 1]) {
                Ok(0) => Ok(true),
                Ok(_) => Err(ApplyError::Corrupt {
                    at: "the end of the blob".into(),
                    reason: "bytes follow the last gzip member".into(),
                }),
                Err(err) => Err(failure.classify(err, None)),
            }
        }
    }
}

/// Sends everything `source` holds, in chunks; false when nobody takes them any more.
fn send_all(
    source: &mut impl Read,
    to_hasher: &SyncSender<Message>,
    reuse: &Receiver<Vec<u8>>,
    offset: &mut u64,
) -> io::Result<bool> {
    loop {
        let mut chunk = reuse.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
        let mut len = 0;
        while len < CHUNK {
            match source.read(&mut chunk[len..]) {
                Ok(0) => break,
                Ok(n) => {
                    len += n;
                    // Counted as it arrives, for the error that may come next.
                    *offset += n as u64;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        if len > 0 && to_hasher.send(Message::Chunk(chunk, len)).is_err() {
            return Ok(false);
        }
        if len < CHUNK {
            return Ok(true);
        }
    }
}

/// Hashes the stream on its way to the writer: the diff ID, once the end has passed.
fn hash(from: Receiver<Message>, to_writer: SyncSender<Message>) -> Option<String> {
    let mut hasher = Sha256::new();
    for message in from {
        let end = match &message {
            Message::Chunk(chunk, len) => {
                hasher.update(&chunk[..*len]);
                false
            }
            Message::End => true,
        };
        if to_writer.send(message).is_err() {
            return None;
        }
        if end {
            return Some(format!("sha256:{}", hex::encode(hasher.finalize())));
        }
    }
    None
}

/// Applies the tar stream and reads it to its end.
fn apply_tar(stream: Chunks, target: &Target) -> Result<(), ApplyError> {
    let mut archive = tar::Archive::new(stream);
    let mut applier = Applier::new(target);
    let mut last = "the start of the layer".to_string();
    {
        let entries = archive
            .entries()
            .map_err(|err| stream_error(err, last.clone()))?;
        // Where the next header starts if no extension header (PAX, GNU long name)
        // comes before it.
        let mut expected = 0;
        for entry in entries {
            let mut entry =
                entry.map_err(|err| stream_error(err, format!("the header after {last}")))?;
            let after_extensions = entry.raw_header_position() != expected;
            expected = entry.raw_file_position() + entry.size().div_ceil(BLOCK) * BLOCK;
            let parsed = read_entry(&mut entry, after_extensions)?;
            last = format!("entry {:?}", parsed.name);
            applier.apply(&mut entry, parsed)?;
        }
    }
    let mut stream = archive.into_inner();
    let end = || "the end of the tar archive".to_string();
    if stream.eof {
        // The tar crate stops at the first zero block or at the end of the input, Go's
        // reader accepts both; a missing end-of-archive is a truncated download more
        // often than a layer written that way.
        return Err(ApplyError::Corrupt {
            at: end(),
            reason: "the stream ends without an end-of-archive block".into(),
        });
    }
    // Go's reader reads the block after the first zero block: nothing, or a whole zero
    // block, or the archive is invalid. Whatever follows a second zero block is only
    // hashed.
    let mut block = [0u8; BLOCK as usize];
    match read_full(&mut stream, &mut block) {
        Ok(0) => {}
        Ok(512) if block.iter().all(|b| *b == 0) => {}
        Ok(512) => {
            return Err(ApplyError::Corrupt {
                at: end(),
                reason: "a non-zero block follows the first end-of-archive block".into(),
            })
        }
        Ok(_) => {
            return Err(ApplyError::Corrupt {
                at: end(),
                reason: "the stream ends inside the second end-of-archive block".into(),
            })
        }
        Err(err) => return Err(stream_error(err, end())),
    }
    applier.finish()?;
    stream.drain().map_err(|err| stream_error(err, end()))
}

/// An error from the tar reader: the stream is not a tar archive, or was cut off (then
/// the reading thread has the error that says why).
fn stream_error(err: io::Error, at: String) -> ApplyError {
    ApplyError::Corrupt {
        at,
        reason: err.to_string(),
    }
}

/// What an entry puts in place, as Go's reader types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    Char,
    Block,
    Fifo,
    /// A PAX global header: containerd creates nothing for it, but treats its name as a
    /// path all the same (removing what is there).
    Global,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::File => "regular file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::HardLink => "hard link",
            Kind::Char => "character device",
            Kind::Block => "block device",
            Kind::Fifo => "FIFO",
            Kind::Global => "PAX global header",
        }
    }
}

/// One entry, read the way Go's `archive/tar` reads it.
struct Entry {
    /// The name as the layer spells it, for messages.
    name: String,
    /// Where it goes under the root; empty for the root itself.
    rel: PathBuf,
    kind: Kind,
    /// Symlink target or hard link name, verbatim.
    link: Vec<u8>,
    /// Permission bits with setuid, setgid and sticky.
    mode: u32,
    uid: u32,
    gid: u32,
    device: (u32, u32),
    atime: FileTime,
    mtime: FileTime,
    xattrs: Vec<(CString, Vec<u8>)>,
    size: u64,
}

/// Reads an entry's header and PAX records, refusing whatever the tar crate and Go's
/// reader would read differently.
fn read_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    after_extensions: bool,
) -> Result<Entry, ApplyError> {
    let header = entry.header().clone();
    let raw = header.as_bytes();
    let flag = header.as_old().linkflag[0];
    let name = lossy(&entry.path_bytes());
    let unsupported = |name: &str, reason: String| ApplyError::Unsupported {
        path: name.to_string(),
        reason,
    };

    check_format(raw).map_err(|reason| unsupported(&name, reason))?;
    let mut kind = kind_of(flag).map_err(|reason| unsupported(&name, reason))?;
    if kind == Kind::Global && after_extensions {
        // Go's reader drops extension headers that come before a global header; the tar
        // crate hands them to it instead of its own records.
        return Err(unsupported(
            &name,
            "PAX global header after extension headers".into(),
        ));
    }

    // For a global header these are its own records, read here; for an entry, those of
    // the extension header before it.
    let pax = match entry
        .pax_extensions()
        .map_err(|err| stream_error(err, format!("entry {name:?}")))?
    {
        Some(records) => Pax::parse(records).map_err(|fault| fault.at(&name))?,
        None => Pax::default(),
    };

    let path = if kind == Kind::Global {
        // Go's reader merges a global header's own records into it, `path` included.
        pax.path
            .clone()
            .unwrap_or_else(|| header.path_bytes().into_owned())
    } else {
        entry.path_bytes().into_owned()
    };
    let name = lossy(&path);
    if path.contains(&0) || (path.is_empty() && kind != Kind::Global) {
        return Err(unsupported(&name, "empty name or NUL in the name".into()));
    }
    // Old archives mark directories with a trailing slash on a V7 regular entry.
    if flag == 0 && path.ends_with(b"/") {
        kind = Kind::Dir;
    }

    let size = entry.size();
    if !matches!(kind, Kind::File | Kind::Global) && size != 0 {
        // Go's reader reads no data for these whatever the size says; the tar crate
        // would skip `size` bytes and read the next header somewhere else.
        return Err(unsupported(
            &name,
            format!("{} with {size} bytes of data", kind.describe()),
        ));
    }
    let fields = HeaderFields::parse(raw).map_err(|fault| fault.at(&name))?;

    let global = Entry {
        name: name.clone(),
        rel: clean(&path),
        kind,
        link: Vec::new(),
        mode: 0,
        uid: 0,
        gid: 0,
        device: (0, 0),
        atime: FileTime::zero(),
        mtime: FileTime::zero(),
        xattrs: Vec::new(),
        size,
    };
    if kind == Kind::Global {
        // containerd uses nothing of a global header but its name.
        return Ok(global);
    }
    if pax.size.is_some_and(|s| s != size) {
        return Err(unsupported(
            &name,
            "PAX size record the tar crate did not use".into(),
        ));
    }
    let mut link = Vec::new();
    if matches!(kind, Kind::HardLink | Kind::Symlink) {
        link = entry
            .link_name_bytes()
            .map(|l| l.into_owned())
            .unwrap_or_default();
        if link.is_empty() || link.contains(&0) {
            return Err(unsupported(&name, "empty link target or NUL in it".into()));
        }
    }
    let id = |value: i64, what: &str| {
        u32::try_from(value)
            .map_err(|_| unsupported(&name, format!("{what} {value} does not fit a Linux id")))
    };
    let uid = match pax.uid {
        Some(uid) => uid,
        None => id(fields.uid, "uid")?,
    };
    let gid = match pax.gid {
        Some(gid) => gid,
        None => id(fields.gid, "gid")?,
    };
    let mtime = pax
        .mtime
        .unwrap_or(i128::from(fields.mtime) * NANOS_PER_SECOND);
    let atime = pax
        .atime
        .or(fields.atime.map(|secs| i128::from(secs) * NANOS_PER_SECOND));
    let mut device = (0, 0);
    if matches!(kind, Kind::Char | Kind::Block) {
        // Go's mknod takes them as uint32.
        let part = |value: i64| {
            u32::try_from(value)
                .map_err(|_| unsupported(&name, format!("device number {value} out of range")))
        };
        device = (part(fields.major)?, part(fields.minor)?);
    }
    Ok(Entry {
        link,
        // Go keeps the permission bits with setuid, setgid and sticky (two's complement
        // for a negative field, as here).
        mode: (fields.mode & 0o7777) as u32,
        uid,
        gid,
        device,
        // containerd sets atime to the later of the two, then bounds both (boundTime).
        atime: bounded(atime.map_or(mtime, |atime| atime.max(mtime))),
        mtime: bounded(mtime),
        xattrs: pax.xattrs,
        ..global
    })
}

/// Refuses header formats Go reads differently from the tar crate: Go takes a USTAR
/// prefix whatever the version field says, and reads star headers (a shorter prefix,
/// then times) that the tar crate takes for plain USTAR.
fn check_format(raw: &[u8]) -> Result<(), String> {
    if raw[257..263] != *b"ustar\0" {
        return Ok(());
    }
    if raw[263..265] != *b"00" {
        let version = lossy(&raw[263..265]);
        return Err(format!("USTAR header with version {version:?}"));
    }
    if raw[508..512] == *b"tar\0" {
        return Err("star header".into());
    }
    Ok(())
}

/// What an entry of type `flag` is, as containerd's applier handles it.
fn kind_of(flag: u8) -> Result<Kind, String> {
    Ok(match flag {
        b'0' | 0 => Kind::File,
        b'1' => Kind::HardLink,
        b'2' => Kind::Symlink,
        b'3' => Kind::Char,
        b'4' => Kind::Block,
        b'5' => Kind::Dir,
        b'6' => Kind::Fifo,
        b'g' => Kind::Global,
        b'7' => {
            return Err("contiguous file (type '7'): containerd's applier refuses it too".into())
        }
        b'S' => return Err("GNU sparse file".into()),
        b'x' | b'L' | b'K' => {
            return Err(format!(
                "extension header (type {:?}) outside USTAR or GNU format",
                flag as char
            ))
        }
        other => return Err(format!("entry type {:?}", other as char)),
    })
}

/// The numeric fields of a header, as Go's reader has them.
struct HeaderFields {
    mode: i64,
    uid: i64,
    gid: i64,
    mtime: i64,
    major: i64,
    minor: i64,
    /// A GNU header's access time, when set.
    atime: Option<i64>,
}

impl HeaderFields {
    /// Go's reader parses these fields of every header and refuses the archive when one
    /// is not a number; the tar crate refuses empty fields, which Go reads as 0, so they
    /// are read here.
    fn parse(raw: &[u8]) -> Result<HeaderFields, Fault> {
        let number = |range: std::ops::Range<usize>, what: &str| {
            numeric(&raw[range])
                .ok_or_else(|| Fault::Corrupt(format!("the header's {what} field is not a number")))
        };
        let gnu = raw[257..263] == *b"ustar " && raw[263..265] == *b" \0";
        let (major, minor) = if gnu || raw[257..263] == *b"ustar\0" {
            (number(329..337, "devmajor")?, number(337..345, "devminor")?)
        } else {
            (0, 0)
        };
        let mut atime = None;
        if gnu {
            // Go reads the GNU times when set; when one is not a number it takes them for
            // part of a name prefix instead (archives of old Go versions).
            let time = |range: std::ops::Range<usize>| match raw[range.start] {
                0 => Ok(None),
                _ => numeric(&raw[range]).map(Some).ok_or_else(|| {
                    Fault::Unsupported("GNU atime or ctime that is not a number".into())
                }),
            };
            time(357..369)?;
            atime = time(345..357)?;
        }
        Ok(HeaderFields {
            mode: number(100..108, "mode")?,
            uid: number(108..116, "uid")?,
            gid: number(116..124, "gid")?,
            mtime: number(136..148, "mtime")?,
            major,
            minor,
            atime,
        })
    }
}

/// A numeric header field as Go's reader parses it: base-256 (two's complement) when
/// the top bit is set, else octal between optional spaces and NULs (empty is 0).
fn numeric(field: &[u8]) -> Option<i64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let invert = if field[0] & 0x40 != 0 { 0xff } else { 0 };
        let mut value: u64 = 0;
        for (i, byte) in field.iter().enumerate() {
            let byte = if i == 0 {
                (byte ^ invert) & 0x7f
            } else {
                byte ^ invert
            };
            if value >> 56 != 0 {
                return None;
            }
            value = value << 8 | u64::from(byte);
        }
        let value = i64::try_from(value).ok()?;
        return Some(if invert == 0xff { !value } else { value });
    }
    let trim = |b: &u8| *b == b' ' || *b == 0;
    let start = field.iter().position(|b| !trim(b)).unwrap_or(field.len());
    let end = field
        .iter()
        .rposition(|b| !trim(b))
        .map_or(start, |i| i + 1);
    let text = &field[start..end];
    if text.is_empty() {
        return Some(0);
    }
    // Digits end at a NUL, as a C string.
    let text = &text[..text.iter().position(|b| *b == 0).unwrap_or(text.len())];
    if !text.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return None;
    }
    let value = u64::from_str_radix(std::str::from_utf8(text).ok()?, 8).ok()?;
    // Go converts the unsigned value with int64(), wrapping.
    Some(value as i64)
}

/// The PAX records of an entry, as Go's reader merges them.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<i128>,
    atime: Option<i128>,
    xattrs: Vec<(CString, Vec<u8>)>,
}

/// Why PAX records were refused: invalid for Go too, or read differently by the tar crate.
enum Fault {
    Corrupt(String),
    Unsupported(String),
}

impl Fault {
    fn at(self, name: &str) -> ApplyError {
        match self {
            Fault::Corrupt(reason) => ApplyError::Corrupt {
                at: format!("entry {name:?}"),
                reason,
            },
            Fault::Unsupported(reason) => ApplyError::Unsupported {
                path: name.to_string(),
                reason,
            },
        }
    }
}

impl Pax {
    fn parse(records: tar::PaxExtensions<'_>) -> Result<Pax, Fault> {
        let mut pax = Pax::default();
        let mut seen = HashSet::new();
        for record in records {
            // The tar crate splits records at newlines, Go by their length: a value with
            // a newline in it (a binary xattr may have one) reads differently.
            let record = record.map_err(|_| {
                Fault::Unsupported("PAX record the tar crate cannot split at its length".into())
            })?;
            let (key, value) = (record.key_bytes(), record.value_bytes());
            let shown = lossy(key);
            if key.is_empty() || key.contains(&0) {
                return Err(Fault::Corrupt(format!("invalid PAX record key {shown:?}")));
            }
            // Go keeps the last of duplicate records, the tar crate the first.
            if !seen.insert(key) {
                return Err(Fault::Unsupported(format!(
                    "PAX record {shown:?} appears twice"
                )));
            }
            let invalid = || Fault::Corrupt(format!("invalid PAX {shown} record"));
            match key {
                b"path" | b"linkpath" | b"uname" | b"gname" if value.contains(&0) => {
                    return Err(invalid())
                }
                // Go keeps the header's name for an empty record, the tar crate does not.
                b"path" | b"linkpath" if value.is_empty() => {
                    return Err(Fault::Unsupported(format!("empty PAX {shown} record")))
                }
                b"path" => pax.path = Some(value.to_vec()),
                _ if key.starts_with(PAX_XATTR) => {
                    let name = CString::new(&key[PAX_XATTR.len()..]).map_err(|_| invalid())?;
                    pax.xattrs.push((name, value.to_vec()));
                }
                _ if key.starts_with(b"GNU.sparse.") => {
                    return Err(Fault::Unsupported("GNU sparse file".into()))
                }
                // Go keeps the header's value for an empty record.
                _ if value.is_empty() => {}
                b"size" => {
                    let size = parse_int(value).ok_or_else(invalid)?;
                    pax.size = Some(u64::try_from(size).map_err(|_| invalid())?);
                }
                b"uid" | b"gid" => {
                    let id = parse_int(value).ok_or_else(invalid)?;
                    let id = u32::try_from(id).map_err(|_| {
                        Fault::Unsupported(format!("PAX {shown} {id} does not fit a Linux id"))
                    })?;
                    if key == b"uid" {
                        pax.uid = Some(id);
                    } else {
                        pax.gid = Some(id);
                    }
                }
                b"mtime" => pax.mtime = Some(parse_pax_time(value).ok_or_else(invalid)?),
                b"atime" => pax.atime = Some(parse_pax_time(value).ok_or_else(invalid)?),
                b"ctime" => {
                    parse_pax_time(value).ok_or_else(invalid)?;
                }
                _ => {}
            }
        }
        Ok(pax)
    }
}

/// A decimal integer as Go's `strconv.ParseInt(v, 10, 64)` reads it (optional sign).
fn parse_int(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A PAX time (`seconds[.fraction]`) in nanoseconds, as Go's `parsePAXTime` reads it:
/// the fraction is cut to nanoseconds, and a negative time is negative in both parts.
fn parse_pax_time(value: &[u8]) -> Option<i128> {
    let (secs, frac) = match value.iter().position(|b| *b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &b""[..]),
    };
    let whole = i128::from(parse_int(secs)?) * NANOS_PER_SECOND;
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let nanos = frac
        .iter()
        .chain(std::iter::repeat(&b'0'))
        .take(9)
        .fold(0i128, |n, digit| n * 10 + i128::from(digit - b'0'));
    Some(if secs.first() == Some(&b'-') {
        whole - nanos
    } else {
        whole + nanos
    })
}

/// Go's `boundTime`: a time before the epoch, or past what an i64 of nanoseconds holds,
/// becomes the epoch.
fn bounded(nanos: i128) -> FileTime {
    let nanos = if (0..=i128::from(i64::MAX)).contains(&nanos) {
        nanos
    } else {
        0
    };
    let secs = i64::try_from(nanos / NANOS_PER_SECOND).unwrap_or(0);
    let frac = u32::try_from(nanos % NANOS_PER_SECOND).unwrap_or(0);
    FileTime::from_unix_time(secs, frac)
}

/// An entry name's place under the root, as Go's `filepath.Clean` of the name joined to
/// the root has it: no empty or `.` components, `..` never above the root. Empty for
/// the root itself.
fn clean(name: &[u8]) -> PathBuf {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    parts.iter().map(|p| OsStr::from_bytes(p)).collect()
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A directory's times, set again once the whole layer is in.
struct DirTimes {
    rel: PathBuf,
    name: String,
    atime: FileTime,
    mtime: FileTime,
}

/// The state of one layer being applied.
struct Applier<'t> {
    root: &'t Path,
    whiteouts: Whiteouts,
    lowers: &'t [PathBuf],
    /// Remove mode: every path this layer put in place, so that an opaque marker (which
    /// may come before or after its siblings) removes only what was there before.
    unpacked: HashSet<PathBuf>,
    /// Directories in the order they appeared: creating their children changed their
    /// times, so containerd sets them again at the end.
    dirs: Vec<DirTimes>,
    buf: Vec<u8>,
}

impl<'t> Applier<'t> {
    fn new(target: &'t Target) -> Self {
        Applier {
            root: &target.dir,
            whiteouts: target.whiteouts,
            lowers: &target.lowers,
            unpacked: HashSet::new(),
            dirs: Vec::new(),
            buf: vec![0; CHUNK],
        }
    }

    fn apply<R: Read>(
        &mut self,
        data: &mut tar::Entry<'_, R>,
        entry: Entry,
    ) -> Result<(), ApplyError> {
        if entry.rel.as_os_str().is_empty() {
            // containerd ignores entries that resolve to the root (`./` included).
            tracing::debug!(name = %entry.name, "layer entry resolves to the root: ignored");
            return Ok(());
        }
        self.make_parents(&entry)?;
        let base = entry.rel.file_name().unwrap_or_default().as_bytes();
        if base.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(&entry, base);
        }

        let path = self.root.join(&entry.rel);
        let merge_dir = match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() && entry.kind == Kind::Dir => true,
            Ok(meta) => {
                remove(&path, &meta).map_err(|e| io_error(&entry, "remove what is there", e))?;
                false
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => false,
            Err(err) => return Err(io_error(&entry, "inspect what is there", err)),
        };

        match entry.kind {
            Kind::Dir => {
                if !merge_dir {
                    DirBuilder::new()
                        .mode(entry.mode)
                        .create(&path)
                        .map_err(|e| io_error(&entry, "create the directory", e))?;
                }
            }
            Kind::File => {
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(entry.mode)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| io_error(&entry, "create the file", e))?;
                self.copy_data(data, &mut file, &entry)?;
            }
            Kind::Symlink => {
                std::os::unix::fs::symlink(OsStr::from_bytes(&entry.link), &path)
                    .map_err(|e| io_error(&entry, "create the symlink", e))?;
            }
            Kind::HardLink => {
                let target = self.link_target(&entry)?;
                fs::hard_link(&target, &path)
                    .map_err(|e| io_error(&entry, "create the hard link", e))?;
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let format = match entry.kind {
                    Kind::Char => libc::S_IFCHR,
                    Kind::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let device = libc::makedev(entry.device.0, entry.device.1);
                mknod(&path, format | entry.mode, device)
                    .map_err(|e| io_error(&entry, "create the device node", e))?;
            }
            Kind::Global => {
                tracing::debug!(name = %entry.name, "PAX global header ignored");
            }
        }
        if entry.kind != Kind::Global {
            self.set_metadata(&path, &entry)?;
        }
        if entry.kind == Kind::Dir {
            self.dirs.push(DirTimes {
                rel: entry.rel.clone(),
                name: entry.name.clone(),
                atime: entry.atime,
                mtime: entry.mtime,
            });
        }
        if self.whiteouts == Whiteouts::Remove {
            self.unpacked.insert(entry.rel);
        }
        Ok(())
    }

    /// Creates the missing directories above the entry as containerd's mkparent does:
    /// mode 0755, owned by us, no times set, unless a lower layer has the directory
    /// (overlay), whose attributes are copied up then.
    fn make_parents(&self, entry: &Entry) -> Result<(), ApplyError> {
        let Some(parent) = entry.rel.parent() else {
            return Ok(());
        };
        let mut path = self.root.to_path_buf();
        for part in parent.components() {
            path.push(part);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(symlink_on_the_way(entry, &path, self.root))
                }
                Ok(_) => {
                    let err = io::Error::from_raw_os_error(libc::ENOTDIR);
                    return Err(io_error(entry, "use its parent directory", err));
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    // Created with the process umask, then given exactly 0755.
                    DirBuilder::new()
                        .mode(0o755)
                        .create(&path)
                        .and_then(|()| fs::set_permissions(&path, Permissions::from_mode(0o755)))
                        .map_err(|e| io_error(entry, "create a parent directory", e))?;
                    if let Some(lower) = self.lower_dir(entry, &path)? {
                        copy_up(&lower, &path).map_err(|e| {
                            io_error(entry, "copy a parent directory's attributes up", e)
                        })?;
                    }
                }
                Err(err) => return Err(io_error(entry, "inspect a parent directory", err)),
            }
        }
        Ok(())
    }

    /// The directory `path` (in the upper directory) stands for in the first lower
    /// directory that has it, as containerd's mkparent looks it up: `None` when no
    /// lower has it, or the first that has it has something else there (a whiteout,
    /// a file). A symlink on the way, which containerd would follow within that
    /// lower directory, is left to containerd.
    fn lower_dir(&self, entry: &Entry, path: &Path) -> Result<Option<PathBuf>, ApplyError> {
        let rel = path.strip_prefix(self.root).unwrap_or(path);
        for lower in self.lowers {
            let mut at = lower.clone();
            let mut found = true;
            let last = rel.components().count();
            for (i, part) in rel.components().enumerate() {
                at.push(part);
                match fs::symlink_metadata(&at) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        return Err(symlink_on_the_way(entry, &at, lower))
                    }
                    Ok(meta) if meta.is_dir() => {}
                    // Replaced in that layer: nothing to copy, and no look further down.
                    Ok(_) if i + 1 == last => return Ok(None),
                    Ok(_) => {
                        return Err(ApplyError::Unsupported {
                            path: entry.name.clone(),
                            reason: format!(
                                "{} is not a directory in a lower layer",
                                shown(&at, lower)
                            ),
                        })
                    }
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        found = false;
                        break;
                    }
                    Err(err) => return Err(io_error(entry, "inspect a lower directory", err)),
                }
            }
            if found {
                return Ok(Some(at));
            }
        }
        Ok(None)
    }

    fn whiteout(&mut self, entry: &Entry, base: &[u8]) -> Result<(), ApplyError> {
        let dir = entry.rel.parent().unwrap_or(Path::new(""));
        if base == OPAQUE_MARKER {
            let path = self.root.join(dir);
            return match self.whiteouts {
                Whiteouts::Overlay => lsetxattr(&path, OVERLAY_OPAQUE, b"y")
                    .map_err(|e| io_error(entry, "mark its directory opaque", e)),
                Whiteouts::Remove => self
                    .clear_opaque(dir)
                    .map_err(|e| io_error(entry, "empty its opaque directory", e)),
            };
        }
        let original = &base[WHITEOUT_PREFIX.len()..];
        if matches!(original, b"" | b"." | b"..") {
            return Err(ApplyError::Corrupt {
                at: format!("entry {:?}", entry.name),
                reason: "invalid whiteout name".into(),
            });
        }
        let path = self.root.join(dir).join(OsStr::from_bytes(original));
        match self.whiteouts {
            // The upper directory is fresh: if something is there already, containerd's
            // mknod fails too.
            Whiteouts::Overlay => mknod(&path, libc::S_IFCHR, libc::makedev(0, 0))
                .and_then(|()| std::os::unix::fs::lchown(&path, Some(entry.uid), Some(entry.gid)))
                .map_err(|e| io_error(entry, "create the whiteout device", e)),
            Whiteouts::Remove => match fs::symlink_metadata(&path) {
                Ok(meta) => remove(&path, &meta)
                    .map_err(|e| io_error(entry, "remove the whited-out path", e)),
                Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(err) => Err(io_error(entry, "inspect the whited-out path", err)),
            },
        }
    }

    /// Removes everything under `dir` this layer did not put there, descending into the
    /// directories it did (their older contents are hidden too), as containerd's walk does.
    fn clear_opaque(&self, dir: &Path) -> io::Result<()> {
        let abs = self.root.join(dir);
        let names = match fs::read_dir(&abs) {
            Ok(read) => read
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<Vec<OsString>>>()?,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(err),
        };
        for name in names {
            let rel = dir.join(&name);
            let path = abs.join(&name);
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            if !self.unpacked.contains(&rel) {
                remove(&path, &meta)?;
            } else if meta.is_dir() {
                self.clear_opaque(&rel)?;
            }
        }
        Ok(())
    }

    /// Where a hard link's target is, as containerd's hardlinkRootPath finds it: the part
    /// before the last slash is walked component by component (so `..` applies after a
    /// symlink is followed), the last part joined as is (a link to a symlink links the
    /// symlink).
    fn link_target(&self, entry: &Entry) -> Result<PathBuf, ApplyError> {
        let link = entry.link.as_slice();
        let (dir, base) = match link.iter().rposition(|b| *b == b'/') {
            Some(slash) => (&link[..slash], &link[slash + 1..]),
            None => (&b""[..], link),
        };
        let mut parts: Vec<&[u8]> = Vec::new();
        for part in dir.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    parts.pop();
                }
                _ => {
                    parts.push(part);
                    let path = self.root.join(join(&parts));
                    if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                        return Err(symlink_on_the_way(entry, &path, self.root));
                    }
                }
            }
        }
        match base {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            _ => parts.push(base),
        }
        Ok(self.root.join(join(&parts)))
    }

    /// Owner, xattrs, mode and times, in containerd's order: chown clears setuid bits and
    /// file capabilities, so the xattrs and the mode come after it.
    fn set_metadata(&self, path: &Path, entry: &Entry) -> Result<(), ApplyError> {
        std::os::unix::fs::lchown(path, Some(entry.uid), Some(entry.gid))
            .map_err(|e| io_error(entry, "set the owner", e))?;
        for (name, value) in &entry.xattrs {
            set_xattr(path, entry, name, value)?;
        }
        let symlink = match entry.kind {
            Kind::Symlink => true,
            // A hard link to a symlink is a symlink.
            Kind::HardLink => fs::symlink_metadata(path)
                .map_err(|e| io_error(entry, "inspect the hard link", e))?
                .file_type()
                .is_symlink(),
            _ => false,
        };
        if !symlink {
            fs::set_permissions(path, Permissions::from_mode(entry.mode))
                .map_err(|e| io_error(entry, "set the mode", e))?;
        }
        filetime::set_symlink_file_times(path, entry.atime, entry.mtime)
            .map_err(|e| io_error(entry, "set the times", e))
    }

    fn copy_data<R: Read>(
        &mut self,
        data: &mut tar::Entry<'_, R>,
        file: &mut File,
        entry: &Entry,
    ) -> Result<(), ApplyError> {
        let mut left = entry.size;
        while left > 0 {
            let want = self
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match data.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(ApplyError::Corrupt {
                        at: format!("entry {:?}", entry.name),
                        reason: format!("the stream ends {left} bytes before the file does"),
                    })
                }
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(stream_error(err, format!("entry {:?}", entry.name))),
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| io_error(entry, "write the file", e))?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Sets the directories' times again, now that nothing more is created in them.
    fn finish(&self) -> Result<(), ApplyError> {
        for dir in &self.dirs {
            // containerd finds each directory again by name, following symlinks within
            // the root: a later entry may have put one on the way.
            let mut path = self.root.to_path_buf();
            for part in dir.rel.components() {
                path.push(part);
                if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(ApplyError::Unsupported {
                        path: dir.name.clone(),
                        reason: format!(
                            "{} became a symlink later in the layer: containerd follows it \
                             to set the directory's times",
                            shown(&path, self.root)
                        ),
                    });
                }
            }
            filetime::set_symlink_file_times(&path, dir.atime, dir.mtime).map_err(|e| {
                ApplyError::Io {
                    path: dir.name.clone(),
                    action: "set the directory's times at the end of the layer".into(),
                    source: e,
                }
            })?;
        }
        Ok(())
    }
}

/// Sets one xattr from the layer, skipping those containerd skips.
fn set_xattr(path: &Path, entry: &Entry, name: &CStr, value: &[u8]) -> Result<(), ApplyError> {
    let shown = name.to_string_lossy();
    if shown.starts_with("trusted.") {
        // containerd never sets trusted.* from an archive (they are the overlay's own).
        tracing::debug!(name = %entry.name, xattr = %shown, "trusted xattr in layer ignored");
        return Ok(());
    }
    let Err(err) = lsetxattr(path, name, value) else {
        return Ok(());
    };
    let skip = match err.raw_os_error() {
        Some(libc::ENOTSUP) => true,
        // Only regular files and directories take user.* xattrs.
        Some(libc::EPERM) if shown.starts_with("user.") => fs::symlink_metadata(path)
            .is_ok_and(|m| !m.file_type().is_file() && !m.file_type().is_dir()),
        _ => false,
    };
    if skip {
        tracing::debug!(name = %entry.name, xattr = %shown, error = %err, "xattr in layer ignored");
        return Ok(());
    }
    Err(io_error(entry, &format!("set xattr {shown}"), err))
}

fn io_error(entry: &Entry, action: &str, source: io::Error) -> ApplyError {
    ApplyError::Io {
        path: entry.name.clone(),
        action: action.to_string(),
        source,
    }
}

fn symlink_on_the_way(entry: &Entry, path: &Path, root: &Path) -> ApplyError {
    ApplyError::Unsupported {
        path: entry.name.clone(),
        reason: format!(
            "{} is a symlink: containerd follows it within the snapshot",
            shown(path, root)
        ),
    }
}

/// `path` relative to the root, for messages.
fn shown(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

fn join(parts: &[&[u8]]) -> PathBuf {
    parts.iter().map(|p| OsStr::from_bytes(p)).collect()
}

/// Removes a path, a directory with all it holds; never follows a symlink.
fn remove(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn mknod(path: &Path, mode: libc::mode_t, device: libc::dev_t) -> io::Result<()> {
    let path = c_path(path)?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::mknod(path.as_ptr(), mode, device) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets `path`'s extended attribute `name` (not following a symlink).
fn lsetxattr(path: &Path, name: &CStr, value: &[u8]) -> io::Result<()> {
    xattr::set(path, OsStr::from_bytes(name.to_bytes()), value)
}

/// Gives the directory `to` the owner, mode, times and extended attributes (but the
/// `trusted.` ones, overlayfs' own) of `from`, as containerd does for a parent it
/// recreates in an upper directory.
fn copy_up(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(from)?;
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    fs::set_permissions(to, Permissions::from_mode(meta.mode() & 0o7777))?;
    filetime::set_symlink_file_times(
        to,
        FileTime::from_last_access_time(&meta),
        FileTime::from_last_modification_time(&meta),
    )?;
    let names = match xattr::list(from) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        names => names?,
    };
    for name in names {
        if name.as_bytes().starts_with(b"trusted.") {
            continue;
        }
        let value = match xattr::get(from, &name) {
            Ok(Some(value)) => value,
            // Gone meanwhile, or not readable here.
            Ok(None) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => continue,
            Err(e) => return Err(e),
        };
        match xattr::set(to, &name, &value) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {}
            other => other?,
        }
    }
    Ok(())
}

fn effective_uid() -> libc::uid_t {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether this process runs in a user namespace, as moby/sys/userns decides: the
/// initial namespace maps the whole uid range onto itself.
/// Read once: a process does not change namespaces under ctrpull.
fn in_user_namespace() -> bool {
    static IN_USER_NAMESPACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IN_USER_NAMESPACE.get_or_init(|| match fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => map.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"],
        Err(_) => false,
    })
}

/// Reads until `buf` is full or the stream ends; the number of bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// The first error the blob reader returned, kept aside so that it is reported as a
/// read failure however the gzip reader above it passed it on.
#[derive(Clone, Default)]
struct ReadFailure(Rc<RefCell<Option<io::Error>>>);

impl ReadFailure {
    /// The error to report for `err`, met after `offset` bytes of the uncompressed
    /// stream (`None`: after its end).
    fn classify(&self, err: io::Error, offset: Option<u64>) -> ApplyError {
        match (self.0.borrow_mut().take(), offset) {
            (Some(source), Some(offset)) => ApplyError::Read {
                at: format!("after {offset} bytes of the uncompressed layer"),
                source,
            },
            (Some(source), None) => ApplyError::Read {
                at: "at the end of the blob".into(),
                source,
            },
            (None, offset) => ApplyError::Corrupt {
                at: match offset {
                    Some(offset) => format!("byte {offset} of the uncompressed layer"),
                    None => "the end of the blob".into(),
                },
                reason: err.to_string(),
            },
        }
    }
}

/// The blob, with its errors kept aside in a [`ReadFailure`].
struct Tracked<R> {
    inner: R,
    failure: ReadFailure,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    let passed_on = io::Error::new(err.kind(), err.to_string());
                    self.failure.0.borrow_mut().get_or_insert(err);
                    return Err(passed_on);
                }
                ok => return ok,
            }
        }
    }
}

/// What travels from the reading thread through the hasher to the writer.
enum Message {
    /// A chunk of the uncompressed stream: the first `len` bytes of the buffer.
    Chunk(Vec<u8>, usize),
    /// The stream ended, and the blob was whole.
    End,
}

/// The writer's end of the stream, read as one: chunks in order, their buffers handed
/// back for reuse (a fresh megabyte for every chunk would cost page faults).
struct Chunks {
    from: Receiver<Message>,
    spent: Sender<Vec<u8>>,
    chunk: Vec<u8>,
    len: usize,
    pos: usize,
    /// The end has been read (a read returned nothing).
    eof: bool,
}

impl Chunks {
    fn new(from: Receiver<Message>, spent: Sender<Vec<u8>>) -> Self {
        Chunks {
            from,
            spent,
            chunk: Vec::new(),
            len: 0,
            pos: 0,
            eof: false,
        }
    }

    /// Reads whatever is left, up to the end.
    fn drain(&mut self) -> io::Result<()> {
        loop {
            self.pos = self.len;
            if self.read(&mut [0u8; 1])? == 0 {
                return Ok(());
            }
        }
    }
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.pos == self.len {
            if self.eof {
                return Ok(0);
            }
            match self.from.recv() {
                Ok(Message::Chunk(chunk, len)) => {
                    let spent = std::mem::replace(&mut self.chunk, chunk);
                    if !spent.is_empty() {
                        // The reading thread may be gone already; then nobody needs it.
                        let _ = self.spent.send(spent);
                    }
                    (self.len, self.pos) = (len, 0);
                }
                Ok(Message::End) => {
                    self.eof = true;
                    return Ok(0);
                }
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the stream was cut off",
                    ))
                }
            }
        }
        let n = buf.len().min(self.len - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use flate2::write::GzEncoder;
    use rstest::rstest;
    use tar::{EntryType, Header};

    use super::*;

    /// One tar entry to write. Names and link targets go into the header verbatim, so
    /// that tests can hold `..`, leading slashes and old-style type bytes.
    #[derive(Clone)]
    struct Spec {
        name: Vec<u8>,
        flag: u8,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        link: Vec<u8>,
        data: Vec<u8>,
        device: (u32, u32),
        pax: Vec<(String, Vec<u8>)>,
    }

    impl Spec {
        fn new(name: &str, flag: u8) -> Spec {
            Spec {
                name: name.as_bytes().to_vec(),
                flag,
                mode: if flag == b'5' { 0o755 } else { 0o644 },
                uid: 0,
                gid: 0,
                mtime: 1_600_000_000,
                link: Vec::new(),
                data: Vec::new(),
                device: (0, 0),
                pax: Vec::new(),
            }
        }

        fn mode(mut self, mode: u32) -> Spec {
            self.mode = mode;
            self
        }

        fn owner(mut self, uid: u64, gid: u64) -> Spec {
            self.uid = uid;
            self.gid = gid;
            self
        }

        fn mtime(mut self, mtime: u64) -> Spec {
            self.mtime = mtime;
            self
        }

        fn device(mut self, major: u32, minor: u32) -> Spec {
            self.device = (major, minor);
            self
        }

        fn data(mut self, data: &[u8]) -> Spec {
            self.data = data.to_vec();
            self
        }

        fn pax(mut self, key: &str, value: &[u8]) -> Spec {
            self.pax.push((key.to_string(), value.to_vec()));
            self
        }
    }

    fn file(name: &str, data: &[u8]) -> Spec {
        Spec::new(name, b'0').data(data)
    }

    fn dir(name: &str) -> Spec {
        Spec::new(name, b'5')
    }

    fn symlink(name: &str, target: &str) -> Spec {
        let mut spec = Spec::new(name, b'2').mode(0o777);
        spec.link = target.as_bytes().to_vec();
        spec
    }

    fn hard_link(name: &str, target: &str) -> Spec {
        let mut spec = Spec::new(name, b'1');
        spec.link = target.as_bytes().to_vec();
        spec
    }

    /// A tar stream of `entries`, with the end-of-archive blocks.
    fn layer(entries: &[Spec]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for spec in entries {
            if !spec.pax.is_empty() {
                let records = spec.pax.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
                builder.append_pax_extensions(records).unwrap();
            }
            if spec.name.len() > 100 {
                // A GNU long name, as GNU tar writes it.
                let mut long = Header::new_gnu();
                long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
                long.set_entry_type(EntryType::GNULongName);
                long.set_mode(0o644);
                long.set_uid(0);
                long.set_gid(0);
                long.set_mtime(0);
                long.set_size(spec.name.len() as u64 + 1);
                long.set_cksum();
                let mut name = spec.name.clone();
                name.push(0);
                builder.append(&long, name.as_slice()).unwrap();
            }
            let mut header = Header::new_gnu();
            let short = spec.name.len().min(100);
            header.as_old_mut().name[..short].copy_from_slice(&spec.name[..short]);
            header.as_old_mut().linkname[..spec.link.len()].copy_from_slice(&spec.link);
            header.as_old_mut().linkflag[0] = spec.flag;
            header.set_mode(spec.mode);
            header.set_uid(spec.uid);
            header.set_gid(spec.gid);
            header.set_mtime(spec.mtime);
            header.set_size(spec.data.len() as u64);
            if matches!(spec.flag, b'3' | b'4') {
                header.set_device_major(spec.device.0).unwrap();
                header.set_device_minor(spec.device.1).unwrap();
            }
            header.set_cksum();
            builder.append(&header, spec.data.as_slice()).unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// `bytes` gzip-compressed as `members` gzip members, as pigz and some registries
    /// write them.
    fn gzip(bytes: &[u8], members: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in bytes.chunks(bytes.len().div_ceil(members)) {
            let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(chunk).unwrap();
            out.extend(encoder.finish().unwrap());
        }
        out
    }

    fn target(dir: &Path, whiteouts: Whiteouts) -> Target {
        Target {
            dir: dir.to_path_buf(),
            whiteouts,
            lowers: Vec::new(),
        }
    }

    fn apply(layer: &[u8], dir: &Path, whiteouts: Whiteouts) -> Result<String, ApplyError> {
        apply_layer(layer, Compression::None, &target(dir, whiteouts))
    }

    fn sha256(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    fn meta(path: &Path) -> fs::Metadata {
        fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn exists(path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok()
    }

    /// An xattr's value; a missing one is ENODATA, as from lgetxattr.
    fn xattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
        ::xattr::get(path, name)?.ok_or_else(|| io::Error::from_raw_os_error(libc::ENODATA))
    }

    /// Every path under `root` with what it is, its mode, owner, mtime and contents.
    fn tree(root: &Path) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            let mut names: Vec<_> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for path in names {
                let meta = meta(&path);
                let what = if meta.file_type().is_symlink() {
                    format!("-> {}", fs::read_link(&path).unwrap().display())
                } else if meta.is_dir() {
                    "dir".to_string()
                } else {
                    format!("file {}", sha256(&fs::read(&path).unwrap()))
                };
                out.push(format!(
                    "{} {what} {:o} {}:{} {}.{}",
                    path.strip_prefix(root).unwrap().display(),
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    meta.mtime(),
                    meta.mtime_nsec()
                ));
                if meta.is_dir() {
                    walk(root, &path, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out
    }

    /// Whether the filesystem under `dir` takes trusted.* xattrs from us.
    fn trusted_xattrs_work(dir: &Path) -> bool {
        let probe = dir.join("probe");
        fs::write(&probe, b"").unwrap();
        let works = lsetxattr(&probe, c"trusted.ctrpull-probe", b"1").is_ok();
        fs::remove_file(&probe).unwrap();
        works
    }

    #[test]
    fn entries_land_with_their_types_modes_owners_and_times() {
        let root = tempfile::tempdir().unwrap();
        let bytes = layer(&[
            dir("etc/").mode(0o750).owner(1234, 5678).mtime(1_000_000),
            file("etc/app.conf", b"conf")
                .mode(0o640)
                .owner(1234, 5678)
                .mtime(1_000_100),
            dir("bin/").mtime(2_000_000),
            file("bin/tool", b"#!/bin/sh\n")
                .mode(0o4755)
                .owner(1234, 5678)
                .mtime(2_000_100),
            symlink("bin/link", "tool")
                .owner(1234, 5678)
                .mtime(2_000_200),
            hard_link("bin/hard", "bin/tool")
                .mode(0o4755)
                .owner(1234, 5678)
                .mtime(2_000_100),
            Spec::new("run/fifo", b'6').mode(0o600),
            Spec::new("dev/null", b'3').mode(0o666).device(1, 3),
            Spec::new("dev/loop0", b'4').mode(0o660).device(7, 0),
            file("stamp", b"x")
                .mtime(5)
                .pax("mtime", b"1234567890.25")
                .pax("uid", b"4000000")
                .pax("gid", b"4000001"),
        ]);
        let diff_id = apply(&bytes, root.path(), Whiteouts::Remove).unwrap();
        assert_eq!(diff_id, sha256(&bytes));

        let at = |p: &str| root.path().join(p);
        let etc = meta(&at("etc"));
        assert!(etc.is_dir());
        assert_eq!(
            (etc.mode() & 0o7777, etc.uid(), etc.gid()),
            (0o750, 1234, 5678)
        );
        // Set again after etc/app.conf was created in it.
        assert_eq!(etc.mtime(), 1_000_000);
        assert_eq!(meta(&at("bin")).mtime(), 2_000_000);

        let conf = meta(&at("etc/app.conf"));
        assert_eq!(fs::read(at("etc/app.conf")).unwrap(), b"conf");
        assert_eq!(
            (conf.mode() & 0o7777, conf.uid(), conf.gid(), conf.mtime()),
            (0o640, 1234, 5678, 1_000_100)
        );

        // The setuid bit survives the chown before it.
        let tool = meta(&at("bin/tool"));
        assert_eq!((tool.mode() & 0o7777, tool.uid()), (0o4755, 1234));
        let hard = meta(&at("bin/hard"));
        assert_eq!((hard.ino(), hard.nlink()), (tool.ino(), 2));

        let link = meta(&at("bin/link"));
        assert!(link.file_type().is_symlink());
        assert_eq!(fs::read_link(at("bin/link")).unwrap(), Path::new("tool"));
        assert_eq!(
            (link.uid(), link.gid(), link.mtime()),
            (1234, 5678, 2_000_200)
        );

        // A parent the layer does not list: 0755, root's.
        let run = meta(&at("run"));
        assert_eq!((run.mode() & 0o7777, run.uid()), (0o755, 0));
        let fifo = meta(&at("run/fifo"));
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.mode() & 0o7777, 0o600);

        let null = meta(&at("dev/null"));
        assert!(null.file_type().is_char_device());
        assert_eq!(
            (null.rdev(), null.mode() & 0o7777),
            (libc::makedev(1, 3), 0o666)
        );
        let block = meta(&at("dev/loop0"));
        assert!(block.file_type().is_block_device());
        assert_eq!(block.rdev(), libc::makedev(7, 0));

        // PAX records win over the header, fractions included; atime follows mtime.
        let stamp = meta(&at("stamp"));
        assert_eq!(
            (stamp.mtime(), stamp.mtime_nsec()),
            (1_234_567_890, 250_000_000)
        );
        assert_eq!(
            (stamp.atime(), stamp.atime_nsec()),
            (1_234_567_890, 250_000_000)
        );
        assert_eq!((stamp.uid(), stamp.gid()), (4_000_000, 4_000_001));
    }

    #[test]
    fn gzip_and_plain_streams_give_the_same_tree_and_the_diff_id_of_the_tar() {
        let big: Vec<u8> = (0..3 << 20)
            .map(|i: u32| (i * 7 + i / 4096) as u8)
            .collect();
        let mut bytes = layer(&[
            dir("a/").mtime(10),
            file("a/big", &big).mode(0o600).owner(7, 8),
            file("a/small", b"s"),
            symlink("a/l", "big"),
        ]);
        // Writers pad to their record size: hashed, not refused.
        bytes.extend_from_slice(&[0u8; 4096]);
        let expected = sha256(&bytes);

        let plain = tempfile::tempdir().unwrap();
        let zipped = tempfile::tempdir().unwrap();
        assert_eq!(
            apply(&bytes, plain.path(), Whiteouts::Remove).unwrap(),
            expected
        );
        let compressed = gzip(&bytes, 3);
        let zipped_target = target(zipped.path(), Whiteouts::Remove);
        assert_eq!(
            apply_layer(&compressed[..], Compression::Gzip, &zipped_target).unwrap(),
            expected
        );

        assert_eq!(fs::read(plain.path().join("a/big")).unwrap(), big);
        let plain_tree = tree(plain.path());
        assert_eq!(plain_tree.len(), 4, "{plain_tree:#?}");
        assert_eq!(plain_tree, tree(zipped.path()));
    }

    #[test]
    fn remove_mode_whiteouts_delete_and_opaque_directories_keep_what_the_layer_adds() {
        let root = tempfile::tempdir().unwrap();
        let at = |p: &str| root.path().join(p);
        for dir in ["gone_dir/inner", "opq/olddir", "opq/sub", "late"] {
            fs::create_dir_all(at(dir)).unwrap();
        }
        for file in [
            "gone.txt",
            "keep.txt",
            "gone_dir/inner/f",
            "opq/old",
            "opq/olddir/f",
            "opq/sub/old",
            "late/old",
        ] {
            fs::write(at(file), b"old").unwrap();
        }
        let bytes = layer(&[
            file(".wh.gone.txt", b""),
            file(".wh.gone_dir", b""),
            file(".wh.never_there", b""),
            dir("opq/"),
            file("opq/new1", b"1"),
            dir("opq/sub/"),
            file("opq/sub/new", b"n"),
            // The marker after some of the layer's own entries...
            file("opq/.wh..wh..opq", b""),
            file("opq/new2", b"2"),
            dir("late/"),
            // ...and before them.
            file("late/.wh..wh..opq", b""),
            file("late/new", b"n"),
            // containerd 1.6 and 1.7 take aufs metadata names for plain whiteouts too.
            file(".wh..wh.plnk", b""),
        ]);
        fs::write(at(".wh.plnk"), b"old").unwrap();
        apply(&bytes, root.path(), Whiteouts::Remove).unwrap();

        for gone in [
            ".wh.plnk",
            "gone.txt",
            "gone_dir",
            "opq/old",
            "opq/olddir",
            "opq/sub/old",
            "late/old",
        ] {
            assert!(!exists(&at(gone)), "{gone} is still there");
        }
        for kept in [
            "keep.txt",
            "opq/new1",
            "opq/new2",
            "opq/sub/new",
            "late/new",
        ] {
            assert!(exists(&at(kept)), "{kept} is missing");
        }
        let whiteout_files = tree(root.path())
            .into_iter()
            .filter(|line| line.contains(".wh."))
            .collect::<Vec<_>>();
        assert!(whiteout_files.is_empty(), "{whiteout_files:?}");
    }

    #[test]
    fn overlay_mode_whiteouts_become_devices_and_opaque_xattrs() {
        let upper = tempfile::tempdir().unwrap();
        let at = |p: &str| upper.path().join(p);
        let bytes = layer(&[
            file(".wh.gone", b"").owner(1234, 5678),
            dir("d/"),
            file("d/.wh..wh..opq", b""),
            file("d/new", b"n"),
            file(".wh..wh.plnk", b""),
        ]);
        apply(&bytes, upper.path(), Whiteouts::Overlay).unwrap();
        assert!(meta(&at(".wh.plnk")).file_type().is_char_device());

        let gone = meta(&at("gone"));
        assert!(gone.file_type().is_char_device());
        assert_eq!(
            (gone.rdev(), gone.mode() & 0o7777, gone.uid(), gone.gid()),
            (0, 0, 1234, 5678)
        );
        assert!(!exists(&at(".wh.gone")));
        assert!(!exists(&at("d/.wh..wh..opq")));
        assert_eq!(fs::read(at("d/new")).unwrap(), b"n");

        if trusted_xattrs_work(upper.path()) {
            assert_eq!(xattr(&at("d"), "trusted.overlay.opaque").unwrap(), b"y");
            assert!(xattr(upper.path(), "trusted.overlay.opaque").is_err());
        } else {
            println!(
                "skipped: this filesystem refuses trusted.* xattrs, opaque marker not checked"
            );
        }
    }

    #[test]
    fn an_overlay_whiteout_over_an_existing_path_fails() {
        let upper = tempfile::tempdir().unwrap();
        fs::write(upper.path().join("there"), b"kept").unwrap();
        let bytes = layer(&[file(".wh.there", b"")]);
        let err = apply(&bytes, upper.path(), Whiteouts::Overlay).unwrap_err();
        assert!(
            matches!(&err, ApplyError::Io { path, .. } if path == ".wh.there"),
            "{err}"
        );
        assert_eq!(fs::read(upper.path().join("there")).unwrap(), b"kept");
    }

    #[test]
    fn missing_parents_in_an_overlay_upper_directory_copy_the_lower_ones() {
        use std::os::unix::fs::{lchown, MetadataExt};
        // Two lower layers, topmost first: `usr` is in the top one, `usr/bin` only in
        // the bottom one (with an xattr and odd owner and mode); `opt` is a file in
        // the top one, hiding the directory below it.
        let top = tempfile::tempdir().unwrap();
        let bottom = tempfile::tempdir().unwrap();
        fs::create_dir(top.path().join("usr")).unwrap();
        fs::set_permissions(top.path().join("usr"), Permissions::from_mode(0o750)).unwrap();
        fs::create_dir_all(bottom.path().join("usr/bin")).unwrap();
        fs::create_dir(bottom.path().join("opt")).unwrap();
        fs::write(top.path().join("opt"), b"a file").unwrap();
        let bin = bottom.path().join("usr/bin");
        lchown(&bin, Some(1234), Some(5678)).unwrap();
        fs::set_permissions(&bin, Permissions::from_mode(0o2711)).unwrap();
        lsetxattr(&bin, c"user.origin", b"bottom").unwrap();
        filetime::set_symlink_file_times(
            &bin,
            FileTime::from_unix_time(1_000, 0),
            FileTime::from_unix_time(2_000, 5),
        )
        .unwrap();

        let upper = tempfile::tempdir().unwrap();
        let target = Target {
            dir: upper.path().to_path_buf(),
            whiteouts: Whiteouts::Overlay,
            lowers: vec![top.path().to_path_buf(), bottom.path().to_path_buf()],
        };
        let bytes = layer(&[
            file("usr/bin/x", b"x"),
            file("opt/y", b"y"),
            file("new/z", b"z"),
        ]);
        apply_layer(&bytes[..], Compression::None, &target).unwrap();
        let meta = |p: &str| fs::symlink_metadata(upper.path().join(p)).unwrap();
        assert_eq!(meta("usr").mode() & 0o7777, 0o750, "from the top layer");
        let bin = meta("usr/bin");
        assert_eq!(
            (bin.uid(), bin.gid(), bin.mode() & 0o7777),
            (1234, 5678, 0o2711)
        );
        assert_eq!(
            xattr::get(upper.path().join("usr/bin"), "user.origin").unwrap(),
            Some(b"bottom".to_vec())
        );
        // Not in any lower layer, or hidden by a file: plain 0755 root directories.
        for plain in ["opt", "new"] {
            let m = meta(plain);
            assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o755), "{plain}");
        }
        assert_eq!(fs::read(upper.path().join("usr/bin/x")).unwrap(), b"x");

        // A symlink on the way in a lower layer is containerd's to follow.
        fs::remove_dir_all(upper.path().join("usr")).unwrap();
        fs::remove_dir_all(top.path().join("usr")).unwrap();
        std::os::unix::fs::symlink("/somewhere", top.path().join("usr")).unwrap();
        let err = apply_layer(&bytes[..], Compression::None, &target).unwrap_err();
        assert!(matches!(err, ApplyError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn a_file_replaces_a_directory_and_a_directory_replaces_a_file() {
        let root = tempfile::tempdir().unwrap();
        let at = |p: &str| root.path().join(p);
        fs::create_dir_all(at("d/child")).unwrap();
        fs::write(at("f"), b"old").unwrap();
        fs::create_dir(at("merged")).unwrap();
        fs::write(at("merged/keep"), b"keep").unwrap();
        let bytes = layer(&[
            file("d", b"now a file"),
            dir("f/").mode(0o700),
            dir("merged/").mode(0o711),
        ]);
        apply(&bytes, root.path(), Whiteouts::Remove).unwrap();

        assert_eq!(fs::read(at("d")).unwrap(), b"now a file");
        let f = meta(&at("f"));
        assert!(f.is_dir());
        assert_eq!(f.mode() & 0o7777, 0o700);
        // A directory over a directory merges: contents stay, metadata is the layer's.
        assert_eq!(fs::read(at("merged/keep")).unwrap(), b"keep");
        assert_eq!(meta(&at("merged")).mode() & 0o7777, 0o711);
    }

    #[test]
    fn names_are_cleaned_into_the_target_and_the_root_entry_is_ignored() {
        let root = tempfile::tempdir().unwrap();
        let at = |p: &str| root.path().join(p);
        fs::set_permissions(root.path(), Permissions::from_mode(0o751)).unwrap();
        let bytes = layer(&[
            dir("./").mode(0o700).owner(1234, 5678),
            file("../../etc/x", b"inside"),
            file("/abs/y", b"y"),
            file("./a/./b/../c", b"c"),
        ]);
        apply(&bytes, root.path(), Whiteouts::Remove).unwrap();

        assert_eq!(fs::read(at("etc/x")).unwrap(), b"inside");
        assert_eq!(fs::read(at("abs/y")).unwrap(), b"y");
        assert_eq!(fs::read(at("a/c")).unwrap(), b"c");
        assert!(!exists(&at("a/b")));
        // containerd skips entries that resolve to the root.
        let top = meta(root.path());
        assert_eq!((top.mode() & 0o7777, top.uid()), (0o751, 0));
    }

    #[test]
    fn a_symlink_on_the_way_is_refused_and_nothing_is_written_outside() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let outside_name = outside.path().to_str().unwrap();
        let bytes = layer(&[symlink("link", outside_name), file("link/x", b"evil")]);
        let err = apply(&bytes, root.path(), Whiteouts::Remove).unwrap_err();
        assert!(
            matches!(&err, ApplyError::Unsupported { path, .. } if path == "link/x"),
            "{err}"
        );
        assert!(!exists(&outside.path().join("x")));

        // A hard link whose target goes through the symlink is refused the same way.
        let root = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"s").unwrap();
        let bytes = layer(&[symlink("link", outside_name), hard_link("h", "link/secret")]);
        let err = apply(&bytes, root.path(), Whiteouts::Remove).unwrap_err();
        assert!(matches!(err, ApplyError::Unsupported { .. }), "{err}");
        assert!(!exists(&root.path().join("h")));
        assert_eq!(meta(&outside.path().join("secret")).nlink(), 1);
    }

    #[test]
    fn hard_links_stay_inside_the_target() {
        let root = tempfile::tempdir().unwrap();
        let bytes = layer(&[
            file("../../etc/passwd", b"inside"),
            hard_link("h", "../../etc/passwd"),
        ]);
        apply(&bytes, root.path(), Whiteouts::Remove).unwrap();
        let linked = meta(&root.path().join("h"));
        assert_eq!(linked.ino(), meta(&root.path().join("etc/passwd")).ino());
        assert_ne!(linked.ino(), meta(Path::new("/etc/passwd")).ino());
        assert_eq!(fs::read(root.path().join("h")).unwrap(), b"inside");

        // A hard link to a symlink links the symlink itself, as link(2) does.
        let root = tempfile::tempdir().unwrap();
        let bytes = layer(&[file("t", b"t"), symlink("s", "t"), hard_link("hs", "s")]);
        apply(&bytes, root.path(), Whiteouts::Remove).unwrap();
        let hs = meta(&root.path().join("hs"));
        assert!(hs.file_type().is_symlink());
        assert_eq!(hs.ino(), meta(&root.path().join("s")).ino());

        // A target that is only outside is not found inside: an error, nothing made.
        let root = tempfile::tempdir().unwrap();
        let bytes = layer(&[hard_link("h", "../../../etc/passwd")]);
        let err = apply(&bytes, root.path(), Whiteouts::Remove).unwrap_err();
        assert!(
            matches!(&err, ApplyError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{err}"
        );
        assert!(!exists(&root.path().join("h")));
    }

    #[test]
    fn xattrs_are_set_but_trusted_ones_and_user_ones_on_symlinks_are_skipped() {
        let root = tempfile::tempdir().unwrap();
        let bytes = layer(&[
            file("f", b"")
                .pax("SCHILY.xattr.user.note", b"hello")
                .pax("SCHILY.xattr.trusted.evil", b"1"),
            symlink("l", "f").pax("SCHILY.xattr.user.note", b"on a link"),
        ]);
        apply(&bytes, root.path(), Whiteouts::Remove).unwrap();
        let f = root.path().join("f");
        assert_eq!(xattr(&f, "user.note").unwrap(), b"hello");
        let trusted = xattr(&f, "trusted.evil").unwrap_err();
        assert_eq!(trusted.raw_os_error(), Some(libc::ENODATA));
        assert!(meta(&root.path().join("l")).file_type().is_symlink());
    }

    #[test]
    fn long_names_pax_paths_and_old_style_directories_are_read_as_go_does() {
        let root = tempfile::tempdir().unwrap();
        let long = format!("deep/{}", "n".repeat(150));
        let bytes = layer(&[
            file(&long, b"long"),
            file("short", b"pax").pax("path", b"from/pax/name"),
            Spec::new("olddir/", 0),
            Spec::new("oldfile", 0).data(b"old"),
        ]);
        apply(&bytes, root.path(), Whiteouts::Remove).unwrap();
        let at = |p: &str| root.path().join(p);
        assert_eq!(fs::read(at(&long)).unwrap(), b"long");
        assert_eq!(fs::read(at("from/pax/name")).unwrap(), b"pax");
        assert!(!exists(&at("short")));
        assert!(meta(&at("olddir")).is_dir());
        assert_eq!(fs::read(at("oldfile")).unwrap(), b"old");
    }

    #[test]
    fn a_global_header_creates_nothing_but_clears_its_name() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("pax_global_header"), b"old").unwrap();
        let mut bytes = Vec::new();
        {
            let mut builder = tar::Builder::new(&mut bytes);
            let records = b"18 comment=abcdef\n";
            let mut header = Header::new_ustar();
            header.set_path("pax_global_header").unwrap();
            header.set_entry_type(EntryType::XGlobalHeader);
            header.set_size(records.len() as u64);
            header.set_cksum();
            builder.append(&header, &records[..]).unwrap();
            let mut header = Header::new_gnu();
            header.set_path("a").unwrap();
            header.set_mode(0o644);
            header.set_size(1);
            header.set_cksum();
            builder.append(&header, &b"a"[..]).unwrap();
            builder.finish().unwrap();
        }
        apply(&bytes, root.path(), Whiteouts::Remove).unwrap();
        assert!(!exists(&root.path().join("pax_global_header")));
        assert_eq!(fs::read(root.path().join("a")).unwrap(), b"a");
    }

    #[rstest]
    #[case::contiguous_file(Spec::new("c", b'7').data(b"data"))]
    #[case::volume_label(Spec::new("label", b'V'))]
    #[case::directory_with_data(dir("d/").data(b"data"))]
    #[case::gnu_sparse_in_pax(file("s", b"data").pax("GNU.sparse.major", b"1").pax("GNU.sparse.minor", b"0"))]
    #[case::duplicate_pax_record(file("d", b"").pax("uid", b"1").pax("uid", b"2"))]
    #[case::pax_value_with_a_newline(file("n", b"").pax("SCHILY.xattr.user.bin", b"a\nb"))]
    fn entries_read_differently_by_go_are_refused(#[case] spec: Spec) {
        let root = tempfile::tempdir().unwrap();
        let err = apply(&layer(&[spec]), root.path(), Whiteouts::Remove).unwrap_err();
        assert!(matches!(err, ApplyError::Unsupported { .. }), "{err}");
        assert!(fs::read_dir(root.path()).unwrap().next().is_none());
    }

    #[test]
    fn an_invalid_whiteout_name_is_corrupt() {
        let root = tempfile::tempdir().unwrap();
        let err = apply(
            &layer(&[file("a/.wh..", b"")]),
            root.path(),
            Whiteouts::Remove,
        )
        .unwrap_err();
        assert!(matches!(err, ApplyError::Corrupt { .. }), "{err}");
    }

    /// A tar of one 10000-byte file: its header, data and padding end at 10752.
    fn one_file_layer() -> Vec<u8> {
        layer(&[file("f", &[7u8; 10_000])])
    }

    #[rstest]
    #[case::cut_inside_the_data(one_file_layer()[..5_000].to_vec())]
    #[case::cut_inside_a_header(one_file_layer()[..10_752 + 100].to_vec())]
    #[case::no_end_of_archive(one_file_layer()[..10_752].to_vec())]
    #[case::data_after_one_zero_block([&one_file_layer()[..11_264], &[b'x'; 512][..]].concat())]
    #[case::half_a_second_zero_block(one_file_layer()[..11_264 + 100].to_vec())]
    fn truncated_tar_streams_fail(#[case] bytes: Vec<u8>) {
        let root = tempfile::tempdir().unwrap();
        let err = apply(&bytes, root.path(), Whiteouts::Remove).unwrap_err();
        assert!(matches!(err, ApplyError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn bytes_after_the_end_of_archive_are_hashed_not_refused() {
        let bytes = [one_file_layer(), b"trailing bytes".to_vec()].concat();
        let root = tempfile::tempdir().unwrap();
        let diff_id = apply(&bytes, root.path(), Whiteouts::Remove).unwrap();
        assert_eq!(diff_id, sha256(&bytes));
        assert_ne!(diff_id, sha256(&one_file_layer()));
    }

    #[test]
    fn one_zero_block_then_the_end_is_a_whole_archive() {
        // Go's reader accepts it; the diff ID covers exactly the bytes there are.
        let bytes = one_file_layer()[..11_264].to_vec();
        let root = tempfile::tempdir().unwrap();
        let diff_id = apply(&bytes, root.path(), Whiteouts::Remove).unwrap();
        assert_eq!(diff_id, sha256(&bytes));
    }

    #[rstest]
    #[case::cut_in_half(gzip(&one_file_layer(), 1)[..40].to_vec())]
    #[case::cut_before_the_trailer({
        let gz = gzip(&one_file_layer(), 1);
        gz[..gz.len() - 4].to_vec()
    })]
    #[case::garbage_after_the_last_member([gzip(&one_file_layer(), 2), b"garbage".to_vec()].concat())]
    #[case::zeros_after_the_last_member([gzip(&one_file_layer(), 1), vec![0; 16]].concat())]
    #[case::not_gzip(one_file_layer())]
    fn broken_gzip_streams_fail(#[case] bytes: Vec<u8>) {
        let root = tempfile::tempdir().unwrap();
        let target = target(root.path(), Whiteouts::Remove);
        let err = apply_layer(&bytes[..], Compression::Gzip, &target).unwrap_err();
        assert!(matches!(err, ApplyError::Corrupt { .. }), "{err}");
    }

    /// A blob whose download breaks after `good` bytes.
    struct Broken {
        data: Vec<u8>,
        good: usize,
        pos: usize,
    }

    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos >= self.good {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "connection reset by registry",
                ));
            }
            let n = buf.len().min(self.good - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[rstest]
    #[case::plain(Compression::None)]
    #[case::gzip(Compression::Gzip)]
    fn a_read_error_mid_stream_is_reported_as_a_read_failure(#[case] compression: Compression) {
        let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let tar = layer(&[file("big", &big), file("after", b"a")]);
        let data = match compression {
            Compression::None => tar,
            Compression::Gzip => gzip(&tar, 1),
        };
        let good = data.len() / 2;
        let blob = Broken { data, good, pos: 0 };
        let root = tempfile::tempdir().unwrap();
        let err =
            apply_layer(blob, compression, &target(root.path(), Whiteouts::Remove)).unwrap_err();
        match &err {
            ApplyError::Read { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::ConnectionReset);
            }
            other => panic!("not a read failure: {other}"),
        }
        assert!(
            err.to_string().contains("connection reset by registry"),
            "{err}"
        );
        assert!(!exists(&root.path().join("after")));
    }

    #[rstest]
    #[case::octal(b"0000644\0", Some(0o644))]
    #[case::spaces_and_nuls_around(b" 755 \0\0\0", Some(0o755))]
    #[case::empty(b"\0\0\0\0\0\0\0\0", Some(0))]
    #[case::digits_end_at_a_nul(b"12\0 34\0", Some(0o12))]
    #[case::not_octal(b"0000089\0", None)]
    #[case::sign(b"+000644\0", None)]
    #[case::space_inside(b"1 2\0", None)]
    #[case::base_256(&[0x80, 0, 0, 0, 0, 0, 0x01, 0x00], Some(256))]
    #[case::base_256_negative(&[0xff; 8], Some(-1))]
    fn numeric_fields_parse_as_go_parses_them(#[case] field: &[u8], #[case] expected: Option<i64>) {
        assert_eq!(numeric(field), expected);
    }

    #[rstest]
    #[case::seconds(b"1234567890", Some(1_234_567_890_000_000_000))]
    #[case::fraction(b"1.5", Some(1_500_000_000))]
    #[case::fraction_cut_to_nanoseconds(b"1.1234567899", Some(1_123_456_789))]
    #[case::negative(b"-1.5", Some(-1_500_000_000))]
    #[case::negative_below_one(b"-0.25", Some(-250_000_000))]
    #[case::no_fraction_digits(b"7.", Some(7_000_000_000))]
    #[case::no_seconds(b".5", None)]
    #[case::not_digits(b"1.5e3", None)]
    fn pax_times_parse_as_go_parses_them(#[case] value: &[u8], #[case] expected: Option<i128>) {
        assert_eq!(parse_pax_time(value), expected);
    }

    #[rstest]
    #[case::relative("a/b", "a/b")]
    #[case::dot_slash("./a/./b/", "a/b")]
    #[case::absolute("/a//b", "a/b")]
    #[case::parent_inside("a/../b", "b")]
    #[case::parent_above_the_root("../../etc/x", "etc/x")]
    #[case::root("./", "")]
    #[case::root_by_parents("a/../..", "")]
    fn names_clean_to_a_place_under_the_root(#[case] name: &str, #[case] expected: &str) {
        assert_eq!(clean(name.as_bytes()), Path::new(expected));
    }

    #[test]
    fn times_out_of_go_bounds_become_the_epoch() {
        assert_eq!(bounded(-1), FileTime::from_unix_time(0, 0));
        assert_eq!(
            bounded(1_500_000_001),
            FileTime::from_unix_time(1, 500_000_001)
        );
        assert_eq!(
            bounded(i128::from(i64::MAX) + 1),
            FileTime::from_unix_time(0, 0)
        );
    }

    fn mount(kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: kind.to_string(),
            source: source.to_string(),
            target: String::new(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn from_mounts_takes_a_writable_bind_or_an_overlay_upper_directory() {
        let snapshot = tempfile::tempdir().unwrap();
        let dir = snapshot.path().to_str().unwrap();
        let bind = Some(target(snapshot.path(), Whiteouts::Remove));
        let lower = tempfile::tempdir().unwrap();
        let overlay = Some(Target {
            lowers: vec![lower.path().to_path_buf(), snapshot.path().to_path_buf()],
            ..target(snapshot.path(), Whiteouts::Overlay)
        });
        let upperdir = format!("upperdir={dir}");
        let lowerdir = format!("lowerdir={}:{dir}", lower.path().display());

        assert_eq!(
            Target::from_mounts(&[mount("bind", dir, &["rbind", "rw"])]),
            bind
        );
        assert_eq!(Target::from_mounts(&[mount("", dir, &["rbind"])]), bind);
        assert_eq!(
            Target::from_mounts(&[mount("bind", dir, &["rbind", "ro"])]),
            None
        );
        assert_eq!(
            Target::from_mounts(&[mount(
                "overlay",
                "overlay",
                &["index=off", "workdir=/w", &upperdir, &lowerdir]
            )]),
            overlay
        );
        assert_eq!(
            Target::from_mounts(&[mount(
                "overlay",
                "overlay",
                &["workdir=/w", &upperdir, "lowerdir=/not/there"]
            )]),
            None,
            "a lower directory that is not here"
        );
        assert_eq!(
            Target::from_mounts(&[mount(
                "overlay",
                "overlay",
                &["userxattr", &upperdir, "lowerdir=/l1"]
            )]),
            None
        );
        assert_eq!(
            Target::from_mounts(&[mount("overlay", "overlay", &["lowerdir=/l1:/l2"])]),
            None
        );
        assert_eq!(
            Target::from_mounts(&[
                mount("bind", dir, &["rbind", "rw"]),
                mount("bind", dir, &["rbind", "rw"])
            ]),
            None
        );
        assert_eq!(Target::from_mounts(&[]), None);
        let missing = format!("{dir}/missing");
        assert_eq!(
            Target::from_mounts(&[mount("bind", &missing, &["rbind", "rw"])]),
            None
        );
        assert_eq!(Target::from_mounts(&[mount("tmpfs", dir, &["rw"])]), None);
    }

    #[rstest]
    #[case("application/vnd.oci.image.layer.v1.tar", Some(Compression::None))]
    #[case(
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        Some(Compression::None)
    )]
    #[case("application/vnd.oci.image.layer.v1.tar+gzip", Some(Compression::Gzip))]
    #[case(
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        Some(Compression::Gzip)
    )]
    #[case(
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        Some(Compression::Gzip)
    )]
    #[case(
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        Some(Compression::Gzip)
    )]
    #[case("application/vnd.oci.image.layer.v1.tar+zstd", None)]
    #[case("application/vnd.oci.image.layer.v1.tar+gzip+encrypted", None)]
    #[case("application/vnd.oci.image.config.v1+json", None)]
    fn compression_follows_the_media_type(
        #[case] media_type: &str,
        #[case] expected: Option<Compression>,
    ) {
        assert_eq!(compression(media_type), expected);
    }
}
