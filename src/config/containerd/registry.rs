//! The CRI plugin's `registry` table: `config_path`, legacy `mirrors`, per-host `configs`
//! (auth, TLS), `auths` and `headers`, as containerd 1.7/2.x read them
//! (`pkg/cri/config/config.go`, `pkg/cri/server/image_pull.go`; `internal/cri/…` in 2.x).

use std::path::PathBuf;

use toml::{Table, Value};

use super::{dotted, Doc};

mod configs;
mod mirrors;

use crate::config::authority::{same_authority, split_port};
use crate::config::hosts::header_problem;
use crate::config::Error;
pub(crate) use configs::{decode_basic, HostConfig};
use configs::{fold_auths_entry, parse_auth, parse_host_config};
use mirrors::parse_mirror;
pub(crate) use mirrors::Mirror;

/// Keys of the CRI plugin table that blog posts put inside `registry` instead.
const CRI_KEYS: &[&str] = &[
    "max_concurrent_downloads",
    "image_pull_progress_timeout",
    "concurrent_layer_fetch_buffer",
];

/// The `registry` table.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// `config_path` split at ':' in order (containerd's `filepath.SplitList`); empty
    /// when unset.
    pub config_path: Vec<PathBuf>,
    /// Where `config_path` came from ("file: key", or containerd's default).
    pub config_path_source: Option<String>,
    /// `mirrors`, in file order.
    pub mirrors: Vec<Mirror>,
    /// `configs` with `auths` folded in, in file order.
    pub hosts: Vec<HostConfig>,
    /// `headers`, sent with every registry request.
    pub headers: Vec<(String, String)>,
}

/// Parses the `registry` table at `prefix` of a version `version` file whose CRI table
/// is `plugin_key`.
pub(super) fn parse(
    doc: &mut Doc<'_>,
    prefix: &str,
    plugin_key: &str,
    version: i64,
    table: &Table,
) -> Result<Registry, Error> {
    let mut registry = Registry::default();
    for (name, value) in table {
        let key = dotted(prefix, name);
        match name.as_str() {
            "config_path" => parse_config_path(doc, &key, value, &mut registry)?,
            "mirrors" => {
                for (host, value) in sub_tables(doc, &key, value)? {
                    let mirror = parse_mirror(doc, &dotted(&key, host), plugin_key, host, value)?;
                    registry.mirrors.push(mirror);
                }
            }
            "configs" => {
                for (host, value) in sub_tables(doc, &key, value)? {
                    let config = parse_host_config(
                        doc,
                        &dotted(&key, host),
                        plugin_key,
                        version,
                        host,
                        value,
                    )?;
                    registry.hosts.push(config);
                }
            }
            "auths" => {
                for (url, value) in sub_tables(doc, &key, value)? {
                    let auth = parse_auth(doc, &dotted(&key, url), value)?;
                    fold_auths_entry(&mut registry, url, auth);
                }
            }
            "headers" => registry.headers = parse_headers(doc, &key, value)?,
            _ => warn_unknown(doc, &key, name, plugin_key, "registry setting"),
        }
    }

    warn_port_mismatches(doc, prefix, &registry);

    let config_path_key = dotted(prefix, "config_path");
    if !registry.config_path.is_empty() && !registry.mirrors.is_empty() {
        return Err(Error::Conflict {
            path: doc.path.to_path_buf(),
            key: dotted(prefix, "mirrors"),
            other: config_path_key,
            reason: "containerd refuses to start with both (\"`mirrors` cannot be set when \
                     `config_path` is provided\"); move each mirror into a hosts.toml under the \
                     config_path directories (containerd's docs/hosts.md), or remove config_path"
                .to_string(),
        });
    }
    if let Some(host) = registry
        .first_tls()
        .filter(|_| !registry.config_path.is_empty())
    {
        return Err(Error::Conflict {
            path: doc.path.to_path_buf(),
            key: dotted(&dotted(&dotted(prefix, "configs"), host), "tls"),
            other: config_path_key,
            reason: "containerd refuses to start with both (\"`configs.tls` cannot be set when \
                     `config_path` is provided\"); put `ca`, `client` and `skip_verify` in that \
                     host's hosts.toml instead"
                .to_string(),
        });
    }
    Ok(registry)
}

