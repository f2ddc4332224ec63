//! Faults on the wire between ctrpull and the registry: connections reset, stalled or
//! slowed mid-body by the link emulator, a proxy that drops `Range` headers, a pull
//! killed mid-way, and concurrent pulls of one image (two ctrpulls; ctrpull and CRI),
//! against the real containerd and docker-registry, asserted through `ctr`, CRI, the
//! registry's access log and the link's counters.
//!
//! The link emulator runs on the test's tokio runtime, so ctrpull runs as a
//! `tokio::process` child: a blocking wait would freeze the link under it.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use ctrpull::bench::link::{parse_rate, Fault, FaultAction, FaultTrigger, Link, LinkConfig};
use ctrpull::builder::LayerSource;
use ctrpull::pull::{DEFAULT_CHUNK_SIZE, DEFAULT_LEASE_EXPIRY, TRICKLE_WINDOW};
use rstest::rstest;

use crate::harness::faulty::{Action, Rule, Target};
use crate::harness::{self, AccessLine, Containerd, Env, FaultyProxy, Registry, Version};
use crate::mirrors::{assert_runs, Files};
use crate::pull::{busybox_with, fresh_seed, leases, push, records, Pushed};

pub(crate) const MIB: u64 = 1 << 20;

/// The big layer's random file: five full chunks and a tail of a little over 2 MiB
/// (tar header and gzip framing), so every chunk, the tail too, is longer than the
/// 2 MiB after which the faults below fire.
const BIG: u64 = 22 * MIB;

/// How far a pull's summary ("fetched X MB", one decimal) may exceed the image's size.
/// Resuming keeps every byte received, so this covers rounding only: a chunk fetched
/// again from its start would add 2 MiB or more, more than the busybox layer weighs
/// (another test may have put that one into the content store, so it may not be
/// fetched at all).
const SLACK_MB: f64 = 0.3;

/// The read timeout the stall test configures (config.toml `image_pull_progress_timeout`).
const SHORT_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// ctrpull's default read timeout (`registry::DEFAULT_READ_TIMEOUT`): a stalled chunk
/// costs this much unless the configuration shortens it.
const DEFAULT_READ_TIMEOUT: Duration = ctrpull::registry::DEFAULT_READ_TIMEOUT;

/// Bytes in the big layer's ingest at which the kill test kills ctrpull: two chunks.
pub(crate) const KILL_AT: u64 = 2 * DEFAULT_CHUNK_SIZE;

/// How long the trickle tests wait for a pull before they kill it and fail.
const TRICKLE_CAP: Duration = Duration::from_secs(60);

/// busybox, a big random layer of `big` bytes and a small one, both with fresh seeds
/// (so no other test has put them into containerd's shared content store), pushed to
/// the shared registry as `<unique repo>:latest`.
async fn push_image(prefix: &str, big: u64) -> (String, Pushed) {
    let repo = harness::unique(&format!("test/{prefix}"));
    let pushed = push(
        &repo,
        busybox_with(vec![
            LayerSource::Random {
                size: big,
                seed: fresh_seed(),
            },
            LayerSource::Random {
                size: 64 << 10,
                seed: fresh_seed(),
            },
        ]),
    )
    .await;
    assert!(
        pushed.image.layers[1].descriptor.size() >= 2 * DEFAULT_CHUNK_SIZE,
        "the big layer is too small to be fetched in chunks"
    );
    (repo, pushed)
}

/// Digest and size of the big layer of an image from [`push_image`].
fn big_layer(pushed: &Pushed) -> (String, u64) {
    let layer = &pushed.image.layers[1].descriptor;
    (layer.digest().to_string(), layer.size())
}

/// Manifest, config and layers: what a pull into an empty content store fetches.
fn image_bytes(pushed: &Pushed) -> u64 {
    let layers: u64 = pushed
        .image
        .layers
        .iter()
        .map(|l| l.descriptor.size())
        .sum();
    pushed.image.manifest.len() as u64 + pushed.image.config.len() as u64 + layers
}

pub(crate) fn registry_addr(registry: &Registry) -> SocketAddr {
    registry
        .addr()
        .parse()
        .expect("the registry listens on an IP address")
}

/// How ctrpull reaches the registry through a proxy in front of it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Route {
    /// The proxy is the only endpoint: the image is named by the proxy's address,
    /// which is the registry as far as ctrpull knows.
    Only,
    /// The proxy first (`--mirror`, so its requests carry `?ns=<registry>`), the
    /// registry itself second (no `ns`): the access log tells them apart.
    Failover,
}

/// The image name and `ctrpull pull` arguments that send ctrpull through `proxy` as
/// `via` says.
pub(crate) fn route(
    via: Route,
    registry: &Registry,
    proxy: SocketAddr,
    repo: &str,
) -> (String, Vec<String>) {
    match via {
        Route::Only => {
            let name = format!("{proxy}/{repo}:latest");
            (name.clone(), vec!["--plain-http".into(), name])
        }
        Route::Failover => {
            let name = format!("{}/{repo}:latest", registry.addr());
            let mirror = format!("{}=http://{proxy}", registry.addr());
            (
                name.clone(),
                vec!["--plain-http".into(), "--mirror".into(), mirror, name],
            )
        }
    }
}

