//! `ctrpull hosts`: the merged endpoint list for an image's registry, as a pull uses it,
//! and the shared configuration flags ([`ConfigArgs`]).

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use url::Url;

use super::{EXIT_OK, EXIT_USAGE};
use crate::config::{self, Config, Resolved, Setting, Warning};
use crate::config::{DEFAULT_IMAGE_PULL_PROGRESS_TIMEOUT, DEFAULT_MAX_CONCURRENT_DOWNLOADS};
use crate::reference::Reference;
use crate::registry::Endpoint;

/// Where registry configuration comes from; flattened into every command that reaches
/// registries.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// containerd config.toml [default: /etc/containerd/config.toml when it exists].
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// hosts.toml directory (e.g. /etc/containerd/certs.d); repeatable, searched in order.
    /// Replaces config.toml's config_path.
    #[arg(long = "hosts-dir", value_name = "DIR")]
    pub hosts_dirs: Vec<PathBuf>,
    /// Try URL first for HOST's images; repeatable, in order. HOST `*` means every registry.
    #[arg(long = "mirror", value_name = "HOST=URL", value_parser = parse_mirror)]
    pub mirrors: Vec<(String, Url)>,
    /// Reach registries over plain HTTP when no file says otherwise (as `ctr --plain-http`).
    #[arg(long)]
    pub plain_http: bool,
    /// Docker config.json with credentials [default: $DOCKER_CONFIG/config.json, else
    /// ~/.docker/config.json, when it exists].
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
}

impl ConfigArgs {
    /// The configuration sources these flags name.
    pub fn sources(&self) -> config::Sources {
        config::Sources {
            config_toml: self.config.clone(),
            hosts_dirs: self.hosts_dirs.clone(),
            docker_config: self.docker_config.clone(),
            mirrors: self.mirrors.clone(),
            plain_http: self.plain_http,
        }
    }
}

/// `HOST=URL` of `--mirror`.
fn parse_mirror(text: &str) -> Result<(String, Url), String> {
    let (host, url) = text
        .split_once('=')
        .ok_or("expected HOST=URL, e.g. docker.io=https://mirror.example.com")?;
    if host.is_empty() {
        return Err("HOST is empty (use * for every registry)".to_string());
    }
    let url = Url::parse(url).map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    Ok((host.to_string(), url))
}

/// How `ctrpull hosts` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One block per endpoint, for people.
    Text,
    /// One JSON document, for scripts.
    Json,
}

/// Options of `ctrpull hosts`.
#[derive(Debug, Args)]
pub struct HostsArgs {
    /// Configuration sources.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Image whose registry to show, e.g. nginx, registry.example:5000/team/app:1.2
    #[arg(value_name = "REF")]
    pub reference: String,
}

/// Prints the endpoints for the reference's registry. Exit 2 on a bad reference or
/// configuration.
pub(super) fn run(args: HostsArgs) -> u8 {
    let reference = match Reference::parse(&args.reference) {
        Ok(reference) => reference,
        Err(e) => {
            eprintln!("ctrpull: invalid reference {:?}: {e}", args.reference);
            return EXIT_USAGE;
        }
    };
    let result = Config::load(&args.config.sources())
        .and_then(|config| Ok((config.resolve(reference.registry())?, config)));
    let (resolved, config) = match result {
        Ok(found) => found,
        Err(e) => {
            eprintln!("ctrpull: {e}");
            return EXIT_USAGE;
        }
    };
    match args.output {
        Output::Text => print!("{}", text(&reference, &config, &resolved)),
        Output::Json => println!("{:#}", to_json(&reference, &config, &resolved)),
    }
    EXIT_OK
}

