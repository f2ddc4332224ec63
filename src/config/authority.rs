//! `host[:port]` strings and endpoint URLs: splitting, loopback detection, matching
//! hosts against URLs, API roots, and hiding passwords written into URLs.
//!
//! containerd keys registries, mirrors and credentials by `host[:port]` as written; these
//! helpers compare what such strings mean instead, so that `r.io:443` and
//! `https://r.io` are one host and `[::ffff:127.0.0.1]` equals `[::ffff:7f00:1]`.

use std::net::IpAddr;

use url::Url;

use crate::config::hosts::DOCKER_HUB_UPSTREAM;
use crate::reference::DEFAULT_REGISTRY;

/// Whether `url` is the registry itself rather than a mirror (containerd's `isProxy`,
/// which decides whether requests carry `?ns=<registry>`). `registry-1.docker.io` is
/// `docker.io` itself.
///
/// containerd compares the `host[:port]` strings as written; we compare what they mean, so
/// that `https://r:443` is not a mirror of `r` and `[::ffff:127.0.0.1]` equals
/// `[::ffff:7f00:1]` (which is how `Url` writes it).
pub(crate) fn same_host(url: &Url, registry: &str) -> bool {
    if registry == DEFAULT_REGISTRY && url.host_str() == Some(DOCKER_HUB_UPSTREAM) {
        return true;
    }
    same_authority(url, registry)
}

/// Whether `url` reaches the `host[:port]` named by `authority`: the key of a
/// `registry.configs` table or a Docker `auths` entry. Without a port, `authority` means
/// the default port of the URL's scheme.
///
/// containerd looks the key up with the URL's host exactly as written; this also matches
/// `r.io:443` with `https://r.io`, which name the same server.
pub(crate) fn same_authority(url: &Url, authority: &str) -> bool {
    let (host, port) = split_port(authority);
    let port = match port {
        Some(port) => port.parse::<u16>().ok(),
        // The default port is the one of whatever scheme reaches it.
        None => match url.scheme() {
            "http" => Some(80),
            _ => Some(443),
        },
    };
    if port != url.port_or_known_default() {
        return false;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match (url.host(), bare.parse::<IpAddr>()) {
        (Some(url::Host::Ipv4(a)), Ok(IpAddr::V4(b))) => a == b,
        (Some(url::Host::Ipv6(a)), Ok(IpAddr::V6(b))) => a == b,
        (Some(url::Host::Domain(a)), Err(_)) => a.eq_ignore_ascii_case(host),
        _ => false,
    }
}

/// Makes `url` an API root the way hosts.toml does: the path cleaned (`path.Clean`), then
/// `/v2` appended unless it already ends in `/v2` or `override_path` says the path is the
/// API root as written. User info, query and fragment are dropped (containerd keeps only
/// scheme, host and path); returns whether there were any.
pub(crate) fn api_root(url: &mut Url, override_path: bool) -> bool {
    let extras = !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some();
    // These cannot fail on an http(s) URL with a host.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    let mut segments: Vec<&str> = Vec::new();
    for segment in url.path().split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    if !override_path && segments.last() != Some(&"v2") {
        segments.push("v2");
    }
    let path = format!("/{}", segments.join("/"));
    url.set_path(&path);
    extras
}

/// `url` as written, with the password of any `user:password@` replaced, for keys and
/// messages: a URL in a configuration file may carry credentials.
pub(crate) fn redact_userinfo(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{}{user}:<redacted>{}", &url[..start], &rest[at..]),
        None => url.to_string(),
    }
}

/// `host[:port]` → (host, port), keeping IPv6 brackets on the host.
pub(crate) fn split_port(registry: &str) -> (&str, Option<&str>) {
    let host_end = if registry.starts_with('[') {
        registry.find(']').map_or(registry.len(), |i| i + 1)
    } else {
        0
    };
    match registry[host_end..].rfind(':') {
        Some(i) => (
            &registry[..host_end + i],
            Some(&registry[host_end + i + 1..]),
        ),
        None => (registry, None),
    }
}

