//! The benchmark runner: every tier × profile × setting, ctrpull and the baseline,
//! each pull from a clean content store, through the link emulator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use containerd_client::services::v1::{transfer_client::TransferClient, TransferRequest};
use containerd_client::types::transfer::{
    ImageStore, OciRegistry, RegistryResolver, UnpackConfiguration,
};
use indicatif::{ProgressBar, ProgressStyle};
use url::Url;

use super::link::Link;
use super::profiles::Profile;
use super::results::{Cell, Measurement, Results, Tool};
use super::scratch::ScratchRegistry;
use super::tiers::Tier;
use super::wire;
use crate::builder;
use crate::containerd::{chain_ids, Connection, ContentStore, Images, Unpacker};
use crate::cri::ImageService;
use crate::pull::Platform;

/// Namespace ctrpull pulls into during a benchmark.
pub const BENCH_NAMESPACE: &str = "ctrpull-bench";
/// Namespace CRI pulls into (fixed by containerd's CRI plugin).
pub const CRI_NAMESPACE: &str = "k8s.io";

/// A ctrpull concurrency setting to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// `--concurrency N`.
    Fixed(usize),
    /// ctrpull's default.
    Auto,
}

impl Setting {
    /// Parses `1`, `8` or `auto`.
    pub fn parse(text: &str) -> Result<Setting, String> {
        match text.trim() {
            "auto" => Ok(Setting::Auto),
            n => n
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=256).contains(n))
                .map(Setting::Fixed)
                .ok_or_else(|| {
                    format!("invalid concurrency {n:?}: a number from 1 to 256, or auto")
                }),
        }
    }

    fn label(self) -> String {
        match self {
            Setting::Fixed(n) => n.to_string(),
            Setting::Auto => "auto".into(),
        }
    }
}

/// What containerd's own pull is measured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// The CRI ImageService `PullImage` (what kubelet triggers).
    Cri,
    /// The Transfer service (containerd 1.7+).
    Transfer,
    /// No baseline.
    None,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// containerd socket.
    pub address: PathBuf,
    /// Registry to push the profiles to; a scratch docker-registry when `None`.
    pub registry: Option<Url>,
    /// Tiers to run.
    pub tiers: Vec<Tier>,
    /// Profiles to run (already scaled).
    pub profiles: Vec<Profile>,
    /// Scale factor applied to the profiles (for the report).
    pub scale: f64,
    /// ctrpull settings.
    pub settings: Vec<Setting>,
    /// containerd's pull to compare with.
    pub baseline: Baseline,
    /// Repeats per cell.
    pub repeat: usize,
    /// The ctrpull binary to time (normally this executable).
    pub ctrpull: PathBuf,
    /// Show progress bars.
    pub progress: bool,
    /// Directory to keep each timed ctrpull pull's `-v` log in; `None` keeps none.
    pub logs: Option<PathBuf>,
    /// Also measure the [`wire`] reference.
    pub wire: bool,
}

/// A pushed profile: its reference path and everything a clean-up must check.
struct Pushed {
    profile: Profile,
    repository: String,
    tag: String,
    image_bytes: u64,
    manifest_digest: String,
    config_digest: String,
    blobs: Vec<String>,
    top_chain: String,
}

