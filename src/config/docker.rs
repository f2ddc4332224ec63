//! Docker's `config.json` (`docker login`): the credentials fallback for endpoints that
//! containerd's configuration gives none.

use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use url::Url;

use crate::config::authority::same_authority;
use crate::config::containerd::dotted;
use crate::config::hosts::DOCKER_HUB_UPSTREAM;
use crate::config::{containerd, Error, Warning};
use crate::registry::{Credentials, Secret};

/// Names `docker login` stores Docker Hub under (the CLI writes
/// `https://index.docker.io/v1/`); all mean the API host `registry-1.docker.io`.
const DOCKER_HUB_ALIASES: &[&str] = &["index.docker.io", "docker.io", "registry-1.docker.io"];

/// The credentials of one config.json.
#[derive(Debug)]
pub(crate) struct DockerConfig {
    /// The file.
    pub path: PathBuf,
    auths: Vec<DockerAuth>,
}

/// One `auths` entry that yields credentials.
#[derive(Debug)]
struct DockerAuth {
    /// `host[:port]` the entry applies to.
    host: String,
    /// The dotted key, for `credentials_source`.
    key: String,
    credentials: Credentials,
}

impl DockerConfig {
    /// Credentials for the endpoint at `url`, with "file: key".
    pub(crate) fn credentials_for(&self, url: &Url) -> Option<(&Credentials, String)> {
        self.auths
            .iter()
            .find(|a| same_authority(url, &a.host))
            .map(|a| {
                (
                    &a.credentials,
                    format!("{}: {}", self.path.display(), a.key),
                )
            })
    }
}

/// Docker's own lookup: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, when
/// the file exists (or cannot be checked, so that the read reports why).
pub(crate) fn default_path() -> Option<PathBuf> {
    let dir = match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".docker"),
    };
    let path = dir.join("config.json");
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        _ => Some(path),
    }
}

/// Reads and parses the config.json at `path`.
pub(crate) fn load(path: &Path, warnings: &mut Vec<Warning>) -> Result<DockerConfig, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text, warnings)
}

/// Parses a config.json read from `path`.
pub(crate) fn parse(
    path: &Path,
    text: &str,
    warnings: &mut Vec<Warning>,
) -> Result<DockerConfig, Error> {
    let invalid = |key: &str, reason: String| Error::InvalidValue {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason,
    };
    let mut warn = |key: &str, message: String| {
        warnings.push(Warning {
            file: Some(path.to_path_buf()),
            key: key.to_string(),
            message,
        })
    };
    // The docker CLI reads an empty file as an empty configuration.
    let text = if text.trim().is_empty() { "{}" } else { text };
    let root: Value = serde_json::from_str(text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let Value::Object(root) = root else {
        return Err(invalid(
            "(root)",
            "the file must hold a JSON object".to_string(),
        ));
    };

    // Credential helpers run programs; ctrpull reads only what the file itself holds.
    if let Some(Value::String(store)) = root.get("credsStore") {
        if !store.is_empty() {
            warn(
            "credsStore",
            format!(
                "is not supported by ctrpull: credentials kept by docker-credential-{store} are not \
                 read, so hosts that need them are pulled from anonymously unless containerd's \
                 config or this file's `auths` has credentials for them"
                ),
            );
        }
    }
    if let Some(Value::Object(helpers)) = root.get("credHelpers") {
        if !helpers.is_empty() {
            let hosts: Vec<&str> = helpers.keys().map(String::as_str).collect();
            warn(
                "credHelpers",
                format!(
                    "is not supported by ctrpull: credentials for {} kept by credential helpers are not read",
                    hosts.join(", ")
                ),
            );
        }
    }

    let empty = Map::new();
    let auths = match root.get("auths") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(auths)) => auths,
        Some(_) => return Err(invalid("auths", "must be a JSON object".to_string())),
    };
    let mut entries = Vec::new();
    for (name, entry) in auths {
        let key = dotted("auths", name);
        let Value::Object(entry) = entry else {
            return Err(invalid(&key, "must be a JSON object".to_string()));
        };
        let field = |field: &str| -> Result<&str, Error> {
            match entry.get(field) {
                None | Some(Value::Null) => Ok(""),
                Some(Value::String(s)) => Ok(s),
                Some(_) => Err(invalid(
                    &dotted(&key, field),
                    "must be a string".to_string(),
                )),
            }
        };
        let (encoded, username, password) =
            (field("auth")?, field("username")?, field("password")?);
        let (token, registry_token) = (field("identitytoken")?, field("registrytoken")?);

        // Docker decodes `auth` over username/password when loading the file, and clients
        // send an identity token in preference to both.
        let credentials = if !token.is_empty() {
            Some(Credentials::IdentityToken(Secret::new(token)))
        } else if !encoded.is_empty() {
            let credentials = containerd::decode_basic(encoded).map_err(|reason| {
                invalid(
                    &dotted(&key, "auth"),
                    format!("{reason}; the docker CLI refuses this file too"),
                )
            })?;
            Some(credentials)
        } else if !username.is_empty() {
            Some(Credentials::Basic {
                username: username.to_string(),
                password: Secret::new(password),
            })
        } else {
            None
        };
        let Some(credentials) = credentials else {
            if !registry_token.is_empty() {
                warn(
                    &dotted(&key, "registrytoken"),
                    "is not supported by ctrpull: this host is pulled from anonymously".to_string(),
                );
            }
            continue;
        };
        entries.push(DockerAuth {
            host: hostname(name),
            key,
            credentials,
        });
    }
    Ok(DockerConfig {
        path: path.to_path_buf(),
        auths: entries,
    })
}