/// `ctrpull pull --address <socket> --namespace <namespace> --config <config> <args>`;
/// the explicit config (and `DOCKER_CONFIG` pointing beside it) keeps the host's
/// configuration out of it.
pub(crate) fn ctrpull(
    containerd: &Containerd,
    namespace: &str,
    config: &Path,
    args: &[String],
) -> tokio::process::Command {
    let mut cmd = harness::ctrpull();
    cmd.arg("pull")
        .arg("--address")
        .arg(containerd.socket())
        .args(["--namespace", namespace])
        .arg("--config")
        .arg(config)
        .env(
            "DOCKER_CONFIG",
            config.parent().expect("config.toml is in a directory"),
        )
        .args(args);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The outcome of one `ctrpull pull`.
pub(crate) struct Run {
    pub(crate) output: Output,
    pub(crate) elapsed: Duration,
}

impl Run {
    pub(crate) fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Panics with the output unless the pull succeeded.
    pub(crate) fn ok(&self) -> &Self {
        assert!(
            self.output.status.success(),
            "ctrpull failed ({}) after {:.1?}:\nstdout: {}\nstderr: {}",
            self.output.status,
            self.elapsed,
            self.stdout(),
            self.stderr()
        );
        self
    }

    /// Megabytes (10^6 bytes) fetched, from the summary line "… fetched X MB in …".
    pub(crate) fn fetched_mb(&self) -> f64 {
        let stdout = self.stdout();
        stdout
            .split("fetched ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|mb| mb.parse().ok())
            .unwrap_or_else(|| panic!("no \"fetched X MB\" in the summary: {stdout}"))
    }
}

/// Adds `--report` to `args`, to a file in `files`; [`stalls`] reads it afterwards.
fn with_report(files: &Files, mut args: Vec<String>) -> (Vec<String>, PathBuf) {
    let report = files.path("report.json");
    args.splice(0..0, ["--report".to_string(), report.display().to_string()]);
    (args, report)
}

/// Downloads abandoned for stalling, from a one-image `--report` file: the stall
/// counters, which the read timeout and the trickle watchdog feed.
fn stalls(report: &Path) -> u64 {
    let text = std::fs::read_to_string(report).expect("read the report");
    let report: serde_json::Value = serde_json::from_str(&text).expect("parse the report");
    report["images"][0]["stalls"]
        .as_u64()
        .unwrap_or_else(|| panic!("no stall count in {text}"))
}

/// Runs `ctrpull pull` to the end (see [`ctrpull`]).
pub(crate) async fn pull(
    containerd: &Containerd,
    namespace: &str,
    config: &Path,
    args: &[String],
) -> Run {
    let started = Instant::now();
    let output = ctrpull(containerd, namespace, config, args)
        .output()
        .await
        .expect("run ctrpull");
    Run {
        output,
        elapsed: started.elapsed(),
    }
}

/// `name` is recorded in `namespace` pointing at the pushed digest, every blob is in
/// the content store, and the image runs.
fn assert_pulled(containerd: &Containerd, namespace: &str, name: &str, pushed: &Pushed) {
    let records = records(containerd, namespace);
    let (target, _) = records
        .get(name)
        .unwrap_or_else(|| panic!("no image record {name}: {records:?}"));
    assert_eq!(target, &pushed.digest, "record {name}");
    let content = containerd.ctr_ok(&["-n", namespace, "content", "ls", "-q"]);
    let config = pushed.image.config_descriptor.digest().to_string();
    let layers = pushed
        .image
        .layers
        .iter()
        .map(|l| l.descriptor.digest().to_string());
    for digest in layers.chain([config, pushed.digest.clone()]) {
        assert!(
            content.lines().any(|line| line.trim() == digest),
            "{digest} is not in the content store of {namespace}"
        );
    }
    assert_runs(containerd, namespace, name);
}

fn assert_no_lease(containerd: &Containerd, namespace: &str) {
    let left = leases(containerd, namespace);
    assert!(left.is_empty(), "leases left behind: {left:?}");
}

/// The summary's byte count is the image's: every byte received was kept.
fn assert_fetched_once(run: &Run, pushed: &Pushed) {
    let fetched = run.fetched_mb();
    let image = image_bytes(pushed) as f64 / 1e6;
    assert!(
        fetched <= image + SLACK_MB,
        "fetched {fetched} MB for an image of {image:.1} MB: bytes were fetched twice"
    );
}

/// The registry's GETs of blob `digest` of `repo`, in order.
fn gets_of(registry: &Registry, repo: &str, digest: &str) -> Vec<AccessLine> {
    registry
        .blob_gets(repo)
        .into_iter()
        .filter(|a| a.uri.split('?').next().is_some_and(|p| p.ends_with(digest)))
        .collect()
}

/// One fault on every connection.
pub(crate) fn every_connection(action: FaultAction) -> LinkConfig {
    LinkConfig {
        faults: vec![Fault {
            on: FaultTrigger::EveryConnection,
            action,
        }],
        ..LinkConfig::default()
    }
}

/// `args` with four connections, so that each carries several MiB of a [`BIG`]
/// image and a fault set to fire after a few MiB on every connection does fire
/// (with `auto`'s 16 connections each carries about 1.4 MB).
fn few_connections(mut args: Vec<String>) -> Vec<String> {
    args.extend(["--concurrency".to_string(), "4".to_string()]);
    args
}

/// For the failover tests: the faulty endpoint (the link) served part of the big
/// layer, and the healthy one (the registry itself) the rest, with Range requests
/// only and fewer bytes than the whole layer: what the faulty one delivered before it
/// broke was kept, not fetched again.
fn assert_rest_came_from_the_second_endpoint(registry: &Registry, repo: &str, pushed: &Pushed) {
    let (big, big_size) = big_layer(pushed);
    let gets = gets_of(registry, repo, &big);
    let (via_link, direct): (Vec<&AccessLine>, Vec<&AccessLine>) =
        gets.iter().partition(|a| a.query("ns").is_some());
    assert!(
        !via_link.is_empty(),
        "the faulty endpoint was never asked for the big layer: {gets:#?}"
    );
    assert!(
        !direct.is_empty() && direct.iter().all(|a| a.status == 206),
        "the second endpoint should serve the rest with Range requests: {gets:#?}"
    );
    let direct_bytes: u64 = direct.iter().map(|a| a.bytes).sum();
    eprintln!(
        "big layer {big_size} bytes: {} GETs through the link, {} Range GETs of {direct_bytes} bytes direct",
        via_link.len(),
        direct.len()
    );
    assert!(
        direct_bytes < big_size,
        "the second endpoint served {direct_bytes} of {big_size} bytes: the faulty endpoint's bytes were fetched again"
    );
}

/// Where a reset download resumes.
#[derive(Debug, Clone, Copy)]
enum Resume {
    /// On the next endpoint (the registry itself behind the faulty link).
    Failover,
    /// On the same endpoint, the only one there is.
    SameEndpoint,
}

/// Every connection to the link is reset mid-body: each broken chunk resumes from the
/// byte where it broke, on the second endpoint when there is one, else on the same
/// one, and the pull fetches the image's bytes once.
#[rstest]
#[case::failover_v1_7(Resume::Failover, Version::V1_7)]
#[case::same_endpoint_v1_6(Resume::SameEndpoint, Version::V1_6)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_body_resumes_from_the_offset(#[case] resume: Resume, #[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("faults-reset");
    let (repo, pushed) = push_image("reset", BIG).await;
    let (big, big_size) = big_layer(&pushed);
    // Failover: 2 MiB into every connection. Same endpoint: 3 MiB, so a resumed
    // chunk (at most 4 MiB - 3 MiB left) mostly completes on its next connection.
    let (reset_after, via) = match resume {
        Resume::Failover => (2 * MIB, Route::Failover),
        Resume::SameEndpoint => (3 * MIB, Route::Only),
    };
    let link = Link::start(
        registry_addr(env.registry),
        every_connection(FaultAction::ResetAfter(reset_after)),
    )
    .await
    .expect("start the link");
    let files = Files::new();
    let config = files.config("");
    let (name, args) = route(via, env.registry, link.addr(), &repo);
    let args = few_connections(args);

    let run = pull(&env.containerd, ns.name(), &config, &args).await;
    run.ok();
    let stats = link.stats();
    eprintln!(
        "{resume:?}, {version}: pulled in {:.2?}, fetched {} MB of {:.1} MB; link: {stats:?}",
        run.elapsed,
        run.fetched_mb(),
        image_bytes(&pushed) as f64 / 1e6
    );
    assert!(
        stats.faults.resets >= 1,
        "no connection was reset, so this proves nothing: {stats:?}"
    );
    assert_pulled(&env.containerd, ns.name(), &name, &pushed);
    assert_no_lease(&env.containerd, ns.name());
    assert_fetched_once(&run, &pushed);
    match resume {
        Resume::Failover => assert_rest_came_from_the_second_endpoint(env.registry, &repo, &pushed),
        Resume::SameEndpoint => {
            // Every byte came through the link, as Range GETs; ctrpull says it
            // resumed broken chunks, and the byte count above rules out resuming
            // from a chunk's start, so they were asked for again from where they
            // broke, of the one endpoint there is.
            let gets = gets_of(env.registry, &repo, &big);
            assert!(
                !gets.is_empty() && gets.iter().all(|a| a.status == 206),
                "expected only Range GETs of the big layer ({big_size} bytes): {gets:#?}"
            );
            let resumed = run.stderr().matches("resuming").count();
            assert!(
                resumed >= 1,
                "ctrpull never resumed a broken chunk:\n{}",
                run.stderr()
            );
        }
    }
}

/// The first endpoint stops sending mid-body and keeps the connection open: with
/// config.toml's `image_pull_progress_timeout = "3s"` (which ctrpull takes as its
/// read timeout) the stalled chunks are abandoned after 3 s and completed from the
/// second endpoint, well before the 30 s default would have let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_chunks_move_to_the_next_endpoint_after_the_read_timeout() {
    let env = harness::shared(Version::V1_6);
    let ns = env.containerd.namespace("faults-stall");
    let (repo, pushed) = push_image("stall", BIG).await;
    let link = Link::start(
        registry_addr(env.registry),
        every_connection(FaultAction::StallAfter(2 * MIB)),
    )
    .await
    .expect("start the link");
    let files = Files::new();
    let config = files.config(&format!(
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n  image_pull_progress_timeout = \"{}s\"\n",
        SHORT_READ_TIMEOUT.as_secs()
    ));
    let (name, args) = route(Route::Failover, env.registry, link.addr(), &repo);
    let (args, report) = with_report(&files, few_connections(args));

    let run = pull(&env.containerd, ns.name(), &config, &args).await;
    run.ok();
    assert!(
        stalls(&report) >= 1,
        "the read timeout was not counted as a stall"
    );
    let stats = link.stats();
    eprintln!(
        "stall, read timeout {SHORT_READ_TIMEOUT:?}: pulled in {:.2?}, fetched {} MB; link: {stats:?}",
        run.elapsed,
        run.fetched_mb()
    );
    assert!(
        stats.faults.stalls >= 1,
        "no connection stalled, so this proves nothing: {stats:?}"
    );
    assert!(
        run.elapsed >= SHORT_READ_TIMEOUT,
        "done in {:.1?}, before a stalled chunk could time out",
        run.elapsed
    );
    assert!(
        run.elapsed < DEFAULT_READ_TIMEOUT / 2,
        "the pull took {:.1?}: the stall was not cut off after {SHORT_READ_TIMEOUT:?}",
        run.elapsed
    );
    assert_pulled(&env.containerd, ns.name(), &name, &pushed);
    assert_no_lease(&env.containerd, ns.name());
    assert_fetched_once(&run, &pushed);
    assert_rest_came_from_the_second_endpoint(env.registry, &repo, &pushed);
}

