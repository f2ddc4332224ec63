//! Writes one layer tarball to a file, compressing and digesting it in the same pass.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use oci_spec::image::{Digest, MediaType};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use super::{Compression, Error, FileContent, LayerSource};

/// Buffer size between the tar writer and the file: big enough that a 1 GiB
/// layer is not written in tiny syscalls.
const WRITE_BUFFER: usize = 1 << 20;

/// Random layers are generated in blocks of this size so that the bytes depend
/// only on the seed, not on how the tar writer happens to size its reads
/// (the RNG discards the unused part of a word on every `fill_bytes`).
const RANDOM_BLOCK: usize = 64 << 10;

/// A layer blob written to disk.
#[derive(Debug)]
pub(super) struct Written {
    pub path: PathBuf,
    pub media_type: MediaType,
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
}

/// Writes `source` as a tar archive, compressed per `compression`, to a file
/// in `workdir` named after its digest.
pub(super) fn write(
    source: &LayerSource,
    compression: Compression,
    workdir: &Path,
) -> Result<Written, Error> {
    // Written under a temporary name first: the final name is the digest,
    // which is only known at the end.
    let partial = workdir.join(format!(".layer-{:016x}.partial", rand::random::<u64>()));
    let result = write_to(source, compression, &partial);
    let (digest, size, diff_id) = match result {
        Ok(written) => written,
        Err(err) => {
            let _ = fs::remove_file(&partial);
            return Err(err);
        }
    };
    let (extension, media_type) = match compression {
        Compression::Gzip { .. } => ("tar.gz", MediaType::ImageLayerGzip),
        Compression::Uncompressed => ("tar", MediaType::ImageLayer),
    };
    let path = workdir.join(format!("sha256-{}.{extension}", digest.digest()));
    fs::rename(&partial, &path).map_err(|source| Error::Io {
        action: "rename layer to",
        path: path.clone(),
        source,
    })?;
    Ok(Written {
        path,
        media_type,
        digest,
        size,
        diff_id,
    })
}

