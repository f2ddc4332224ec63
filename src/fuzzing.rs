//! Entry points of the fuzz targets in `fuzz/`: each hands arbitrary input to the
//! parser ctrpull really uses and panics when a property of what it accepted fails.
//!
//! Hidden from the docs and not a supported API: it exists so that `fuzz/` (a crate
//! of its own) reaches parsers that are otherwise private. The unit tests below run
//! every committed seed (`fuzz/corpus/<target>/`) through its entry point, so a crash
//! found once stays covered by `cargo test`.

use std::path::Path;

use crate::config;
use crate::pull;
use crate::reference::{parse_digest, Reference};
use crate::registry::{self, media};

/// Target `reference`: an image reference (UTF-8; other input is skipped). An accepted reference prints in a
/// normalised form that parses back to the same reference, and its digest (if any)
/// passes the digest check on its own.
pub fn reference(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = Reference::parse(input) else {
        return;
    };
    let printed = parsed.to_string();
    let again = Reference::parse(&printed)
        .unwrap_or_else(|e| panic!("{input:?} printed as {printed:?}, which fails: {e}"));
    assert_eq!(again, parsed, "{input:?} does not survive printing");
    assert_eq!(again.to_string(), printed, "printing is not a fixed point");
    assert!(parsed.tag().is_some() != parsed.digest().is_some());
    if let Some(digest) = parsed.digest() {
        assert_eq!(parse_digest(digest.as_ref()).unwrap(), *digest);
    }
}

/// The `Content-Type` values the `manifest` target pairs a body with (chosen by its
/// first byte): every manifest type, and the generic ones static servers send.
const CONTENT_TYPES: &[&str] = &[
    "",
    "application/json",
    "application/octet-stream",
    media::OCI_INDEX,
    media::OCI_MANIFEST,
    media::DOCKER_MANIFEST_LIST,
    media::DOCKER_MANIFEST,
    media::DOCKER_SCHEMA1[0],
];

/// Target `manifest`: a manifest, index or config document as a registry serves it.
///
/// The first byte picks the `Content-Type` (one of eight: none, JSON, octet-stream,
/// the four manifest types, schema 1); the rest is the body. It goes through the
/// response check, then the index or manifest parser by the kind found, and through
/// the config parser too. A manifest that passes has at
/// most [`pull::MAX_LAYERS`] layers, each within the size caps and with a digest
/// that passes the digest check.
pub fn manifest(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let header = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    // Any body may be served as a config blob.
    if let Ok(config) = pull::parse_config("sha256:fuzz", body, 1) {
        assert_eq!(config.rootfs().diff_ids().len(), 1);
    }
    if body.len() as u64 > registry::MAX_MANIFEST_SIZE {
        return;
    }
    let Ok(media_type) = registry::check_document(header, body) else {
        return;
    };
    match media::kind(&media_type) {
        Some(media::Kind::Index) => {
            let _ = pull::parse_index("sha256:fuzz", body);
        }
        Some(media::Kind::Manifest) => {
            let Ok(manifest) = pull::parse_manifest("sha256:fuzz", body) else {
                return;
            };
            assert!(manifest.layers().len() <= pull::MAX_LAYERS);
            let config = manifest.config();
            assert!((1..=pull::MAX_CONFIG_SIZE).contains(&config.size()));
            assert!(parse_digest(config.digest().as_ref()).is_ok());
            for layer in manifest.layers() {
                assert!((1..=pull::MAX_LAYER_SIZE).contains(&layer.size()));
                assert!(parse_digest(layer.digest().as_ref()).is_ok());
                assert!(media::is_layer(layer.media_type().as_ref()));
            }
        }
        None => panic!("the response check accepted media type {media_type:?}"),
    }
}

/// Target `config_toml`: the text of a containerd config.toml. Errors and warnings
/// must print, and every error names the file.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/containerd/config.toml");
    let mut warnings = Vec::new();
    let result = config::parse_config_toml(path, text, &mut warnings);
    for warning in &warnings {
        let _ = warning.to_string();
    }
    if let Err(error) = result {
        let message = error.to_string();
        assert!(
            message.contains("/etc/containerd/config.toml"),
            "the error does not name the file: {message}"
        );
    }
}

