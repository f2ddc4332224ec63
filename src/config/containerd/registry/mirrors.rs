//! Legacy `mirrors."<host>".endpoint` lists, read and turned into endpoints the way
//! containerd's `registryEndpoints` / `registryHosts` do (no hosts.toml involved).

use toml::{Table, Value};
use url::Url;

use super::{warn_unknown, Registry, CRI_KEYS};
use crate::config::authority::{is_loopback, redact_userinfo, same_host};
use crate::config::containerd::{dotted, Doc};
use crate::config::hosts::DOCKER_HUB_UPSTREAM;
use crate::config::Error;
use crate::reference::DEFAULT_REGISTRY;
use crate::registry::{Capabilities, Endpoint};

/// What legacy mirrors may do: containerd gives them `pull` and `resolve`, never `push`.
const LEGACY_CAPABILITIES: Capabilities = Capabilities {
    pull: true,
    resolve: true,
    push: false,
};

/// `mirrors."<host>"`.
#[derive(Debug)]
pub(crate) struct Mirror {
    /// The registry it applies to, or `*`.
    pub host: String,
    /// "file: key" of the mirror table, for the upstream's `source`.
    pub source: String,
    /// `endpoint`, in order.
    pub endpoints: Vec<LegacyEndpoint>,
}

/// One URL of a mirror's `endpoint` list.
#[derive(Debug)]
pub(crate) struct LegacyEndpoint {
    /// The API root requests are made under.
    pub url: Url,
    /// `host[:port]` as written: what containerd compares with the registry name.
    pub authority: String,
    /// "file: key[i]".
    pub source: String,
}

impl Registry {
    /// The mirror entry for `registry`: its own, else `*` (containerd uses the wildcard
    /// only when the registry has no entry, even an empty one).
    fn mirror_for(&self, registry: &str) -> Option<&Mirror> {
        let find = |host: &str| self.mirrors.iter().find(|m| m.host == host);
        find(registry).or_else(|| find("*"))
    }

    /// containerd's `registryEndpoints`: the mirror's endpoints in order, then the
    /// upstream unless an endpoint's `host[:port]` is the registry as written. `None`
    /// when no mirror entry applies.
    pub(crate) fn legacy_endpoints(
        &self,
        registry: &str,
        plain_http: bool,
    ) -> Result<Option<Vec<Endpoint>>, Error> {
        let Some(mirror) = self.mirror_for(registry) else {
            return Ok(None);
        };
        let mut endpoints = Vec::with_capacity(mirror.endpoints.len() + 1);
        let mut listed = false;
        for e in &mirror.endpoints {
            listed |= e.authority == registry;
            let mut endpoint = Endpoint::new(
                e.url.clone(),
                !same_host(&e.url, registry),
                e.source.clone(),
            );
            endpoint.capabilities = LEGACY_CAPABILITIES;
            endpoints.push(endpoint);
        }
        if !listed {
            // `defaultScheme(DefaultHost(host))`: http for any loopback host, whatever the
            // port (hosts.toml decides by port instead). `plain_http` is ours, as in hosts.
            let (scheme, host) = if registry == DEFAULT_REGISTRY {
                ("https", DOCKER_HUB_UPSTREAM)
            } else if plain_http || is_loopback(registry) {
                ("http", registry)
            } else {
                ("https", registry)
            };
            let url = Url::parse(&format!("{scheme}://{host}/v2")).map_err(|e| {
                Error::InvalidRegistry {
                    registry: registry.to_string(),
                    reason: e.to_string(),
                }
            })?;
            let source = format!("{} (upstream, always appended)", mirror.source);
            let mut endpoint = Endpoint::new(url, false, source);
            endpoint.capabilities = LEGACY_CAPABILITIES;
            endpoints.push(endpoint);
        }
        Ok(Some(endpoints))
    }
}