/// Docker's `ConvertToHostname`: drop the scheme and any path; Docker Hub's names become
/// its API host.
fn hostname(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = rest.split('/').next().unwrap_or(rest);
    if DOCKER_HUB_ALIASES.contains(&host) {
        DOCKER_HUB_UPSTREAM.to_string()
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const PATH: &str = "/home/u/.docker/config.json";

    fn parse_text(text: &str) -> (Result<DockerConfig, Error>, Vec<Warning>) {
        let mut warnings = Vec::new();
        let result = parse(Path::new(PATH), text, &mut warnings);
        (result, warnings)
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    /// base64("user:docker-test-password")
    const USER_PASS: &str = "dXNlcjpkb2NrZXItdGVzdC1wYXNzd29yZA==";

    #[rstest]
    #[case::hub_v1_key("https://index.docker.io/v1/", "https://registry-1.docker.io/v2", true)]
    #[case::hub_plain("docker.io", "https://registry-1.docker.io/v2", true)]
    #[case::hub_not_other("https://index.docker.io/v1/", "https://mirror.gcr.io/v2", false)]
    #[case::scheme_stripped("https://ghcr.io", "https://ghcr.io/v2", true)]
    #[case::port("r.local:5000", "http://r.local:5000/v2", true)]
    #[case::port_mismatch("r.local:5000", "http://r.local/v2", false)]
    fn keys_match_endpoints(#[case] key: &str, #[case] endpoint: &str, #[case] matches: bool) {
        let text = format!(r#"{{"auths": {{"{key}": {{"auth": "{USER_PASS}"}}}}}}"#);
        let config = parse_text(&text).0.unwrap();
        let found = config.credentials_for(&url(endpoint));
        assert_eq!(found.is_some(), matches, "{key} vs {endpoint}");
        if let Some((credentials, source)) = found {
            assert_eq!(source, format!("{PATH}: auths.{key:?}"));
            let Credentials::Basic { username, password } = credentials else {
                panic!("{credentials:?}")
            };
            assert_eq!(username, "user");
            assert_eq!(password.expose(), "docker-test-password");
        }
    }

    #[rstest]
    #[case::auth_over_fields(
        r#"{"auth": "dXNlcjpkb2NrZXItdGVzdC1wYXNzd29yZA==", "username": "other", "password": "x"}"#,
        Some("basic:user")
    )]
    #[case::fields(r#"{"username": "u2", "password": "p2"}"#, Some("basic:u2"))]
    #[case::identity_token_first(
        r#"{"auth": "MDAwMDAwMDAtMDAwMDo=", "identitytoken": "refresh"}"#,
        Some("identitytoken:")
    )]
    #[case::empty(r#"{}"#, None)]
    #[case::registry_token_only(r#"{"registrytoken": "bearer"}"#, None)]
    fn precedence(#[case] entry: &str, #[case] expected: Option<&str>) {
        let text = format!(r#"{{"auths": {{"r.io": {entry}}}}}"#);
        let config = parse_text(&text).0.unwrap();
        let got = config
            .credentials_for(&url("https://r.io/v2"))
            .map(|(c, _)| match c {
                Credentials::Basic { username, .. } => format!("basic:{username}"),
                Credentials::IdentityToken(_) => "identitytoken:".to_string(),
            });
        assert_eq!(got.as_deref(), expected);
    }

    #[test]
    fn helpers_are_warned_about_once_each() {
        let (config, warnings) = parse_text(
            r#"{"credsStore": "desktop", "credHelpers": {"gcr.io": "gcloud", "ecr.aws": "ecr-login"}, "auths": {"gcr.io": {}}}"#,
        );
        assert!(config.unwrap().auths.is_empty());
        let text: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(text[0].starts_with(&format!("{PATH}: `credsStore` is not supported by ctrpull: credentials kept by docker-credential-desktop")));
        assert!(text[1].contains(
            "`credHelpers` is not supported by ctrpull: credentials for ecr.aws, gcr.io"
        ));
    }

    #[rstest]
    #[case::not_json("{", "invalid JSON")]
    #[case::not_object("[]", "the file must hold a JSON object")]
    #[case::auths_array(r#"{"auths": []}"#, "`auths`: must be a JSON object")]
    #[case::auth_number(
        r#"{"auths": {"r.io": {"auth": 5}}}"#,
        "`auths.\"r.io\".auth`: must be a string"
    )]
    #[case::bad_base64(
        r#"{"auths": {"r.io": {"auth": "not base64!"}}}"#,
        "`auths.\"r.io\".auth`: is not valid base64"
    )]
    #[case::no_colon(
        r#"{"auths": {"r.io": {"auth": "c2VjcmV0LXdpdGhvdXQtY29sb24="}}}"#,
        "`auths.\"r.io\".auth`: decodes to a value without ':' (expected base64 of \"user:password\"); the docker CLI refuses this file too"
    )]
    fn invalid(#[case] text: &str, #[case] message: &str) {
        let err = parse_text(text).0.unwrap_err().to_string();
        assert!(err.starts_with(PATH), "{err}");
        assert!(err.contains(message), "{err}");
        // The decoded value is the secret: never in the message.
        assert!(!err.contains("secret-without-colon"), "{err}");
    }
}
