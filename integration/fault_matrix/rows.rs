//! The rows of the fault matrix: one scenario per fault, each returning the outcome
//! printed in the table and panicking when a check fails.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use ctrpull::bench::link::{parse_rate, FaultAction, FaultTrigger, Link, LinkConfig};

use super::{assert_clean, assert_image, assert_verified, Built, Image, Row};
use crate::faults::{
    every_connection, ingest_bytes, pull, registry_addr, route, K8sImages, Route, Run, KILL_AT, MIB,
};
use crate::harness::faulty::{Action, Rule, Target};
use crate::harness::{self, ClosedPort, Containerd, Env, FaultyProxy, Registry, Version};
use crate::mirrors::{Files, CRI};
use crate::pull::{leases, records};

/// The random layer of most rows: three Range chunks, so chunked fetching, resume
/// and failover all take part, yet quick to build and pull.
const LAYER: u64 = 10 * MIB;

/// The random layer of rows that act while the pull runs (kill, restart, two pulls,
/// CRI): big enough to be caught half-written through a paced link.
const BIG_LAYER: u64 = 22 * MIB;

/// The progress timeout the stall row configures (config.toml
/// `image_pull_progress_timeout`).
const STALL_TIMEOUT: &str = "3s";

/// How long a row waits for a pull before it gives up on it.
const PULL_CAP: Duration = Duration::from_secs(90);

/// The size of `row`'s random layer.
pub(super) fn layer_size(row: Row) -> u64 {
    match row {
        Row::KilledThenRerun | Row::ContainerdRestarted | Row::TwoCtrpulls | Row::CriPullAtOnce => {
            BIG_LAYER
        }
        _ => LAYER,
    }
}

