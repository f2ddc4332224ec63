//! Image references, parsed and normalised the way containerd's CRI plugin does it.
//!
//! CRI hands every image name to `reference.ParseDockerRef` from
//! `github.com/distribution/reference` (v0.6.0): a "familiar" name such as `busybox` becomes
//! `docker.io/library/busybox:latest`, and a reference carrying both a tag and a digest keeps
//! only the digest. [`Reference::parse`] follows the same rules so that the image ctrpull
//! pulls is the image the kubelet asked for, and so that the names it writes into containerd
//! are the names CRI looks up.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use oci_spec::image::Digest;

/// The registry a name without a registry component belongs to (Docker Hub).
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// Docker Hub's legacy name, rewritten to [`DEFAULT_REGISTRY`].
pub const LEGACY_DEFAULT_REGISTRY: &str = "index.docker.io";

/// The namespace one-component names get on [`DEFAULT_REGISTRY`] (`busybox` → `library/busybox`).
pub const OFFICIAL_REPOSITORY_PREFIX: &str = "library/";

/// The tag used when a reference has neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";

/// The longest repository path accepted, in bytes (the registry host is not counted,
/// as in distribution/reference v0.6.0).
pub const MAX_REPOSITORY_LENGTH: usize = 255;

/// The longest tag accepted, in bytes.
pub const MAX_TAG_LENGTH: usize = 128;

/// Why a string is not an image reference. Every variant carries the input as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input was the empty string.
    #[error("invalid image reference \"\": the reference is empty")]
    Empty,
    /// The input was a bare 64-character hex string, which is an image ID rather than a name.
    #[error(
        "invalid image reference {input:?}: a 64-character hexadecimal string is an image ID, \
         not a repository name"
    )]
    Identifier {
        /// The input as given.
        input: String,
    },
    /// The first path component was taken as a registry host but is not `host[:port]`.
    #[error("invalid image reference {input:?}: registry {registry:?} is not a valid host[:port]")]
    InvalidRegistry {
        /// The input as given.
        input: String,
        /// The registry component that failed to parse.
        registry: String,
    },
    /// The repository path contains an uppercase letter.
    #[error("invalid image reference {input:?}: repository name {repository:?} must be lowercase")]
    Uppercase {
        /// The input as given.
        input: String,
        /// The repository path, after normalisation (`library/` added on Docker Hub).
        repository: String,
    },
    /// The repository path has an empty component (`a//b`, a leading or trailing `/`).
    #[error("invalid image reference {input:?}: repository name {repository:?} has an empty path component")]
    EmptyPathComponent {
        /// The input as given.
        input: String,
        /// The repository path, after normalisation.
        repository: String,
    },
    /// A repository path component breaks the grammar.
    #[error(
        "invalid image reference {input:?}: path component {component:?} must be lowercase \
         letters and digits, joined by '.', '_', '__' or a run of '-'"
    )]
    InvalidPathComponent {
        /// The input as given.
        input: String,
        /// The offending path component.
        component: String,
    },
    /// The repository path is longer than [`MAX_REPOSITORY_LENGTH`].
    #[error(
        "invalid image reference {input:?}: repository name is {length} characters long, \
         more than the {MAX_REPOSITORY_LENGTH} allowed"
    )]
    NameTooLong {
        /// The input as given.
        input: String,
        /// Length of the normalised repository path.
        length: usize,
    },
    /// The tag breaks `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error(
        "invalid image reference {input:?}: tag {tag:?} must be 1 to 128 characters of \
         [A-Za-z0-9_.-] not starting with '.' or '-'"
    )]
    InvalidTag {
        /// The input as given.
        input: String,
        /// The tag that failed.
        tag: String,
    },
    /// The digest is not `algorithm:hex` of the right length.
    #[error("invalid image reference {input:?}: digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The input as given.
        input: String,
        /// The digest that failed.
        digest: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The digest algorithm is well formed but neither sha256, sha384 nor sha512.
    #[error(
        "invalid image reference {input:?}: unsupported digest algorithm {algorithm:?} \
         (expected sha256, sha384 or sha512)"
    )]
    UnsupportedDigestAlgorithm {
        /// The input as given.
        input: String,
        /// The algorithm named in the digest.
        algorithm: String,
    },
}