/// Returns (blob digest, blob size, diff_id).
fn write_to(
    source: &LayerSource,
    compression: Compression,
    path: &Path,
) -> Result<(Digest, u64, Digest), Error> {
    let io_error = |source| Error::Io {
        action: "write layer",
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(io_error)?;
    let blob = Digesting::new(BufWriter::with_capacity(WRITE_BUFFER, file));
    let encoder = match compression {
        Compression::Gzip { level } => Encoder::Gzip(Box::new(GzEncoder::new(
            blob,
            flate2::Compression::new(level),
        ))),
        Compression::Uncompressed => Encoder::Plain(blob),
    };
    let uncompressed = match source {
        LayerSource::Tar(archive) => {
            let mut uncompressed = Digesting::new(encoder);
            uncompressed.write_all(archive).map_err(io_error)?;
            uncompressed
        }
        _ => {
            let mut tar = tar::Builder::new(Digesting::new(encoder));
            append_entries(&mut tar, source, path)?;
            tar.into_inner().map_err(io_error)?
        }
    };
    let (encoder, diff_id, _) = uncompressed.finish();
    let (buffered, digest, size) = encoder.finish().map_err(io_error)?.finish();
    buffered
        .into_inner()
        .map_err(|err| io_error(err.into_error()))?;
    Ok((digest, size, diff_id))
}

fn append_entries<W: Write>(
    tar: &mut tar::Builder<W>,
    source: &LayerSource,
    layer: &Path,
) -> Result<(), Error> {
    let write_error = |source| Error::Io {
        action: "write layer",
        path: layer.to_path_buf(),
        source,
    };
    match source {
        LayerSource::Files(entries) => {
            for entry in entries {
                let path = entry.path.trim_start_matches('/');
                match &entry.content {
                    FileContent::Bytes(data) => {
                        let mut header = header(EntryType::Regular, entry.mode, data.len() as u64);
                        tar.append_data(&mut header, path, &data[..])
                            .map_err(write_error)?;
                    }
                    FileContent::Host(host) => {
                        // Opened and measured here so that a missing host file
                        // is reported by its own path, not as a layer write error.
                        let read_error = |source| Error::Io {
                            action: "read",
                            path: host.clone(),
                            source,
                        };
                        let file = File::open(host).map_err(read_error)?;
                        let size = file.metadata().map_err(read_error)?.len();
                        let mut header = header(EntryType::Regular, entry.mode, size);
                        // `take` keeps the archive consistent with the header
                        // even if the file grows while we copy it.
                        tar.append_data(&mut header, path, file.take(size))
                            .map_err(write_error)?;
                    }
                    FileContent::Dir => {
                        let mut header = header(EntryType::Directory, entry.mode, 0);
                        tar.append_data(&mut header, path, io::empty())
                            .map_err(write_error)?;
                    }
                    FileContent::Symlink(target) => {
                        let mut header = header(EntryType::Symlink, entry.mode, 0);
                        tar.append_link(&mut header, path, target)
                            .map_err(write_error)?;
                    }
                }
            }
        }
        LayerSource::Random { size, seed } => {
            let mut header = header(EntryType::Regular, 0o644, *size);
            tar.append_data(
                &mut header,
                random_file_name(*seed),
                RandomReader::new(*size, *seed),
            )
            .map_err(write_error)?;
        }
        LayerSource::Tar(_) => unreachable!("written as it is, not entry by entry"),
    }
    Ok(())
}

/// The path of the single file in a [`LayerSource::Random`] layer.
fn random_file_name(seed: u64) -> String {
    format!("random-{seed}.bin")
}

/// A header with everything that would make builds differ (times, owners)
/// fixed, so that the same source always gives the same digest.
fn header(entry_type: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(entry_type);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// Passes writes through to `inner` while hashing and counting them.
struct Digesting<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Digesting<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// Returns the inner writer, the sha256 digest and the byte count.
    fn finish(self) -> (W, Digest, u64) {
        let digest = sha256_digest(&self.hasher.finalize());
        (self.inner, digest, self.written)
    }
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Builds an OCI digest from a raw sha256 hash.
pub(super) fn sha256_digest(hash: &[u8]) -> Digest {
    format!("sha256:{}", hex::encode(hash))
        .parse()
        .expect("a hex sha256 is a valid digest")
}

type BlobWriter = Digesting<BufWriter<File>>;

/// The compression stage between the tar (diff_id) and the file (digest).
enum Encoder {
    Gzip(Box<GzEncoder<BlobWriter>>),
    Plain(BlobWriter),
}

impl Encoder {
    fn finish(self) -> io::Result<BlobWriter> {
        match self {
            Self::Gzip(gzip) => gzip.finish(),
            Self::Plain(plain) => Ok(plain),
        }
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Gzip(gzip) => gzip.write(buf),
            Self::Plain(plain) => plain.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Gzip(gzip) => gzip.flush(),
            Self::Plain(plain) => plain.flush(),
        }
    }
}

/// `size` incompressible bytes, the same for the same seed.
pub(super) struct RandomReader {
    rng: StdRng,
    block: Box<[u8]>,
    /// Unread bytes at the end of `block`.
    available: usize,
    remaining: u64,
}

impl RandomReader {
    pub(super) fn new(size: u64, seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            block: vec![0; RANDOM_BLOCK].into_boxed_slice(),
            available: 0,
            remaining: size,
        }
    }
}

impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        if self.available == 0 {
            self.rng.fill_bytes(&mut self.block);
            self.available = self.block.len();
        }
        let n = buf
            .len()
            .min(self.available)
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let start = self.block.len() - self.available;
        buf[..n].copy_from_slice(&self.block[start..start + n]);
        self.available -= n;
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all_with(mut reader: RandomReader, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0; chunk];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn random_bytes_do_not_depend_on_read_sizes() {
        let size = 3 * RANDOM_BLOCK as u64 + 5;
        let big = read_all_with(RandomReader::new(size, 7), 1 << 20);
        let odd = read_all_with(RandomReader::new(size, 7), 4093);
        assert_eq!(big.len() as u64, size);
        assert_eq!(big, odd);
        let other = read_all_with(RandomReader::new(size, 8), 1 << 20);
        assert_ne!(big, other);
    }
}
