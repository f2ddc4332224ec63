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

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::link::Rate;
use super::results::{Cell, Results, Tool};
use super::tiers::Tier;

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

/// Baselines first: every other row of a group is compared with them.
fn tool_rank(tool: Tool) -> u8 {
    match tool {
        Tool::Cri => 0,
        Tool::Transfer => 1,
        Tool::Ctrpull => 2,
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

/// Width and height of one tier×profile panel, pixels.
const PANEL: (u32, u32) = (440, 300);
/// Height of the title and of the legend strip above the panels, pixels.
const TITLE_HEIGHT: u32 = 44;
const LEGEND_HEIGHT: u32 = 34;
/// Right margin of a panel, where its reference lines are named, pixels.
const MARGIN_NAMES: u32 = 72;
const FONT: &str = "sans-serif";

const CTRPULL_COLOR: RGBColor = RGBColor(31, 119, 180);
const CRI_COLOR: RGBColor = RGBColor(230, 110, 0);
const TRANSFER_COLOR: RGBColor = RGBColor(44, 160, 44);
const LINK_COLOR: RGBColor = RGBColor(110, 110, 110);

/// A failure of the plotters drawing backend.
type DrawError = DrawingAreaErrorKind<<SVGBackend<'static> as DrawingBackend>::ErrorType>;

/// Draws the throughput chart (see [`write_svg`]) as SVG text.
fn render_svg(results: &Results) -> Result<String, DrawError> {
    let tiers: Vec<&str> = tier_names(results)
        .into_iter()
        .filter(|name| results.cells.iter().any(|c| c.tier == *name))
        .collect();
    let profiles: Vec<&str> = profile_names(results)
        .into_iter()
        .filter(|name| results.cells.iter().any(|c| c.profile == *name))
        .collect();
    let mut settings: Vec<&str> = Vec::new();
    for cell in results.cells.iter().filter(|c| c.tool == Tool::Ctrpull) {
        if !settings.contains(&cell.setting.as_str()) {
            settings.push(&cell.setting);
        }
    }
    settings.sort_by_cached_key(|s| setting_key(s));

    let (rows, columns) = (tiers.len().max(1), profiles.len().max(1));
    let width = (PANEL.0 * columns as u32).max(900);
    let height = TITLE_HEIGHT + LEGEND_HEIGHT + PANEL.1 * rows as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let title = format!(
            "Image pull throughput: ctrpull vs containerd {} (scale {}, median of {})",
            results.containerd_version, results.scale, results.repeat
        );
        let (top, panels) = root.split_vertically(TITLE_HEIGHT + LEGEND_HEIGHT);
        let (title_area, legend_area) = top.split_vertically(TITLE_HEIGHT);
        title_area.draw_text(
            &title,
            &(FONT, 22)
                .into_font()
                .style(FontStyle::Bold)
                .into_text_style(&title_area)
                .pos(Pos::new(HPos::Center, VPos::Center)),
            (width as i32 / 2, TITLE_HEIGHT as i32 / 2),
        )?;
        draw_legend(&legend_area, results)?;

        if results.cells.is_empty() {
            panels.draw_text(
                "no results",
                &(FONT, 18)
                    .into_text_style(&panels)
                    .pos(Pos::new(HPos::Center, VPos::Center)),
                (width as i32 / 2, PANEL.1 as i32 / 2),
            )?;
        }
        let grid = panels.split_evenly((rows, columns));
        for (i, tier) in tiers.iter().enumerate() {
            for (j, profile) in profiles.iter().enumerate() {
                let tier_info = results.tiers.iter().find(|t| t.name == *tier);
                draw_panel(
                    &grid[i * columns + j],
                    results,
                    tier,
                    tier_info,
                    profile,
                    &settings,
                )?;
            }
        }
        root.present()?;
    }
    Ok(svg)
}

/// The legend strip: one sample per kind of line the panels draw.
fn draw_legend(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    results: &Results,
) -> Result<(), DrawError> {
    let has = |tool: Tool| results.cells.iter().any(|c| c.tool == tool);
    let shaped = results
        .tiers
        .iter()
        .any(|t| t.rate.is_some() && results.cells.iter().any(|c| c.tier == t.name));
    let mut items: Vec<(String, RGBColor, Stroke)> = Vec::new();
    if has(Tool::Ctrpull) {
        items.push((
            "ctrpull (label: speedup vs containerd)".into(),
            CTRPULL_COLOR,
            Stroke::Solid,
        ));
    }
    if has(Tool::Cri) {
        items.push(("containerd CRI pull".into(), CRI_COLOR, Stroke::Dashed));
    }
    if has(Tool::Transfer) {
        items.push((
            "containerd Transfer pull".into(),
            TRANSFER_COLOR,
            Stroke::Dashed,
        ));
    }
    if shaped {
        items.push(("link rate".into(), LINK_COLOR, Stroke::Dotted));
    }
    let text_style = (FONT, 15)
        .into_text_style(area)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let y = LEGEND_HEIGHT as i32 / 2;
    // Lay the items out left to right, each as wide as its (estimated) text.
    let widths: Vec<i32> = items
        .iter()
        .map(|(label, ..)| {
            let (w, _) = area
                .estimate_text_size(label, &text_style)
                .unwrap_or((200, 0));
            36 + w as i32 + 28
        })
        .collect();
    let total: i32 = widths.iter().sum();
    let mut x = ((area.dim_in_pixel().0 as i32 - total) / 2).max(8);
    for ((label, color, stroke), width) in items.iter().zip(widths) {
        let style = color.stroke_width(if *stroke == Stroke::Dotted { 2 } else { 3 });
        for (from, to) in stroke.segments(x, x + 30) {
            area.draw(&PathElement::new(vec![(from, y), (to, y)], style))?;
        }
        if *stroke == Stroke::Solid {
            area.draw(&Circle::new((x + 15, y), 4, color.filled()))?;
        }
        area.draw_text(label, &text_style, (x + 36, y))?;
        x += width;
    }
    Ok(())
}

/// How a legend sample is drawn.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stroke {
    Solid,
    Dashed,
    Dotted,
}

