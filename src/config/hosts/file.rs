//! One hosts.toml, parsed into host entries in file order.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::Entry;

mod fields;

use crate::config::authority::redact_userinfo;
use crate::config::duration::parse_go_duration;
use crate::config::{Error, Warning};
use crate::registry::Capabilities;
use fields::{check_header, parse_client, parse_url};

/// Top-level keys of a hosts.toml; the upstream's settings sit next to `server`.
const TOP_LEVEL_KEYS: &[&str] = &[
    "server",
    "host",
    "capabilities",
    "ca",
    "client",
    "skip_verify",
    "header",
    "override_path",
    "dial_timeout",
];

/// Keys of a `[host."<url>"]` table.
const HOST_KEYS: &[&str] = &[
    "capabilities",
    "ca",
    "client",
    "skip_verify",
    "header",
    "override_path",
    "dial_timeout",
];

/// Where values come from, for error messages and relative paths.
struct File<'a> {
    dir: &'a Path,
    path: &'a Path,
}

impl File<'_> {
    fn warning(&self, key: &str, message: &str) -> Warning {
        Warning {
            file: Some(self.path.to_path_buf()),
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &Value) -> Error {
        Error::WrongType {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            expected,
            found: found.type_str(),
        }
    }

    /// hosts.toml paths may be relative to the file's directory (`docs/hosts.md`).
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
}

/// Parses the hosts.toml at `path` (in `dir`): `[host."<url>"]` entries in file order,
/// then the top level (`server`, or the registry's upstream when absent).
pub(super) fn parse_hosts_file(
    dir: &Path,
    path: &Path,
    text: &str,
    warnings: &mut Vec<Warning>,
) -> Result<Vec<Entry>, Error> {
    let file = File { dir, path };
    let table: Table = text.parse().map_err(|source| Error::Toml {
        path: path.to_path_buf(),
        source: Box::new(source),
        hint: None,
    })?;

    let mut entries = Vec::new();
    if let Some(hosts) = table.get("host") {
        let hosts = hosts
            .as_table()
            .ok_or_else(|| file.wrong_type("host", "a table", hosts))?;
        // `toml` is built with `preserve_order`, so this is file order: the order in
        // which containerd tries the hosts.
        for (url, value) in hosts {
            let prefix = format!("host.{:?}", redact_userinfo(url));
            let host = value
                .as_table()
                .ok_or_else(|| file.wrong_type(&prefix, "a table", value))?;
            let source = format!("{} [{prefix}]", path.display());
            entries.push(parse_entry(
                &file,
                Some(url),
                host,
                &prefix,
                HOST_KEYS,
                source,
                warnings,
            )?);
        }
    }

    // The top level configures the upstream, tried last.
    let server = match table.get("server") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.as_str()),
        Some(Value::String(_)) | None => None,
        Some(other) => return Err(file.wrong_type("server", "a string", other)),
    };
    let source = match server {
        Some(_) => format!("{} server", path.display()),
        None => format!("{} (default server)", path.display()),
    };
    entries.push(parse_entry(
        &file,
        server,
        &table,
        "",
        TOP_LEVEL_KEYS,
        source,
        warnings,
    )?);
    Ok(entries)
}