/// `mirrors."<host>"`: its `endpoint` list.
pub(super) fn parse_mirror(
    doc: &mut Doc<'_>,
    key: &str,
    plugin_key: &str,
    host: &str,
    table: &Table,
) -> Result<Mirror, Error> {
    let mut endpoints = Vec::new();
    for (name, value) in table {
        let entry_key = dotted(key, name);
        if name != "endpoint" {
            warn_unknown(doc, &entry_key, name, plugin_key, "mirror setting");
            continue;
        }
        let list = match value {
            Value::Array(list) => list,
            Value::Table(t) => {
                let misplaced: Vec<&str> = t
                    .keys()
                    .map(String::as_str)
                    .filter(|k| CRI_KEYS.contains(k))
                    .collect();
                let hint = match misplaced.as_slice() {
                    [] => String::new(),
                    keys => format!(
                        "; `{}` belongs in `[{plugin_key}]`, not under a mirror",
                        keys.join("`, `")
                    ),
                };
                return Err(doc.invalid(
                    &entry_key,
                    format!(
                        "must be a list of endpoint URLs, found a table: containerd cannot decode \
                         this and refuses to start{hint}"
                    ),
                ));
            }
            other => return Err(doc.fatal_type(&entry_key, "a list of URL strings", other)),
        };
        for (i, item) in list.iter().enumerate() {
            let item_key = format!("{entry_key}[{i}]");
            let raw = item
                .as_str()
                .ok_or_else(|| doc.fatal_type(&item_key, "a list of URL strings", item))?;
            endpoints.push(parse_legacy_url(doc, &item_key, raw)?);
        }
    }
    Ok(Mirror {
        host: host.to_string(),
        source: doc.source(key),
        endpoints,
    })
}