/// Target `hosts_toml`: the text of a hosts.toml for `fuzz.test:5000`. An accepted
/// file gives at least one endpoint (the upstream comes last), each an http(s) URL
/// with a host, and header values that can be sent.
pub fn hosts_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = Path::new("/etc/containerd/certs.d/fuzz.test:5000");
    let mut warnings = Vec::new();
    match config::hosts::parse_hosts_toml(dir, text, "fuzz.test:5000", &mut warnings) {
        Ok(endpoints) => {
            assert!(!endpoints.is_empty(), "no endpoint, not even the upstream");
            for endpoint in &endpoints {
                assert!(matches!(endpoint.base.scheme(), "http" | "https"));
                assert!(endpoint.base.host_str().is_some_and(|h| !h.is_empty()));
                for (name, value) in &endpoint.headers {
                    assert!(reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok());
                    assert!(reqwest::header::HeaderValue::from_str(value).is_ok());
                }
            }
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
}

/// Target `www_authenticate`: a `WWW-Authenticate` header value. An accepted
/// challenge has a non-empty lower-case scheme without white space, and lower-case
/// parameter names.
pub fn www_authenticate(data: &[u8]) {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    let Some(challenge) = registry::parse_challenge(header) else {
        return;
    };
    let scheme = &challenge.scheme;
    assert!(!scheme.is_empty());
    assert_eq!(*scheme, scheme.to_ascii_lowercase());
    assert!(!scheme.contains(char::is_whitespace), "{scheme:?}");
    for name in challenge.params.keys() {
        assert_eq!(*name, name.to_ascii_lowercase());
    }
}

/// Target `content_range`: a `Content-Range` header value. An accepted range is in
/// bounds (`first <= last < total`) and prints back to a value that parses the same.
pub fn content_range(data: &[u8]) {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let Some(range) = registry::parse_content_range(value) else {
        return;
    };
    assert!(range.first <= range.last);
    let total = match range.total {
        Some(total) => {
            assert!(range.last < total);
            total.to_string()
        }
        None => "*".to_string(),
    };
    let printed = format!("bytes {}-{}/{total}", range.first, range.last);
    assert_eq!(registry::parse_content_range(&printed), Some(range));
}

/// Target `layer`: an uncompressed layer tar, applied into a scratch directory as a
/// layer unpacked while it downloads would be (the first byte picks overlay or
/// removing whiteouts; the rest is the tar). Whatever it holds, nothing outside the
/// target directory changes (a sibling directory and file stay as they were, and
/// nothing else appears next to them), and an accepted layer's diff ID is the
/// SHA-256 of the tar.
pub fn layer(data: &[u8]) {
    use crate::containerd::apply::{apply_layer, Compression, Target, Whiteouts};
    use sha2::{Digest, Sha256};

    let Some((&mode, tar)) = data.split_first() else {
        return;
    };
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let root = scratch.path().join("root");
    let outside = scratch.path().join("outside");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("kept"), b"kept").unwrap();
    let target = Target {
        dir: root.clone(),
        whiteouts: match mode & 1 {
            0 => Whiteouts::Remove,
            _ => Whiteouts::Overlay,
        },
        lowers: vec![outside.clone()],
    };
    let applied = apply_layer(tar, Compression::None, &target);
    let mut around: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    around.sort();
    assert_eq!(
        around,
        ["outside", "root"],
        "something was made beside the target"
    );
    let beside: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["kept"], "the lower directory changed");
    assert_eq!(std::fs::read(outside.join("kept")).unwrap(), b"kept");
    if let Ok(diff_id) = applied {
        assert_eq!(
            diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(tar)))
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use rstest::rstest;

    use super::*;

    fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut seeds: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| {
                let path = entry.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                (path, bytes)
            })
            .collect();
        seeds.sort();
        seeds
    }

    /// Every committed seed (and every crash kept as a seed) runs without a panic.
    #[rstest]
    #[case::reference("reference")]
    #[case::manifest("manifest")]
    #[case::config_toml("config_toml")]
    #[case::hosts_toml("hosts_toml")]
    #[case::www_authenticate("www_authenticate")]
    #[case::content_range("content_range")]
    #[case::layer("layer")]
    fn corpus_runs_clean(#[case] target: &str) {
        let seeds = corpus(target);
        assert!(seeds.len() >= 3, "{target}: too few seeds");
        for (path, bytes) in seeds {
            match target {
                "reference" => reference(&bytes),
                "manifest" => manifest(&bytes),
                "config_toml" => config_toml(&bytes),
                "hosts_toml" => hosts_toml(&bytes),
                "www_authenticate" => www_authenticate(&bytes),
                "content_range" => content_range(&bytes),
                "layer" => layer(&bytes),
                other => unreachable!("{other}: {}", path.display()),
            }
        }
    }
}
