//! `configs."<host>"` (auth and TLS per endpoint host) and the deprecated `auths`,
//! as containerd's `ParseAuth` and `getTLSConfig` read them.

use std::path::PathBuf;

use base64::Engine as _;
use toml::{Table, Value};
use url::Url;

use super::{warn_unknown, Registry};
use crate::config::authority::same_authority;
use crate::config::containerd::{dotted, Doc};
use crate::config::hosts::DOCKER_HUB_UPSTREAM;
use crate::config::Error;
use crate::reference::DEFAULT_REGISTRY;
use crate::registry::{Credentials, Secret};

/// `configs."<host>"`: settings for one endpoint host.
#[derive(Debug)]
pub(crate) struct HostConfig {
    /// The endpoint's `host[:port]`.
    pub host: String,
    /// `auth`, when it yields credentials.
    pub auth: Option<Auth>,
    /// `tls` (containerd 1.x only).
    pub tls: Option<Tls>,
}

/// Credentials from `configs."<host>".auth` or `auths."<url>"`.
#[derive(Debug)]
pub(crate) struct Auth {
    /// What containerd would send.
    pub credentials: Credentials,
    /// "file: key".
    pub source: String,
}

/// `configs."<host>".tls`.
#[derive(Debug, Clone)]
pub(crate) struct Tls {
    /// `insecure_skip_verify`.
    pub skip_verify: bool,
    /// `ca_file`.
    pub ca_file: Option<PathBuf>,
    /// `cert_file` and `key_file`.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl Registry {
    /// Credentials for the endpoint at `url`: `configs` is keyed by the endpoint's host,
    /// not the image's registry.
    pub(crate) fn auth_for(&self, url: &Url) -> Option<&Auth> {
        self.hosts
            .iter()
            .filter(|h| same_authority(url, &h.host))
            .find_map(|h| h.auth.as_ref())
    }

    /// TLS settings for the endpoint at `url`.
    pub(crate) fn tls_for(&self, url: &Url) -> Option<&Tls> {
        self.hosts
            .iter()
            .filter(|h| same_authority(url, &h.host))
            .find_map(|h| h.tls.as_ref())
    }

    /// The `configs` key of the first entry with TLS settings, for conflict messages.
    pub(super) fn first_tls(&self) -> Option<&str> {
        self.hosts
            .iter()
            .find(|h| h.tls.is_some())
            .map(|h| h.host.as_str())
    }
}

/// `configs."<host>"`: `auth` and `tls`.
pub(super) fn parse_host_config(
    doc: &mut Doc<'_>,
    key: &str,
    plugin_key: &str,
    version: i64,
    host: &str,
    table: &Table,
) -> Result<HostConfig, Error> {
    if host == DEFAULT_REGISTRY {
        doc.warn(
            key,
            format!(
                "never applies to Docker Hub: containerd looks credentials up by the host it sends \
                 requests to, which is {DOCKER_HUB_UPSTREAM}; name the table `configs.\"{DOCKER_HUB_UPSTREAM}\"`"
            ),
        );
    }
    let mut config = HostConfig {
        host: host.to_string(),
        auth: None,
        tls: None,
    };
    for (name, value) in table {
        let entry_key = dotted(key, name);
        match name.as_str() {
            "auth" => {
                let t = value
                    .as_table()
                    .ok_or_else(|| doc.fatal_type(&entry_key, "a table", value))?;
                config.auth = parse_auth(doc, &entry_key, t)?;
            }
            "tls" if version >= 3 => doc.warn(
                &entry_key,
                "is ignored by containerd 2.x, which removed `configs.*.tls`; put `ca`, `client` \
                 and `skip_verify` in the host's hosts.toml under `config_path`",
            ),
            "tls" => {
                let t = value
                    .as_table()
                    .ok_or_else(|| doc.fatal_type(&entry_key, "a table", value))?;
                config.tls = Some(parse_tls(doc, &entry_key, t)?);
            }
            "tracking" => doc.warn(
                &entry_key,
                "is not a containerd setting: containerd has no per-registry pull audit log and \
                 ignores this table. Pulls are logged by containerd (journalctl -u containerd) and \
                 reported as kubelet events",
            ),
            _ => warn_unknown(doc, &entry_key, name, plugin_key, "per-registry setting"),
        }
    }
    Ok(config)
}

