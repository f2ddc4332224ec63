//! The CRI table of a config.toml: which one containerd reads for each config version,
//! and its pull settings (`max_concurrent_downloads`, `image_pull_progress_timeout`).

use toml::{Table, Value};

use super::{dotted, Doc, CRI_GRPC, CRI_IMAGES, CRI_V1, PULL_KEYS};
use crate::config::duration::parse_go_duration;
use crate::config::Error;
use crate::config::{CriSettings, Setting};

/// The name of the plugin table holding the CRI image settings for `version`, with
/// warnings for the tables containerd does not read in this version.
pub(super) fn select_cri_table(
    doc: &mut Doc<'_>,
    version: i64,
    plugins: &Table,
) -> Result<&'static str, Error> {
    let has_pull_keys = |name: &str| match plugins.get(name) {
        Some(Value::Table(t)) => PULL_KEYS.iter().any(|k| t.contains_key(*k)),
        _ => false,
    };
    let short = dotted("plugins", CRI_V1);
    let grpc = dotted("plugins", CRI_GRPC);
    let images = dotted("plugins", CRI_IMAGES);

    if version < 3 && has_pull_keys(CRI_IMAGES) {
        doc.warn(
            &images,
            format!(
                "is a version 3 table: containerd 1.x ignores it in a version {version} file (2.x \
                 fills in from it what `{grpc}` leaves unset); ctrpull follows 1.x. Move the \
                 settings to `[{grpc}]`, or set `version = 3`"
            ),
        );
    }
    if version >= 2 && plugins.contains_key(CRI_V1) {
        doc.warn(
            &short,
            format!(
                "is a version 1 plugin name: containerd 1.x refuses to start with it in a version \
                 {version} file and containerd 2.x ignores it; use `{}`",
                if version == 2 { &grpc } else { &images }
            ),
        );
    }
    match version {
        1 => {
            let (has_short, has_grpc) =
                (plugins.contains_key(CRI_V1), plugins.contains_key(CRI_GRPC));
            if has_short && has_grpc {
                return Err(Error::Conflict {
                    path: doc.path.to_path_buf(),
                    key: short,
                    other: grpc,
                    reason: "in a version 1 file containerd 1.x reads only `plugins.cri`, and \
                             containerd 2.x renames it to the other and keeps one of the two at \
                             random; keep one (and add `version = 2` to use the full name)"
                        .to_string(),
                });
            }
            if has_grpc {
                if has_pull_keys(CRI_GRPC) {
                    doc.warn(
                        &grpc,
                        "is ignored by containerd 1.x because this file has no `version = 2` \
                         (version 1 files name the plugin `plugins.cri`); containerd 2.x reads it, \
                         and so does ctrpull. Add `version = 2` at the top of the file",
                    );
                }
                Ok(CRI_GRPC)
            } else {
                Ok(CRI_V1)
            }
        }
        2 => Ok(CRI_GRPC),
        _ => {
            if let Some(Value::Table(old)) = plugins.get(CRI_GRPC) {
                for key in PULL_KEYS.iter().filter(|k| old.contains_key(**k)) {
                    doc.warn(
                        dotted(&grpc, key),
                        format!(
                            "is ignored by containerd in a version 3 file: `{key}` belongs in `[{images}]`"
                        ),
                    );
                }
            }
            Ok(CRI_IMAGES)
        }
    }
}