impl Stroke {
    /// The drawn pieces of a sample from `from` to `to`.
    fn segments(self, from: i32, to: i32) -> Vec<(i32, i32)> {
        let (dash, gap) = match self {
            Stroke::Solid => return vec![(from, to)],
            Stroke::Dashed => (8, 5),
            Stroke::Dotted => (2, 4),
        };
        (from..to)
            .step_by(dash + gap)
            .map(|start| (start, (start + dash as i32).min(to)))
            .collect()
    }
}

/// One tier×profile panel.
fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    results: &Results,
    tier: &str,
    tier_info: Option<&Tier>,
    profile: &str,
    settings: &[&str],
) -> Result<(), DrawError> {
    let cells: Vec<&Cell> = results
        .cells
        .iter()
        .filter(|c| c.tier == tier && c.profile == profile && c.megabytes_per_second.is_finite())
        .collect();
    let link = tier_info.and_then(|t| t.rate).map(|rate| rate as f64 / 1e6);
    let top = cells
        .iter()
        .map(|c| c.megabytes_per_second)
        .chain(link)
        .fold(0.0, f64::max);
    // Headroom above the highest line for the speedup labels and the link label.
    let y_max = if top > 0.0 { top * 1.18 } else { 1.0 };
    let categories = settings.len().max(1) as i32;
    let index = |setting: &str| {
        settings
            .iter()
            .position(|s| *s == setting)
            .map(|i| i as i32)
    };

    let caption = match tier_info {
        Some(t) if !t.is_unshaped() => format!("{tier} · {profile}  ({})", short_link(t)),
        _ => format!("{tier} · {profile}"),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 14))
        .margin(10)
        .margin_right(MARGIN_NAMES)
        .x_label_area_size(40)
        .y_label_area_size(54)
        .build_cartesian_2d((0..categories - 1).into_segmented(), 0.0..y_max)?;
    let y_format = |v: &f64| {
        if y_max < 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.0}")
        }
    };
    let x_format = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => settings
            .get(*i as usize)
            .map_or_else(String::new, |s| s.to_string()),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(categories as usize)
        .x_label_formatter(&x_format)
        .y_labels(6)
        .y_label_formatter(&y_format)
        .x_desc("ctrpull concurrency")
        .y_desc("MB/s")
        .axis_desc_style((FONT, 13))
        .label_style((FONT, 13))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;

    let across = |y: f64| [(SegmentValue::Exact(0), y), (SegmentValue::Last, y)];
    // Reference lines are named in the right margin, level with the line.
    let mut names: Vec<(f64, String, RGBColor)> = Vec::new();
    if let Some(link) = link {
        chart.draw_series(DashedLineSeries::new(
            across(link),
            2,
            4,
            LINK_COLOR.stroke_width(2),
        ))?;
        names.push((link, format!("link {}", measure(link)), LINK_COLOR));
    }
    for cell in cells.iter().filter(|c| c.tool != Tool::Ctrpull) {
        let color = if cell.tool == Tool::Cri {
            CRI_COLOR
        } else {
            TRANSFER_COLOR
        };
        let y = cell.megabytes_per_second;
        chart.draw_series(DashedLineSeries::new(
            across(y),
            8,
            5,
            color.stroke_width(2),
        ))?;
        names.push((y, format!("{} {}", cell.tool.name(), measure(y)), color));
    }

    // ctrpull's line, broken where a setting has no figure (not run, or every
    // repeat failed) rather than drawn across it.
    let mut points: Vec<(i32, f64, Option<f64>)> = results
        .cells
        .iter()
        .filter(|c| c.tier == tier && c.profile == profile && c.tool == Tool::Ctrpull)
        .filter_map(|c| Some((index(&c.setting)?, c.megabytes_per_second, c.speedup)))
        .collect();
    points.sort_by_key(|(i, ..)| *i);
    let small = (FONT, 13).into_font();
    for (i, ..) in points.iter().filter(|(_, y, _)| !y.is_finite()) {
        let style = small
            .clone()
            .color(&LINK_COLOR)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        chart.draw_series(std::iter::once(
            EmptyElement::at((SegmentValue::CenterOf(*i), 0.0))
                + Text::new("no data", (0, -4), style),
        ))?;
    }
    points.retain(|(_, y, _)| y.is_finite());
    for run in points.chunk_by(|a, b| b.0 == a.0 + 1) {
        let line = run.iter().map(|(i, y, _)| (SegmentValue::CenterOf(*i), *y));
        chart.draw_series(LineSeries::new(line, CTRPULL_COLOR.stroke_width(3)))?;
    }
    let points: Vec<(SegmentValue<i32>, f64, Option<f64>)> = points
        .into_iter()
        .map(|(i, y, speedup)| (SegmentValue::CenterOf(i), y, speedup))
        .collect();
    let bold = small.clone().style(FontStyle::Bold).color(&CTRPULL_COLOR);
    // The speedup goes above the marker, unless a reference line runs just above it
    // (a saturated link, a baseline as fast) and neither one nor the x axis just below.
    let references: Vec<i32> = link
        .into_iter()
        .chain([0.0])
        .chain(
            cells
                .iter()
                .filter(|c| c.tool != Tool::Ctrpull)
                .map(|c| c.megabytes_per_second),
        )
        .map(|y| chart.backend_coord(&(SegmentValue::Last, y)).1)
        .collect();
    let below: Vec<bool> = points
        .iter()
        .map(|(x, y, _)| {
            let point = chart.backend_coord(&(x.clone(), *y)).1;
            let near =
                |range: std::ops::RangeInclusive<i32>| references.iter().any(|r| range.contains(r));
            near(point - 24..=point - 2) && !near(point + 2..=point + 24)
        })
        .collect();
    chart.draw_series(points.iter().zip(below).map(|((x, y, speedup), below)| {
        let (dy, anchor) = if below {
            (9, VPos::Top)
        } else {
            (-9, VPos::Bottom)
        };
        EmptyElement::at((x.clone(), *y))
            + Circle::new((0, 0), 5, CTRPULL_COLOR.filled())
            + Text::new(
                speedup
                    .filter(|s| s.is_finite())
                    .map_or_else(String::new, |s| format!("{s:.1}×")),
                (0, dy),
                bold.clone().pos(Pos::new(HPos::Center, anchor)),
            )
    }))?;

    // Margin names, top to bottom, pushed apart where lines run close together.
    let base = area.get_base_pixel();
    let mut placed: Vec<(i32, i32, String, RGBColor)> = names
        .into_iter()
        .map(|(y, text, color)| {
            let (x, y) = chart.backend_coord(&(SegmentValue::Last, y));
            (x - base.0 + 5, y - base.1, text, color)
        })
        .collect();
    placed.sort_by_key(|(_, y, ..)| *y);
    for i in 1..placed.len() {
        placed[i].1 = placed[i].1.max(placed[i - 1].1 + 13);
    }
    for (x, y, text, color) in placed {
        let style = small
            .clone()
            .color(&color)
            .pos(Pos::new(HPos::Left, VPos::Center));
        area.draw_text(&text, &style, (x, y))?;
    }
    Ok(())
}

/// A tier's link in a few characters for a panel caption: `100 Mbit/s, 25/conn, 40ms`.
fn short_link(tier: &Tier) -> String {
    let mut parts = Vec::new();
    if let Some(rate) = tier.rate {
        parts.push(Rate(rate).to_string());
    }
    if let Some(rate) = tier.per_connection_rate {
        parts.push(format!("{} per conn", Rate(rate)));
    }
    if !tier.latency.is_zero() {
        parts.push(humantime::format_duration(tier.latency).to_string());
    }
    parts.join(", ")
}

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
