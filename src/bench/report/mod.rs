//! Benchmark reports: the stdout table, Markdown, JSON, CSV and the SVG throughput chart.
//!
//! Every report shows the cells in the same order: by tier, then profile (as given),
//! containerd's own pulls first in each group (they are the baseline every speedup is
//! measured against), then ctrpull by concurrency setting, numeric settings ascending
//! and `auto` last. Missing or undefined figures (an unshaped tier has no link
//! percentage, a baseline has no speedup, a cell whose repeats all failed has a NaN
//! time) print as `-` and are left empty in the CSV.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use super::link::Rate;
use super::results::{Cell, Results, Tool};
use super::tiers::Tier;

mod chart;

use chart::render_svg;

/// Column headings of [`table`] and [`markdown`].
const COLUMNS: [&str; 10] = [
    "tier", "profile", "tool", "setting", "MB/s", "% link", "time s", "speedup", "RSS MiB", "conns",
];

/// The first columns hold names (left-aligned); the rest hold numbers (right-aligned).
const NAME_COLUMNS: usize = 4;

/// Column headings of [`write_csv`].
const CSV_COLUMNS: [&str; 14] = [
    "tier",
    "profile",
    "tool",
    "setting",
    "image_bytes",
    "seconds",
    "seconds_min",
    "seconds_max",
    "megabytes_per_second",
    "percent_of_link",
    "speedup",
    "peak_rss_mib",
    "connections",
    "repeats",
];

/// What a missing or undefined figure prints as in the text and Markdown tables.
const DASH: &str = "-";

/// The fixed-width text table for stdout, preceded by a header naming the versions,
/// scale and repeats, and one line per tier and profile saying what it is.
pub fn table(results: &Results) -> String {
    let mut lines = vec![headline(results)];
    lines.extend(
        conditions(results)
            .into_iter()
            .map(|line| format!("  {line}")),
    );
    lines.push(String::new());

    let rows = rows(results);
    let mut widths = COLUMNS.map(|heading| heading.chars().count());
    for (_, row) in &rows {
        for (width, field) in widths.iter_mut().zip(row) {
            *width = (*width).max(field.chars().count());
        }
    }
    let line = |fields: &[String; 10]| {
        let padded: Vec<String> = fields
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (field, width))| {
                if i < NAME_COLUMNS {
                    format!("{field:<width$}")
                } else {
                    format!("{field:>width$}")
                }
            })
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    lines.push(line(&COLUMNS.map(String::from)));
    lines.push(line(&widths.map(|width| "-".repeat(width))));
    let mut group = None;
    for (key, row) in &rows {
        // A blank line between tier+profile groups, so each baseline heads its group.
        if group.is_some_and(|previous| previous != key) {
            lines.push(String::new());
        }
        group = Some(key);
        lines.push(line(row));
    }
    lines.push(String::new());
    lines.join("\n")
}

/// The same report as [`table`], in Markdown (for the README): the header as a
/// paragraph, the tiers and profiles as a list, the cells as a table.
pub fn markdown(results: &Results) -> String {
    let mut lines = vec![headline(results), String::new()];
    lines.extend(
        conditions(results)
            .into_iter()
            .map(|line| format!("- {line}")),
    );
    lines.push(String::new());
    let escape = |text: &str| text.replace('|', "\\|");
    lines.push(format!("| {} |", COLUMNS.join(" | ")));
    let alignment: Vec<&str> = (0..COLUMNS.len())
        .map(|i| if i < NAME_COLUMNS { ":--" } else { "--:" })
        .collect();
    lines.push(format!("| {} |", alignment.join(" | ")));
    for (_, row) in rows(results) {
        let fields: Vec<String> = row.iter().map(|field| escape(field)).collect();
        lines.push(format!("| {} |", fields.join(" | ")));
    }
    lines.push(String::new());
    lines.join("\n")
}