/// `max_concurrent_downloads` and `image_pull_progress_timeout` from the CRI table.
pub(super) fn parse_cri_settings(
    doc: &mut Doc<'_>,
    plugin_key: &str,
    table: &Table,
) -> Result<CriSettings, Error> {
    let mut settings = CriSettings::default();

    let key = dotted(plugin_key, "max_concurrent_downloads");
    match table.get("max_concurrent_downloads") {
        None => {}
        Some(Value::Integer(n)) => {
            let value = if *n < 0 {
                doc.warn(
                    &key,
                    "is negative: containerd reads any value below 1 as \"no limit\", and so does ctrpull (0)",
                );
                0
            } else {
                usize::try_from(*n).unwrap_or(usize::MAX)
            };
            settings.max_concurrent_downloads = Some(Setting {
                value,
                source: doc.source(&key),
            });
        }
        Some(other) => return Err(doc.fatal_type(&key, "an integer", other)),
    }

    let key = dotted(plugin_key, "image_pull_progress_timeout");
    match table.get("image_pull_progress_timeout") {
        None => {}
        Some(Value::String(text)) => {
            if text.is_empty() {
                return Err(doc.invalid(
                    &key,
                    "is empty: containerd then fails every pull (\"failed to parse \
                     image_pull_progress_timeout\"); remove the key for the default (5m), or \
                     write \"0\" to turn the timeout off",
                ));
            }
            let value = parse_go_duration(text).map_err(|reason| {
                doc.invalid(
                    &key,
                    format!("{reason} (expected a Go duration such as \"5m\" or \"1m30s\"); containerd refuses to load the CRI plugin"),
                )
            })?;
            // containerd checks progress every timeout/2 and Go's ticker panics on 0.
            if value.as_nanos() == 1 {
                return Err(doc.invalid(
                    &key,
                    "must be 0 (off) or at least 2ns: containerd checks progress every timeout/2, and a zero interval crashes it",
                ));
            }
            settings.image_pull_progress_timeout = Some(Setting {
                value,
                source: doc.source(&key),
            });
        }
        Some(Value::Table(t)) => {
            let example = t
                .get("default")
                .and_then(Value::as_str)
                .unwrap_or("5m")
                .to_string();
            return Err(doc.invalid(
                &key,
                format!(
                    "must be a Go duration string, found a table: containerd cannot decode this and \
                     refuses to start. Write `image_pull_progress_timeout = {example:?}` inside \
                     `[{plugin_key}]` instead of a `[{key}]` table"
                ),
            ));
        }
        Some(other) => {
            return Err(doc.fatal_type(&key, "a Go duration string such as \"5m\"", other))
        }
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::super::{parse, ContainerdConfig};
    use super::*;
    use rstest::rstest;
    use std::path::Path;
    use std::time::Duration;

    const FILE: &str = "/etc/containerd/config.toml";
    const GRPC: &str = r#"plugins."io.containerd.grpc.v1.cri""#;

    fn parse_text(text: &str) -> (Result<ContainerdConfig, Error>, Vec<String>) {
        let mut warnings = Vec::new();
        let result = parse(Path::new(FILE), text, &mut warnings);
        (result, warnings.iter().map(ToString::to_string).collect())
    }

    /// Which table each config version reads, and what it says about the others.
    #[rstest]
    #[case::v1_short("", "cri", "plugins.cri", 0)]
    #[case::v1_explicit("version = 1\n", "cri", "plugins.cri", 0)]
    #[case::v0_is_v1("version = 0\n", "cri", "plugins.cri", 0)]
    #[case::v1_full_name("", "\"io.containerd.grpc.v1.cri\"", GRPC, 1)]
    #[case::v2("version = 2\n", "\"io.containerd.grpc.v1.cri\"", GRPC, 0)]
    #[case::v3(
        "version = 3\n",
        "\"io.containerd.cri.v1.images\"",
        r#"plugins."io.containerd.cri.v1.images""#,
        0
    )]
    fn versions(
        #[case] version: &str,
        #[case] table: &str,
        #[case] key: &str,
        #[case] warnings: usize,
    ) {
        let text = format!("{version}[plugins.{table}]\nmax_concurrent_downloads = 7\n[plugins.{table}.registry.mirrors.\"r.io\"]\nendpoint = [\"https://m\"]\n");
        let (result, found) = parse_text(&text);
        let config = result.unwrap();
        assert_eq!(config.plugin_key, key);
        let setting = config.cri.max_concurrent_downloads.unwrap();
        assert_eq!(setting.value, 7);
        assert_eq!(
            setting.source,
            format!("{FILE}: {key}.max_concurrent_downloads")
        );
        let endpoints = config
            .registry
            .legacy_endpoints("r.io", false)
            .unwrap()
            .unwrap();
        assert_eq!(endpoints[0].base.as_str(), "https://m/v2");
        assert_eq!(found.len(), warnings, "{found:?}");
    }

    #[rstest]
    #[case::v2("version = 2\n", GRPC)]
    #[case::v3("version = 3\n", r#"plugins."io.containerd.cri.v1.images""#)]
    fn cri_settings(#[case] version: &str, #[case] key: &str) {
        let text = format!("{version}[{key}]\nmax_concurrent_downloads = 10\nimage_pull_progress_timeout = \"1m30s\"\n");
        let config = parse_text(&text).0.unwrap();
        assert_eq!(
            config.cri,
            CriSettings {
                max_concurrent_downloads: Some(Setting {
                    value: 10,
                    source: format!("{FILE}: {key}.max_concurrent_downloads")
                }),
                image_pull_progress_timeout: Some(Setting {
                    value: Duration::from_secs(90),
                    source: format!("{FILE}: {key}.image_pull_progress_timeout")
                }),
            }
        );
    }

    #[test]
    fn timeout_zero_turns_it_off() {
        let config = parse_text(&format!(
            "version = 2\n[{GRPC}]\nimage_pull_progress_timeout = \"0\"\n"
        ))
        .0
        .unwrap();
        assert_eq!(
            config.cri.image_pull_progress_timeout.unwrap().value,
            Duration::ZERO
        );
    }

    #[rstest]
    #[case::version_string("version = \"2\"\n", "`version`: must be an integer, found a string: containerd cannot decode this and refuses to start")]
    #[case::version_4(
        "version = 4\n",
        "`version = 4` is not supported: containerd reads config versions 1, 2 and 3"
    )]
    #[case::both_v1_names("[plugins.cri]\n[plugins.\"io.containerd.grpc.v1.cri\"]\n", "`plugins.cri` cannot be set together with `plugins.\"io.containerd.grpc.v1.cri\"`: in a version 1 file")]
    #[case::plugins_not_table(
        "version = 2\nplugins = 1\n",
        "`plugins`: must be a table, found an integer"
    )]
    #[case::downloads_string("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nmax_concurrent_downloads = \"5\"\n", "max_concurrent_downloads`: must be an integer, found a string: containerd cannot decode this and refuses to start")]
    #[case::timeout_no_unit("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nimage_pull_progress_timeout = \"5\"\n", "image_pull_progress_timeout`: missing unit in duration \"5\" (expected a Go duration such as \"5m\" or \"1m30s\"); containerd refuses to load the CRI plugin")]
    #[case::timeout_int("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nimage_pull_progress_timeout = 300\n", "image_pull_progress_timeout`: must be a Go duration string such as \"5m\", found an integer")]
    #[case::timeout_empty("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nimage_pull_progress_timeout = \"\"\n", "image_pull_progress_timeout`: is empty: containerd then fails every pull")]
    #[case::timeout_negative("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nimage_pull_progress_timeout = \"-5m\"\n", "duration \"-5m\" is negative")]
    #[case::timeout_1ns("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nimage_pull_progress_timeout = \"1ns\"\n", "must be 0 (off) or at least 2ns")]
    #[case::registry_string(
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nregistry = \"x\"\n",
        "registry`: must be a table, found a string"
    )]
    #[case::bad_toml("version = 2\n[plugins\n", "invalid TOML")]
    fn invalid_files(#[case] text: &str, #[case] message: &str) {
        let err = parse_text(text).0.unwrap_err().to_string();
        assert!(err.starts_with(&format!("{FILE}: ")), "{err}");
        assert!(err.contains(message), "{err}");
    }
}