/// A fully normalised image reference: registry, repository, and a tag or a digest.
///
/// Exactly one of [`tag`](Reference::tag) and [`digest`](Reference::digest) is set: a name
/// with neither gets [`DEFAULT_TAG`], and a name with both keeps only the digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses `s` as containerd's CRI plugin does (`ParseDockerRef`).
    pub fn parse(s: &str) -> Result<Reference, Error> {
        if s.is_empty() {
            return Err(Error::Empty);
        }
        // A bare image ID would otherwise parse as `docker.io/library/<hex>:latest`;
        // ParseNormalizedNamed refuses it so that an ID is never mistaken for a name.
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(Error::Identifier { input: s.into() });
        }

        let (registry, remainder) = split_registry(s);
        let (name_and_tag, digest) = match remainder.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (&*remainder, None),
        };
        // Neither a registry-less path nor a digest contains ':', so a ':' here starts the tag.
        let (repository, tag) = match name_and_tag.split_once(':') {
            Some((repository, tag)) => (repository, Some(tag)),
            None => (name_and_tag, None),
        };

        if !is_registry(registry) {
            return Err(Error::InvalidRegistry {
                input: s.into(),
                registry: registry.into(),
            });
        }
        validate_repository(s, repository)?;
        if let Some(tag) = tag {
            if !is_tag(tag) {
                return Err(Error::InvalidTag {
                    input: s.into(),
                    tag: tag.into(),
                });
            }
        }
        let digest = digest.map(|d| reference_digest(s, d)).transpose()?;

        let tag = match (tag, &digest) {
            // ParseDockerRef: "For references containing both a tag and a digest, it returns
            // a digested reference" — the tag is informational only and is dropped.
            (_, Some(_)) => None,
            (Some(tag), None) => Some(tag.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// The registry host, with its port if one was given: `docker.io`, `127.0.0.1:5000`,
    /// `[::1]:5000`, `localhost:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path within the registry: `library/busybox`, `test/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag: the one given, [`DEFAULT_TAG`] when neither a tag nor a digest was given,
    /// and `None` for a reference by digest.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, for a reference by digest.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What goes after `/manifests/` in a registry request: the digest if any, else the tag.
    pub fn object(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        match (&self.digest, &self.tag) {
            (Some(digest), _) => write!(f, "@{digest}"),
            (None, Some(tag)) => write!(f, ":{tag}"),
            (None, None) => Ok(()),
        }
    }
}

/// Splits off the registry as distribution's `splitDockerDomain` does, returning the
/// registry and the rest (`repository[:tag][@digest]`, with `library/` added on Docker Hub).
fn split_registry(s: &str) -> (&str, Cow<'_, str>) {
    let Some((first, rest)) = s.split_once('/') else {
        // A single component is always a Docker Hub name, even `localhost:5000`, which
        // parses as `docker.io/library/localhost` with tag `5000`.
        return (
            DEFAULT_REGISTRY,
            Cow::Owned(format!("{OFFICIAL_REPOSITORY_PREFIX}{s}")),
        );
    };
    let (registry, rest) = if first == "localhost" || first.contains(['.', ':']) {
        (first, rest)
    } else if first.bytes().any(|b| b.is_ascii_uppercase()) {
        // Repository names are lowercase, so an uppercase first component can only be a host.
        (first, rest)
    } else {
        return (DEFAULT_REGISTRY, Cow::Borrowed(s));
    };
    let registry = if registry == LEGACY_DEFAULT_REGISTRY {
        DEFAULT_REGISTRY
    } else {
        registry
    };
    // `docker.io/ubuntu` is `docker.io/library/ubuntu`; other registries have no such rule.
    // The tag and digest cannot contain '/', so this looks at the repository path alone.
    if registry == DEFAULT_REGISTRY && !rest.contains('/') {
        return (
            registry,
            Cow::Owned(format!("{OFFICIAL_REPOSITORY_PREFIX}{rest}")),
        );
    }
    (registry, Cow::Borrowed(rest))
}

/// `host[:port]` where host is a DNS-like name, an IPv4 address or a bracketed IPv6 address.
fn is_registry(registry: &str) -> bool {
    let (host_ok, port) = if let Some(inner) = registry.strip_prefix('[') {
        let Some((address, after)) = inner.split_once(']') else {
            return false;
        };
        let ok = !address.is_empty() && address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        (ok, after)
    } else {
        let (host, port) = match registry.find(':') {
            Some(i) => registry.split_at(i),
            None => (registry, ""),
        };
        let ok = host.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-'
        });
        // distribution's regexp rejects `my_registry.local/x` as a host but then matches
        // the whole string as a registry-less path; containerd later splits that path at
        // its first '/' and contacts `my_registry.local` all the same. Accept such hosts so
        // we pull from the same place.
        (ok || (!host.contains(':') && is_path_component(host)), port)
    };
    let port_ok = match port.strip_prefix(':') {
        Some(digits) => !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
        None => port.is_empty(),
    };
    host_ok && port_ok
}