/// Runs the benchmark.
pub async fn run(config: &BenchConfig) -> Result<Results, String> {
    let conn = Connection::connect(&config.address, BENCH_NAMESPACE)
        .await
        .map_err(|e| e.to_string())?;
    let containerd_version = conn.version().await.map_err(|e| e.to_string())?;
    if config.baseline == Baseline::Transfer && containerd_version.starts_with("1.") {
        // 1.6 has no Transfer service; 1.7's ignores the resolver's default_scheme and
        // host_dir, so it can only reach HTTPS registries it already trusts, never the
        // benchmark's plain-HTTP loopback registry.
        return Err(format!(
            "the transfer baseline needs containerd 2.0 or later (this is {containerd_version}: its Transfer service \
             cannot reach a plain-HTTP registry); use --baseline cri"
        ));
    }
    let scratch;
    let registry = match &config.registry {
        Some(url) => url.clone(),
        None => {
            scratch = ScratchRegistry::start().await?;
            scratch.url().clone()
        }
    };
    let upstream = registry_addr(&registry)?;
    let mut pushed = Vec::new();
    for profile in &config.profiles {
        pushed.push(push_profile(&registry, profile, config.scale).await?);
    }

    let tools_per_cell = config.settings.len()
        + usize::from(config.baseline != Baseline::None)
        + usize::from(config.wire);
    let total =
        (config.tiers.len() * config.profiles.len() * tools_per_cell * config.repeat) as u64;
    let bar = if config.progress {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );

    let mut cri = match config.baseline {
        Baseline::Cri => Some(
            ImageService::connect(&config.address)
                .await
                .map_err(|e| e.to_string())?,
        ),
        _ => None,
    };
    let mut cells = Vec::new();
    for tier in &config.tiers {
        let link = Link::start(upstream, tier.link_config())
            .await
            .map_err(|e| format!("starting the link emulator for {}: {e}", tier.name))?;
        for image in &pushed {
            let reference = format!("{}/{}:{}", link.addr(), image.repository, image.tag);
            let label = |tool: Tool, setting: &str| {
                format!(
                    "{} {} {} {setting}",
                    tier.name,
                    image.profile.name,
                    tool.name()
                )
            };
            if config.baseline != Baseline::None {
                let tool = if config.baseline == Baseline::Cri {
                    Tool::Cri
                } else {
                    Tool::Transfer
                };
                let setting = "default";
                bar.set_message(label(tool, setting));
                let mut runs = Vec::new();
                for _ in 0..config.repeat {
                    clean(&conn, image, &reference).await?;
                    let before = link.stats();
                    let started = Instant::now();
                    match tool {
                        Tool::Cri => {
                            let cri = cri.as_mut().expect("connected above");
                            cri.pull_image(&reference)
                                .await
                                .map_err(|e| format!("CRI PullImage {reference}: {e}"))?;
                        }
                        _ => transfer_pull(&conn, &reference, link.addr()).await?,
                    }
                    runs.push(measurement(started.elapsed(), None, &link, before));
                    bar.inc(1);
                }
                cells.push(Cell::new(
                    tier,
                    &image.profile,
                    tool,
                    setting,
                    image.image_bytes,
                    runs,
                ));
            }
            for setting in &config.settings {
                let setting_label = setting.label();
                bar.set_message(label(Tool::Ctrpull, &setting_label));
                let mut runs = Vec::new();
                for run in 0..config.repeat {
                    clean(&conn, image, &reference).await?;
                    let before = link.stats();
                    let log = config.logs.as_ref().map(|dir| {
                        dir.join(format!(
                            "{}-{}-{setting_label}-{}.log",
                            tier.name,
                            image.profile.name,
                            run + 1
                        ))
                    });
                    let (elapsed, rss) =
                        time_ctrpull(config, *setting, &reference, log.as_deref()).await?;
                    runs.push(measurement(elapsed, Some(rss), &link, before));
                    bar.inc(1);
                }
                cells.push(Cell::new(
                    tier,
                    &image.profile,
                    Tool::Ctrpull,
                    &setting_label,
                    image.image_bytes,
                    runs,
                ));
            }
            if config.wire {
                let connections = wire::connections(tier);
                let setting = connections.to_string();
                bar.set_message(label(Tool::Wire, &setting));
                let base = format!("http://{}", link.addr());
                let mut runs = Vec::new();
                for _ in 0..config.repeat {
                    let before = link.stats();
                    let (elapsed, bytes) =
                        wire::fetch(&base, &image.repository, &image.tag, connections).await?;
                    if bytes != image.image_bytes {
                        return Err(format!(
                            "wire: {reference} brought {bytes} bytes, the image has {}",
                            image.image_bytes
                        ));
                    }
                    runs.push(measurement(elapsed, None, &link, before));
                    bar.inc(1);
                }
                cells.push(Cell::new(
                    tier,
                    &image.profile,
                    Tool::Wire,
                    &setting,
                    image.image_bytes,
                    runs,
                ));
            }
            clean(&conn, image, &reference).await?;
        }
        link.shutdown().await;
    }
    bar.finish_and_clear();
    let mut results = Results {
        containerd_version,
        ctrpull_version: env!("CARGO_PKG_VERSION").to_string(),
        scale: config.scale,
        repeat: config.repeat,
        tiers: config.tiers.clone(),
        profiles: config.profiles.clone(),
        cells,
    };
    results.compute_speedups();
    Ok(results)
}

