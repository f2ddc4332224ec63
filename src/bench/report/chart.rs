//! The SVG chart of a benchmark: throughput against concurrency, one panel per tier and profile.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::*;

/// Width and height of one tier×profile panel, pixels.
const PANEL: (u32, u32) = (440, 300);
/// Height of the title and of the legend strip above the panels, pixels.
const TITLE_HEIGHT: u32 = 44;
const LEGEND_HEIGHT: u32 = 34;
const LEGEND_ROW: u32 = 22;
/// Right margin of a panel, where its reference lines are named, pixels.
const MARGIN_NAMES: u32 = 72;
const FONT: &str = "sans-serif";

const CTRPULL_COLOR: RGBColor = RGBColor(31, 119, 180);
const CRI_COLOR: RGBColor = RGBColor(230, 110, 0);
const TRANSFER_COLOR: RGBColor = RGBColor(44, 160, 44);
const LINK_COLOR: RGBColor = RGBColor(110, 110, 110);
const WIRE_COLOR: RGBColor = RGBColor(148, 103, 189);

/// A failure of the plotters drawing backend.
type DrawError = DrawingAreaErrorKind<<SVGBackend<'static> as DrawingBackend>::ErrorType>;

/// Draws the throughput chart (see [`write_svg`]) as SVG text.
pub(super) fn render_svg(results: &Results) -> Result<String, DrawError> {
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
    let legend = Legend::new(results, width as i32);
    let height = TITLE_HEIGHT + legend.height() + PANEL.1 * rows as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let title = format!(
            "Image pull throughput: ctrpull vs containerd {} (scale {}, median of {})",
            results.containerd_version, results.scale, results.repeat
        );
        let (top, panels) = root.split_vertically(TITLE_HEIGHT + legend.height());
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
        legend.draw(&legend_area)?;

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

/// The legend strip: one sample per kind of line the panels draw, laid out left
/// to right in centred rows as wide as the chart.
struct Legend {
    items: Vec<(&'static str, RGBColor, Stroke)>,
    /// Each item's width: its sample, its text (estimated), a gap.
    widths: Vec<i32>,
    /// Indices into `items`, per row.
    rows: Vec<Vec<usize>>,
    width: i32,
}

impl Legend {
    fn new(results: &Results, width: i32) -> Legend {
        let has = |tool: Tool| results.cells.iter().any(|c| c.tool == tool);
        let shaped = results
            .tiers
            .iter()
            .any(|t| t.rate.is_some() && results.cells.iter().any(|c| c.tier == t.name));
        let mut items: Vec<(&'static str, RGBColor, Stroke)> =
            [Tool::Ctrpull, Tool::Cri, Tool::Transfer, Tool::Wire]
                .into_iter()
                .filter(|tool| has(*tool))
                .map(tool_style)
                .collect();
        if shaped {
            items.push(("link rate", LINK_COLOR, Stroke::Dotted));
        }
        let font = (FONT, 15).into_font();
        let widths: Vec<i32> = items
            .iter()
            .map(|(label, ..)| {
                let (w, _) = font.box_size(label).unwrap_or((200, 0));
                36 + w as i32 + 28
            })
            .collect();
        let room = width - 16;
        let mut rows: Vec<Vec<usize>> = vec![Vec::new()];
        let mut used = 0;
        for (i, item_width) in widths.iter().enumerate() {
            let row = rows.last_mut().expect("one row at least");
            if !row.is_empty() && used + item_width > room {
                rows.push(vec![i]);
                used = *item_width;
            } else {
                row.push(i);
                used += item_width;
            }
        }
        Legend {
            items,
            widths,
            rows,
            width,
        }
    }

    /// [`LEGEND_HEIGHT`] for one row, [`LEGEND_ROW`] more for each further one.
    fn height(&self) -> u32 {
        LEGEND_HEIGHT + LEGEND_ROW * (self.rows.len() as u32).saturating_sub(1)
    }

    fn draw(
        &self,
        area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    ) -> Result<(), DrawError> {
        let text_style = (FONT, 15)
            .into_text_style(area)
            .pos(Pos::new(HPos::Left, VPos::Center));
        let mut y = LEGEND_HEIGHT as i32 / 2;
        for row in &self.rows {
            let total: i32 = row.iter().map(|&i| self.widths[i]).sum();
            let mut x = ((self.width - total) / 2).max(8);
            for &i in row {
                let (label, color, stroke) = &self.items[i];
                let style = color.stroke_width(if *stroke == Stroke::Dotted { 2 } else { 3 });
                for (from, to) in stroke.segments(x, x + 30) {
                    area.draw(&PathElement::new(vec![(from, y), (to, y)], style))?;
                }
                if *stroke == Stroke::Solid {
                    area.draw(&Circle::new((x + 15, y), 4, color.filled()))?;
                }
                area.draw_text(label, &text_style, (x + 36, y))?;
                x += self.widths[i];
            }
            y += LEGEND_ROW as i32;
        }
        Ok(())
    }
}

/// How the panels draw a tool's cells, and its legend entry.
fn tool_style(tool: Tool) -> (&'static str, RGBColor, Stroke) {
    match tool {
        Tool::Ctrpull => (
            "ctrpull (label: speedup vs containerd)",
            CTRPULL_COLOR,
            Stroke::Solid,
        ),
        Tool::Cri => ("containerd CRI pull", CRI_COLOR, Stroke::Dashed),
        Tool::Transfer => ("containerd Transfer pull", TRANSFER_COLOR, Stroke::Dashed),
        Tool::Wire => (
            "wire: download only, bytes discarded",
            WIRE_COLOR,
            Stroke::Dashed,
        ),
    }
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
        let (_, color, _) = tool_style(cell.tool);
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
