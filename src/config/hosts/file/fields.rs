//! hosts.toml values with a shape of their own: host URLs, `client` certificate forms,
//! header names and values.

use std::path::PathBuf;

use toml::Value;
use url::Url;

use super::File;
use crate::config::authority::{api_root, redact_userinfo};
use crate::config::hosts::header_problem;
use crate::config::{Error, Warning};

/// `client`: a path, an array of paths, or an array of `[cert, key]` pairs.
pub(super) fn parse_client(
    file: &File<'_>,
    name: &str,
    value: &Value,
) -> Result<Vec<(PathBuf, Option<PathBuf>)>, Error> {
    let expected = "a string, an array of strings or an array of [cert, key] pairs";
    let items = match value {
        Value::String(s) => return Ok(vec![(file.resolve(s), None)]),
        Value::Array(items) => items,
        other => return Err(file.wrong_type(name, expected, other)),
    };
    let mut pairs = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::String(s) => pairs.push((file.resolve(s), None)),
            Value::Array(pair) => {
                let [cert, key] = pair.as_slice() else {
                    return Err(Error::InvalidClientPair {
                        path: file.path.to_path_buf(),
                        key: name.to_string(),
                        len: pair.len(),
                    });
                };
                let (Some(cert), Some(key)) = (cert.as_str(), key.as_str()) else {
                    let bad = if cert.is_str() { key } else { cert };
                    return Err(file.wrong_type(name, expected, bad));
                };
                // The documented `["client.pem", ""]` means "the key is in the certificate
                // file". containerd turns "" into the hosts directory and then fails to
                // read it as a key; we read the intent instead.
                let key = (!key.is_empty()).then(|| file.resolve(key));
                pairs.push((file.resolve(cert), key));
            }
            other => return Err(file.wrong_type(name, expected, other)),
        }
    }
    Ok(pairs)
}

/// A `server` or `[host."<url>"]` URL, with containerd's scheme default and `/v2` rule.
pub(super) fn parse_url(
    file: &File<'_>,
    key: &str,
    raw: &str,
    override_path: bool,
    warnings: &mut Vec<Warning>,
) -> Result<Url, Error> {
    let invalid = |reason: String| Error::InvalidUrl {
        path: file.path.to_path_buf(),
        key: key.to_string(),
        url: redact_userinfo(raw),
        reason,
    };
    // containerd prefixes "https://" to anything not starting with "http"; looking for
    // "://" gives the same answer for real URLs without mangling a host named `http…`.
    let text = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("https://{raw}")
    };
    let mut url = Url::parse(&text).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme {:?} is not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host".to_string()));
    }
    if api_root(&mut url, override_path) {
        // containerd only keeps scheme, host and path; say so rather than drop it quietly.
        warnings.push(file.warning(
            key,
            "has user info, a query or a fragment; containerd uses only scheme, host and path, and so does ctrpull",
        ));
    }
    Ok(url)
}

/// Header names are RFC 9110 tokens; values cannot hold line breaks or NUL.
pub(super) fn check_header(
    file: &File<'_>,
    key: &str,
    name: &str,
    values: &[&str],
) -> Result<(), Error> {
    match header_problem(name, values) {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidHeader {
            path: file.path.to_path_buf(),
            key: key.to_string(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{in_dir, parse, url};
    use rstest::rstest;

    #[test]
    fn client_forms() {
        let entries = parse(
            r#"
[host."https://a"]
  client = "c.pem"
[host."https://b"]
  client = ["c1.pem", "/abs/c2.pem"]
[host."https://c"]
  client = [["c.cert", "c.key"], ["/abs/both.pem", ""]]
"#,
        )
        .unwrap();
        assert_eq!(entries[0].client_certs, [(in_dir("c.pem"), None)]);
        assert_eq!(
            entries[1].client_certs,
            [(in_dir("c1.pem"), None), ("/abs/c2.pem".into(), None)]
        );
        assert_eq!(
            entries[2].client_certs,
            [
                (in_dir("c.cert"), Some(in_dir("c.key"))),
                ("/abs/both.pem".into(), None)
            ]
        );
    }

    #[rstest]
    #[case::bare_host("https://m", false, "https://m/v2")]
    #[case::root_slash("https://m/", false, "https://m/v2")]
    #[case::has_v2("https://m/v2", false, "https://m/v2")]
    #[case::has_v2_slash("https://m/v2/", false, "https://m/v2")]
    #[case::prefix("https://m/quay", false, "https://m/quay/v2")]
    #[case::unclean("https://m//a/./b/../c/", false, "https://m/a/c/v2")]
    #[case::no_scheme("m:5000", false, "https://m:5000/v2")]
    #[case::no_scheme_host_starting_with_http(
        "httpcache.local",
        false,
        "https://httpcache.local/v2"
    )]
    #[case::http("http://m:5000", false, "http://m:5000/v2")]
    #[case::default_port_dropped("https://m:443", false, "https://m/v2")]
    #[case::ipv6("http://[::1]:5000", false, "http://[::1]:5000/v2")]
    #[case::override_as_is("https://m/v2/upstream", true, "https://m/v2/upstream")]
    #[case::override_no_v2("https://m/api", true, "https://m/api")]
    #[case::override_root("https://m", true, "https://m/")]
    #[case::drops_query("https://m/p?x=1#f", false, "https://m/p/v2")]
    #[case::drops_user_info("https://u:p@m", false, "https://m/v2")]
    fn host_urls(#[case] raw: &str, #[case] override_path: bool, #[case] base: &str) {
        let entries = parse(&format!(
            "[host.\"{raw}\"]\noverride_path = {override_path}\n"
        ))
        .unwrap();
        assert_eq!(url(&entries[0]), Some(base));
    }
}