fn validate_repository(input: &str, repository: &str) -> Result<(), Error> {
    // ParseNormalizedNamed checks case before anything else, so `Foo` reports the case
    // rather than a grammar error.
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(Error::Uppercase {
            input: input.into(),
            repository: repository.into(),
        });
    }
    for component in repository.split('/') {
        if component.is_empty() {
            return Err(Error::EmptyPathComponent {
                input: input.into(),
                repository: repository.into(),
            });
        }
        if !is_path_component(component) {
            return Err(Error::InvalidPathComponent {
                input: input.into(),
                component: component.into(),
            });
        }
    }
    if repository.len() > MAX_REPOSITORY_LENGTH {
        return Err(Error::NameTooLong {
            input: input.into(),
            length: repository.len(),
        });
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(&bytes[0]) || !alnum(&bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}` where `\w` is ASCII `[A-Za-z0-9_]`.
fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut bytes = tag.bytes();
    match bytes.next() {
        Some(first) if word(first) => {}
        _ => return false,
    }
    tag.len() <= MAX_TAG_LENGTH && bytes.all(|b| word(b) || b == b'.' || b == b'-')
}

/// Why a string is not a digest containerd accepts (`algorithm:hex`, go-digest's
/// `Digest.Validate` with the algorithms it registers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// There is no `:` between algorithm and hex.
    #[error("expected <algorithm>:<hex>")]
    Form,
    /// The algorithm breaks `[A-Za-z][A-Za-z0-9]*([+._-][A-Za-z][A-Za-z0-9]*)*`.
    #[error("malformed algorithm {0:?}")]
    MalformedAlgorithm(String),
    /// The encoded part is shorter than 32 characters or not hexadecimal.
    #[error("the encoded part must be at least 32 hexadecimal characters")]
    NotHex,
    /// The algorithm is well formed but neither sha256, sha384 nor sha512.
    #[error("unsupported digest algorithm {0:?} (expected sha256, sha384 or sha512)")]
    UnsupportedAlgorithm(String),
    /// The hex part has the wrong length for the algorithm.
    #[error("{algorithm} needs {expected} hexadecimal characters, found {found}")]
    Length {
        /// The algorithm.
        algorithm: &'static str,
        /// The length it needs.
        expected: usize,
        /// The length found.
        found: usize,
    },
    /// The hex part has uppercase letters (go-digest only accepts lowercase).
    #[error("hexadecimal characters must be lowercase")]
    Uppercase,
}

/// Checks `digest` as distribution's reference grammar followed by go-digest's
/// `Digest.Validate` do, and converts it: `sha256`, `sha384` or `sha512`, followed by
/// the right number of lowercase hexadecimal characters. Used for references,
/// descriptors in manifests and `Docker-Content-Digest` headers alike.
pub fn parse_digest(digest: &str) -> Result<Digest, DigestError> {
    let Some((algorithm, encoded)) = digest.split_once(':') else {
        return Err(DigestError::Form);
    };
    // digest-algorithm := [A-Za-z][A-Za-z0-9]* ([+._-] [A-Za-z][A-Za-z0-9]*)*
    let algorithm_ok = algorithm.split(['+', '.', '_', '-']).all(|part| {
        let mut bytes = part.bytes();
        matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
            && bytes.all(|b| b.is_ascii_alphanumeric())
    });
    if !algorithm_ok {
        return Err(DigestError::MalformedAlgorithm(algorithm.into()));
    }
    if encoded.len() < 32 || !encoded.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DigestError::NotHex);
    }
    let (algorithm, expected) = match algorithm {
        "sha256" => ("sha256", 64),
        "sha384" => ("sha384", 96),
        "sha512" => ("sha512", 128),
        _ => return Err(DigestError::UnsupportedAlgorithm(algorithm.into())),
    };
    if encoded.len() != expected {
        return Err(DigestError::Length {
            algorithm,
            expected,
            found: encoded.len(),
        });
    }
    if encoded.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(DigestError::Uppercase);
    }
    // Everything oci-spec checks has been checked above.
    Ok(Digest::from_str(digest).expect("a valid sha256, sha384 or sha512 digest"))
}

/// [`parse_digest`] for the digest of reference `input`.
fn reference_digest(input: &str, digest: &str) -> Result<Digest, Error> {
    parse_digest(digest).map_err(|e| match e {
        DigestError::UnsupportedAlgorithm(algorithm) => Error::UnsupportedDigestAlgorithm {
            input: input.into(),
            algorithm,
        },
        other => Error::InvalidDigest {
            input: input.into(),
            digest: digest.into(),
            reason: other.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const SHA256: &str = "sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa";
    const HEX64: &str = "7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa";

    #[rstest]
    #[case::familiar("busybox", "docker.io", "library/busybox", Some("latest"), None)]
    #[case::familiar_tag("busybox:1.36", "docker.io", "library/busybox", Some("1.36"), None)]
    #[case::namespaced("test/busybox", "docker.io", "test/busybox", Some("latest"), None)]
    #[case::docker_io_one_component(
        "docker.io/busybox",
        "docker.io",
        "library/busybox",
        Some("latest"),
        None
    )]
    #[case::docker_io_full(
        "docker.io/library/busybox:latest",
        "docker.io",
        "library/busybox",
        Some("latest"),
        None
    )]
    #[case::index_docker_io(
        "index.docker.io/busybox",
        "docker.io",
        "library/busybox",
        Some("latest"),
        None
    )]
    #[case::index_docker_io_ns(
        "index.docker.io/user/app:v1",
        "docker.io",
        "user/app",
        Some("v1"),
        None
    )]
    #[case::other_registry_no_library(
        "quay.io/busybox",
        "quay.io",
        "busybox",
        Some("latest"),
        None
    )]
    #[case::deep_path("ghcr.io/a/b/c/d:tag", "ghcr.io", "a/b/c/d", Some("tag"), None)]
    #[case::ipv4_port(
        "127.0.0.1:5000/test/busybox:v1",
        "127.0.0.1:5000",
        "test/busybox",
        Some("v1"),
        None
    )]
    #[case::ipv6_port("[::1]:5000/busybox", "[::1]:5000", "busybox", Some("latest"), None)]
    #[case::ipv6_no_port("[fe80::1]/busybox:x", "[fe80::1]", "busybox", Some("x"), None)]
    #[case::localhost("localhost/busybox", "localhost", "busybox", Some("latest"), None)]
    #[case::localhost_port(
        "localhost:5000/busybox",
        "localhost:5000",
        "busybox",
        Some("latest"),
        None
    )]
    #[case::host_port_no_dot("myregistry:5000/app", "myregistry:5000", "app", Some("latest"), None)]
    #[case::bare_localhost_port_is_a_tag(
        "localhost:5000",
        "docker.io",
        "library/localhost",
        Some("5000"),
        None
    )]
    #[case::bare_domain_is_a_repository(
        "example.com",
        "docker.io",
        "library/example.com",
        Some("latest"),
        None
    )]
    #[case::uppercase_first_component_is_a_host("Foo/bar", "Foo", "bar", Some("latest"), None)]
    #[case::underscore_host(
        "my_registry.local/app",
        "my_registry.local",
        "app",
        Some("latest"),
        None
    )]
    #[case::separators(
        "a/b.c_d__e---f-g:T_a.g-1",
        "docker.io",
        "a/b.c_d__e---f-g",
        Some("T_a.g-1"),
        None
    )]
    #[case::digest(
        "busybox@sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa",
        "docker.io",
        "library/busybox",
        None,
        Some(SHA256)
    )]
    #[case::tag_and_digest_drops_tag("docker.io/library/busybox:latest@sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa", "docker.io", "library/busybox", None, Some(SHA256))]
    #[case::port_and_digest(
        "h:5000/a/b@sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa",
        "h:5000",
        "a/b",
        None,
        Some(SHA256)
    )]
    #[case::digest_alone_is_a_tagged_name(
        "sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa",
        "docker.io",
        "library/sha256",
        Some(HEX64),
        None
    )]
    #[case::max_tag("a:_2345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678", "docker.io", "library/a", Some("_2345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678"), None)]
    fn parses(
        #[case] input: &str,
        #[case] registry: &str,
        #[case] repository: &str,
        #[case] tag: Option<&str>,
        #[case] digest: Option<&str>,
    ) {
        let r = Reference::parse(input).unwrap();
        assert_eq!(r.registry(), registry);
        assert_eq!(r.repository(), repository);
        assert_eq!(r.tag(), tag);
        assert_eq!(r.digest().map(|d| d.to_string()).as_deref(), digest);
        assert_eq!(r.name(), format!("{registry}/{repository}"));
        assert_eq!(r.object(), digest.or(tag).unwrap());
        let expected = match (digest, tag) {
            (Some(d), _) => format!("{registry}/{repository}@{d}"),
            (None, Some(t)) => format!("{registry}/{repository}:{t}"),
            (None, None) => unreachable!(),
        };
        assert_eq!(r.to_string(), expected);
        // The normalised form is a fixed point.
        assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
        assert_eq!(input.parse::<Reference>().unwrap(), r);
    }

    #[test]
    fn sha512_digest() {
        let input = format!("quay.io/a/b@sha512:{}", "ab".repeat(64));
        let r = Reference::parse(&input).unwrap();
        assert_eq!(r.object(), format!("sha512:{}", "ab".repeat(64)));
        assert_eq!(r.to_string(), input);
    }

    #[test]
    fn longest_repository_is_accepted_and_registry_is_not_counted() {
        let input = format!("{}.example.com/{}", "h".repeat(60), "a".repeat(255));
        assert_eq!(Reference::parse(&input).unwrap().repository().len(), 255);
    }

    #[rstest]
    #[case::empty("", "the reference is empty")]
    #[case::identifier(HEX64, "is an image ID, not a repository name")]
    #[case::uppercase_repository(
        "Busybox",
        "repository name \"library/Busybox\" must be lowercase"
    )]
    #[case::uppercase_path("quay.io/Foo/bar", "repository name \"Foo/bar\" must be lowercase")]
    #[case::uppercase_with_registry_port(
        "localhost:5000/App:v1",
        "repository name \"App\" must be lowercase"
    )]
    #[case::leading_slash("/busybox", "repository name \"/busybox\" has an empty path component")]
    #[case::trailing_slash("quay.io/a/", "has an empty path component")]
    #[case::double_slash("quay.io/a//b", "has an empty path component")]
    #[case::nothing_after_registry("quay.io/", "has an empty path component")]
    #[case::triple_underscore("a___b", "path component \"a___b\" must be lowercase")]
    #[case::leading_separator("quay.io/-a", "path component \"-a\"")]
    #[case::trailing_separator("a.", "path component \"a.\"")]
    #[case::dot_dash("a.-b", "path component \"a.-b\"")]
    #[case::bad_char("quay.io/a+b", "path component \"a+b\"")]
    #[case::empty_tag("busybox:", "tag \"\" must be 1 to 128")]
    #[case::tag_starts_with_dot("busybox:.x", "tag \".x\"")]
    #[case::tag_starts_with_dash("busybox:-x", "tag \"-x\"")]
    #[case::tag_with_colon("busybox:a:b", "tag \"a:b\"")]
    #[case::tag_too_long("a:a2345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678X", "tag \"a234")]
    #[case::bad_port("quay.io:x/a", "registry \"quay.io:x\" is not a valid host[:port]")]
    #[case::empty_port("quay.io:/a", "registry \"quay.io:\"")]
    #[case::bare_ipv6("::1/busybox", "registry \"::1\"")]
    #[case::bad_ipv6("[::g]:5000/a", "registry \"[::g]:5000\"")]
    #[case::dash_label("-quay.io/a", "registry \"-quay.io\"")]
    #[case::user_in_host("user@host.io/a", "registry \"user@host.io\"")]
    #[case::empty_digest("busybox@", "digest \"\": expected <algorithm>:<hex>")]
    #[case::short_digest("busybox@sha256:abc", "at least 32 hexadecimal characters")]
    #[case::non_hex_digest(
        "busybox@sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8dbzzz",
        "at least 32 hexadecimal characters"
    )]
    #[case::wrong_length_digest(
        "busybox@sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5",
        "sha256 needs 64 hexadecimal characters, found 62"
    )]
    #[case::sha512_wrong_length(
        "busybox@sha512:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa",
        "sha512 needs 128 hexadecimal characters, found 64"
    )]
    #[case::uppercase_hex(
        "busybox@sha256:7CC4B5AEFD1D0CADF8D97D4350462BA51C694EBCA145B08D7D41B41ACC8DB5AA",
        "must be lowercase"
    )]
    #[case::unknown_algorithm(
        "busybox@md5:d41d8cd98f00b204e9800998ecf8427e",
        "unsupported digest algorithm \"md5\""
    )]
    #[case::uppercase_algorithm(
        "busybox@SHA256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa",
        "unsupported digest algorithm \"SHA256\""
    )]
    #[case::malformed_algorithm(
        "busybox@1sha:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa",
        "malformed algorithm \"1sha\""
    )]
    #[case::two_digests("busybox@sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa@sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa", "at least 32 hexadecimal characters")]
    fn rejects(#[case] input: &str, #[case] message: &str) {
        let err = Reference::parse(input).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(message), "{input:?}: {text}");
        if !input.is_empty() {
            assert!(
                text.contains(&format!("{input:?}")),
                "{text} does not quote the input"
            );
        }
    }

    #[rstest]
    #[case::sha256(SHA256, None)]
    #[case::sha384(&format!("sha384:{}", "0".repeat(96)), None)]
    #[case::no_colon("sha256", Some(DigestError::Form))]
    #[case::unknown("md5:d41d8cd98f00b204e9800998ecf8427e", Some(DigestError::UnsupportedAlgorithm("md5".into())))]
    #[case::short("sha256:abc", Some(DigestError::NotHex))]
    #[case::non_hex(&SHA256.replace('a', "g"), Some(DigestError::NotHex))]
    #[case::long(&format!("{SHA256}00"), Some(DigestError::Length { algorithm: "sha256", expected: 64, found: 66 }))]
    #[case::uppercase(&format!("sha256:{}", HEX64.to_uppercase()), Some(DigestError::Uppercase))]
    #[case::path(&format!("sha256:{}/..", HEX64), Some(DigestError::NotHex))]
    #[case::algorithm("-x:d41d8cd98f00b204e9800998ecf8427e", Some(DigestError::MalformedAlgorithm("-x".into())))]
    fn digests(#[case] input: &str, #[case] error: Option<DigestError>) {
        match error {
            None => assert_eq!(parse_digest(input).unwrap().to_string(), input),
            Some(error) => assert_eq!(parse_digest(input).unwrap_err(), error),
        }
    }

    proptest::proptest! {
        /// Any reference that parses prints in a normalised form that parses back to
        /// the same reference (and prints the same again).
        #[test]
        fn prop_reference_round_trip(
            registry in proptest::option::of("(localhost|[a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){0,2}|\\[::1\\])(:[0-9]{1,5})?"),
            path in "[a-z0-9]{1,6}([._-][a-z0-9]{1,6}){0,2}(/[a-z0-9]{1,6}([._-][a-z0-9]{1,6}){0,2}){0,3}",
            tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
            digest in proptest::option::of("[0-9a-f]{64}"),
        ) {
            let mut input = String::new();
            if let Some(registry) = &registry {
                input.push_str(registry);
                input.push('/');
            }
            input.push_str(&path);
            if let Some(tag) = &tag {
                input.push(':');
                input.push_str(tag);
            }
            if let Some(hex) = &digest {
                input.push_str("@sha256:");
                input.push_str(hex);
            }
            let Ok(parsed) = Reference::parse(&input) else {
                // Only generated names that are themselves a 64-hex image ID, or too
                // long after `library/`, may fail.
                return Ok(());
            };
            let printed = parsed.to_string();
            let again = Reference::parse(&printed).unwrap();
            proptest::prop_assert_eq!(&again, &parsed);
            proptest::prop_assert_eq!(again.to_string(), printed);
            proptest::prop_assert_eq!(parsed.digest().map(|d| d.digest().to_string()), digest.clone());
            if digest.is_none() {
                proptest::prop_assert_eq!(parsed.tag(), Some(tag.as_deref().unwrap_or(DEFAULT_TAG)));
            }
        }
    }

    #[test]
    fn name_too_long() {
        let input = format!("quay.io/{}", "a".repeat(256));
        assert_eq!(
            Reference::parse(&input).unwrap_err(),
            Error::NameTooLong {
                input: input.clone(),
                length: 256
            }
        );
        // `library/` counts: 248 characters are fine on another registry, not on Docker Hub.
        assert!(Reference::parse(&format!("quay.io/{}", "a".repeat(248))).is_ok());
        assert!(matches!(
            Reference::parse(&"a".repeat(248)),
            Err(Error::NameTooLong { length: 256, .. })
        ));
    }
}