/// Pushes an image ([`push_image`]) and pulls it (`-vv`) with the link first, its
/// `trigger`ed connections slowing to 10 KB/s after `after` bytes (never quite
/// stopping, so no read timeout fires), and the registry itself second. Kills the
/// pull and fails after [`TRICKLE_CAP`]; panics unless the pull succeeds and
/// something trickled. Returns the run, the repository, the image, its name as
/// pulled and the requests abandoned for stalling.
async fn pull_through_trickle(
    containerd: &Containerd,
    namespace: &str,
    trigger: FaultTrigger,
    after: u64,
) -> (Run, String, Pushed, String, u64) {
    let registry = harness::shared_registry();
    let (repo, pushed) = push_image("trickle", BIG).await;
    let link = Link::start(
        registry_addr(registry),
        LinkConfig {
            faults: vec![Fault {
                on: trigger,
                action: FaultAction::TrickleAfter {
                    bytes: after,
                    rate: 10_000,
                },
            }],
            ..LinkConfig::default()
        },
    )
    .await
    .expect("start the link");
    let files = Files::new();
    let config = files.config("");
    let (name, mut args) = route(Route::Failover, registry, link.addr(), &repo);
    args.insert(0, "-vv".into());
    let (args, report) = with_report(&files, args);

    let started = Instant::now();
    let pulling = ctrpull(containerd, namespace, &config, &args).output();
    // On timeout the child is dropped, and so killed (`kill_on_drop`).
    let output = match tokio::time::timeout(TRICKLE_CAP, pulling).await {
        Ok(output) => output.expect("run ctrpull"),
        Err(_) => panic!(
            "the pull did not finish within {TRICKLE_CAP:?} (killed); link: {:?}",
            link.stats()
        ),
    };
    let run = Run {
        output,
        elapsed: started.elapsed(),
    };
    run.ok();
    let stats = link.stats();
    eprintln!(
        "trickle on {trigger:?}: pulled in {:.2?}, fetched {} MB; link: {stats:?}",
        run.elapsed,
        run.fetched_mb()
    );
    assert!(
        stats.faults.trickles >= 1,
        "nothing trickled, so this proves nothing: {stats:?}"
    );
    let stalls = stalls(&report);
    (run, repo, pushed, name, stalls)
}