/// A legacy `endpoint` URL the way containerd reads it: no scheme means https (http for
/// a loopback host, `addDefaultScheme`), and the path is the API root as written, `/v2`
/// only when there is no path at all.
fn parse_legacy_url(doc: &mut Doc<'_>, key: &str, raw: &str) -> Result<LegacyEndpoint, Error> {
    let invalid = |reason: String| Error::InvalidUrl {
        path: doc.path.to_path_buf(),
        key: key.to_string(),
        url: redact_userinfo(raw),
        reason,
    };
    let after_scheme = raw.find("://").map_or(raw, |i| &raw[i + 3..]);
    let authority_end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let authority = &after_scheme[..authority_end];
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let has_path = after_scheme[authority_end..].starts_with('/');
    let text = if raw.contains("://") {
        raw.to_string()
    } else if is_loopback(authority) {
        format!("http://{raw}")
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
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        doc.warn(
            key,
            "has user info, a query or a fragment: containerd uses only scheme, host and path, and so does ctrpull",
        );
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_query(None);
        url.set_fragment(None);
    }
    if has_path {
        // containerd joins requests with path.Join, which cleans the path.
        let path = url.path().to_string();
        let mut clean: Vec<&str> = Vec::new();
        for s in path.split('/').filter(|s| !s.is_empty() && *s != ".") {
            if s == ".." {
                clean.pop();
            } else {
                clean.push(s);
            }
        }
        url.set_path(&format!("/{}", clean.join("/")));
        if clean.last() != Some(&"v2") {
            let with_v2 = format!("{}/v2", url.as_str().trim_end_matches('/'));
            doc.warn(
                key,
                format!(
                    "has a path: containerd uses it as the registry API root as written (it adds \
                     /v2 only when there is no path), so requests go to {}/<repository>/manifests/…, \
                     and so do ctrpull's. Write {with_v2:?} if the mirror serves the API under /v2",
                    url.as_str().trim_end_matches('/')
                ),
            );
        }
    } else {
        url.set_path("/v2");
    }
    Ok(LegacyEndpoint {
        url,
        authority: authority.to_string(),
        source: doc.source(key),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::exact("r.io", &["https://m.io/v2", "https://r.io/v2"])]
    #[case::wildcard("other.io", &["https://any.io/v2", "https://other.io/v2"])]
    #[case::docker_hub_wildcard("docker.io", &["https://any.io/v2", "https://registry-1.docker.io/v2"])]
    #[case::empty_exact_entry_blocks_wildcard("empty.io", &["https://empty.io/v2"])]
    #[case::listed_upstream_not_appended("listed.io", &["https://m.io/v2", "http://listed.io/v2"])]
    #[case::port_differs_so_upstream_appended(
        "myregistry.example.com",
        &["http://myregistry.example.com:5000/v2", "https://myregistry.example.com/v2"]
    )]
    #[case::loopback_upstream_is_http("localhost:443", &["https://m.io/v2", "http://localhost:443/v2"])]
    fn legacy_endpoints(#[case] registry_name: &str, #[case] expected: &[&str]) {
        let r = registry(&format!(
            r#"{}
endpoint = ["https://m.io"]
{}
endpoint = ["https://any.io"]
{}
endpoint = []
{}
endpoint = ["https://m.io", "http://listed.io"]
{}
endpoint = ["http://myregistry.example.com:5000"]
{}
endpoint = ["https://m.io"]
"#,
            table(".mirrors.\"r.io\""),
            table(".mirrors.\"*\""),
            table(".mirrors.\"empty.io\""),
            table(".mirrors.\"listed.io\""),
            table(".mirrors.\"myregistry.example.com\""),
            table(".mirrors.\"localhost:443\""),
        ));
        let endpoints = r.legacy_endpoints(registry_name, false).unwrap().unwrap();
        assert_eq!(bases(&endpoints), expected);
        for e in &endpoints {
            assert_eq!(e.capabilities, LEGACY_CAPABILITIES);
        }
        assert!(!endpoints.last().unwrap().mirror);
    }

    #[test]
    fn no_mirror_entry_means_no_legacy_list() {
        let r = registry(&format!(
            "{}\nendpoint = [\"https://m\"]\n",
            table(".mirrors.\"r.io\"")
        ));
        assert!(r.legacy_endpoints("s.io", false).unwrap().is_none());
        let upstream = r.legacy_endpoints("r.io", true).unwrap().unwrap();
        assert_eq!(bases(&upstream), ["https://m/v2", "http://r.io/v2"]);
        assert_eq!(
            upstream[1].source,
            format!("{FILE}: {REG}.mirrors.\"r.io\" (upstream, always appended)")
        );
        assert_eq!(
            upstream[0].source,
            format!("{FILE}: {REG}.mirrors.\"r.io\".endpoint[0]")
        );
    }

    #[rstest]
    #[case::no_scheme("mirror.io", "https://mirror.io/v2", None)]
    #[case::no_scheme_loopback("127.0.0.1:5000", "http://127.0.0.1:5000/v2", None)]
    #[case::no_scheme_localhost_any_port("localhost:443", "http://localhost:443/v2", None)]
    #[case::with_v2("https://m.io/v2", "https://m.io/v2", None)]
    #[case::with_v2_slash("https://m.io/v2/", "https://m.io/v2", None)]
    #[case::root_slash(
        "http://m.io:5000/",
        "http://m.io:5000/",
        Some("requests go to http://m.io:5000/<repository>/manifests/…")
    )]
    #[case::prefix(
        "https://m.io/hub",
        "https://m.io/hub",
        Some("Write \"https://m.io/hub/v2\"")
    )]
    #[case::unclean("https://m.io/a/../v2", "https://m.io/v2", None)]
    #[case::user_info("https://u:p@m.io", "https://m.io/v2", Some("has user info"))]
    fn legacy_urls(#[case] raw: &str, #[case] base: &str, #[case] warning: Option<&str>) {
        let body = format!("{}\nendpoint = [{raw:?}]\n", table(".mirrors.\"r.io\""));
        let r = registry(&body);
        assert_eq!(r.mirrors[0].endpoints[0].url.as_str(), base);
        let found = warnings(&body);
        match warning {
            Some(text) => assert!(found.len() == 1 && found[0].contains(text), "{found:?}"),
            None => assert!(found.is_empty(), "{found:?}"),
        }
    }
}
