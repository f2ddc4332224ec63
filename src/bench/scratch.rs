//! A scratch docker-registry on loopback, for a benchmark run without `--registry`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use url::Url;

/// Debian's reference registry binary.
pub const REGISTRY_BIN: &str = "docker-registry";

/// A docker-registry started in a temporary directory; stopped (by PID) when dropped.
#[derive(Debug)]
pub struct ScratchRegistry {
    child: Child,
    url: Url,
    dir: tempfile::TempDir,
}

impl ScratchRegistry {
    /// Starts `docker-registry` on 127.0.0.1 with a free port and waits until it answers.
    pub async fn start() -> Result<ScratchRegistry, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("creating a registry directory: {e}"))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let config = dir.path().join("config.yml");
        let storage = dir.path().join("storage");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .map_err(|e| format!("writing {}: {e}", config.display()))?;
        let log =
            std::fs::File::create(dir.path().join("registry.log")).map_err(|e| e.to_string())?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                format!("starting {REGISTRY_BIN} (apt-get install docker-registry): {e}")
            })?;
        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).expect("valid URL");
        let registry = ScratchRegistry { child, url, dir };
        let probe = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = probe
                .get(registry.url.join("v2/").expect("valid URL"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(registry);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{REGISTRY_BIN} did not answer on {} within 20 s",
                    registry.url
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Base URL, `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Where it keeps its files.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for ScratchRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