/// Runs `row` with `built` against containerd `version`; the outcome for the table.
pub(super) async fn run(row: Row, version: Version, built: &Built) -> String {
    let env = harness::shared(version);
    let registry = env.registry.addr();
    match row {
        Row::DeadEndpoint => {
            let dead = ClosedPort::new();
            first_endpoint_fails(
                env,
                built,
                "dead",
                &dead.addr(),
                "",
                Takeover::Required,
                String::new,
            )
            .await
        }
        Row::SilentEndpoint => silent_endpoint(env, built).await,
        Row::DiesMidRun => {
            // The resolve (HEAD and GET of the manifest) and a blob or two, then gone.
            let proxy = FaultyProxy::dying_after(&registry, 3);
            let outcome = first_endpoint_fails(
                env,
                built,
                "dies",
                &proxy.addr(),
                "",
                Takeover::Required,
                || format!("{} requests", proxy.seen().len()),
            )
            .await;
            assert!(
                proxy.is_dead(),
                "the endpoint never died, so this proves nothing"
            );
            outcome
        }
        Row::Status500 | Row::Status502 => {
            let status = if row == Row::Status500 { 500 } else { 502 };
            let rule = Rule::always(Target::Blobs, Action::Status(status));
            faulty_first_endpoint(env, built, "status", rule).await
        }
        Row::Status503 => {
            let rule = Rule::always(Target::Any, Action::Status(503));
            faulty_first_endpoint(env, built, "unavailable", rule).await
        }
        Row::NotFoundOnOneMirror => {
            let rule = Rule::always(Target::Any, Action::Status(404));
            faulty_first_endpoint(env, built, "notfound", rule).await
        }
        Row::WrongBytesOnMirror => {
            let rule = Rule::always(Target::Blobs, Action::Corrupt);
            faulty_first_endpoint(env, built, "corrupt", rule).await
        }
        Row::TruncatedBody => {
            let rule = Rule::always(Target::Blobs, Action::Truncate);
            faulty_first_endpoint(env, built, "truncated", rule).await
        }
        Row::WrongContentLength => {
            let rule = Rule::always(Target::Blobs, Action::ShortLength);
            faulty_first_endpoint(env, built, "shortlength", rule).await
        }
        Row::AuthFailureOnOneMirror => auth_failure_on_one_mirror(env, built).await,
        Row::TooManyRequests => too_many_requests(env, built).await,
        Row::RangeIgnored => range_ignored(env, built).await,
        Row::WrongBytesOnlyEndpoint => wrong_bytes_only_endpoint(env, built).await,
        // Half a MiB: under the smallest Range request, so every connection that
        // carries a layer breaks, however the layer is cut.
        Row::ResetMidBody => {
            let fault = every_connection(FaultAction::ResetAfter(MIB / 2));
            link_first(env, built, "reset", fault, "", Takeover::Required).await
        }
        Row::Stall => {
            let fault = every_connection(FaultAction::StallAfter(MIB / 2));
            let timeout = format!(
                "[plugins.\"io.containerd.grpc.v1.cri\"]\n  image_pull_progress_timeout = \"{STALL_TIMEOUT}\"\n"
            );
            link_first(env, built, "stall", fault, &timeout, Takeover::Required).await
        }
        // Every other connection crawls after 64 KiB: each request it carries, bar
        // the smallest (manifests, configs), has ten seconds and more left to crawl, so
        // the watchdog catches it whatever size the pull cuts its chunks to. (After a
        // whole MiB, a connection could pass the mark a few KiB before its request's
        // end, crawl through the rest unjudged and leave the pull with nothing to
        // move.)
        Row::Trickle => {
            let mut fault = every_connection(FaultAction::TrickleAfter {
                bytes: MIB / 16,
                rate: 10_000,
            });
            fault.faults[0].on = FaultTrigger::EveryNthConnection(2);
            // The rest of a crawling chunk or one-stream blob may be taken over by
            // the first endpoint's healthy connections before the watchdog judges
            // it: the second endpoint is needed only for what they do not take.
            link_first(env, built, "trickle", fault, "", Takeover::Allowed).await
        }
        Row::KilledThenRerun => killed_then_rerun(env, built).await,
        Row::TwoCtrpulls => two_ctrpulls(env, built).await,
        Row::CriPullAtOnce => cri_pull_at_once(env, built).await,
        Row::ContainerdRestarted => containerd_restarted(version, built).await,
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("a 127.0.0.1:PORT address")
}

/// Runs a pull, killing it after [`PULL_CAP`].
async fn capped_pull(
    containerd: &Containerd,
    namespace: &str,
    config: &Path,
    args: &[String],
) -> Run {
    match tokio::time::timeout(PULL_CAP, pull(containerd, namespace, config, args)).await {
        Ok(run) => run,
        Err(_) => panic!("the pull did not end within {PULL_CAP:?}"),
    }
}

/// Whether the second endpoint must serve blobs for a row to pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takeover {
    /// The first endpoint cannot deliver the image alone.
    Required,
    /// It can, slowly: the pull may route around the fault within the first.
    Allowed,
}

/// Pulls `<registry>/<repo>:latest` with `first` as a `--mirror` in front of the
/// shared registry; asserts the pull succeeded, the image is right and clean, the
/// registry itself served blobs (the second endpoint took over) unless `takeover`
/// allows otherwise, and a second run works. `config` is config.toml's body; `first_said` tells, for a failure message,
/// what the first endpoint saw.
async fn first_endpoint_fails(
    env: &Env,
    built: &Built,
    prefix: &str,
    first: &str,
    config: &str,
    takeover: Takeover,
    first_said: impl Fn() -> String,
) -> String {
    let ns = env.containerd.namespace(&format!("matrix-{prefix}"));
    let pushed = built.push(env.registry, prefix).await;
    let repo = pushed.repo.clone();
    let files = Files::new();
    let config = files.config(config);
    let (name, args) = route(Route::Failover, env.registry, addr(first), &repo);
    let run = capped_pull(&env.containerd, ns.name(), &config, &args).await;
    run.ok();
    assert_image(&env.containerd, ns.name(), &name, &pushed);
    assert_clean(&env.containerd, ns.name());
    let direct = env
        .registry
        .blob_gets(&repo)
        .into_iter()
        .filter(|a| a.query("ns").is_none())
        .count();
    assert!(
        direct >= 1 || takeover == Takeover::Allowed,
        "the registry itself served no blob: the second endpoint never took over; the first saw {}; ctrpull said:\n{}",
        first_said(),
        run.stderr()
    );
    rerun(env, ns.name(), &config, &args, &name, &pushed).await;
    format!(
        "pulled, {direct} blob GETs from the 2nd endpoint, in {:.1} s; rerun ok",
        run.elapsed.as_secs_f64()
    )
}

