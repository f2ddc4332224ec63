//! `--mirror HOST=URL`: checked once at load, then the first endpoints for a registry.

use url::Url;

use crate::config::authority::same_host;
use crate::config::{hosts, Error};
use crate::registry::{Capabilities, Endpoint};

/// What a `--mirror` endpoint may do: find and fetch, never push.
const MIRROR_CAPABILITIES: Capabilities = Capabilities {
    pull: true,
    resolve: true,
    push: false,
};

/// One `--mirror HOST=URL`.
#[derive(Debug, Clone)]
pub(crate) struct MirrorFlag {
    /// The registry it applies to, or `*` for all.
    host: String,
    /// The URL made an API root the way hosts.toml does (`/v2` appended).
    base: Url,
    /// The flag as given, for the endpoint's `source`.
    flag: String,
}

impl MirrorFlag {
    /// Checks HOST and URL: HOST a usable `host[:port]` or `*`, URL http(s) with a host
    /// and without user info, query or fragment. Messages never show a password.
    pub(crate) fn new(host: &str, url: &Url) -> Result<Self, Error> {
        let invalid = |reason: String| {
            let mut shown = url.clone();
            if shown.password().is_some() {
                let _ = shown.set_password(Some("redacted"));
            }
            Error::InvalidMirror {
                host: host.to_string(),
                url: shown.to_string(),
                reason,
            }
        };
        if host != "*" {
            hosts::check_registry(host).map_err(|e| invalid(e.to_string()))?;
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "scheme {:?} is not http or https",
                url.scheme()
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("the URL has no host".to_string()));
        }
        let mut base = url.clone();
        if hosts::api_root(&mut base, false) {
            return Err(invalid(
                "user info, a query or a fragment cannot be used in a mirror URL".to_string(),
            ));
        }
        Ok(MirrorFlag {
            host: host.to_string(),
            base,
            flag: format!("--mirror {host}={url}"),
        })
    }

    /// Whether this flag names `registry` (or every registry).
    pub(crate) fn applies_to(&self, registry: &str) -> bool {
        self.host == registry || self.host == "*"
    }

    /// The endpoint for `registry`: pull and resolve, a mirror unless it is the registry.
    pub(crate) fn endpoint(&self, registry: &str) -> Endpoint {
        let mirror = !same_host(&self.base, registry);
        let mut endpoint = Endpoint::new(self.base.clone(), mirror, self.flag.clone());
        endpoint.capabilities = MIRROR_CAPABILITIES;
        endpoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn flag(host: &str, url: &str) -> Result<MirrorFlag, Error> {
        MirrorFlag::new(host, &Url::parse(url).unwrap())
    }

    #[rstest]
    #[case::plain("docker.io", "https://m.example", "https://m.example/v2", true)]
    #[case::path(
        "docker.io",
        "http://m.example:5000/cache/",
        "http://m.example:5000/cache/v2",
        true
    )]
    #[case::has_v2("quay.io", "https://m.example/v2", "https://m.example/v2", true)]
    #[case::upstream_itself(
        "docker.io",
        "https://registry-1.docker.io",
        "https://registry-1.docker.io/v2",
        false
    )]
    fn endpoints(#[case] host: &str, #[case] url: &str, #[case] base: &str, #[case] mirror: bool) {
        let f = flag(host, url).unwrap();
        let e = f.endpoint(host);
        assert_eq!(e.base.as_str(), base);
        assert_eq!(e.mirror, mirror);
        assert_eq!(e.capabilities, MIRROR_CAPABILITIES);
        assert_eq!(
            e.source,
            format!("--mirror {host}={}", Url::parse(url).unwrap())
        );
        assert!(e.credentials.is_none());
    }

    #[test]
    fn wildcard_applies_everywhere() {
        let f = flag("*", "https://m").unwrap();
        assert!(f.applies_to("docker.io") && f.applies_to("r:5000"));
        let f = flag("quay.io", "https://m").unwrap();
        assert!(f.applies_to("quay.io") && !f.applies_to("docker.io"));
    }

    #[rstest]
    #[case::ftp(
        "docker.io",
        "ftp://m",
        "--mirror docker.io=ftp://m/: scheme \"ftp\" is not http or https"
    )]
    #[case::bad_host("a/b", "https://m", "--mirror a/b=https://m/: registry \"a/b\" is not a usable host[:port]: it contains a path separator")]
    #[case::user_info("docker.io", "https://u:p@m", "--mirror docker.io=https://u:redacted@m/: user info, a query or a fragment cannot be used in a mirror URL")]
    #[case::query(
        "docker.io",
        "https://m/?x=1",
        "user info, a query or a fragment cannot be used"
    )]
    fn invalid(#[case] host: &str, #[case] url: &str, #[case] message: &str) {
        let err = flag(host, url).unwrap_err().to_string();
        assert!(err.contains(message), "{err}");
    }
}
