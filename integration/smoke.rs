//! Proves the harness against the real daemons: they start, answer, and leave nothing behind.

use std::path::Path;

use rstest::rstest;

use crate::harness::{self, Containerd, Registry, Version};

/// The server version `ctr version` reports ("1.6.20~ds1").
fn server_version(ctr_version_output: &str) -> Option<&str> {
    let server = ctr_version_output.split("Server:").nth(1)?;
    server
        .lines()
        .find_map(|line| line.trim().strip_prefix("Version:"))
        .map(str::trim)
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
}

#[test]
fn shared_registry_answers_v2() {
    let registry = harness::shared_registry();
    assert_eq!(
        harness::http_status(&registry.addr(), "/v2/").expect("GET /v2/"),
        200
    );
    assert_eq!(
        registry.url().as_str(),
        format!("http://{}/", registry.addr())
    );
}

#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
fn containerd_reports_its_version(#[case] version: Version) {
    let env = harness::shared(version);
    assert_eq!(env.containerd.version(), version);
    let out = env.containerd.ctr_ok(&["version"]);
    let server = server_version(&out).unwrap_or_else(|| panic!("no server version in:\n{out}"));
    assert!(
        server.starts_with(&format!("{}.", version.major_minor())),
        "{version}: server reports {server}"
    );
}

#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
fn containerd_loads_cri_and_overlayfs(#[case] version: Version) {
    let plugins = harness::shared(version)
        .containerd
        .ctr_ok(&["plugins", "ls"]);
    for (kind, id) in [
        ("io.containerd.grpc.v1", "cri"),
        ("io.containerd.snapshotter.v1", "overlayfs"),
        ("io.containerd.grpc.v1", "content"),
        ("io.containerd.grpc.v1", "leases"),
    ] {
        assert!(
            plugins.lines().any(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                cols.first() == Some(&kind)
                    && cols.get(1) == Some(&id)
                    && cols.last() == Some(&"ok")
            }),
            "{version}: plugin {kind}.{id} is not ok:\n{plugins}"
        );
    }
}

#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
fn namespace_is_created_and_removed(#[case] version: Version) {
    let containerd = &harness::shared(version).containerd;
    let name = harness::unique("smoke");
    containerd.ctr_ok(&["namespaces", "create", &name]);
    let listed = containerd.ctr_ok(&["namespaces", "ls", "-q"]);
    assert!(
        listed.lines().any(|l| l == name),
        "{name} not in:\n{listed}"
    );
    containerd.ctr_ok(&["namespaces", "remove", &name]);
    let listed = containerd.ctr_ok(&["namespaces", "ls", "-q"]);
    assert!(
        !listed.lines().any(|l| l == name),
        "{name} still in:\n{listed}"
    );
}

#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
fn namespace_guard_purges_what_the_test_left(#[case] version: Version) {
    let containerd = &harness::shared(version).containerd;
    // A rootfs that containerd does not manage: busybox-static alone is enough.
    let rootfs = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(rootfs.path().join("bin")).expect("mkdir bin");
    std::fs::copy("/bin/busybox", rootfs.path().join("bin/busybox")).expect("copy busybox");
    let rootfs_arg = rootfs.path().to_str().expect("utf-8 temp path");
    let name = {
        let ns = containerd.namespace("smoke-guard");
        let n = ["-n", ns.name()];
        // A container record and a running task: `namespaces remove` refuses both.
        containerd.ctr_ok(
            &[
                &n[..],
                &[
                    "containers",
                    "create",
                    "--rootfs",
                    rootfs_arg,
                    "idle",
                    "/bin/busybox",
                    "true",
                ],
            ]
            .concat(),
        );
        containerd.ctr_ok(
            &[
                &n[..],
                &[
                    "run",
                    "-d",
                    "--rootfs",
                    rootfs_arg,
                    "sleeper",
                    "/bin/busybox",
                    "sleep",
                    "600",
                ],
            ]
            .concat(),
        );
        let tasks = containerd.ctr_ok(&[&n[..], &["tasks", "ls"]].concat());
        assert!(
            tasks.contains("RUNNING"),
            "{version}: sleeper not running:\n{tasks}"
        );
        let out = containerd.ctr(&["namespaces", "remove", ns.name()]);
        assert!(
            !out.status.success(),
            "{version}: removed a namespace holding containers"
        );
        ns.name().to_owned()
    };
    let listed = containerd.ctr_ok(&["namespaces", "ls", "-q"]);
    assert!(
        !listed.lines().any(|l| l == name),
        "{name} still in:\n{listed}"
    );
    assert_eq!(
        harness::mounts_under(rootfs.path()),
        Vec::<std::path::PathBuf>::new()
    );
}

#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
fn own_containerd_leaves_nothing_behind(#[case] version: Version) {
    let containerd = Containerd::start(version);
    let (pid, dir, socket) = (
        containerd.pid(),
        containerd.dir().to_owned(),
        containerd.socket(),
    );
    assert!(socket.exists());
    assert!(process_alive(pid));
    let pid_files = harness::run_dir().join("pids");
    let pid_file = pid_files.join(format!("containerd-{}-{pid}.pid", version.major_minor()));
    assert!(pid_file.exists(), "{} missing", pid_file.display());

    drop(containerd);
    assert!(!process_alive(pid), "{version}: pid {pid} survived Drop");
    assert!(!dir.exists(), "{} survived Drop", dir.display());
    assert!(!pid_file.exists(), "{} survived Drop", pid_file.display());
    assert_eq!(
        harness::mounts_under(&dir),
        Vec::<std::path::PathBuf>::new()
    );
}

#[test]
fn own_registry_leaves_nothing_behind() {
    let registry = Registry::start();
    let (pid, dir, addr) = (registry.pid(), registry.dir().to_owned(), registry.addr());
    assert_eq!(harness::http_status(&addr, "/v2/").expect("GET /v2/"), 200);
    drop(registry);
    assert!(!process_alive(pid), "registry pid {pid} survived Drop");
    assert!(!dir.exists(), "{} survived Drop", dir.display());
    assert!(
        harness::http_status(&addr, "/v2/").is_err(),
        "{addr} still answers"
    );
}

#[test]
fn proxy_registry_serves_from_upstream() {
    let upstream = harness::shared_registry();
    let proxy = Registry::start_proxy(&upstream.url());
    assert_eq!(
        harness::http_status(&proxy.addr(), "/v2/").expect("GET /v2/"),
        200
    );
    let log = proxy.log();
    assert!(
        log.contains(&format!(
            "Registry configured as a proxy cache to {}",
            upstream.url()
        )),
        "{log}"
    );
}

#[test]
fn parses_ctr_version_output() {
    let out = "Client:\n  Version:  1.7.24~ds1\n\nServer:\n  Version:  1.6.20~ds1\n  UUID: x\n";
    assert_eq!(server_version(out), Some("1.6.20~ds1"));
}