/// Every connection to the first endpoint slows to 10 KB/s after 1 MiB; a healthy
/// second endpoint is there. At that rate the rest of a chunk of the 22 MiB layer
/// takes minutes; with no faster peer to compare, each request's own first second
/// gives the slowdown away and the rest comes from the second endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_endpoint_is_left_for_the_next_one() {
    let env = harness::shared(Version::V1_7);
    let ns = env.containerd.namespace("faults-trickle");
    let (run, _, pushed, name, stalls) = pull_through_trickle(
        &env.containerd,
        ns.name(),
        FaultTrigger::EveryConnection,
        MIB,
    )
    .await;
    assert!(stalls >= 1, "no trickle was abandoned:\n{}", run.stderr());
    assert_pulled(&env.containerd, ns.name(), &name, &pushed);
    assert_no_lease(&env.containerd, ns.name());
    assert_fetched_once(&run, &pushed);
}

/// Every other connection to the first endpoint slows to 10 KB/s after 64 KiB while
/// the others run at loopback speed. The rest of a request crawling far below its
/// peers comes from elsewhere: a chunk's from an idle connection that takes it over
/// (a split), or, once the watchdog abandons the request after one window
/// ([`TRICKLE_WINDOW`]), with a Range request from the second endpoint (busybox's
/// layer comes in one stream, so it has only that way). (So early a mark leaves
/// every chunk on such a connection crawling for longer than a window; after a
/// whole MiB a connection could pass it just before its request's end and crawl
/// through the last few KiB unjudged.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trickling_far_below_its_peers_moves_to_the_next_endpoint() {
    let env = harness::shared(Version::V1_6);
    let ns = env.containerd.namespace("faults-trickle-some");
    let (run, repo, pushed, name, stalls) = pull_through_trickle(
        &env.containerd,
        ns.name(),
        FaultTrigger::EveryNthConnection(2),
        MIB / 16,
    )
    .await;
    let splits = run.stderr().matches("chunk split off").count();
    eprintln!("{stalls} requests abandoned, {splits} chunks split");
    assert!(
        stalls + splits as u64 >= 1,
        "nothing was abandoned or split, so every crawling request crawled to its end:\n{}",
        run.stderr()
    );
    assert!(
        run.elapsed < TRICKLE_WINDOW * 3,
        "the pull took {:.1?}: the trickling request was not abandoned after {TRICKLE_WINDOW:?}",
        run.elapsed
    );
    assert_pulled(&env.containerd, ns.name(), &name, &pushed);
    assert_no_lease(&env.containerd, ns.name());
    assert_fetched_once(&run, &pushed);
    // Whatever was abandoned, its rest came from the registry itself, from where it
    // broke off.
    let direct: Vec<AccessLine> = env
        .registry
        .blob_gets(&repo)
        .into_iter()
        .filter(|a| a.query("ns").is_none())
        .collect();
    assert!(
        (stalls == 0 || !direct.is_empty()) && direct.iter().all(|a| a.status == 206),
        "the second endpoint should serve the rest of what was abandoned with Range requests: {direct:#?}"
    );
}

/// The only endpoint is behind a link on which every other connection slows to
/// 50 KB/s after its first MiB: far below its peers, but the watchdog gives a
/// request a whole window ([`TRICKLE_WINDOW`]) before judging it. Once the other
/// chunks are done, idle connections take over the rest of each crawling chunk: the
/// pull splits chunks, ends with the right bytes and nothing fetched twice, and
/// within a window. (With splitting turned off, this pull took 8 s and split
/// nothing; with it, 2–3 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_take_over_the_rest_of_a_crawling_chunk() {
    let env = harness::shared(Version::V1_7);
    let ns = env.containerd.namespace("faults-split");
    let (repo, pushed) = push_image("split", BIG).await;
    let trickle = LinkConfig {
        faults: vec![Fault {
            on: FaultTrigger::EveryNthConnection(2),
            action: FaultAction::TrickleAfter {
                bytes: MIB,
                rate: 50_000,
            },
        }],
        ..LinkConfig::default()
    };
    let (link, name, run) =
        pull_through_link(env, ns.name(), registry_addr(env.registry), trickle, &repo).await;
    run.ok();
    let stats = link.stats();
    let splits = run.stderr().matches("chunk split off").count();
    eprintln!(
        "crawling chunks: pulled in {:.2?}, fetched {} MB, {splits} splits; link: {stats:?}",
        run.elapsed,
        run.fetched_mb()
    );
    assert!(
        stats.faults.trickles >= 1,
        "nothing trickled, so this proves nothing: {stats:?}"
    );
    assert!(splits >= 1, "no chunk was split:\n{}", run.stderr());
    assert!(
        run.elapsed < TRICKLE_WINDOW,
        "the pull took {:.1?}: it waited for crawling requests",
        run.elapsed
    );
    assert_pulled(&env.containerd, ns.name(), &name, &pushed);
    assert_no_lease(&env.containerd, ns.name());
    assert_fetched_once(&run, &pushed);
}

