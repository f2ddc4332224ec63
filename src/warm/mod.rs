//! What `ctrpull warm` reads and writes around [`Puller::warm`](crate::Puller::warm):
//! image lists in, the JSON report and the Prometheus metrics file out.
//!
//! # Layout
//!
//! - [`list`]: text, YAML and JSON image lists → [`WarmItem`](crate::WarmItem)s, each
//!   error naming the file and line.
//! - [`report`]: a [`WarmReport`](crate::WarmReport) as the `--report` JSON document.
//! - [`metrics`]: a [`WarmReport`](crate::WarmReport) in the Prometheus text format for
//!   node-exporter's textfile collector.
//! - this file: [`Error`] and [`write_atomically`], which both outputs go through.

pub mod list;
pub mod metrics;
pub mod report;

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Mode of the report and metrics files: node-exporter and log shippers run as other
/// users and must be able to read them; nothing secret is in them.
pub const OUTPUT_MODE: u32 = 0o644;

/// Errors reading lists and writing reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An entry of a list is invalid.
    #[error("{name}:{line}: {reason}")]
    List {
        /// The list's file name (`<stdin>` for standard input).
        name: String,
        /// The entry's line, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A YAML or JSON list is not well formed, or not a list of images.
    #[error("{name}: {reason}")]
    Format {
        /// The list's file name.
        name: String,
        /// The parser's message, with line and column.
        reason: String,
    },
    /// A list could not be read.
    #[error("reading {name}: {error}")]
    Read {
        /// The list's file name.
        name: String,
        /// Why.
        #[source]
        error: io::Error,
    },
    /// An output file could not be written.
    #[error("writing {}: {error}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        error: io::Error,
    },
    /// The metrics could not be rendered.
    #[error("rendering metrics: {0}")]
    Metrics(#[from] std::fmt::Error),
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never
/// a part: into a temporary file in the same directory, synced, given
/// [`OUTPUT_MODE`], then renamed over `path` (node-exporter reads the textfile
/// directory at any moment).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let failed = |error: io::Error| Error::Write {
        path: path.to_path_buf(),
        error,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::Builder::new()
        .prefix(".ctrpull-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    file.as_file().sync_all().map_err(failed)?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(OUTPUT_MODE))
        .map_err(failed)?;
    file.persist(path).map_err(|e| failed(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_the_file_with_mode_0644_and_leave_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctrpull.prom");
        write_atomically(&path, b"one\n").unwrap();
        write_atomically(&path, b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ctrpull.prom")]);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_file() {
        let err = write_atomically(Path::new("/nonexistent/dir/report.json"), b"{}")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("writing /nonexistent/dir/report.json: "),
            "{err}"
        );
    }
}