/// `configs."r.io"` next to a mirror endpoint `http://r.io:5000`: containerd keys
/// `configs` by the endpoint's `host:port`, so the port-less entry never reaches it.
fn warn_port_mismatches(doc: &mut Doc<'_>, prefix: &str, registry: &Registry) {
    let configs_key = dotted(prefix, "configs");
    for endpoint in registry.mirrors.iter().flat_map(|m| &m.endpoints) {
        let url = &endpoint.url;
        if registry.hosts.iter().any(|h| same_authority(url, &h.host)) {
            continue;
        }
        let url_host = url.host_str().unwrap_or("");
        let near = registry
            .hosts
            .iter()
            .find(|h| split_port(&h.host).0.eq_ignore_ascii_case(url_host));
        if let Some(config) = near {
            doc.warn(
                dotted(&configs_key, &config.host),
                format!(
                    "does not apply to the mirror endpoint {url}: containerd looks `configs` up by \
                     the endpoint's host:port ({}), so no credentials or TLS settings are used \
                     there. Name the table `configs.{:?}` to apply them",
                    endpoint.authority, endpoint.authority
                ),
            );
        }
    }
}

/// The entries of a table of tables (`mirrors`, `configs`, `auths`).
fn sub_tables<'t>(
    doc: &Doc<'_>,
    key: &str,
    value: &'t Value,
) -> Result<Vec<(&'t str, &'t Table)>, Error> {
    let table = value
        .as_table()
        .ok_or_else(|| doc.fatal_type(key, "a table", value))?;
    table
        .iter()
        .map(|(name, value)| match value {
            Value::Table(t) => Ok((name.as_str(), t)),
            other => Err(doc.fatal_type(&dotted(key, name), "a table", other)),
        })
        .collect()
}

/// A key containerd does not know: a CRI setting in the wrong place, or something invented.
fn warn_unknown(doc: &mut Doc<'_>, key: &str, name: &str, plugin_key: &str, what: &str) {
    let message = if CRI_KEYS.contains(&name) {
        format!("is ignored by containerd: `{name}` belongs in `[{plugin_key}]`")
    } else {
        format!("is not a containerd {what}; containerd ignores it and so does ctrpull")
    };
    doc.warn(key, message);
}

fn parse_config_path(
    doc: &mut Doc<'_>,
    key: &str,
    value: &Value,
    registry: &mut Registry,
) -> Result<(), Error> {
    let text = value
        .as_str()
        .ok_or_else(|| doc.fatal_type(key, "a string", value))?;
    if text.is_empty() {
        return Ok(());
    }
    for dir in text.split(':') {
        if dir.is_empty() {
            doc.warn(
                key,
                "has an empty element: containerd would look for host directories relative to its working directory there; ctrpull skips it",
            );
        } else {
            registry.config_path.push(PathBuf::from(dir));
        }
    }
    registry.config_path_source = Some(doc.source(key));
    Ok(())
}