/// A second run of the same pull succeeds and leaves the image right and clean.
async fn rerun(
    env: &Env,
    namespace: &str,
    config: &Path,
    args: &[String],
    name: &str,
    pushed: &Image<'_>,
) {
    capped_pull(&env.containerd, namespace, config, args)
        .await
        .ok();
    let records = records(&env.containerd, namespace);
    assert_eq!(
        records.get(name).map(|r| r.0.as_str()),
        Some(pushed.digest.as_str()),
        "after the rerun"
    );
    assert_clean(&env.containerd, namespace);
}

/// [`first_endpoint_fails`] with a [`FaultyProxy`] applying `rule` as the first
/// endpoint; asserts the fault fired.
async fn faulty_first_endpoint(env: &Env, built: &Built, prefix: &str, rule: Rule) -> String {
    let (outcome, faults) = faulted_first_endpoint(env, built, prefix, rule).await;
    format!("{outcome}; {faults} faulted")
}

/// [`faulty_first_endpoint`]'s outcome, and how many requests got the fault.
async fn faulted_first_endpoint(
    env: &Env,
    built: &Built,
    prefix: &str,
    rule: Rule,
) -> (String, usize) {
    let proxy = FaultyProxy::start(&env.registry.addr(), vec![rule]);
    let outcome = first_endpoint_fails(
        env,
        built,
        prefix,
        &proxy.addr(),
        "",
        Takeover::Required,
        || format!("{} faults", proxy.faults()),
    )
    .await;
    let faults = proxy.faults();
    assert!(
        faults >= 1,
        "no request got {rule:?}, so this proves nothing"
    );
    (outcome, faults)
}

/// The first endpoint accepts connections, reads each request and never answers: a
/// hung mirror. Its first request costs the response timeout; then the endpoint
/// cools down and the rest of the pull goes to the second without asking it again,
/// where containerd's pull would wait on it for every blob.
async fn silent_endpoint(env: &Env, built: &Built) -> String {
    let rule = Rule::always(Target::Any, Action::Silent);
    let (outcome, asked) = faulted_first_endpoint(env, built, "silent", rule).await;
    // Once per run (the pull and the rerun, two processes): the resolve's request
    // times out, and nothing after it goes there again.
    assert!(
        asked <= 2,
        "the silent endpoint was asked {asked} times in two runs: it should cool down after its first timeout"
    );
    format!("{outcome}; asked {asked} times")
}

/// [`first_endpoint_fails`] with the link emulator, faulted as `link` says, as the
/// first endpoint; asserts a fault fired.
async fn link_first(
    env: &Env,
    built: &Built,
    prefix: &str,
    link: LinkConfig,
    config: &str,
    takeover: Takeover,
) -> String {
    let link = Link::start(registry_addr(env.registry), link)
        .await
        .expect("start the link");
    let outcome = first_endpoint_fails(
        env,
        built,
        prefix,
        &link.addr().to_string(),
        config,
        takeover,
        || format!("{:?}", link.stats()),
    )
    .await;
    let fired = link.stats().faults.total();
    assert!(
        fired >= 1,
        "no connection was faulted, so this proves nothing"
    );
    format!("{outcome}; {fired} connections faulted")
}