/// `auths."<url>"` (deprecated) is `configs."<host>".auth` under another name; containerd
/// folds it in after `configs`, so it wins.
pub(super) fn fold_auths_entry(registry: &mut Registry, url: &str, auth: Option<Auth>) {
    // containerd keeps u.Host when the key has a scheme, the key itself otherwise.
    let host = match url.split_once("://") {
        Some((_, rest)) => rest.split(['/', '?', '#']).next().unwrap_or(rest),
        None => url,
    };
    match registry.hosts.iter_mut().find(|h| h.host == host) {
        Some(config) => config.auth = auth,
        None => registry.hosts.push(HostConfig {
            host: host.to_string(),
            auth,
            tls: None,
        }),
    }
}

/// An auth table, in containerd's `ParseAuth` order: `username` (with `password`), else
/// `identitytoken`, else `auth` (base64 of "user:password"). All empty is anonymous.
pub(super) fn parse_auth(
    doc: &mut Doc<'_>,
    key: &str,
    table: &Table,
) -> Result<Option<Auth>, Error> {
    let field = |name: &str| -> Result<String, Error> {
        match table.get(name) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(doc.fatal_type(&dotted(key, name), "a string", other)),
        }
    };
    let username = field("username")?;
    let password = field("password")?;
    let encoded = field("auth")?;
    let token = field("identitytoken")?;
    for name in table.keys() {
        if !matches!(
            name.as_str(),
            "username" | "password" | "auth" | "identitytoken"
        ) {
            doc.warn(
                dotted(key, name),
                "is not a containerd auth setting (username, password, auth, identitytoken); containerd ignores it and so does ctrpull",
            );
        }
    }

    let shadowed = |doc: &mut Doc<'_>, name: &str, winner: &str| {
        doc.warn(
            dotted(key, name),
            format!(
                "is ignored: containerd uses `{winner}` when it is set (its order is username, then identitytoken, then auth)"
            ),
        );
    };
    let credentials = if !username.is_empty() {
        for name in ["identitytoken", "auth"] {
            if !table
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                shadowed(doc, name, "username");
            }
        }
        Some(Credentials::Basic {
            username,
            password: Secret::new(password),
        })
    } else if !token.is_empty() {
        for (name, value) in [("auth", &encoded), ("password", &password)] {
            if !value.is_empty() {
                shadowed(doc, name, "identitytoken");
            }
        }
        Some(Credentials::IdentityToken(Secret::new(token)))
    } else if !encoded.is_empty() {
        if !password.is_empty() {
            doc.warn(
                dotted(key, "password"),
                "is ignored without `username`: containerd takes user and password from `auth` here",
            );
        }
        Some(decode_auth(doc, &dotted(key, "auth"), &encoded)?)
    } else {
        if !password.is_empty() {
            doc.warn(
                dotted(key, "password"),
                "is ignored without `username`: containerd pulls anonymously from this host",
            );
        }
        None
    };
    Ok(credentials.map(|credentials| Auth {
        credentials,
        source: doc.source(key),
    }))
}

/// Base64 "user:password", as containerd's `ParseAuth` (and Docker) decode it. Errors
/// never quote the decoded text: it is the password.
pub(crate) fn decode_auth(doc: &Doc<'_>, key: &str, encoded: &str) -> Result<Credentials, Error> {
    decode_basic(encoded).map_err(|reason| {
        doc.invalid(
            key,
            format!("{reason}; containerd fails every pull from this host"),
        )
    })
}

/// Decodes base64 "user:password" into credentials; the error is the reason, without
/// the secret.
pub(crate) fn decode_basic(encoded: &str) -> Result<Credentials, String> {
    // Go's base64 decoder skips line breaks.
    let compact: String = encoded
        .chars()
        .filter(|c| !matches!(c, '\r' | '\n'))
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| format!("is not valid base64 ({e})"))?;
    let text = String::from_utf8(bytes).map_err(|_| "does not decode to UTF-8 text".to_string())?;
    let Some((username, password)) = text.split_once(':') else {
        return Err(
            "decodes to a value without ':' (expected base64 of \"user:password\")".to_string(),
        );
    };
    let password = password.trim_matches('\0');
    Ok(if username.is_empty() {
        // containerd hands ("", password) to its authorizer, which sends an empty user
        // name's secret as an OAuth refresh token: an identity token, whatever the field.
        Credentials::IdentityToken(Secret::new(password))
    } else {
        Credentials::Basic {
            username: username.to_string(),
            password: Secret::new(password),
        }
    })
}

