//! `ctrpull warm --watch` against the real containerd (1.6 and 1.7) and
//! docker-registry: the ready file follows the list, SIGTERM exits cleanly.

use std::time::{Duration, Instant};

use rstest::rstest;

use crate::harness::{self, Version};
use crate::pull::{busybox_with, leases, push, records};
use crate::warm::{text, warm_command};

/// Waits up to `limit` for `check`.
fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `--watch`: ready once warmed; a changed list is warmed again and the ready file
/// follows; SIGTERM ends it with exit 0.
#[rstest]
#[case::v1_6(Version::V1_6)]
#[case::v1_7(Version::V1_7)]
#[tokio::test]
async fn watch_warms_again_when_the_list_changes(#[case] version: Version) {
    let env = harness::shared(version);
    let ns = env.containerd.namespace("warm-watch");
    let first = push(&harness::unique("test/watch-a"), busybox_with(vec![])).await;
    let second = push(&harness::unique("test/watch-b"), busybox_with(vec![])).await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.json");
    let ready = dir.path().join("ready");
    std::fs::write(&list, format!("[\"{}\"]", first.reference)).unwrap();
    let mut child = warm_command(
        &env.containerd,
        ns.name(),
        &[
            "-f",
            list.to_str().unwrap(),
            "--watch",
            "--watch-interval",
            "300ms",
            "--ready-file",
            ready.to_str().unwrap(),
            "--progress",
            "none",
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();

    wait_for(Duration::from_secs(60), "the first pass", || ready.exists());
    assert!(std::fs::read_to_string(&ready)
        .unwrap()
        .starts_with("1 images ready"));
    assert!(records(&env.containerd, ns.name()).contains_key(&first.reference));

    // A list with a missing image: the ready file goes away.
    let missing = format!(
        "{}/{}:latest",
        env.registry.addr(),
        harness::unique("test/watch-missing")
    );
    std::fs::write(&list, format!("[\"{}\", \"{missing}\"]", first.reference)).unwrap();
    wait_for(Duration::from_secs(60), "the ready file to go", || {
        !ready.exists()
    });

    // Fixed: both images, ready again.
    std::fs::write(
        &list,
        format!("[\"{}\", \"{}\"]", first.reference, second.reference),
    )
    .unwrap();
    wait_for(Duration::from_secs(60), "the second image", || {
        records(&env.containerd, ns.name()).contains_key(&second.reference)
    });
    wait_for(Duration::from_secs(60), "ready again", || {
        std::fs::read_to_string(&ready).is_ok_and(|t| t.starts_with("2 images ready"))
    });

    // SIGTERM: a clean exit 0.
    // SAFETY: kill(2) on the child we spawned, by its PID.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ctrpull warm --watch did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains(&format!("{} ", second.reference)),
        "{stdout}"
    );
    assert!(leases(&env.containerd, ns.name()).is_empty());
}