/// The first mirror is a real htpasswd registry for which config.toml holds a wrong
/// password: the pull continues on the second, and the password is never printed.
async fn auth_failure_on_one_mirror(env: &Env, built: &Built) -> String {
    let password = harness::unique("Right");
    let locked = Registry::builder().htpasswd("alice", &password).start();
    let wrong = harness::unique("WrongSecret");
    let config = format!(
        "[{CRI}.configs.\"{}\".auth]\n  username = \"alice\"\n  password = \"{wrong}\"\n",
        locked.addr()
    );
    let outcome = first_endpoint_fails(
        env,
        built,
        "authfail",
        &locked.addr(),
        &config,
        Takeover::Required,
        String::new,
    )
    .await;
    let refused = locked
        .access_log()
        .into_iter()
        .filter(|a| a.by_ctrpull() && a.status == 401)
        .count();
    assert!(refused >= 1, "the locked mirror never refused ctrpull");
    // The challenge and the refusal of the wrong password, once in each of the two
    // runs (the pull and its rerun); the blobs after that go to the registry first.
    assert!(
        refused <= 4,
        "the locked mirror refused {refused} requests: it should be asked last after its first refusal"
    );
    format!("{outcome}; {refused} requests refused (401)")
}

/// The only endpoint answers the first blob requests with 429 and `Retry-After: 1`:
/// each is asked again, no sooner than it was told.
async fn too_many_requests(env: &Env, built: &Built) -> String {
    let ns = env.containerd.namespace("matrix-429");
    let pushed = built.push(env.registry, "toomany").await;
    let repo = pushed.repo.clone();
    let rule = Rule::first(
        2,
        Target::Blobs,
        Action::RetryAfter {
            status: 429,
            seconds: 1,
        },
    );
    let proxy = FaultyProxy::start(&env.registry.addr(), vec![rule]);
    let files = Files::new();
    let config = files.config("");
    let (name, args) = route(Route::Only, env.registry, addr(&proxy.addr()), &repo);
    let run = capped_pull(&env.containerd, ns.name(), &config, &args).await;
    run.ok();
    assert_image(&env.containerd, ns.name(), &name, &pushed);
    assert_clean(&env.containerd, ns.name());
    let seen = proxy.seen();
    let deferred: Vec<_> = seen.iter().filter(|s| s.action.is_some()).collect();
    assert_eq!(deferred.len(), 2, "two requests should get 429");
    for told in &deferred {
        let again = seen.iter().find(|s| {
            s.action.is_none()
                && s.at > told.at
                && s.request.target == told.request.target
                && s.request.header("range") == told.request.header("range")
        });
        let again = again.unwrap_or_else(|| {
            panic!(
                "{} ({:?}) was not asked again",
                told.request.target,
                told.request.header("range")
            )
        });
        let waited = again.at - told.at;
        assert!(
            waited >= Duration::from_millis(950),
            "asked again after {waited:?}, before Retry-After: 1"
        );
    }
    rerun(env, ns.name(), &config, &args, &name, &pushed).await;
    format!(
        "waited out Retry-After on the same endpoint; pulled in {:.1} s; rerun ok",
        run.elapsed.as_secs_f64()
    )
}

/// The only endpoint drops `Range` headers: the big layer comes in one stream.
async fn range_ignored(env: &Env, built: &Built) -> String {
    let ns = env.containerd.namespace("matrix-norange");
    let pushed = built.push(env.registry, "norange").await;
    let repo = pushed.repo.clone();
    let rule = Rule::always(Target::Blobs, Action::IgnoreRange);
    let proxy = FaultyProxy::start(&env.registry.addr(), vec![rule]);
    let files = Files::new();
    let config = files.config("");
    let (name, args) = route(Route::Only, env.registry, addr(&proxy.addr()), &repo);
    let run = capped_pull(&env.containerd, ns.name(), &config, &args).await;
    run.ok();
    assert_image(&env.containerd, ns.name(), &name, &pushed);
    assert_clean(&env.containerd, ns.name());
    let ranged = proxy
        .seen()
        .iter()
        .filter(|s| s.request.header("range").is_some())
        .count();
    assert!(
        ranged >= 1,
        "ctrpull sent no Range request, so this proves nothing"
    );
    rerun(env, ns.name(), &config, &args, &name, &pushed).await;
    format!("{ranged} Range headers dropped; one stream instead; rerun ok")
}