/// Parses one host's settings: a `[host."<url>"]` table, or the top level with `server`.
fn parse_entry(
    file: &File<'_>,
    url: Option<&str>,
    table: &Table,
    prefix: &str,
    known: &[&str],
    source: String,
    warnings: &mut Vec<Warning>,
) -> Result<Entry, Error> {
    let key = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        }
    };
    for name in table.keys() {
        if !known.contains(&name.as_str()) {
            warnings.push(file.warning(
                &key(name),
                "is not a hosts.toml setting; containerd ignores it and so does ctrpull",
            ));
        }
    }

    let bool_at = |name: &str| match table.get(name) {
        None => Ok(None),
        Some(Value::Boolean(b)) => Ok(Some(*b)),
        Some(other) => Err(file.wrong_type(&key(name), "a boolean", other)),
    };
    let override_path = bool_at("override_path")?.unwrap_or(false);

    let mut entry = Entry::upstream(source);
    if let Some(url) = url {
        let url_key = if prefix.is_empty() { "server" } else { prefix };
        entry.url = Some(parse_url(file, url_key, url, override_path, warnings)?);
    }
    entry.skip_verify = bool_at("skip_verify")?;

    if let Some(value) = table.get("capabilities") {
        let name = key("capabilities");
        let list = value
            .as_array()
            .ok_or_else(|| file.wrong_type(&name, "an array of strings", value))?;
        // An empty list means "all", as in containerd (`len(config.Capabilities) > 0`).
        if !list.is_empty() {
            entry.capabilities = Capabilities {
                pull: false,
                resolve: false,
                push: false,
            };
        }
        for item in list {
            let capability = item
                .as_str()
                .ok_or_else(|| file.wrong_type(&name, "an array of strings", item))?;
            match capability.to_ascii_lowercase().as_str() {
                "pull" => entry.capabilities.pull = true,
                "resolve" => entry.capabilities.resolve = true,
                "push" => entry.capabilities.push = true,
                // containerd 2.x's referrers API; ctrpull never asks for referrers.
                "referrers" => {}
                _ => {
                    return Err(Error::UnknownCapability {
                        path: file.path.to_path_buf(),
                        key: name,
                        capability: capability.to_string(),
                    })
                }
            }
        }
    }

    if let Some(value) = table.get("ca") {
        let name = key("ca");
        let expected = "a string or an array of strings";
        entry.ca_files = match value {
            Value::String(s) => vec![file.resolve(s)],
            Value::Array(items) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(|s| file.resolve(s))
                        .ok_or_else(|| file.wrong_type(&name, expected, item))
                })
                .collect::<Result<_, _>>()?,
            other => return Err(file.wrong_type(&name, expected, other)),
        };
    }

    if let Some(value) = table.get("client") {
        entry.client_certs = parse_client(file, &key("client"), value)?;
    }

    if let Some(value) = table.get("header") {
        let name = key("header");
        let headers = value
            .as_table()
            .ok_or_else(|| file.wrong_type(&name, "a table", value))?;
        for (header, value) in headers {
            let header_key = format!("{name}.{header}");
            let values = match value {
                Value::String(s) => vec![s.as_str()],
                Value::Array(items) => items
                    .iter()
                    .map(|item| {
                        item.as_str().ok_or_else(|| {
                            file.wrong_type(&header_key, "a string or an array of strings", item)
                        })
                    })
                    .collect::<Result<_, _>>()?,
                other => {
                    return Err(file.wrong_type(
                        &header_key,
                        "a string or an array of strings",
                        other,
                    ))
                }
            };
            check_header(file, &header_key, header, &values)?;
            entry.headers.extend(
                values
                    .into_iter()
                    .map(|v| (header.to_string(), v.to_string())),
            );
        }
    }

    if let Some(value) = table.get("dial_timeout") {
        let name = key("dial_timeout");
        let text = value
            .as_str()
            .ok_or_else(|| file.wrong_type(&name, "a duration string", value))?;
        // containerd (2.1+) reads an empty string as "not set".
        if !text.is_empty() {
            let timeout = parse_go_duration(text).map_err(|reason| Error::InvalidValue {
                path: file.path.to_path_buf(),
                key: name,
                reason: format!("{reason} (expected a Go duration such as \"1s\" or \"1m30s\")"),
            })?;
            entry.dial_timeout = Some(timeout);
        }
    }

    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::time::Duration;
    use url::Url;

    pub(super) const DIR: &str = "/etc/containerd/certs.d/r.io";

    pub(super) fn parse(text: &str) -> Result<Vec<Entry>, Error> {
        let dir = Path::new(DIR);
        parse_hosts_file(
            dir,
            &dir.join(super::super::HOSTS_FILE),
            text,
            &mut Vec::new(),
        )
    }

    pub(super) fn url(entry: &Entry) -> Option<&str> {
        entry.url.as_ref().map(Url::as_str)
    }

    pub(super) fn in_dir(p: &str) -> PathBuf {
        Path::new(DIR).join(p)
    }

    const NO_CAPS: Capabilities = Capabilities {
        pull: false,
        resolve: false,
        push: false,
    };

    #[test]
    fn hosts_in_file_order_then_top_level() {
        let entries = parse(
            r#"
[host."https://zeta.mirror"]
  capabilities = ["pull", "resolve"]
[host."http://alpha.mirror:5000"]
[host."https://mid.mirror"]
[host."https://zeta.mirror".header]
  x-late = "still zeta"
"#,
        )
        .unwrap();
        let urls: Vec<_> = entries.iter().map(url).collect();
        assert_eq!(
            urls,
            [
                Some("https://zeta.mirror/v2"),
                Some("http://alpha.mirror:5000/v2"),
                Some("https://mid.mirror/v2"),
                None
            ]
        );
        assert_eq!(entries[0].headers, [("x-late".into(), "still zeta".into())]);
        assert_eq!(
            entries[1].source,
            format!(r#"{DIR}/hosts.toml [host."http://alpha.mirror:5000"]"#)
        );
        assert_eq!(
            entries[3].source,
            format!("{DIR}/hosts.toml (default server)")
        );
    }

    #[test]
    fn inline_and_dotted_host_definitions_count_too() {
        // containerd only orders `[host."…"]` table headers and drops hosts defined any
        // other way; the TOML means the same either way, so we keep them.
        let entries = parse(
            r#"
[host]
"https://a".capabilities = ["pull"]
"https://b" = { skip_verify = true }
"#,
        )
        .unwrap();
        let urls: Vec<_> = entries.iter().map(url).collect();
        assert_eq!(urls, [Some("https://a/v2"), Some("https://b/v2"), None]);
        assert_eq!(entries[1].skip_verify, Some(true));
    }

    #[test]
    fn server_takes_top_level_settings() {
        let entries = parse(
            "server = \"mirror.corp:8443/quay\"\ncapabilities = [\"pull\"]\nskip_verify = true\nca = \"up.pem\"\n",
        )
        .unwrap();
        assert_eq!(entries.len(), 1);
        let server = &entries[0];
        // No scheme means https (containerd prefixes "https://").
        assert_eq!(url(server), Some("https://mirror.corp:8443/quay/v2"));
        assert_eq!(
            server.capabilities,
            Capabilities {
                pull: true,
                ..NO_CAPS
            }
        );
        assert_eq!(server.skip_verify, Some(true));
        assert_eq!(server.ca_files, [in_dir("up.pem")]);
        assert_eq!(server.source, format!("{DIR}/hosts.toml server"));
    }

    #[test]
    fn empty_server_is_no_server() {
        let entries = parse("server = \"\"\n").unwrap();
        assert_eq!(url(&entries[0]), None);
    }

    #[rstest]
    #[case::absent("", Capabilities::ALL)]
    #[case::empty_means_all("capabilities = []", Capabilities::ALL)]
    #[case::pull("capabilities = [\"pull\"]", Capabilities { pull: true, ..NO_CAPS })]
    #[case::pull_resolve("capabilities = [\"pull\", \"resolve\"]", Capabilities { pull: true, resolve: true, push: false })]
    #[case::case_insensitive("capabilities = [\"PULL\", \"Push\"]", Capabilities { pull: true, resolve: false, push: true })]
    #[case::referrers_only("capabilities = [\"referrers\"]", NO_CAPS)]
    fn capabilities(#[case] line: &str, #[case] expected: Capabilities) {
        let entries = parse(&format!("[host.\"https://m\"]\n{line}\n")).unwrap();
        assert_eq!(entries[0].capabilities, expected);
        assert_eq!(entries[1].capabilities, Capabilities::ALL);
    }

    #[rstest]
    #[case::relative("ca = \"m.crt\"", &["m.crt"])]
    #[case::nested_relative("ca = \"certs/m.crt\"", &["certs/m.crt"])]
    #[case::parent_relative("ca = \"../shared/m.crt\"", &["../shared/m.crt"])]
    #[case::absolute("ca = \"/etc/certs/m.pem\"", &["/etc/certs/m.pem"])]
    #[case::array("ca = [\"a.pem\", \"/abs/b.pem\"]", &["a.pem", "/abs/b.pem"])]
    #[case::empty_array("ca = []", &[])]
    fn ca_paths(#[case] line: &str, #[case] expected: &[&str]) {
        let entries = parse(&format!("[host.\"https://m\"]\n{line}\n")).unwrap();
        let expected: Vec<PathBuf> = expected.iter().map(|p| in_dir(p)).collect();
        assert_eq!(entries[0].ca_files, expected);
    }

    #[test]
    fn headers_keep_order_and_repeat_for_arrays() {
        let entries = parse(
            r#"
[host."https://m".header]
  X-Zed = "z"
  x-custom = ["a", "b"]
  authorization-hint = "h"
"#,
        )
        .unwrap();
        let h: Vec<(&str, &str)> = entries[0]
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            h,
            [
                ("X-Zed", "z"),
                ("x-custom", "a"),
                ("x-custom", "b"),
                ("authorization-hint", "h")
            ]
        );
    }

    #[test]
    fn unknown_keys_are_warnings() {
        let dir = Path::new(DIR);
        let mut warnings = Vec::new();
        let entries = parse_hosts_file(
            dir,
            &dir.join("hosts.toml"),
            "mirrors = 1\n[host.\"https://u:p@m?x\"]\nserver = \"x\"\n",
            &mut warnings,
        )
        .unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(url(&entries[0]), Some("https://m/v2"));
        let text: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                format!("{DIR}/hosts.toml: `host.\"https://u:<redacted>@m?x\".server` is not a hosts.toml setting; containerd ignores it and so does ctrpull"),
                format!("{DIR}/hosts.toml: `host.\"https://u:<redacted>@m?x\"` has user info, a query or a fragment; containerd uses only scheme, host and path, and so does ctrpull"),
                format!("{DIR}/hosts.toml: `mirrors` is not a hosts.toml setting; containerd ignores it and so does ctrpull"),
            ]
        );
    }

    #[rstest]
    #[case::seconds("dial_timeout = \"1s\"", Some(Duration::from_secs(1)))]
    #[case::compound("dial_timeout = \"1m30s\"", Some(Duration::from_secs(90)))]
    #[case::millis("dial_timeout = \"200ms\"", Some(Duration::from_millis(200)))]
    #[case::empty("dial_timeout = \"\"", None)]
    #[case::absent("", None)]
    fn dial_timeouts(#[case] line: &str, #[case] expected: Option<Duration>) {
        let entries = parse(&format!("{line}\n[host.\"https://m\"]\n{line}\n")).unwrap();
        assert_eq!(entries[0].dial_timeout, expected);
        assert_eq!(entries[1].dial_timeout, expected);
    }

    #[rstest]
    #[case::bad_toml("[host.\"https://m\"\n", "invalid TOML")]
    #[case::duplicate_table("[host.\"https://m\"]\n[host.\"https://m\"]\n", "invalid TOML")]
    #[case::server_type("server = 1\n", "`server` must be a string, found integer")]
    #[case::host_not_table("host = \"https://m\"\n", "`host` must be a table, found string")]
    #[case::host_entry_not_table(
        "[host]\n\"https://m\" = true\n",
        r#"`host."https://m"` must be a table, found boolean"#
    )]
    #[case::capabilities_string(
        "[host.\"https://m\"]\ncapabilities = \"pull\"\n",
        r#"`host."https://m".capabilities` must be an array of strings, found string"#
    )]
    #[case::capability_not_string(
        "capabilities = [1]\n",
        "`capabilities` must be an array of strings, found integer"
    )]
    #[case::unknown_capability(
        "[host.\"https://m\"]\ncapabilities = [\"pull\", \"fetch\"]\n",
        r#"`host."https://m".capabilities`: unknown capability "fetch""#
    )]
    #[case::bad_url(
        "[host.\"https://\"]\n",
        r#"`host."https://"`: invalid URL "https://""#
    )]
    #[case::bad_port(
        "server = \"https://m:http\"\n",
        r#"`server`: invalid URL "https://m:http": invalid port number"#
    )]
    #[case::ftp_scheme("[host.\"ftp://m\"]\n", r#"scheme "ftp" is not http or https"#)]
    #[case::skip_verify_string(
        "skip_verify = \"yes\"\n",
        "`skip_verify` must be a boolean, found string"
    )]
    #[case::override_path_int(
        "[host.\"https://m\"]\noverride_path = 1\n",
        r#"`host."https://m".override_path` must be a boolean, found integer"#
    )]
    #[case::ca_int(
        "[host.\"https://m\"]\nca = 5\n",
        r#"`host."https://m".ca` must be a string or an array of strings, found integer"#
    )]
    #[case::ca_array_int(
        "ca = [\"a\", 5]\n",
        "`ca` must be a string or an array of strings, found integer"
    )]
    #[case::client_triple(
        "client = [[\"a\", \"b\", \"c\"]]\n",
        "`client`: a client certificate pair must be [cert, key], found 3 element(s)"
    )]
    #[case::client_table("client = {a = 1}\n", "`client` must be a string, an array of strings or an array of [cert, key] pairs, found table")]
    #[case::header_not_table("header = \"x\"\n", "`header` must be a table, found string")]
    #[case::header_int(
        "[header]\nx = 1\n",
        "`header.x` must be a string or an array of strings, found integer"
    )]
    #[case::header_bad_name(
        "[header]\n\"x y\" = \"1\"\n",
        "`header.x y`: not a valid HTTP header name"
    )]
    #[case::header_newline(
        "[header]\nx = \"a\\nb\"\n",
        "`header.x`: header values cannot contain control characters such as CR, LF or NUL"
    )]
    #[case::header_backspace(
        "[header]\nx = \"a\\bb\"\n",
        "`header.x`: header values cannot contain control characters such as CR, LF or NUL"
    )]
    #[case::dial_timeout_int(
        "dial_timeout = 5\n",
        "`dial_timeout` must be a duration string, found integer"
    )]
    #[case::dial_timeout_no_unit(
        "[host.\"https://m\"]\ndial_timeout = \"5\"\n",
        r#"`host."https://m".dial_timeout`: missing unit in duration "5" (expected a Go duration such as "1s" or "1m30s")"#
    )]
    #[case::dial_timeout_negative(
        "dial_timeout = \"-1s\"\n",
        r#"`dial_timeout`: duration "-1s" is negative"#
    )]
    fn invalid_files(#[case] text: &str, #[case] message: &str) {
        let msg = parse(text).unwrap_err().to_string();
        assert!(msg.starts_with(&format!("{DIR}/hosts.toml")), "{msg}");
        assert!(msg.contains(message), "{msg}");
    }
}