fn measurement(
    elapsed: Duration,
    rss: Option<u64>,
    link: &Link,
    before: super::link::LinkStats,
) -> Measurement {
    let after = link.stats();
    Measurement {
        seconds: elapsed.as_secs_f64(),
        peak_rss_kib: rss,
        connections: after.connections.saturating_sub(before.connections),
        link_bytes: after.bytes_down.saturating_sub(before.bytes_down),
    }
}

fn registry_addr(registry: &Url) -> Result<SocketAddr, String> {
    let addrs = registry
        .socket_addrs(|| Some(80))
        .map_err(|e| format!("registry {registry}: {e}"))?;
    addrs
        .into_iter()
        .find(|a| a.ip().is_loopback())
        .ok_or_else(|| format!("registry {registry} is not on loopback; the link emulator only fronts local registries"))
}

/// Builds and pushes a profile (idempotent: same profile, same blobs).
async fn push_profile(registry: &Url, profile: &Profile, scale: f64) -> Result<Pushed, String> {
    let workdir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let spec = profile.spec();
    let path = workdir.path().to_owned();
    let image = tokio::task::spawn_blocking(move || builder::build(&spec, &path))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("building profile {}: {e}", profile.name))?;
    let repository = format!("ctrpull-bench/{}", profile.name);
    let tag = format!("scale-{}", format!("{scale}").replace('.', "_"));
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    builder::push(&http, registry, &repository, &tag, &image)
        .await
        .map_err(|e| format!("pushing profile {}: {e}", profile.name))?;
    let mut blobs: Vec<String> = image
        .layers
        .iter()
        .map(|l| l.descriptor.digest().to_string())
        .collect();
    blobs.push(image.config_descriptor.digest().to_string());
    blobs.push(image.manifest_descriptor.digest().to_string());
    let diff_ids: Vec<String> = image.layers.iter().map(|l| l.diff_id.to_string()).collect();
    let image_bytes = image
        .layers
        .iter()
        .map(|l| l.descriptor.size())
        .sum::<u64>()
        + image.config_descriptor.size()
        + image.manifest_descriptor.size();
    Ok(Pushed {
        profile: profile.clone(),
        repository,
        tag,
        image_bytes,
        manifest_digest: image.manifest_descriptor.digest().to_string(),
        config_digest: image.config_descriptor.digest().to_string(),
        blobs,
        top_chain: chain_ids(&diff_ids).pop().unwrap_or_default(),
    })
}