/// The only endpoint corrupts every blob: the pull fails naming the digest mismatch,
/// commits nothing wrong, and succeeds once the endpoint is healthy again.
async fn wrong_bytes_only_endpoint(env: &Env, built: &Built) -> String {
    let ns = env.containerd.namespace("matrix-corrupt-only");
    let pushed = built.push(env.registry, "corruptonly").await;
    let repo = pushed.repo.clone();
    let proxy = FaultyProxy::start(
        &env.registry.addr(),
        vec![Rule::always(Target::Blobs, Action::Corrupt)],
    );
    let files = Files::new();
    let config = files.config("");
    let (name, args) = route(Route::Only, env.registry, addr(&proxy.addr()), &repo);
    let run = capped_pull(&env.containerd, ns.name(), &config, &args).await;
    let stderr = run.stderr();
    assert_eq!(
        run.output.status.code(),
        Some(1),
        "expected a failed pull:\n{stderr}"
    );
    let lower = stderr.to_lowercase();
    assert!(
        lower.contains("digest") && lower.contains(&proxy.addr()),
        "the message should name the digest mismatch and the endpoint:\n{stderr}"
    );
    assert!(
        records(&env.containerd, ns.name()).is_empty(),
        "a failed pull left an image record"
    );
    assert_clean(&env.containerd, ns.name());
    let reason = stderr.lines().last().unwrap_or_default().trim().to_owned();

    proxy.set_rules(Vec::new());
    capped_pull(&env.containerd, ns.name(), &config, &args)
        .await
        .ok();
    assert_image(&env.containerd, ns.name(), &name, &pushed);
    assert_clean(&env.containerd, ns.name());
    format!("failed: {}; healed rerun ok", excerpt(&reason))
}

/// At most 90 characters of `text`, for the table.
fn excerpt(text: &str) -> String {
    let mut short: String = text.chars().take(90).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short.replace('|', "/")
}

/// ctrpull is SIGKILLed with two chunks of the big layer in containerd's ingest; the
/// next run resumes and completes. The killed run's lease is the one thing left
/// (containerd expires it), and is removed before the clean-up check.
async fn killed_then_rerun(env: &Env, built: &Built) -> String {
    let ns = env.containerd.namespace("matrix-kill");
    let pushed = built.push(env.registry, "kill").await;
    let repo = pushed.repo.clone();
    let big = pushed.big_layer();
    let link = paced_link(env, "50mbit").await;
    let files = Files::new();
    let config = files.config("");
    let (name, args) = route(Route::Only, env.registry, link.addr(), &repo);
    let args = steady(args);
    let ingest = format!("layer-{big}");
    let mut child = crate::faults::ctrpull(&env.containerd, ns.name(), &config, &args)
        .spawn()
        .expect("start ctrpull");
    wait_for_ingest(&env.containerd, ns.name(), &ingest, &mut child).await;
    child.start_kill().expect("SIGKILL ctrpull");
    let status = child.wait().await.expect("reap ctrpull");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    let partial = ingest_bytes(&env.containerd, ns.name(), &ingest).unwrap_or(0);
    assert!(
        partial >= KILL_AT,
        "the kill left {partial} bytes in {ingest}"
    );
    let killed_lease = leases(&env.containerd, ns.name());
    assert_eq!(killed_lease.len(), 1, "the killed pull's lease");

    link.set_config(LinkConfig::default())
        .expect("unpace the link");
    let run = capped_pull(&env.containerd, ns.name(), &config, &args).await;
    run.ok();
    assert_eq!(
        leases(&env.containerd, ns.name()),
        killed_lease,
        "the rerun should delete its own lease"
    );
    env.containerd
        .ctr_ok(&["-n", ns.name(), "leases", "rm", &killed_lease[0]]);
    assert_image(&env.containerd, ns.name(), &name, &pushed);
    assert_clean(&env.containerd, ns.name());
    format!(
        "killed with {:.1} MB ingested; rerun fetched {} MB and completed",
        partial as f64 / 1e6,
        run.fetched_mb()
    )
}