/// containerd's `IsLocalhost`: `localhost` or a loopback IP address, any port.
pub(crate) fn is_loopback(registry: &str) -> bool {
    let (host, port) = split_port(registry);
    if host == "localhost" {
        return true;
    }
    // Go's net.SplitHostPort only removes the brackets when there is a port, so
    // containerd does not see a bare `[::1]` as loopback (https, certificates checked).
    let host = match port {
        Some(_) => host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host),
        None => host,
    };
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        // Go's IsLoopback also counts IPv4-mapped 127.0.0.0/8.
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::plain("r.io", "https://r.io/v2", true)]
    #[case::explicit_default_port("r.io:443", "https://r.io/v2", true)]
    #[case::key_without_port_url_with_port("r.io", "https://r.io:5000/v2", false)]
    #[case::same_port("r.io:5000", "http://r.io:5000/v2", true)]
    #[case::other_port("r.io:5000", "http://r.io:5001/v2", false)]
    #[case::http_default("r.io", "http://r.io/v2", true)]
    #[case::http_on_443("r.io", "http://r.io:443/v2", false)]
    #[case::case_insensitive("R.IO", "https://r.io/v2", true)]
    #[case::other_host("r.io", "https://s.io/v2", false)]
    #[case::ipv6("[::1]:5000", "http://[::1]:5000/v2", true)]
    #[case::ipv4("10.0.0.1", "https://10.0.0.1/v2", true)]
    #[case::docker_hub_is_not_an_alias_here("docker.io", "https://registry-1.docker.io/v2", false)]
    #[case::bad_port("r.io:http", "https://r.io/v2", false)]
    fn authority_matching(#[case] key: &str, #[case] url: &str, #[case] matches: bool) {
        assert_eq!(same_authority(&Url::parse(url).unwrap(), key), matches);
    }

    #[rstest]
    #[case::docker_hub("docker.io", "https://registry-1.docker.io/v2", true)]
    #[case::docker_io("docker.io", "https://docker.io/v2", true)]
    #[case::mirror("docker.io", "https://mirror.gcr.io/v2", false)]
    fn registry_itself(#[case] registry: &str, #[case] url: &str, #[case] same: bool) {
        assert_eq!(same_host(&Url::parse(url).unwrap(), registry), same);
    }

    #[rstest]
    #[case("localhost", true)]
    #[case("localhost:443", true)]
    #[case("127.0.0.1:5000", true)]
    #[case("127.9.9.9", true)]
    #[case("[::1]:5000", true)]
    #[case("[::1]", false)]
    #[case("[::ffff:127.0.0.1]:80", true)]
    #[case("10.0.0.1:5000", false)]
    #[case("localhost.example", false)]
    fn loopback(#[case] registry: &str, #[case] expected: bool) {
        assert_eq!(is_loopback(registry), expected, "{registry}");
    }

    #[rstest]
    #[case("https://u:pw@m.io/x", "https://u:<redacted>@m.io/x")]
    #[case("u:pw@m.io", "u:<redacted>@m.io")]
    #[case("https://u@m.io", "https://u@m.io")]
    #[case("https://m.io/a@b:c", "https://m.io/a@b:c")]
    #[case("http://m.io:5000", "http://m.io:5000")]
    fn redacts(#[case] url: &str, #[case] shown: &str) {
        assert_eq!(redact_userinfo(url), shown);
    }

    #[rstest]
    #[case("r.io", ("r.io", None))]
    #[case("r.io:5000", ("r.io", Some("5000")))]
    #[case("[::1]:5000", ("[::1]", Some("5000")))]
    #[case("[::1]", ("[::1]", None))]
    fn splits(#[case] text: &str, #[case] expected: (&str, Option<&str>)) {
        assert_eq!(split_port(text), expected);
    }
}