/// Removes every record of the image from the bench and CRI namespaces, lets
/// containerd collect garbage, and checks that no namespace still holds any of its
/// blobs or its snapshot: containerd shares content across namespaces, so one left
/// behind anywhere would make the next pull free and the measurement wrong.
async fn clean(conn: &Connection, image: &Pushed, reference: &str) -> Result<(), String> {
    let name = reference.rsplit_once(':').map_or(reference, |(n, _)| n);
    let records = [
        reference.to_string(),
        format!("{name}@{}", image.manifest_digest),
        image.config_digest.clone(),
    ];
    for namespace in [BENCH_NAMESPACE, CRI_NAMESPACE] {
        let images = Images::new(conn.with_namespace(namespace).map_err(|e| e.to_string())?);
        for (i, record) in records.iter().enumerate() {
            images
                .delete(record, i + 1 == records.len())
                .await
                .map_err(|e| format!("removing {record} from {namespace}: {e}"))?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leftover = leftovers(conn, image).await?;
        if leftover.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "cannot start from a clean content store: {} (another image, lease or container still holds them)",
                leftover.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn leftovers(conn: &Connection, image: &Pushed) -> Result<Vec<String>, String> {
    let mut found = Vec::new();
    for namespace in conn.namespaces().await.map_err(|e| e.to_string())? {
        let ns = conn.with_namespace(&namespace).map_err(|e| e.to_string())?;
        let content = ContentStore::new(ns.clone());
        for blob in &image.blobs {
            if content
                .info(blob)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                found.push(format!("blob {blob} in namespace {namespace}"));
            }
        }
        let unpacker = Unpacker::new(ns, crate::pull::DEFAULT_SNAPSHOTTER);
        if unpacker
            .exists(&image.top_chain)
            .await
            .map_err(|e| e.to_string())?
        {
            found.push(format!(
                "snapshot {} in namespace {namespace}",
                image.top_chain
            ));
        }
    }
    Ok(found)
}

/// Runs `ctrpull pull` as a child process and returns its wall time and peak RSS
/// (KiB). With `log`, the pull runs with `-vv` and its stderr goes to that file.
async fn time_ctrpull(
    config: &BenchConfig,
    setting: Setting,
    reference: &str,
    log: Option<&Path>,
) -> Result<(Duration, u64), String> {
    let mut command = Command::new(&config.ctrpull);
    command
        .arg("pull")
        .arg("--address")
        .arg(&config.address)
        .args(["--namespace", BENCH_NAMESPACE, "--plain-http"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    match log {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
            let file = std::fs::File::create(path)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
            command.arg("-vv").stderr(file);
        }
        None => {
            command.arg("-q").stderr(Stdio::piped());
        }
    }
    if let Setting::Fixed(n) = setting {
        command.args(["--concurrency", &n.to_string()]);
    }
    command.arg(reference);
    let reference = reference.to_string();
    let log = log.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", config_display(&command)))?;
        let mut stderr = child.stderr.take();
        let (status, rss) = wait_with_rusage(child.id())?;
        let elapsed = started.elapsed();
        let mut message = String::new();
        if let Some(stderr) = stderr.as_mut() {
            use std::io::Read as _;
            let _ = stderr.read_to_string(&mut message);
        }
        if !status {
            if let Some(path) = &log {
                message = format!("see {}", path.display());
            }
            return Err(format!(
                "ctrpull pull {reference} failed: {}",
                message.trim()
            ));
        }
        Ok((elapsed, rss))
    })
    .await
    .map_err(|e| e.to_string())?
}

fn config_display(command: &Command) -> String {
    command.get_program().to_string_lossy().into_owned()
}

/// `wait4` on a child: whether it exited 0, and its peak RSS in KiB.
fn wait_with_rusage(pid: u32) -> Result<(bool, u64), String> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = pid as libc::pid_t;
    loop {
        // SAFETY: valid pointers to locals; pid is our child.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("waiting for ctrpull: {err}"));
        }
    }
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok((ok, usage.ru_maxrss.max(0) as u64))
}

/// containerd's Transfer service pulling `reference` into the bench namespace,
/// unpacked for the host platform, as `ctr image pull` does (without `--local`). The
/// link is plain HTTP: said both by `default_scheme` and by a hosts.toml directory,
/// which the daemon reads itself.
async fn transfer_pull(conn: &Connection, reference: &str, link: SocketAddr) -> Result<(), String> {
    let hosts = tempfile::tempdir().map_err(|e| e.to_string())?;
    let host_dir = hosts.path().join(link.to_string());
    std::fs::create_dir_all(&host_dir).map_err(|e| e.to_string())?;
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!("server = \"http://{link}\"\n\n[host.\"http://{link}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )
    .map_err(|e| e.to_string())?;
    let platform = Platform::host();
    let platform = containerd_client::types::Platform {
        os: platform.os,
        architecture: platform.architecture,
        variant: platform.variant,
        os_version: String::new(),
    };
    let source = OciRegistry {
        reference: reference.to_string(),
        resolver: Some(RegistryResolver {
            host_dir: hosts.path().to_string_lossy().into_owned(),
            default_scheme: "http".into(),
            ..Default::default()
        }),
    };
    let destination = ImageStore {
        name: reference.to_string(),
        platforms: vec![platform.clone()],
        unpacks: vec![UnpackConfiguration {
            platform: Some(platform),
            snapshotter: crate::pull::DEFAULT_SNAPSHOTTER.into(),
        }],
        ..Default::default()
    };
    let request = conn.request(TransferRequest {
        source: Some(containerd_client::to_any(&source)),
        destination: Some(containerd_client::to_any(&destination)),
        options: None,
    });
    TransferClient::new(conn.channel())
        .transfer(request)
        .await
        .map_err(|status| {
            format!(
                "Transfer {reference}: {}: {}",
                status.code(),
                status.message()
            )
        })?;
    Ok(())
}