/// A link to the shared registry limited to `rate`.
async fn paced_link(env: &Env, rate: &str) -> Link {
    Link::start(
        registry_addr(env.registry),
        LinkConfig {
            rate: Some(parse_rate(rate).expect("a valid rate")),
            ..LinkConfig::default()
        },
    )
    .await
    .expect("start the link")
}

/// Waits until ingest `ingest` holds [`KILL_AT`] bytes; panics if `child` ends first
/// or after 30 s.
/// `args` with two connections: the big layer's ingest then grows a chunk or two
/// at a time, so a row can catch it part-written. (With many connections every
/// chunk of a layer arrives at about the same time, and the ingest goes from empty
/// to whole at once.)
fn steady(mut args: Vec<String>) -> Vec<String> {
    args.extend(["--concurrency".to_string(), "2".to_string()]);
    args
}

async fn wait_for_ingest(
    containerd: &Containerd,
    namespace: &str,
    ingest: &str,
    child: &mut tokio::process::Child,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("poll ctrpull") {
            panic!("ctrpull ended ({status}) before {ingest} was partly written");
        }
        if ingest_bytes(containerd, namespace, ingest).is_some_and(|n| n >= KILL_AT) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {KILL_AT} bytes in {ingest} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two ctrpull processes pull one image at once through a paced link: both succeed.
async fn two_ctrpulls(env: &Env, built: &Built) -> String {
    let ns = env.containerd.namespace("matrix-twice");
    let pushed = built.push(env.registry, "twice").await;
    let repo = pushed.repo.clone();
    let link = paced_link(env, "100mbit").await;
    let files = Files::new();
    let config = files.config("");
    let (name, args) = route(Route::Only, env.registry, link.addr(), &repo);
    let (first, second) = tokio::join!(
        capped_pull(&env.containerd, ns.name(), &config, &args),
        capped_pull(&env.containerd, ns.name(), &config, &args)
    );
    first.ok();
    second.ok();
    assert_image(&env.containerd, ns.name(), &name, &pushed);
    assert_clean(&env.containerd, ns.name());
    rerun(env, ns.name(), &config, &args, &name, &pushed).await;
    format!(
        "both succeeded, fetching {} + {} MB; rerun ok",
        first.fetched_mb(),
        second.fetched_mb()
    )
}

/// ctrpull and containerd's own CRI PullImage pull one image at once into `k8s.io`:
/// both succeed. `k8s.io` is shared with other tests, so the clean-up checks are
/// limited to this image's blobs, ingests and the leases that are new.
async fn cri_pull_at_once(env: &Env, built: &Built) -> String {
    let pushed = built.push(env.registry, "crirace").await;
    let repo = pushed.repo.clone();
    let link = paced_link(env, "100mbit").await;
    let (name, args) = route(Route::Only, env.registry, link.addr(), &repo);
    let config_digest = pushed.config();
    let _cleanup = K8sImages {
        containerd: &env.containerd,
        names: vec![
            name.clone(),
            format!("{}/{repo}@{}", link.addr(), pushed.digest),
            config_digest.clone(),
        ],
    };
    let before = leases(&env.containerd, "k8s.io");
    let files = Files::new();
    let config = files.config("");
    let mut cri = ctrpull::cri::ImageService::connect(&env.containerd.socket())
        .await
        .expect("connect to CRI");
    let (run, cri_pulled) = tokio::join!(
        capped_pull(&env.containerd, "k8s.io", &config, &args),
        cri.pull_image(&name)
    );
    run.ok();
    assert_eq!(cri_pulled.expect("CRI PullImage"), config_digest);
    let records = records(&env.containerd, "k8s.io");
    assert_eq!(
        records.get(&name).map(|r| r.0.as_str()),
        Some(pushed.digest.as_str()),
        "record {name} in k8s.io"
    );
    // Only this image's blobs: verified, and none of them still being written.
    let ours = pushed.blobs();
    assert_verified(&env.containerd, "k8s.io", Some(&ours));
    let active = env
        .containerd
        .ctr_ok(&["-n", "k8s.io", "content", "active"]);
    assert!(
        !ours.iter().any(|d| active.contains(d.as_str())),
        "an ingest of this image is still active:\n{active}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let new: Vec<String> = leases(&env.containerd, "k8s.io")
            .into_iter()
            .filter(|l| !before.contains(l))
            .collect();
        if new.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "leases left in k8s.io: {new:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_image(&env.containerd, "k8s.io", &name, &pushed);
    let rerun = capped_pull(&env.containerd, "k8s.io", &config, &args).await;
    rerun.ok();
    format!(
        "both succeeded (ctrpull {:.1} s, fetched {} MB); rerun ok",
        run.elapsed.as_secs_f64(),
        run.fetched_mb()
    )
}

/// containerd is restarted while ctrpull writes the big layer: ctrpull either
/// reconnects and completes, or fails naming containerd; either way nothing wrong is
/// committed and the next run completes the image.
async fn containerd_restarted(version: Version, built: &Built) -> String {
    let mut containerd = Containerd::start(version);
    let namespace = harness::unique("matrix-restart");
    containerd.ctr_ok(&["namespaces", "create", &namespace]);
    let registry = harness::shared_registry();
    let pushed = built.push(registry, "restart").await;
    let repo = pushed.repo.clone();
    let big = pushed.big_layer();
    let link = Link::start(
        registry_addr(registry),
        LinkConfig {
            rate: Some(parse_rate("50mbit").expect("a valid rate")),
            ..LinkConfig::default()
        },
    )
    .await
    .expect("start the link");
    let files = Files::new();
    let config = files.config("");
    let (name, args) = route(Route::Only, registry, link.addr(), &repo);
    let args = steady(args);
    let ingest = format!("layer-{big}");
    let mut child = crate::faults::ctrpull(&containerd, &namespace, &config, &args)
        .spawn()
        .expect("start ctrpull");
    wait_for_ingest(&containerd, &namespace, &ingest, &mut child).await;
    let restarted = Instant::now();
    tokio::task::block_in_place(|| containerd.restart());
    let down = restarted.elapsed();
    let output = tokio::time::timeout(PULL_CAP, child.wait_with_output())
        .await
        .expect("ctrpull did not end after the restart")
        .expect("ctrpull's output");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let first = if output.status.success() {
        "completed across the restart".to_owned()
    } else {
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.to_lowercase().contains("containerd"),
            "the failure should name containerd:\n{stderr}"
        );
        assert!(
            records(&containerd, &namespace).is_empty(),
            "a failed pull left an image record"
        );
        format!(
            "failed: {}",
            excerpt(stderr.lines().last().unwrap_or_default().trim())
        )
    };
    link.set_config(LinkConfig::default())
        .expect("unpace the link");
    let run = capped_pull(&containerd, &namespace, &config, &args).await;
    run.ok();
    // A lease of the interrupted run may outlive it when containerd was down as it
    // ended; containerd expires it. Everything else must be clean.
    for lease in leases(&containerd, &namespace) {
        containerd.ctr_ok(&["-n", &namespace, "leases", "rm", &lease]);
    }
    assert_image(&containerd, &namespace, &name, &pushed);
    assert_clean(&containerd, &namespace);
    format!("{first} (down {:.1} s); rerun ok", down.as_secs_f64())
}