/// Writes the whole [`Results`], every repeat included, as pretty-printed JSON.
///
/// NaN figures become `null` (JSON has no NaN).
pub fn write_json(results: &Results, path: &Path) -> io::Result<()> {
    let mut out = io::BufWriter::new(fs::File::create(path)?);
    serde_json::to_writer_pretty(&mut out, results)?;
    writeln!(out)?;
    out.flush()
}

/// Writes one CSV row per cell (in report order, not per repeat) under a header row:
/// `tier`, `profile`, `tool`, `setting`, `image_bytes`, `seconds` (median),
/// `seconds_min`, `seconds_max`, `megabytes_per_second`, `percent_of_link`, `speedup`,
/// `peak_rss_mib`, `connections`, `repeats`; the cell's fields under their JSON names
/// plus the spread and count of its repeats. Missing and NaN figures are empty
/// fields; floats keep full precision.
pub fn write_csv(results: &Results, path: &Path) -> io::Result<()> {
    let mut out = csv::Writer::from_path(path)?;
    out.write_record(CSV_COLUMNS)?;
    for cell in ordered(results) {
        let times = cell
            .runs
            .iter()
            .map(|run| run.seconds)
            .filter(|s| s.is_finite());
        let min = times.clone().reduce(f64::min);
        let max = times.reduce(f64::max);
        let float = |value: Option<f64>| {
            value
                .filter(|v| v.is_finite())
                .map_or_else(String::new, |v| v.to_string())
        };
        out.write_record([
            cell.tier.clone(),
            cell.profile.clone(),
            cell.tool.name().to_string(),
            cell.setting.clone(),
            cell.image_bytes.to_string(),
            float(Some(cell.seconds)),
            float(min),
            float(max),
            float(Some(cell.megabytes_per_second)),
            float(cell.percent_of_link),
            float(cell.speedup),
            float(cell.peak_rss_mib),
            cell.connections.to_string(),
            cell.runs.len().to_string(),
        ])?;
    }
    out.flush()
}

/// Writes the throughput chart as SVG.
///
/// One panel per tier (rows) and profile (columns), each with its own linear MB/s
/// axis from zero, since tiers differ a hundredfold and a shared axis would flatten
/// the slow ones. Within a panel, x is the ctrpull concurrency setting (numeric ones
/// in order, then `auto`); ctrpull's median throughput is a solid line with a marker
/// per setting, labelled with its speedup; containerd's own pull is a dashed
/// horizontal line (one colour per baseline tool); a shaped tier's link rate is a
/// dotted grey line. One legend above the panels explains all of them.
pub fn write_svg(results: &Results, path: &Path) -> Result<(), String> {
    let svg =
        render_svg(results).map_err(|e| format!("{}: drawing the chart: {e}", path.display()))?;
    fs::write(path, svg).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes every report into `dir` (created if missing): `results.json`,
/// `results.csv`, `results.md` and `throughput.svg`. Returns the paths written.
pub fn write_all(results: &Results, dir: &Path) -> Result<Vec<PathBuf>, String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let at = |name: &str| dir.join(name);

    let json = at("results.json");
    write_json(results, &json).map_err(context(&json))?;
    let csv = at("results.csv");
    write_csv(results, &csv).map_err(context(&csv))?;
    let md = at("results.md");
    fs::write(&md, markdown(results)).map_err(context(&md))?;
    let svg = at("throughput.svg");
    write_svg(results, &svg)?;
    Ok(vec![json, csv, md, svg])
}