/// `configs."<host>".tls` (containerd 1.x's `getTLSConfig`).
fn parse_tls(doc: &mut Doc<'_>, key: &str, table: &Table) -> Result<Tls, Error> {
    let mut tls = Tls {
        skip_verify: false,
        ca_file: None,
        client: None,
    };
    let (mut cert, mut private_key) = (None, None);
    for (name, value) in table {
        let entry_key = dotted(key, name);
        let path = || -> Result<Option<PathBuf>, Error> {
            match value {
                Value::String(s) if s.is_empty() => Ok(None),
                Value::String(s) => Ok(Some(PathBuf::from(s))),
                other => Err(doc.fatal_type(&entry_key, "a file path string", other)),
            }
        };
        match name.as_str() {
            "insecure_skip_verify" => {
                tls.skip_verify = value
                    .as_bool()
                    .ok_or_else(|| doc.fatal_type(&entry_key, "a boolean", value))?;
            }
            "ca_file" => tls.ca_file = path()?,
            "cert_file" => cert = path()?,
            "key_file" => private_key = path()?,
            _ => doc.warn(
                &entry_key,
                "is not a containerd TLS setting (insecure_skip_verify, ca_file, cert_file, key_file); containerd ignores it and so does ctrpull",
            ),
        }
    }
    tls.client = match (cert, private_key) {
        (Some(cert), Some(private_key)) => Some((cert, private_key)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(doc.invalid(
                &dotted(key, "cert_file"),
                "is set without `key_file`: containerd fails every pull from this host (\"no corresponding key file was specified\")",
            ))
        }
        (None, Some(_)) => {
            return Err(doc.invalid(
                &dotted(key, "key_file"),
                "is set without `cert_file`: containerd fails every pull from this host (\"no corresponding cert file was specified\")",
            ))
        }
    };
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use rstest::rstest;
    use std::path::Path;

    /// (username, password, auth, identitytoken) → the kind and user name containerd sends.
    #[rstest]
    #[case::username_wins(("u", PASSWORD, "dTpw", "tok"), Some(("basic", "u")), 2)]
    #[case::token_over_auth(("", "", "dTpw", "tok"), Some(("identitytoken", "")), 1)]
    #[case::auth_decoded(("", "", "dXNlcjpyZWdpc3RyeS10ZXN0LXBhc3N3b3Jk", ""), Some(("basic", "user")), 0)]
    #[case::auth_with_stray_password(("", PASSWORD, "dTpw", ""), Some(("basic", "u")), 1)]
    #[case::empty_user_in_auth(("", "", "OnRvaw==", ""), Some(("identitytoken", "")), 0)]
    #[case::password_alone(("", PASSWORD, "", ""), None, 1)]
    #[case::all_empty(("", "", "", ""), None, 0)]
    #[case::article_2_2(("admin", "securepassword", "", ""), Some(("basic", "admin")), 0)]
    fn auth_precedence(
        #[case] fields: (&str, &str, &str, &str),
        #[case] expected: Option<(&str, &str)>,
        #[case] warning_count: usize,
    ) {
        let (username, password, auth, token) = fields;
        let body = format!(
            "{}\nusername = {username:?}\npassword = {password:?}\nauth = {auth:?}\nidentitytoken = {token:?}\n",
            table(".configs.\"r.io\".auth")
        );
        let r = registry(&body);
        let got = r
            .auth_for(&url("https://r.io/v2"))
            .map(|a| match &a.credentials {
                Credentials::Basic { username, .. } => ("basic", username.as_str()),
                Credentials::IdentityToken(_) => ("identitytoken", ""),
            });
        assert_eq!(got, expected);
        let found = warnings(&body);
        assert_eq!(found.len(), warning_count, "{found:?}");
        for w in found {
            assert!(!w.contains(PASSWORD), "{w}");
        }
        if let Some(auth) = r.auth_for(&url("https://r.io/v2")) {
            assert_eq!(auth.source, format!("{FILE}: {REG}.configs.\"r.io\".auth"));
            assert!(!format!("{:?}", auth).contains(PASSWORD));
        }
    }

    #[test]
    fn decoded_password_is_right_and_trimmed() {
        let r = registry(&format!(
            "{}\nauth = \"dXNlcjpyZWdpc3RyeS10ZXN0LXBhc3N3b3JkAA==\"\n",
            table(".configs.\"r.io\".auth")
        ));
        let Some(Auth {
            credentials: Credentials::Basic { username, password },
            ..
        }) = r.auth_for(&url("https://r.io/v2"))
        else {
            panic!("no basic credentials")
        };
        assert_eq!(username, "user");
        assert_eq!(password.expose(), PASSWORD);
    }

    #[rstest]
    #[case::not_base64("%%%", "is not valid base64")]
    #[case::no_padding("dXNlcjpw", "")]
    #[case::missing_padding("dXNlcjpwYQ", "is not valid base64")]
    #[case::no_colon("cmVnaXN0cnktdGVzdC1wYXNzd29yZA==", "decodes to a value without ':'")]
    fn bad_base64_auth(#[case] encoded: &str, #[case] reason: &str) {
        let body = format!("{}\nauth = {encoded:?}\n", table(".configs.\"r.io\".auth"));
        if reason.is_empty() {
            registry(&body);
            return;
        }
        let err = error(&body);
        assert!(
            err.starts_with(&format!(
                "{FILE}: `{REG}.configs.\"r.io\".auth.auth`: {reason}"
            )),
            "{err}"
        );
        assert!(
            err.ends_with("containerd fails every pull from this host"),
            "{err}"
        );
        assert!(!err.contains(PASSWORD), "{err}");
    }

    #[test]
    fn tls_fields() {
        let r = registry(&format!(
            "{}\ninsecure_skip_verify = true\nca_file = \"/etc/ca.pem\"\ncert_file = \"/etc/c.pem\"\nkey_file = \"/etc/k.pem\"\n",
            table(".configs.\"r.io:5000\".tls")
        ));
        let tls = r.tls_for(&url("https://r.io:5000/v2")).unwrap();
        assert!(tls.skip_verify);
        assert_eq!(tls.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(
            tls.client,
            Some((PathBuf::from("/etc/c.pem"), PathBuf::from("/etc/k.pem")))
        );
        assert!(r.tls_for(&url("https://r.io/v2")).is_none());
    }

    #[rstest]
    #[case::cert_only("cert_file = \"/c\"", "tls.cert_file`: is set without `key_file`")]
    #[case::key_only("key_file = \"/k\"", "tls.key_file`: is set without `cert_file`")]
    #[case::skip_verify_string(
        "insecure_skip_verify = \"yes\"",
        "must be a boolean, found a string"
    )]
    fn bad_tls(#[case] line: &str, #[case] message: &str) {
        let err = error(&format!("{}\n{line}\n", table(".configs.\"r.io\".tls")));
        assert!(err.starts_with(FILE) && err.contains(message), "{err}");
    }

    #[test]
    fn tls_is_ignored_in_version_3() {
        let mut warnings = Vec::new();
        let text = r#"version = 3
[plugins."io.containerd.cri.v1.images".registry.configs."r.io".tls]
insecure_skip_verify = true
"#;
        let c = parse_file(Path::new(FILE), text, &mut warnings).unwrap();
        assert!(c.registry.tls_for(&url("https://r.io/v2")).is_none());
        assert!(warnings[0]
            .to_string()
            .contains("is ignored by containerd 2.x, which removed `configs.*.tls`"));
    }

    #[test]
    fn auths_fold_into_configs_by_host() {
        let r = registry(&format!(
            "{}\nusername = \"old\"\n{}\nusername = \"new\"\n",
            table(".configs.\"r.io\".auth"),
            table(".auths.\"https://r.io/v1/\"")
        ));
        let auth = r.auth_for(&url("https://r.io/v2")).unwrap();
        assert!(
            matches!(&auth.credentials, Credentials::Basic { username, .. } if username == "new")
        );
        assert_eq!(
            auth.source,
            format!("{FILE}: {REG}.auths.\"https://r.io/v1/\"")
        );
    }
}