/// The report as text: sources, one block per endpoint, CRI settings, warnings.
fn text(reference: &Reference, config: &Config, resolved: &Resolved) -> String {
    let mut out = String::new();
    let registry = reference.registry();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "registry {registry} (image {reference})");
    let _ = match (
        config.config_toml(),
        config.config_version(),
        config.cri_table(),
    ) {
        (Some(path), Some(version), Some(table)) => writeln!(
            out,
            "config.toml:   {} (version {version}, CRI settings in [{table}])",
            path.display()
        ),
        _ => writeln!(out, "config.toml:   none"),
    };
    let dirs: Vec<String> = config
        .hosts_dirs()
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    let _ = match config.hosts_dirs_source() {
        Some(source) if !dirs.is_empty() => {
            writeln!(out, "hosts dirs:    {} ({source})", dirs.join(", "))
        }
        _ => writeln!(out, "hosts dirs:    none"),
    };
    let _ = match config.docker_config() {
        Some(path) => writeln!(out, "docker config: {}", path.display()),
        None => writeln!(out, "docker config: none"),
    };

    let _ = writeln!(out, "\nendpoints, tried in this order:");
    for (i, endpoint) in resolved.endpoints.iter().enumerate() {
        let _ = writeln!(out, "{:>3}. {}", i + 1, endpoint.base);
        let _ = writeln!(out, "       source:       {}", endpoint.source);
        let role = if endpoint.mirror {
            format!("mirror (requests carry ?ns={registry})")
        } else {
            "the registry itself".to_string()
        };
        let _ = writeln!(out, "       role:         {role}");
        let _ = writeln!(out, "       capabilities: {}", endpoint.capabilities);
        let _ = writeln!(out, "       scheme:       {}", endpoint.base.scheme());
        let _ = writeln!(out, "       tls:          {}", tls_text(endpoint));
        let _ = writeln!(out, "       auth:         {}", auth_text(endpoint));
        if !endpoint.headers.is_empty() {
            let _ = writeln!(
                out,
                "       headers:      {} (values not shown)",
                header_names(endpoint).join(", ")
            );
        }
        if let Some(timeout) = endpoint.dial_timeout {
            let _ = writeln!(out, "       dial timeout: {}", go_duration(timeout));
        }
    }

    let cri = config.cri();
    let _ = writeln!(out, "\nCRI pull settings:");
    let _ = writeln!(
        out,
        "  max_concurrent_downloads:    {}",
        setting_text(
            &cri.max_concurrent_downloads,
            |v| v.to_string(),
            &DEFAULT_MAX_CONCURRENT_DOWNLOADS.to_string()
        )
    );
    let _ = writeln!(
        out,
        "  image_pull_progress_timeout: {}",
        setting_text(
            &cri.image_pull_progress_timeout,
            |v| go_duration(*v),
            &go_duration(DEFAULT_IMAGE_PULL_PROGRESS_TIMEOUT)
        )
    );

    let warnings: Vec<&Warning> = config.warnings().iter().chain(&resolved.warnings).collect();
    let _ = writeln!(out, "\nwarnings:");
    if warnings.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for warning in warnings {
        let _ = writeln!(out, "  - {warning}");
    }
    out
}

fn setting_text<T>(
    setting: &Option<Setting<T>>,
    show: impl Fn(&T) -> String,
    default: &str,
) -> String {
    match setting {
        Some(s) => format!("{} ({})", show(&s.value), s.source),
        None => format!("not set (containerd's default: {default})"),
    }
}