/// A layer under 2 MiB comes in one stream; on a link that caps every connection
/// at 128 kB/s, that stream alone would take 12 s. Nothing else is left to fetch, so
/// the connections it leaves idle take over the back of the stream, again and
/// again: the pull ends sooner than one connection could carry the layer, with the
/// right bytes, each fetched once, the back parts as Range requests. Behind a proxy
/// that drops `Range` headers, a back part comes back whole: the parts are taken
/// back and the stream, which was asked for the whole layer, carries on to its end,
/// so the layer is still fetched once. Behind one that answers every Range request
/// with 500, the parts fail and the layer is fetched again in one stream, which
/// needs no Range: the pull still succeeds.
#[rstest]
#[case::ranges_served(Ranges::Served)]
#[case::ranges_stripped(Ranges::Stripped)]
#[case::ranges_failing(Ranges::Failing)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_take_over_the_back_of_a_stream_at_the_end_of_a_run(
    #[case] ranges: Ranges,
) {
    const RATE: u64 = 128_000;
    let env = harness::shared(Version::V1_7);
    let ns = env.containerd.namespace("faults-handoff");
    let repo = harness::unique("test/handoff");
    let pushed = push(
        &repo,
        busybox_with(vec![LayerSource::Random {
            size: 3 * MIB / 2,
            seed: fresh_seed(),
        }]),
    )
    .await;
    let layer = &pushed.image.layers[1].descriptor;
    let (digest, size) = (layer.digest().to_string(), layer.size());
    assert!(
        size < 2 * MIB,
        "the layer must come in one stream, not in chunks"
    );
    let stripper =
        (ranges == Ranges::Stripped).then(|| RangeStripper::start(registry_addr(env.registry)));
    let failing = (ranges == Ranges::Failing).then(|| {
        let rule = Rule::always(Target::RangedBlobs, Action::Status(500));
        FaultyProxy::start(&env.registry.addr(), vec![rule])
    });
    let upstream = match (&stripper, &failing) {
        (Some(stripper), _) => stripper.addr(),
        (_, Some(failing)) => failing.addr().parse().expect("an IP address"),
        _ => registry_addr(env.registry),
    };
    let capped = LinkConfig {
        per_connection_rate: Some(RATE),
        ..LinkConfig::default()
    };
    let (_link, name, run) = pull_through_link(env, ns.name(), upstream, capped, &repo).await;
    run.ok();
    let stderr = run.stderr();
    let handoffs = stderr
        .matches("the back of a stream handed to an idle connection")
        .count();
    let one_stream = Duration::from_secs_f64(size as f64 / RATE as f64);
    eprintln!(
        "stream handoffs: pulled in {:.2?} (one stream: {one_stream:.1?}), {handoffs} handoffs",
        run.elapsed
    );
    assert_pulled(&env.containerd, ns.name(), &name, &pushed);
    assert_no_lease(&env.containerd, ns.name());
    let gets = gets_of(env.registry, &repo, &digest);
    assert!(handoffs >= 1, "no handoff was tried:\n{stderr}");
    match ranges {
        Ranges::Served => {
            assert!(
                handoffs >= 2,
                "the stream was handed off once only:\n{stderr}"
            );
            assert!(
                run.elapsed < one_stream,
                "the pull took {:.1?}, no less than one {RATE} B/s connection needs for {size} bytes",
                run.elapsed
            );
            assert!(
                gets.len() > handoffs && gets.iter().all(|a| a.status == 200 || a.status == 206),
                "expected the stream's GET and a Range GET per handoff: {gets:#?}"
            );
            assert_fetched_once(&run, &pushed);
        }
        Ranges::Stripped => {
            let stripper = stripper.expect("started for this case");
            assert!(
                stripper.stripped() >= 1,
                "no Range header reached the proxy"
            );
            assert!(
                stderr.contains("Range requests are ignored: the stream carries on to the end"),
                "the parts were not taken back:\n{stderr}"
            );
            assert!(
                gets.iter().all(|a| a.status == 200) && gets.iter().any(|a| a.bytes == size),
                "expected 200s only, one of them the whole {size}-byte layer: {gets:#?}"
            );
            assert_fetched_once(&run, &pushed);
        }
        Ranges::Failing => {
            let failing = failing.expect("started for this case");
            assert!(failing.faults() >= 1, "no Range request failed");
            assert!(
                stderr.contains("a part handed to an idle connection failed")
                    && stderr.contains("; fetching in one stream"),
                "the stream did not start over without ranges:\n{stderr}"
            );
        }
    }
}

