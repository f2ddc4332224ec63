//! Parts of a config.toml that are not CRI settings but mislead operators: the TOML
//! mistake blog posts teach, `imports` we do not follow, proxy plugins taught as caches.

use std::path::Path;

use toml::{Table, Value};

use super::{dotted, Doc};
use crate::config::Error;

/// A TOML syntax error, with a hint for the mistake blog posts teach: a mirror's
/// `endpoint` written both as a list and as a table to hang `max_concurrent_downloads` on.
pub(super) fn toml_error(path: &Path, text: &str, source: toml::de::Error) -> Error {
    let key = source
        .span()
        .and_then(|span| text.get(span))
        .map(|k| k.trim_matches(['"', '\'']));
    let hint = (source.message() == "duplicate key" && key == Some("endpoint")).then(|| {
        "`endpoint` is both a list (`endpoint = [...]`) and a table (`[...endpoint]`), which \
         TOML forbids; containerd refuses to start with this file too. A mirror's `endpoint` \
         is only a list of URLs: `max_concurrent_downloads` belongs in the CRI plugin's own \
         table ([plugins.\"io.containerd.grpc.v1.cri\"] in a version 2 file)"
            .to_string()
    });
    Error::Toml {
        path: path.to_path_buf(),
        source: Box::new(source),
        hint,
    }
}

/// `imports` pulls more files into this one; ctrpull does not follow them.
pub(super) fn check_imports(doc: &mut Doc<'_>, table: &Table) {
    let Some(Value::Array(imports)) = table.get("imports") else {
        return;
    };
    let names: Vec<&str> = imports.iter().filter_map(Value::as_str).collect();
    if !names.is_empty() {
        doc.warn(
            "imports",
            format!(
                "is not followed by ctrpull: registry settings in {} are not read (containerd merges them into this file); pass them with --config, or use --hosts-dir",
                names.join(", ")
            ),
        );
    }
}

/// `[proxy_plugins.cache]` with `type = "snapshot"`, taught as an image cache.
pub(super) fn check_proxy_plugins(doc: &mut Doc<'_>, table: &Table) {
    let Some(Value::Table(proxies)) = table.get("proxy_plugins") else {
        return;
    };
    for (name, value) in proxies {
        let Value::Table(proxy) = value else { continue };
        let address = proxy.get("address").and_then(Value::as_str).unwrap_or("");
        let looks_like_cache = name.to_ascii_lowercase().contains("cache")
            || address.to_ascii_lowercase().contains("cache");
        if proxy.get("type").and_then(Value::as_str) == Some("snapshot") && looks_like_cache {
            doc.warn(
                dotted("proxy_plugins", name),
                format!(
                    "is not a cache: `type = \"snapshot\"` registers a remote snapshotter named {name:?}, \
                     a gRPC service containerd expects to find listening on the socket {address:?}; \
                     containerd caches no images or layers with it and uses it only where snapshotter \
                     {name:?} is selected. ctrpull ignores it; a pull-through cache is a registry mirror \
                     (hosts.toml or --mirror)"
                ),
            );
        }
    }
}