/// An I/O error with the path it happened on.
fn context(path: &Path) -> impl Fn(io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// One line naming what was compared and how.
fn headline(results: &Results) -> String {
    format!(
        "ctrpull {} vs containerd {}: scale {}, {} repeat{} per cell (median); \
         speedup = containerd's time / ctrpull's time on the same tier and profile",
        results.ctrpull_version,
        results.containerd_version,
        results.scale,
        results.repeat,
        if results.repeat == 1 { "" } else { "s" },
    )
}

/// One line per tier (its link) and per profile (its size), for those that have cells.
fn conditions(results: &Results) -> Vec<String> {
    let tiers = results
        .tiers
        .iter()
        .filter(|tier| results.cells.iter().any(|c| c.tier == tier.name))
        .map(|tier| format!("tier {}: {}", tier.name, describe(tier)));
    let profiles = results
        .profiles
        .iter()
        .filter(|profile| results.cells.iter().any(|c| c.profile == profile.name))
        .map(|profile| {
            let layers = profile.layers.len();
            format!(
                "profile {}: {layers} layer{}, {:.1} MB",
                profile.name,
                if layers == 1 { "" } else { "s" },
                profile.total() as f64 / 1e6
            )
        });
    tiers.chain(profiles).collect()
}

/// A tier's link conditions in words: `100 Mbit/s link, 25 Mbit/s per connection, 40ms latency`.
fn describe(tier: &Tier) -> String {
    if tier.is_unshaped() {
        return "unshaped loopback".to_string();
    }
    let mut parts = Vec::new();
    if let Some(rate) = tier.rate {
        parts.push(format!("{} link", Rate(rate)));
    }
    if let Some(rate) = tier.per_connection_rate {
        parts.push(format!("{} per connection", Rate(rate)));
    }
    if !tier.latency.is_zero() {
        parts.push(format!(
            "{} latency",
            humantime::format_duration(tier.latency)
        ));
    }
    parts.join(", ")
}

/// The table rows in report order, each with its tier+profile group.
fn rows(results: &Results) -> Vec<((&str, &str), [String; 10])> {
    ordered(results)
        .into_iter()
        .map(|cell| {
            let row = [
                cell.tier.clone(),
                cell.profile.clone(),
                cell.tool.name().to_string(),
                cell.setting.clone(),
                measure(cell.megabytes_per_second),
                fmt_or_dash(cell.percent_of_link, |p| format!("{p:.1}")),
                measure(cell.seconds),
                fmt_or_dash(cell.speedup, |s| format!("{s:.2}x")),
                fmt_or_dash(cell.peak_rss_mib, |m| format!("{m:.1}")),
                cell.connections.to_string(),
            ];
            ((cell.tier.as_str(), cell.profile.as_str()), row)
        })
        .collect()
}

/// A time or throughput with three significant digits or more: `0.123`, `4.56`, `78.9`.
fn measure(value: f64) -> String {
    fmt_or_dash(Some(value), |v| match v.abs() {
        a if a < 1.0 => format!("{v:.3}"),
        a if a < 10.0 => format!("{v:.2}"),
        _ => format!("{v:.1}"),
    })
}

/// `format(value)`, or [`DASH`] when the value is missing or not finite.
fn fmt_or_dash(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value
        .filter(|v| v.is_finite())
        .map_or_else(|| DASH.to_string(), format)
}

/// The cells in report order (see the module docs).
fn ordered(results: &Results) -> Vec<&Cell> {
    let tiers = tier_names(results);
    let profiles = profile_names(results);
    let mut cells: Vec<&Cell> = results.cells.iter().collect();
    cells.sort_by_cached_key(|cell| {
        (
            position(&tiers, &cell.tier),
            position(&profiles, &cell.profile),
            tool_rank(cell.tool),
            setting_key(&cell.setting),
        )
    });
    cells
}

/// Tier names in the order given, then any that only cells name, in run order.
fn tier_names(results: &Results) -> Vec<&str> {
    let given = results.tiers.iter().map(|tier| tier.name.as_str());
    names(given, results.cells.iter().map(|cell| cell.tier.as_str()))
}

/// Profile names in the order given, then any that only cells name, in run order.
fn profile_names(results: &Results) -> Vec<&str> {
    let given = results.profiles.iter().map(|profile| profile.name.as_str());
    names(
        given,
        results.cells.iter().map(|cell| cell.profile.as_str()),
    )
}

/// `given`, then the names in `seen` not among them, each once.
fn names<'a>(
    given: impl Iterator<Item = &'a str>,
    seen: impl Iterator<Item = &'a str>,
) -> Vec<&'a str> {
    let mut names: Vec<&str> = Vec::new();
    for name in given.chain(seen) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Where `name` is in `names`; past the end if absent.