/// A 3 MiB layer comes in Range chunks of about 256 KiB, all cut at once with
/// connections to spare; on a link capping every connection at 128 kB/s each chunk
/// would take two seconds on its own. Nothing crawls, so before the run's tail
/// nothing would be split; once every chunk is cut, idle connections take over the
/// back of chunks keeping pace with the others. The pull splits chunks and ends with
/// the right bytes, each fetched once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_take_over_the_back_of_chunks_keeping_pace_at_the_end_of_a_run() {
    let env = harness::shared(Version::V1_7);
    let ns = env.containerd.namespace("faults-tail");
    let repo = harness::unique("test/tail");
    let pushed = push(
        &repo,
        busybox_with(vec![LayerSource::Random {
            size: 3 * MIB,
            seed: fresh_seed(),
        }]),
    )
    .await;
    let layer = &pushed.image.layers[1].descriptor;
    let (digest, size) = (layer.digest().to_string(), layer.size());
    assert!(size >= 2 * MIB, "the layer must come in chunks");
    let capped = LinkConfig {
        per_connection_rate: Some(128_000),
        ..LinkConfig::default()
    };
    let upstream = registry_addr(env.registry);
    let (link, name, run) = pull_through_link(env, ns.name(), upstream, capped, &repo).await;
    run.ok();
    let stderr = run.stderr();
    let splits = stderr
        .matches("chunk split off to an idle connection")
        .count();
    eprintln!(
        "tail splits: pulled in {:.2?}, {splits} splits; link: {:?}",
        run.elapsed,
        link.stats()
    );
    assert!(splits >= 1, "no chunk was split in the tail:\n{stderr}");
    assert!(
        !stderr.contains("trickling"),
        "a request was judged crawling, so this proves nothing about the tail:\n{stderr}"
    );
    let gets = gets_of(env.registry, &repo, &digest);
    assert!(
        gets.len() > splits && gets.iter().all(|a| a.status == 206),
        "expected Range GETs only, one per chunk and split: {gets:#?}"
    );
    assert_pulled(&env.containerd, ns.name(), &name, &pushed);
    assert_no_lease(&env.containerd, ns.name());
    assert_fetched_once(&run, &pushed);
}

/// Pulls `repo` with `-vv` and an empty configuration through a link emulator set
/// as `link` in front of `upstream`, the only endpoint; returns the link (for its
/// counters), the image name and the run.
async fn pull_through_link(
    env: &Env,
    namespace: &str,
    upstream: SocketAddr,
    link: LinkConfig,
    repo: &str,
) -> (Link, String, Run) {
    let link = Link::start(upstream, link).await.expect("start the link");
    let files = Files::new();
    let config = files.config("");
    let (name, mut args) = route(Route::Only, env.registry, link.addr(), repo);
    args.insert(0, "-vv".into());
    let run = pull(&env.containerd, namespace, &config, &args).await;
    (link, name, run)
}

/// How the endpoint of the stream handoff test treats Range requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ranges {
    Served,
    /// The header is dropped: 200 and the whole blob.
    Stripped,
    /// 500.
    Failing,
}

/// The only endpoint sits behind a proxy that drops `Range` headers, so every ranged
/// GET gets 200 and the whole blob: ctrpull notices and fetches the big layer in one
/// stream instead of failing or writing a whole blob where a chunk belongs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_ignored_falls_back_to_one_stream() {
    let env = harness::shared(Version::V1_7);
    let ns = env.containerd.namespace("faults-range");
    let (repo, pushed) = push_image("norange", BIG).await;
    let (big, big_size) = big_layer(&pushed);
    let proxy = RangeStripper::start(registry_addr(env.registry));
    let files = Files::new();
    let config = files.config("");
    let (name, args) = route(Route::Only, env.registry, proxy.addr(), &repo);

    let run = pull(&env.containerd, ns.name(), &config, &args).await;
    run.ok();
    eprintln!(
        "range ignored: pulled in {:.2?}, fetched {} MB, {} Range headers dropped",
        run.elapsed,
        run.fetched_mb(),
        proxy.stripped()
    );
    assert!(
        proxy.stripped() >= 1,
        "ctrpull sent no Range request, so this proves nothing"
    );
    assert_pulled(&env.containerd, ns.name(), &name, &pushed);
    assert_no_lease(&env.containerd, ns.name());
    // Whole bodies answered to ranged GETs are dropped unread, not counted.
    assert_fetched_once(&run, &pushed);
    let gets = gets_of(env.registry, &repo, &big);
    assert!(
        gets.iter().all(|a| a.status == 200) && gets.iter().any(|a| a.bytes == big_size),
        "expected 200s only, one of them the whole {big_size}-byte layer: {gets:#?}"
    );
}

/// Bytes in the active ingest `ref_key` of `namespace`, from `ctr content active`
/// (go-units sizes: "0B", "33.55MB"; four significant digits, so a slight
/// underestimate).
pub(crate) fn ingest_bytes(containerd: &Containerd, namespace: &str, ref_key: &str) -> Option<u64> {
    containerd
        .ctr_ok(&["-n", namespace, "content", "active"])
        .lines()
        .skip(1)
        .find_map(|line| {
            let mut cols = line.split_whitespace();
            if cols.next()? != ref_key {
                return None;
            }
            let size = cols.next()?;
            let unit_at = size.find(|c: char| c.is_ascii_alphabetic())?;
            let (number, unit) = size.split_at(unit_at);
            let factor = match unit {
                "B" => 1.0,
                "kB" => 1e3,
                "MB" => 1e6,
                "GB" => 1e9,
                _ => return None,
            };
            Some((number.parse::<f64>().ok()? * factor) as u64)
        })
}