fn tls_text(endpoint: &Endpoint) -> String {
    let ca: Vec<String> = endpoint
        .ca_files
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let clients: Vec<String> = endpoint
        .client_certs
        .iter()
        .map(|(cert, key)| match key {
            Some(key) => format!("{} + {}", cert.display(), key.display()),
            None => format!("{} (key inside)", cert.display()),
        })
        .collect();
    let list = |items: &[String]| {
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    format!(
        "skip_verify={}, CA files: {}, client certificate: {}",
        endpoint.skip_verify,
        list(&ca),
        list(&clients)
    )
}

/// The kind of credentials and where they came from; never the secret.
fn auth_text(endpoint: &Endpoint) -> String {
    match (&endpoint.credentials, &endpoint.credentials_source) {
        (Some(credentials), Some(source)) => format!("{} ({source})", credentials.kind()),
        (Some(credentials), None) => credentials.kind().to_string(),
        (None, _) => "anonymous".to_string(),
    }
}

/// Header names, once each; values may carry tokens.
fn header_names(endpoint: &Endpoint) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in &endpoint.headers {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    names
}

fn go_duration(d: std::time::Duration) -> String {
    config::format_go_duration(d)
}

/// The report as one JSON document (see `text` for the fields' meaning).
fn to_json(reference: &Reference, config: &Config, resolved: &Resolved) -> Value {
    let endpoints: Vec<Value> = resolved
        .endpoints
        .iter()
        .map(|e| {
            json!({
                "url": e.base.as_str(),
                "source": e.source,
                "mirror": e.mirror,
                "capabilities": e.capabilities.to_string().split(',').filter(|c| !c.is_empty()).collect::<Vec<_>>(),
                "scheme": e.base.scheme(),
                "tls": {
                    "skip_verify": e.skip_verify,
                    "ca_files": e.ca_files,
                    "client_certs": e.client_certs.iter().map(|(cert, key)| json!({"cert": cert, "key": key})).collect::<Vec<_>>(),
                },
                "auth": e.credentials.as_ref().map(|c| json!({"kind": c.kind(), "source": e.credentials_source})),
                "headers": header_names(e),
                "dial_timeout": e.dial_timeout.map(go_duration),
            })
        })
        .collect();
    let setting = |s: Option<(String, &str)>| match s {
        Some((value, source)) => json!({"value": value, "source": source}),
        None => Value::Null,
    };
    let cri = config.cri();
    let warnings: Vec<Value> = config
        .warnings()
        .iter()
        .chain(&resolved.warnings)
        .map(|w| json!({"file": w.file, "key": w.key, "message": w.message, "text": w.to_string()}))
        .collect();
    json!({
        "reference": reference.to_string(),
        "registry": reference.registry(),
        "sources": {
            "config_toml": config.config_toml(),
            "config_version": config.config_version(),
            "cri_table": config.cri_table(),
            "hosts_dirs": config.hosts_dirs(),
            "hosts_dirs_source": config.hosts_dirs_source(),
            "docker_config": config.docker_config(),
        },
        "endpoints": endpoints,
        "cri": {
            "max_concurrent_downloads": cri.max_concurrent_downloads.as_ref().map(|s| json!({"value": s.value, "source": s.source})),
            "image_pull_progress_timeout": setting(cri.image_pull_progress_timeout.as_ref().map(|s| (go_duration(s.value), s.source.as_str()))),
        },
        "warnings": warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use tempfile::TempDir;

    const PASSWORD: &str = "hosts-cli-test-password";
    const TOKEN: &str = "hosts-cli-test-token";

    fn args(dir: &TempDir, extra: &[&str]) -> ConfigArgs {
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
[plugins."io.containerd.grpc.v1.cri"]
  max_concurrent_downloads = 5
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
  endpoint = ["https://mirror.gcr.io"]
[plugins."io.containerd.grpc.v1.cri".registry.configs."mirror.gcr.io".auth]
  username = "admin"
  password = "{PASSWORD}"
[plugins."io.containerd.grpc.v1.cri".registry.configs."registry-1.docker.io".auth]
  identitytoken = "{TOKEN}"
[plugins."io.containerd.grpc.v1.cri".registry.headers]
  Authorization = ["Bearer {TOKEN}"]
"#
            ),
        )
        .unwrap();
        let docker = dir.path().join("docker.json");
        std::fs::write(&docker, "{}").unwrap();
        let mut argv = vec![
            "x".to_string(),
            "--config".to_string(),
            config.display().to_string(),
            "--docker-config".to_string(),
            docker.display().to_string(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        #[derive(clap::Parser)]
        struct Cmd {
            #[command(flatten)]
            config: ConfigArgs,
        }
        <Cmd as clap::Parser>::parse_from(argv).config
    }

    fn report(args: &ConfigArgs, output: Output) -> String {
        let reference = Reference::parse("nginx").unwrap();
        let config = Config::load(&args.sources()).unwrap();
        let resolved = config.resolve(reference.registry()).unwrap();
        match output {
            Output::Text => text(&reference, &config, &resolved),
            Output::Json => to_json(&reference, &config, &resolved).to_string(),
        }
    }

    #[rstest]
    #[case::text(Output::Text)]
    #[case::json(Output::Json)]
    fn report_shows_kinds_and_sources_never_secrets(#[case] output: Output) {
        let dir = TempDir::new().unwrap();
        let out = report(
            &args(&dir, &["--mirror", "docker.io=https://first.example"]),
            output,
        );
        assert!(!out.contains(PASSWORD), "{out}");
        assert!(!out.contains(TOKEN), "{out}");
        for expected in [
            "https://first.example/v2",
            "https://mirror.gcr.io/v2",
            "https://registry-1.docker.io/v2",
            "--mirror docker.io=https://first.example/",
            "basic",
            "identitytoken",
            "configs.\\\"mirror.gcr.io\\\".auth",
            "Authorization",
        ] {
            let expected = match output {
                Output::Text => expected.replace('\\', ""),
                Output::Json => expected.to_string(),
            };
            assert!(out.contains(&expected), "{expected} missing in {out}");
        }
        let first = out.find("first.example").unwrap();
        let gcr = out.find("mirror.gcr.io/v2").unwrap();
        let hub = out.find("registry-1.docker.io/v2").unwrap();
        assert!(first < gcr && gcr < hub, "{out}");
    }

    #[test]
    fn text_lists_cri_settings_and_defaults() {
        let dir = TempDir::new().unwrap();
        let out = report(&args(&dir, &[]), Output::Text);
        assert!(out.contains("max_concurrent_downloads:    5 ("), "{out}");
        assert!(
            out.contains("image_pull_progress_timeout: not set (containerd's default: 5m0s)"),
            "{out}"
        );
        assert!(out.contains("warnings:\n  none\n"), "{out}");
    }

    #[rstest]
    #[case::no_equals("docker.io", "expected HOST=URL")]
    #[case::empty_host("=https://m", "HOST is empty")]
    #[case::bad_url("docker.io=not a url", "invalid URL")]
    fn bad_mirror_flags(#[case] value: &str, #[case] message: &str) {
        assert!(parse_mirror(value).unwrap_err().contains(message));
    }

    #[test]
    fn mirror_flags_keep_their_order() {
        let (host, url) = parse_mirror("*=http://cache.local:5000").unwrap();
        assert_eq!(host, "*");
        assert_eq!(url.as_str(), "http://cache.local:5000/");
    }
}