/// `headers`: name → list of values, sent with every request.
fn parse_headers(doc: &Doc<'_>, key: &str, value: &Value) -> Result<Vec<(String, String)>, Error> {
    let table = value
        .as_table()
        .ok_or_else(|| doc.fatal_type(key, "a table", value))?;
    let mut headers = Vec::new();
    for (name, values) in table {
        let header_key = dotted(key, name);
        let list = values
            .as_array()
            .ok_or_else(|| doc.fatal_type(&header_key, "a list of strings", values))?;
        let list: Vec<&str> = list
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| doc.fatal_type(&header_key, "a list of strings", v))
            })
            .collect::<Result<_, _>>()?;
        if let Some(reason) = header_problem(name, &list) {
            return Err(Error::InvalidHeader {
                path: doc.path.to_path_buf(),
                key: header_key,
                reason,
            });
        }
        headers.extend(list.into_iter().map(|v| (name.clone(), v.to_string())));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    pub(super) use crate::config::containerd::{parse as parse_file, ContainerdConfig};
    use crate::config::Warning;
    use crate::registry::Endpoint;
    use rstest::rstest;
    use std::path::Path;
    use url::Url;

    pub(super) const FILE: &str = "/etc/containerd/config.toml";
    pub(super) const REG: &str = r#"plugins."io.containerd.grpc.v1.cri".registry"#;
    /// The password every credentials test uses, to prove it never reaches a message.
    pub(super) const PASSWORD: &str = "registry-test-password";

    /// `[plugins."io.containerd.grpc.v1.cri".registry<rest>]`.
    pub(super) fn table(rest: &str) -> String {
        format!("[{REG}{rest}]")
    }

    pub(super) fn load(body: &str) -> (Result<ContainerdConfig, Error>, Vec<Warning>) {
        let mut warnings = Vec::new();
        let text = format!("version = 2\n{body}");
        let result = parse_file(Path::new(FILE), &text, &mut warnings);
        (result, warnings)
    }

    pub(super) fn registry(body: &str) -> Registry {
        let (result, _) = load(body);
        result.unwrap().registry
    }

    pub(super) fn warnings(body: &str) -> Vec<String> {
        let (result, warnings) = load(body);
        result.unwrap();
        warnings.iter().map(ToString::to_string).collect()
    }

    pub(super) fn error(body: &str) -> String {
        load(body).0.unwrap_err().to_string()
    }

    pub(super) fn bases(endpoints: &[Endpoint]) -> Vec<&str> {
        endpoints.iter().map(|e| e.base.as_str()).collect()
    }

    pub(super) fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn config_path_is_a_list() {
        let body = format!("{}\nconfig_path = \"/a:/b::/c\"\n", table(""));
        let r = registry(&body);
        assert_eq!(
            r.config_path,
            [
                PathBuf::from("/a"),
                PathBuf::from("/b"),
                PathBuf::from("/c")
            ]
        );
        assert_eq!(
            r.config_path_source.as_deref(),
            Some(format!("{FILE}: {REG}.config_path").as_str())
        );
        assert!(warnings(&body)[0].contains("has an empty element"));
    }

    #[test]
    fn mirrors_and_config_path_conflict() {
        let err = error(&format!(
            "{}\nconfig_path = \"/etc/containerd/certs.d\"\n{}\nendpoint = [\"https://m\"]\n",
            table(""),
            table(".mirrors.\"docker.io\"")
        ));
        assert!(err.starts_with(&format!(
            "{FILE}: `{REG}.mirrors` cannot be set together with `{REG}.config_path`: containerd refuses to start with both (\"`mirrors` cannot be set when `config_path` is provided\")"
        )), "{err}");
    }

    #[test]
    fn tls_and_config_path_conflict_but_auth_is_fine() {
        let auth_only = format!(
            "{}\nconfig_path = \"/d\"\n{}\nusername = \"u\"\n",
            table(""),
            table(".configs.\"r.io\".auth")
        );
        assert!(registry(&auth_only)
            .auth_for(&url("https://r.io/v2"))
            .is_some());
        let err = error(&format!(
            "{auth_only}{}\ninsecure_skip_verify = true\n",
            table(".configs.\"r.io\".tls")
        ));
        assert!(
            err.contains(&format!(
                "`{REG}.configs.\"r.io\".tls` cannot be set together with `{REG}.config_path`"
            )),
            "{err}"
        );
    }

    #[test]
    fn headers_are_lists() {
        let r = registry(&format!("{}\nX-A = [\"1\", \"2\"]\n", table(".headers")));
        assert_eq!(
            r.headers,
            [("X-A".into(), "1".into()), ("X-A".into(), "2".into())]
        );
        let err = error(&format!("{}\nX-A = \"1\"\n", table(".headers")));
        assert!(
            err.contains("headers.X-A`: must be a list of strings, found a string"),
            "{err}"
        );
    }

    #[rstest]
    #[case::docker_io_configs(
        ".configs.\"docker.io\".auth",
        "username = \"u\"",
        "configs.\"docker.io\"` never applies to Docker Hub: containerd looks credentials up by the host it sends requests to, which is registry-1.docker.io"
    )]
    #[case::unknown_registry_key(
        "",
        "mirror = 1",
        "registry.mirror` is not a containerd registry setting"
    )]
    #[case::cri_key_in_mirror(
        ".mirrors.\"x\"",
        "max_concurrent_downloads = 5",
        "mirrors.x.max_concurrent_downloads` is ignored by containerd: `max_concurrent_downloads` belongs in `[plugins.\"io.containerd.grpc.v1.cri\"]`"
    )]
    #[case::cri_key_in_registry(
        "",
        "image_pull_progress_timeout = \"5m\"",
        "registry.image_pull_progress_timeout` is ignored by containerd: `image_pull_progress_timeout` belongs in `[plugins.\"io.containerd.grpc.v1.cri\"]`"
    )]
    #[case::unknown_auth_key(
        ".configs.\"r\".auth",
        "token = \"t\"",
        "auth.token` is not a containerd auth setting"
    )]
    #[case::unknown_tls_key(
        ".configs.\"r\".tls",
        "verify = false",
        "tls.verify` is not a containerd TLS setting"
    )]
    fn warns(#[case] header: &str, #[case] line: &str, #[case] message: &str) {
        let found = warnings(&format!("{}\n{line}\n", table(header)));
        assert!(found.iter().any(|w| w.contains(message)), "{found:?}");
    }

    #[test]
    fn configs_without_the_mirror_port_warn() {
        let found = warnings(&format!(
            "{}\nendpoint = [\"http://r.io:5000\"]\n{}\nusername = \"u\"\n",
            table(".mirrors.\"r.io\""),
            table(".configs.\"r.io\".auth")
        ));
        assert_eq!(
            found,
            [format!("{FILE}: `{REG}.configs.\"r.io\"` does not apply to the mirror endpoint http://r.io:5000/v2: containerd looks `configs` up by the endpoint's host:port (r.io:5000), so no credentials or TLS settings are used there. Name the table `configs.\"r.io:5000\"` to apply them")]
        );
    }

    #[rstest]
    #[case::endpoint_string(".mirrors.\"x\"", "endpoint = \"https://m\"", "mirrors.x.endpoint`: must be a list of URL strings, found a string: containerd cannot decode this and refuses to start")]
    #[case::endpoint_int(
        ".mirrors.\"x\"",
        "endpoint = [1]",
        "endpoint[0]`: must be a list of URL strings, found an integer"
    )]
    #[case::ftp(
        ".mirrors.\"x\"",
        "endpoint = [\"ftp://m\"]",
        "endpoint[0]`: invalid URL \"ftp://m\": scheme \"ftp\" is not http or https"
    )]
    #[case::no_host(
        ".mirrors.\"x\"",
        "endpoint = [\"https://\"]",
        "invalid URL \"https://\""
    )]
    #[case::mirrors_not_table("", "mirrors = 1", "mirrors`: must be a table, found an integer")]
    #[case::mirror_not_table(".mirrors", "x = 1", "mirrors.x`: must be a table, found an integer")]
    #[case::config_path_list(
        "",
        "config_path = [\"/a\"]",
        "config_path`: must be a string, found an array"
    )]
    #[case::username_int(
        ".configs.\"r\".auth",
        "username = 1",
        "auth.username`: must be a string, found an integer"
    )]
    #[case::header_name(
        ".headers",
        "\"a b\" = [\"1\"]",
        "headers.\"a b\"`: not a valid HTTP header name"
    )]
    fn invalid(#[case] header: &str, #[case] line: &str, #[case] message: &str) {
        let err = error(&format!("{}\n{line}\n", table(header)));
        assert!(err.starts_with(&format!("{FILE}: `{REG}")), "{err}");
        assert!(err.contains(message), "{err}");
    }
}