/// `ctrpull pull` killed with SIGKILL mid-download leaves a partial ingest (held by
/// its lease); the next run resumes it and fetches only the rest.
///
/// The killed run's lease cannot be deleted by anyone but containerd's expiry (24 h,
/// [`ctrpull::pull::DEFAULT_LEASE_EXPIRY`], checked on its `gc.expire` label): the
/// assertion is that it is the only lease left, i.e. the second run deleted its own.
/// The namespace purge removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pull_resumes_from_the_partial_ingest() {
    let env = harness::shared(Version::V1_7);
    let ns = env.containerd.namespace("faults-kill");
    let (repo, pushed) = push_image("killed", 64 * MIB).await;
    let (big, big_size) = big_layer(&pushed);
    // 100 Mbit/s: the big layer takes over 5 s, leaving seconds to catch it half
    // written.
    let link = Link::start(
        registry_addr(env.registry),
        LinkConfig {
            rate: Some(parse_rate("100mbit").expect("a valid rate")),
            ..LinkConfig::default()
        },
    )
    .await
    .expect("start the link");
    let files = Files::new();
    let config = files.config("");
    let (name, args) = route(Route::Only, env.registry, link.addr(), &repo);
    // ctrpull's ingest ref for a layer, which is containerd's own (`remotes.MakeRefKey`).
    let ingest = format!("layer-{big}");

    // Kill once the big layer's ingest holds two chunks: a fixed delay could find
    // nothing written yet, or the pull done, on a loaded machine. Two chunks are more
    // than the busybox layer (which may already be in the content store) weighs, so
    // a rerun that started over could not pass for one that resumed.
    let started = Instant::now();
    let mut child = ctrpull(&env.containerd, ns.name(), &config, &args)
        .spawn()
        .expect("start ctrpull");
    let deadline = started + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("poll ctrpull") {
            let output = child.wait_with_output().await.expect("ctrpull's output");
            panic!(
                "ctrpull ended ({status}) before the big layer was partly written:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        if ingest_bytes(&env.containerd, ns.name(), &ingest).is_some_and(|n| n >= KILL_AT) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {KILL_AT} bytes in ingest {ingest} after 30 s; link: {:?}",
            link.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.start_kill().expect("SIGKILL ctrpull");
    let status = child.wait().await.expect("reap ctrpull");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    let killed_after = started.elapsed();

    let partial = ingest_bytes(&env.containerd, ns.name(), &ingest)
        .unwrap_or_else(|| panic!("the kill left no ingest {ingest}"));
    assert!(
        partial >= KILL_AT && partial < big_size,
        "ingest {ingest} holds {partial} of {big_size} bytes"
    );
    assert!(
        records(&env.containerd, ns.name()).is_empty(),
        "the killed pull left an image record"
    );
    let killed_lease = leases(&env.containerd, ns.name());
    assert_eq!(killed_lease.len(), 1, "the killed pull's lease");
    assert_expires_in(
        &env.containerd,
        ns.name(),
        &killed_lease[0],
        DEFAULT_LEASE_EXPIRY,
    );

    link.set_config(LinkConfig::default())
        .expect("lift the rate limit");
    let run = pull(&env.containerd, ns.name(), &config, &args).await;
    run.ok();
    let fetched = run.fetched_mb();
    let image = image_bytes(&pushed) as f64 / 1e6;
    eprintln!(
        "killed after {killed_after:.2?} with {partial} bytes in the ingest; the rerun took {:.2?} and fetched {fetched} MB of {image:.1} MB",
        run.elapsed
    );
    assert_pulled(&env.containerd, ns.name(), &name, &pushed);
    // The ingest only grows after our reading of it, so this bound holds either way.
    let rest = (image_bytes(&pushed) - partial) as f64 / 1e6;
    assert!(
        fetched <= rest + SLACK_MB,
        "the rerun fetched {fetched} MB; only {rest:.1} MB of {image:.1} MB were missing"
    );
    assert_eq!(
        leases(&env.containerd, ns.name()),
        killed_lease,
        "the rerun should delete its own lease and leave the killed run's to expire"
    );
}

/// Asserts that lease `id` of `namespace` carries containerd's `gc.expire` label,
/// set to `expiry` from about now: the garbage collector drops it by itself.
fn assert_expires_in(containerd: &Containerd, namespace: &str, id: &str, expiry: Duration) {
    let listed = containerd.ctr_ok(&["-n", namespace, "leases", "ls"]);
    let line = listed
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no lease {id}:\n{listed}"));
    let at = line
        .split(|c: char| c == ',' || c.is_whitespace())
        .find_map(|label| label.strip_prefix("containerd.io/gc.expire="))
        .unwrap_or_else(|| panic!("lease {id} has no gc.expire label: {line}"));
    let at = humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{line}: {e}"));
    let left = at
        .duration_since(SystemTime::now())
        .unwrap_or_else(|_| panic!("lease {id} has already expired: {line}"));
    // The pull that made it started less than two minutes ago (it was caught within
    // 30 s); the label has whole seconds.
    assert!(
        left <= expiry && left + Duration::from_secs(120) > expiry,
        "lease {id} expires in {left:?}, not {expiry:?}: {line}"
    );
}

/// Two `ctrpull pull` processes of one image at once, in one namespace, through a
/// 100 Mbit/s link: both succeed, and the big layer crosses the wire about once (the
/// second waits on containerd's ingest lock, then finds the blob committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ctrpulls_of_one_image_fetch_it_once() {
    let env = harness::shared(Version::V1_6);
    let ns = env.containerd.namespace("faults-twice");
    let (repo, pushed) = push_image("twice", BIG).await;
    let (big, big_size) = big_layer(&pushed);
    let link = Link::start(
        registry_addr(env.registry),
        LinkConfig {
            rate: Some(parse_rate("100mbit").expect("a valid rate")),
            ..LinkConfig::default()
        },
    )
    .await
    .expect("start the link");
    let files = Files::new();
    let config = files.config("");
    let (name, args) = route(Route::Only, env.registry, link.addr(), &repo);

    let (first, second) = tokio::join!(
        pull(&env.containerd, ns.name(), &config, &args),
        pull(&env.containerd, ns.name(), &config, &args)
    );
    first.ok();
    second.ok();
    let (a, b) = (first.fetched_mb(), second.fetched_mb());
    eprintln!(
        "two ctrpulls: {:.2?} fetching {a} MB and {:.2?} fetching {b} MB; link: {:?}",
        first.elapsed,
        second.elapsed,
        link.stats()
    );
    // Both started together; the big layer alone takes ~1.8 s at 100 Mbit/s, so
    // neither can have found the image complete when it started.
    let shortest = first.elapsed.min(second.elapsed);
    assert!(
        shortest > Duration::from_secs(1),
        "a pull took only {shortest:.2?}: the two did not overlap"
    );
    assert_pulled(&env.containerd, ns.name(), &name, &pushed);
    assert_no_lease(&env.containerd, ns.name());
    let served: u64 = gets_of(env.registry, &repo, &big)
        .iter()
        .map(|a| a.bytes)
        .sum();
    assert!(
        served >= big_size && served <= big_size + big_size / 4,
        "the registry served {served} bytes of the {big_size}-byte layer"
    );
    let image = image_bytes(&pushed) as f64 / 1e6;
    assert!(
        a + b <= image * 1.25,
        "the two pulls fetched {a} + {b} MB of a {image:.1} MB image"
    );
}

