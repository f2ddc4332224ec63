//! Docker's `certs.d` layout, read for the upstream when a host directory has no
//! hosts.toml.

use std::io;
use std::path::Path;

use super::Entry;
use crate::config::Error;

/// Docker's `certs.d` layout: `*.crt` are CAs, `*.cert` client certificates with the key
/// in the matching `*.key` (or inside the `.cert` when there is none), for the upstream.
pub(super) fn load_cert_files(dir: &Path) -> Result<Vec<Entry>, Error> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut names = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(read) => {
            for entry in read {
                let entry = entry.map_err(io_err(dir))?;
                let file_type = entry.file_type().map_err(io_err(&entry.path()))?;
                if !file_type.is_dir() {
                    names.push(entry.file_name());
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    }
    // Go's os.ReadDir returns names sorted; keep the same order for CAs and certificates.
    names.sort();

    let mut entry = Entry::upstream(format!("{} (certificate files)", dir.display()));
    for name in names {
        let path = dir.join(&name);
        // Suffixes are ASCII, so a lossy view of a non-UTF-8 name still matches them.
        let lossy = name.to_string_lossy();
        if lossy.ends_with(".crt") {
            entry.ca_files.push(path);
        } else if lossy.ends_with(".cert") {
            let key = path.with_extension("key");
            let key = match std::fs::metadata(&key) {
                Ok(_) => Some(key),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(source) => return Err(Error::Io { path: key, source }),
            };
            entry.client_certs.push((path, key));
        }
    }
    Ok(vec![entry])
}
