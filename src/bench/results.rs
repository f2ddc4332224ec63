//! What a benchmark run measured: one [`Measurement`] per pull, grouped into [`Cell`]s.

use serde::Serialize;

use super::profiles::Profile;
use super::tiers::Tier;

/// Who pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    /// ctrpull itself.
    Ctrpull,
    /// containerd's own pull through the CRI ImageService (what kubelet triggers).
    Cri,
    /// containerd's Transfer service (containerd 2.0+).
    Transfer,
    /// No pull: the image's bytes downloaded and discarded, evenly over a fixed
    /// number of connections (see [`wire`](crate::bench::wire)): what the link
    /// allows any client.
    Wire,
}

impl Tool {
    /// Lower-case name, as in reports.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Ctrpull => "ctrpull",
            Tool::Cri => "cri",
            Tool::Transfer => "transfer",
            Tool::Wire => "wire",
        }
    }

    /// containerd's own pull, which ctrpull's speedups are measured against.
    pub fn is_baseline(self) -> bool {
        matches!(self, Tool::Cri | Tool::Transfer)
    }
}

/// One pull, timed.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Wall time of the pull (fetch + unpack + records), seconds.
    pub seconds: f64,
    /// Peak resident set of the ctrpull process, KiB (ctrpull only).
    pub peak_rss_kib: Option<u64>,
    /// TCP connections the link emulator accepted during the pull.
    pub connections: u64,
    /// Bytes the link emulator carried downstream during the pull.
    pub link_bytes: u64,
}

/// All repeats of one tool and setting on one tier and profile.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Tier name.
    pub tier: String,
    /// Profile name.
    pub profile: String,
    /// Who pulled.
    pub tool: Tool,
    /// The concurrency setting (`1`, `3`, `auto`, ...) for ctrpull; `default` for
    /// containerd's own pull.
    pub setting: String,
    /// Compressed bytes of the image (manifest, config and layers).
    pub image_bytes: u64,
    /// Median wall time over the repeats, seconds.
    pub seconds: f64,
    /// `image_bytes / seconds`, in MB/s (10^6 bytes).
    pub megabytes_per_second: f64,
    /// Throughput as a percentage of the tier's aggregate rate (`None` if unshaped).
    pub percent_of_link: Option<f64>,
    /// Baseline median time / this cell's median time, for ctrpull cells when a
    /// baseline ran on the same tier and profile.
    pub speedup: Option<f64>,
    /// Highest peak RSS over the repeats, MiB (ctrpull only).
    pub peak_rss_mib: Option<f64>,
    /// Most connections used by one repeat.
    pub connections: u64,
    /// Every repeat.
    pub runs: Vec<Measurement>,
}

impl Cell {
    /// Summarises the repeats of one tool and setting.
    pub fn new(
        tier: &Tier,
        profile: &Profile,
        tool: Tool,
        setting: &str,
        image_bytes: u64,
        runs: Vec<Measurement>,
    ) -> Cell {
        let mut times: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
        times.sort_by(f64::total_cmp);
        let seconds = if times.is_empty() {
            f64::NAN
        } else if times.len() % 2 == 1 {
            times[times.len() / 2]
        } else {
            (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
        };
        let megabytes_per_second = image_bytes as f64 / 1e6 / seconds;
        Cell {
            tier: tier.name.clone(),
            profile: profile.name.clone(),
            tool,
            setting: setting.to_string(),
            image_bytes,
            seconds,
            megabytes_per_second,
            percent_of_link: tier
                .rate
                .map(|rate| image_bytes as f64 / seconds / rate as f64 * 100.0),
            speedup: None,
            peak_rss_mib: runs
                .iter()
                .filter_map(|r| r.peak_rss_kib)
                .max()
                .map(|k| k as f64 / 1024.0),
            connections: runs.iter().map(|r| r.connections).max().unwrap_or(0),
            runs,
        }
    }
}

/// A whole run: what was asked and every cell.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// containerd's version string.
    pub containerd_version: String,
    /// ctrpull's version.
    pub ctrpull_version: String,
    /// The `--scale` factor applied to the profiles.
    pub scale: f64,
    /// Repeats per cell.
    pub repeat: usize,
    /// The tiers run.
    pub tiers: Vec<Tier>,
    /// The profiles run (scaled).
    pub profiles: Vec<Profile>,
    /// Every cell, in run order.
    pub cells: Vec<Cell>,
}

impl Results {
    /// Fills in `speedup` of ctrpull cells against the first baseline cell of the
    /// same tier and profile.
    pub fn compute_speedups(&mut self) {
        let baselines: Vec<(String, String, f64)> = self
            .cells
            .iter()
            .filter(|c| c.tool.is_baseline())
            .map(|c| (c.tier.clone(), c.profile.clone(), c.seconds))
            .collect();
        for cell in self.cells.iter_mut().filter(|c| c.tool == Tool::Ctrpull) {
            cell.speedup = baselines
                .iter()
                .find(|(t, p, _)| *t == cell.tier && *p == cell.profile)
                .map(|(_, _, base)| base / cell.seconds);
        }
    }
}