/// Image records a test made in the shared `k8s.io` namespace (kubelet's, which
/// outlives the test), removed when dropped, panic or not.
pub(crate) struct K8sImages<'a> {
    pub(crate) containerd: &'a Containerd,
    pub(crate) names: Vec<String>,
}

impl Drop for K8sImages<'_> {
    fn drop(&mut self) {
        let mut args = vec!["-n", "k8s.io", "images", "rm"];
        args.extend(self.names.iter().map(String::as_str));
        // Some names may never have been recorded: errors are expected here.
        let _ = self.containerd.ctr(&args);
    }
}

/// A CRI PullImage (containerd's own pull) and `ctrpull pull` of one image at once in
/// `k8s.io`, through a 100 Mbit/s link: both succeed, ctr lists the image with the
/// right digest, and the big layer crosses the wire about once, since ctrpull uses
/// containerd's ingest refs and so each waits on the other's download.
#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pull_and_ctrpull_at_once(#[case] version: Version) {
    let env = harness::shared(version);
    let (repo, pushed) = push_image("cri-race", BIG).await;
    let (big, big_size) = big_layer(&pushed);
    let link = Link::start(
        registry_addr(env.registry),
        LinkConfig {
            rate: Some(parse_rate("100mbit").expect("a valid rate")),
            ..LinkConfig::default()
        },
    )
    .await
    .expect("start the link");
    // containerd reaches a loopback registry without hosts.toml over plain HTTP.
    let (name, args) = route(Route::Only, env.registry, link.addr(), &repo);
    let config_digest = pushed.image.config_descriptor.digest().to_string();
    let _cleanup = K8sImages {
        containerd: &env.containerd,
        names: vec![
            name.clone(),
            format!("{}/{repo}@{}", link.addr(), pushed.digest),
            config_digest.clone(),
        ],
    };
    let leases_before = leases(&env.containerd, "k8s.io");
    let files = Files::new();
    let config = files.config("");
    let mut cri = ctrpull::cri::ImageService::connect(&env.containerd.socket())
        .await
        .expect("connect to CRI");

    let started = Instant::now();
    let (run, cri_pulled) = tokio::join!(pull(&env.containerd, "k8s.io", &config, &args), async {
        let pulled = cri.pull_image(&name).await;
        (pulled, started.elapsed())
    });
    run.ok();
    let (image_ref, cri_elapsed) = (cri_pulled.0.expect("CRI PullImage"), cri_pulled.1);
    eprintln!(
        "{version}: ctrpull {:.2?} (fetched {} MB), CRI {cri_elapsed:.2?}; link: {:?}",
        run.elapsed,
        run.fetched_mb(),
        link.stats()
    );
    assert_eq!(image_ref, config_digest, "CRI's image ref");
    let records = records(&env.containerd, "k8s.io");
    let (target, labels) = records
        .get(&name)
        .unwrap_or_else(|| panic!("ctr lists no {name} in k8s.io"));
    assert_eq!(target, &pushed.digest, "record {name}");
    assert!(
        labels.contains("io.cri-containerd.image=managed"),
        "{name}: {labels}"
    );
    let status = cri
        .image_status(&name)
        .await
        .expect("CRI ImageStatus")
        .unwrap_or_else(|| panic!("CRI does not know {name}"));
    assert_eq!(status.id, config_digest);
    let served: u64 = gets_of(env.registry, &repo, &big)
        .iter()
        .map(|a| a.bytes)
        .sum();
    assert!(
        served >= big_size && served <= big_size + big_size / 4,
        "the registry served {served} bytes of the {big_size}-byte layer"
    );
    // Other tests pull into k8s.io too: wait for whatever lease is new to go.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let new: Vec<String> = leases(&env.containerd, "k8s.io")
            .into_iter()
            .filter(|l| !leases_before.contains(l))
            .collect();
        if new.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "leases left in k8s.io: {new:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A TCP proxy in front of a registry that deletes the `Range` header from every
/// request, as some caches and proxies do: the registry then answers each ranged GET
/// with 200 and the whole blob. On plain threads like the harness's fake endpoints.
/// Requests must have no body (ctrpull only sends GETs).
struct RangeStripper {
    addr: SocketAddr,
    stripped: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl RangeStripper {
    fn start(upstream: SocketAddr) -> RangeStripper {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");
        let stripped = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (stripped, stop) = (stripped.clone(), stop.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    // `Drop` wakes us with a connection of its own after setting `stop`.
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let stripped = stripped.clone();
                    std::thread::spawn(move || {
                        let _ = relay(client, upstream, &stripped);
                    });
                }
            })
        };
        RangeStripper {
            addr,
            stripped,
            stop,
            accept: Some(accept),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `Range` headers dropped so far.
    fn stripped(&self) -> usize {
        self.stripped.load(Ordering::SeqCst)
    }
}

impl Drop for RangeStripper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Serves one client connection: responses copied as they come, request heads
/// forwarded whole (one write each) without their `Range` line.
fn relay(client: TcpStream, upstream: SocketAddr, stripped: &AtomicUsize) -> io::Result<()> {
    let mut server = TcpStream::connect(upstream)?;
    server.set_nodelay(true)?;
    let responses = {
        let (mut from, mut to) = (server.try_clone()?, client.try_clone()?);
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Both);
        })
    };
    let mut requests = BufReader::new(client);
    let (mut line, mut head) = (Vec::new(), Vec::new());
    loop {
        line.clear();
        if requests.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.len() >= 6 && line[..6].eq_ignore_ascii_case(b"range:") {
            stripped.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            server.write_all(&head)?;
            head.clear();
        }
    }
    let _ = server.shutdown(Shutdown::Write);
    let _ = responses.join();
    Ok(())
}