fn position(names: &[&str], name: &str) -> usize {
    names.iter().position(|n| *n == name).unwrap_or(names.len())
}

/// Baselines first: every ctrpull row of a group is compared with them; the
/// `wire` reference last.
fn tool_rank(tool: Tool) -> u8 {
    match tool {
        Tool::Cri => 0,
        Tool::Transfer => 1,
        Tool::Ctrpull => 2,
        Tool::Wire => 3,
    }
}

/// Numeric settings ascending, then `auto`, then anything else by name.
fn setting_key(setting: &str) -> (u8, u64, String) {
    match setting.parse::<u64>() {
        Ok(n) => (0, n, String::new()),
        Err(_) if setting == "auto" => (1, 0, String::new()),
        Err(_) => (2, 0, setting.to_string()),
    }
}

// ---------------------------------------------------------------------------------
// The chart.

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::profiles::Profile;
    use crate::bench::results::Measurement;

    /// Two tiers (one shaped, one not), two profiles (one with a name that needs CSV
    /// quoting), ctrpull at 1, 3 and auto plus a CRI baseline, in a scrambled run
    /// order; ctrpull at 3 on the unshaped tier failed every repeat.
    fn sample() -> Results {
        let tiers = vec![
            Tier {
                name: "slow".into(),
                rate: Some(12_500_000),
                per_connection_rate: Some(3_125_000),
                latency: Duration::from_millis(40),
            },
            Tier {
                name: "open".into(),
                rate: None,
                per_connection_rate: None,
                latency: Duration::ZERO,
            },
        ];
        let profiles = vec![
            Profile {
                name: "small".into(),
                layers: vec![4_000_000, 4_000_000],
            },
            Profile {
                name: "big, \"fat\"".into(),
                layers: vec![40_000_000],
            },
        ];
        let mut cells = Vec::new();
        for tier in tiers.iter().rev() {
            for profile in &profiles {
                let bytes = profile.total();
                let runs = |seconds: f64, rss: Option<u64>| {
                    vec![
                        Measurement {
                            seconds,
                            peak_rss_kib: rss,
                            connections: 3,
                            link_bytes: bytes,
                        },
                        Measurement {
                            seconds,
                            peak_rss_kib: rss,
                            connections: 2,
                            link_bytes: bytes,
                        },
                    ]
                };
                for (setting, seconds) in [("auto", 1.6), ("3", 2.0), ("1", 4.0)] {
                    let runs = if tier.name == "open" && setting == "3" {
                        Vec::new()
                    } else {
                        runs(seconds, Some(51_200))
                    };
                    cells.push(Cell::new(
                        tier,
                        profile,
                        Tool::Ctrpull,
                        setting,
                        bytes,
                        runs,
                    ));
                }
                cells.push(Cell::new(
                    tier,
                    profile,
                    Tool::Cri,
                    "default",
                    bytes,
                    runs(4.0, None),
                ));
            }
        }
        let mut results = Results {
            containerd_version: "v2.1.4".into(),
            ctrpull_version: "0.1.0".into(),
            scale: 0.5,
            repeat: 2,
            tiers,
            profiles,
            cells,
        };
        results.compute_speedups();
        results
    }

    /// The fields of the table line of one cell.
    fn table_row<'a>(
        text: &'a str,
        tier: &str,
        profile: &str,
        setting: &str,
    ) -> (usize, Vec<&'a str>) {
        text.lines()
            .enumerate()
            .map(|(i, line)| {
                (
                    i,
                    line.split("  ")
                        .map(str::trim)
                        .filter(|f| !f.is_empty())
                        .collect::<Vec<_>>(),
                )
            })
            .find(|(_, fields)| {
                fields.len() == COLUMNS.len() && fields[..4] == [tier, profile, fields[2], setting]
            })
            .unwrap_or_else(|| panic!("no row for {tier}/{profile}/{setting} in\n{text}"))
    }

    #[test]
    fn table_lists_every_cell_grouped_with_the_baseline_first() {
        let results = sample();
        let text = table(&results);
        let header = text.lines().next().unwrap();
        assert!(header.contains("containerd v2.1.4"), "{header}");
        assert!(
            header.contains("scale 0.5") && header.contains("2 repeats"),
            "{header}"
        );
        assert!(
            text.contains("tier slow: 100 Mbit/s link, 25 Mbit/s per connection, 40ms latency"),
            "{text}"
        );
        assert!(text.contains("tier open: unshaped loopback"), "{text}");
        assert!(text.contains("profile small: 2 layers, 8.0 MB"), "{text}");

        for profile in ["small", "big, \"fat\""] {
            // Tiers in the order given, although "open" ran first.
            for tier in ["slow", "open"] {
                let (base, fields) = table_row(&text, tier, profile, "default");
                assert_eq!(fields[2], "cri");
                assert_eq!(fields[7], "-", "a baseline has no speedup");
                assert_eq!(fields[8], "-", "containerd's RSS is not measured");
                let (one, fields) = table_row(&text, tier, profile, "1");
                assert_eq!(fields[7], "1.00x");
                assert_eq!(fields[8], "50.0");
                assert_eq!(fields[9], "3");
                let (three, _) = table_row(&text, tier, profile, "3");
                let (auto, fields) = table_row(&text, tier, profile, "auto");
                assert_eq!(fields[7], "2.50x");
                assert!(base < one && one < three && three < auto, "{text}");
            }
            let (slow, _) = table_row(&text, "slow", profile, "auto");
            let (open, _) = table_row(&text, "open", profile, "default");
            assert!(slow < open, "tiers in the order given:\n{text}");
        }
        let (_, fields) = table_row(&text, "slow", "small", "3");
        assert_eq!(fields[4..9], ["4.00", "32.0", "2.00", "2.00x", "50.0"]);
        // An unshaped tier has no link percentage; a failed cell has no figures.
        let (_, fields) = table_row(&text, "open", "small", "1");
        assert_eq!(fields[5], "-");
        let (_, fields) = table_row(&text, "open", "small", "3");
        assert_eq!(fields[4..9], ["-", "-", "-", "-", "-"]);
        assert!(!text.contains("NaN") && !text.contains("inf"), "{text}");
        let columns = text.lines().find(|l| l.starts_with("tier ")).unwrap();
        assert!(
            columns.contains("MB/s") && columns.contains("% link") && columns.contains("RSS MiB")
        );
    }

    #[test]
    fn the_wire_reference_comes_last_and_is_no_baseline() {
        let mut results = sample();
        let (tier, profile) = (results.tiers[0].clone(), results.profiles[0].clone());
        let bytes = results.cells[0].image_bytes;
        let run = Measurement {
            seconds: 0.5,
            peak_rss_kib: None,
            connections: 8,
            link_bytes: bytes,
        };
        // Listed first, and faster than every pull: still neither first nor a baseline.
        results.cells.insert(
            0,
            Cell::new(&tier, &profile, Tool::Wire, "8", bytes, vec![run]),
        );
        results.compute_speedups();
        let text = table(&results);
        let (wire, fields) = table_row(&text, &tier.name, &profile.name, "8");
        assert_eq!(fields[2], "wire");
        assert_eq!(fields[7], "-", "wire has no speedup");
        let (auto, fields) = table_row(&text, &tier.name, &profile.name, "auto");
        assert_eq!(fields[7], "2.50x", "still measured against containerd");
        assert!(auto < wire, "{text}");
        let svg = chart::render_svg(&results).unwrap();
        assert!(svg.contains("wire: download only"), "no legend entry");
    }

    #[test]
    fn markdown_is_one_table_row_per_cell() {
        let mut results = sample();
        results.cells[0].setting = "a|b".into();
        let text = markdown(&results);
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(rows.len(), results.cells.len() + 2);
        assert!(
            rows[0].starts_with("| tier | profile | tool | setting | MB/s |"),
            "{}",
            rows[0]
        );
        assert!(rows[1].contains("--:"));
        assert!(text.contains(r"| a\|b |"), "{text}");
        assert!(
            rows[2].starts_with("| slow | small | cri | default |"),
            "{}",
            rows[2]
        );
        assert!(text.contains("| 2.50x |"), "{text}");
    }

    #[test]
    fn csv_has_a_header_and_one_quoted_row_per_cell() {
        let results = sample();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.csv");
        write_csv(&results, &path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().next().unwrap(), CSV_COLUMNS.join(","));
        assert_eq!(text.lines().count(), results.cells.len() + 1);
        assert!(
            text.contains(
                "slow,\"big, \"\"fat\"\"\",ctrpull,auto,40000000,1.6,1.6,1.6,25,200,2.5,50,3,2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("open,small,ctrpull,3,8000000,,,,,,,,0,0\n"),
            "{text}"
        );
        assert!(
            text.contains("open,small,cri,default,8000000,4,4,4,2,,,,3,2\n"),
            "{text}"
        );

        let mut reader = csv::Reader::from_path(&path).unwrap();
        let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(records.len(), results.cells.len());
        assert!(records.iter().all(|r| r.len() == CSV_COLUMNS.len()));
        assert!(records.iter().any(|r| &r[1] == "big, \"fat\""));
    }

    #[test]
    fn json_is_the_whole_results() {
        let results = sample();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.json");
        write_json(&results, &path).unwrap();
        let value: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(value["containerd_version"], "v2.1.4");
        assert_eq!(value["ctrpull_version"], "0.1.0");
        assert_eq!(value["scale"], 0.5);
        assert_eq!(value["repeat"], 2);
        assert_eq!(value["tiers"][0]["name"], "slow");
        assert_eq!(value["tiers"][0]["latency"], "40ms");
        assert_eq!(value["profiles"][1]["layers"][0], 40_000_000);
        let cells = value["cells"].as_array().unwrap();
        assert_eq!(cells.len(), results.cells.len());
        let cri = cells.iter().find(|c| c["tool"] == "cri").unwrap();
        for field in [
            "tier",
            "profile",
            "setting",
            "image_bytes",
            "seconds",
            "megabytes_per_second",
            "percent_of_link",
            "speedup",
            "peak_rss_mib",
            "connections",
        ] {
            assert!(cri.get(field).is_some(), "no {field} in {cri}");
        }
        assert_eq!(cri["runs"][0]["seconds"], 4.0);
        assert!(cri["speedup"].is_null());
        // NaN (a cell whose repeats all failed) is null, not invalid JSON.
        let failed = cells
            .iter()
            .find(|c| c["runs"].as_array().unwrap().is_empty())
            .unwrap();
        assert!(failed["seconds"].is_null());
    }

    #[test]
    fn write_all_writes_every_report_and_a_chart() {
        let results = sample();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("nested/report");
        let paths = write_all(&results, &out).unwrap();
        let names: Vec<&str> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "results.json",
                "results.csv",
                "results.md",
                "throughput.svg"
            ]
        );
        for path in &paths {
            assert!(
                fs::metadata(path).unwrap().len() > 0,
                "{} is empty",
                path.display()
            );
        }

        let svg = fs::read_to_string(out.join("throughput.svg")).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        for needle in [
            "slow",
            "open",
            "small",
            "containerd v2.1.4",
            "scale 0.5",
            "auto",
            "2.5×",
            "no data",
            "link 12.5",
        ] {
            assert!(svg.contains(needle), "{needle} not in the chart");
        }
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn a_chart_of_baselines_only_is_drawn() {
        let mut results = sample();
        results.cells.retain(|c| c.tool == Tool::Cri);
        let svg = render_svg(&results).unwrap();
        assert!(svg.contains("cri 2.00") && svg.contains("containerd CRI pull"));
        assert!(!svg.contains("label: speedup"));
    }

    #[test]
    fn empty_results_still_report() {
        let results = Results {
            cells: Vec::new(),
            ..sample()
        };
        assert!(table(&results).contains("tier  profile"));
        let dir = tempfile::tempdir().unwrap();
        write_all(&results, dir.path()).unwrap();
        let svg = fs::read_to_string(dir.path().join("throughput.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("no results"));
    }
}
