//! perf_demo's graph, drawn like Flow-IPC's: round trip against file size, both axes logarithmic,
//! one line per mode (p50 solid with filled markers, p99 dashed with hollow ones), the bare ring's
//! 64-byte round trip as a dotted floor, and Flow-IPC 2.0's own figures, measured on this kind of
//! machine (issue 19), as shaded bands with range bars at the sizes it was measured at.
//!
//! Written as SVG and PNG through the shared plot module's backends (`plot::svg_with`,
//! `plot::png_with`), so the PNG needs no fontconfig, only a font file found at run time.

use std::path::{Path, PathBuf};

use plotters::coord::combinators::BindKeyPoints;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use crate::file::fmt_size;
use crate::plot::{self, Res, FONT};
use crate::report::Row;

const WIDTH: u32 = 1600;
const LEGEND_WIDTH: u32 = 460;
const HEIGHT: u32 = 860;
const MIB: f64 = 1048576.0;
const US: f64 = 1e3;
const MS: f64 = 1e6;
const S: f64 = 1e9;

/// A published range of Flow-IPC's: (file size in bytes, low ns, high ns) at each measured size.
type Band = &'static [(f64, f64, f64)];

/// Flow-IPC 2.0 zero copy (SHM-classic and SHM-jemalloc alike): 120-450 us at 0.1 and 1 MiB,
/// 230-700 us at 1000 MiB.
pub const FLOW_IPC_ZERO_COPY: Band = &[
    (0.1 * MIB, 120.0 * US, 450.0 * US),
    (MIB, 120.0 * US, 450.0 * US),
    (1000.0 * MIB, 230.0 * US, 700.0 * US),
];
/// Flow-IPC 2.0 over a Unix socket: 0.7-15 ms at 1 MiB, 1.4-5.7 s at 1000 MiB.
pub const FLOW_IPC_SOCKET: Band = &[(MIB, 0.7 * MS, 15.0 * MS), (1000.0 * MIB, 1.4 * S, 5.7 * S)];

/// Where the numbers come from, as the legend and the note under the graph say it.
pub const FLOW_IPC_SOURCE: &str =
    "Flow-IPC 2.0's C++ perf_demo, built from source and run on this \
                                   kind of machine (5 runs per cell, machine busy; issue 19)";

fn colour(system: &str) -> RGBColor {
    match system {
        "perf_demo-classic" => RGBColor(0xd6, 0x27, 0x28),
        "perf_demo-copy" => RGBColor(0x1f, 0x77, 0xb4),
        "perf_demo-zerocopy" => RGBColor(0x2c, 0xa0, 0x2c),
        "perf_demo-native" => RGBColor(0x94, 0x67, 0xbd),
        _ => RGBColor(0x7f, 0x7f, 0x7f),
    }
}

/// The legend's words for a system.
fn describe(system: &str) -> &str {
    match system {
        "perf_demo-classic" => "classic: capnp over a Unix socket",
        "perf_demo-copy" => "flowipc structured channel, copy mode",
        "perf_demo-zerocopy" => "flowipc zero copy",
        "perf_demo-native" => "flowipc native SHM vector of parts",
        other => other,
    }
}

/// Writes `perf_demo.svg` and `perf_demo.png` into `dir` (created if missing): the perf_demo rows
/// of `rows` and the `flowipc-ring` row. Returns the files written and notes on what was skipped.
pub fn write(
    rows: &[Row],
    dir: &Path,
    title: &str,
) -> std::io::Result<(Vec<PathBuf>, Vec<String>)> {
    std::fs::create_dir_all(dir)?;
    let font = plot::font();
    let mut written = Vec::new();
    let mut notes = Vec::new();
    let svg = dir.join("perf_demo.svg");
    match plot::svg_with(&svg, (WIDTH, HEIGHT), font.is_ok(), |root| {
        draw(root, rows, title)
    }) {
        Ok(()) => written.push(svg),
        Err(e) => notes.push(format!("{}: not written: {e}", svg.display())),
    }
    let png = dir.join("perf_demo.png");
    match font {
        Err(why) => notes.push(format!("{}: not written: {why}", png.display())),
        Ok(_) => match plot::png_with(&png, (WIDTH, HEIGHT), |root| draw(root, rows, title)) {
            Ok(()) => written.push(png),
            Err(e) => notes.push(format!("{}: not written: {e}", png.display())),
        },
    }
    Ok((written, notes))
}

/// A time for the y axis: `120 us`, `5.7 s`.
fn fmt_time(ns: &f64) -> String {
    if *ns >= S {
        format!("{} s", trim(ns / S))
    } else {
        plot::fmt_ns(ns)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// How a legend entry is drawn.
#[derive(Debug, Clone, Copy)]
enum Swatch {
    /// A published range: a shaded box.
    Band(RGBColor),
    /// The ring's floor: a dotted line.
    Dotted(RGBColor),
    /// A p50 line: solid, filled marker.
    Solid(RGBColor),
    /// A p99 line: dashed, hollow marker.
    Dashed(RGBColor),
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, rows: &[Row], title: &str) -> Res<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (top, foot) = root.split_vertically(HEIGHT - 34);
    let body = top.titled(title, (FONT, 20))?;
    let (body, legend_area) = body.split_horizontally(WIDTH - LEGEND_WIDTH);
    let mut legend: Vec<(String, Swatch)> = Vec::new();

    let mut systems: Vec<&str> = Vec::new();
    for r in rows.iter().filter(|r| r.system.starts_with("perf_demo-")) {
        if !systems.contains(&r.system.as_str()) {
            systems.push(&r.system);
        }
    }
    let points = |system: &str, value: fn(&Row) -> Option<f64>| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.system == system)
            .filter_map(|r| Some((r.size_bytes as f64, value(r)?)))
            .filter(|p| p.1 > 0.0)
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let ring = rows
        .iter()
        .find(|r| r.system == "flowipc-ring")
        .and_then(|r| r.p50_ns);

    // Axes: every measured size and every published one; every measured time and the bands.
    let sizes: Vec<f64> = rows
        .iter()
        .filter(|r| r.system.starts_with("perf_demo-"))
        .map(|r| r.size_bytes as f64)
        .collect();
    let bands = FLOW_IPC_ZERO_COPY.iter().chain(FLOW_IPC_SOCKET);
    let x_lo = sizes
        .iter()
        .copied()
        .chain(bands.clone().map(|b| b.0))
        .fold(f64::INFINITY, f64::min)
        / 1.6;
    let x_hi = sizes
        .iter()
        .copied()
        .chain(bands.clone().map(|b| b.0))
        .fold(0.0, f64::max)
        * 1.6;
    let times = rows
        .iter()
        .filter(|r| r.system.starts_with("perf_demo-") || r.system == "flowipc-ring")
        .flat_map(|r| [r.p50_ns, r.p99_ns])
        .flatten()
        .filter(|v| *v > 0.0)
        .chain(bands.flat_map(|b| [b.1, b.2]));
    let (y_min, y_max) = times.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (y_lo, y_hi) = (y_min / 2.0, y_max * 2.0);
    let mut x_keys: Vec<f64> = [100.0 * 1024.0, MIB, 10.0 * MIB, 100.0 * MIB, 1024.0 * MIB]
        .into_iter()
        .chain(sizes.iter().copied())
        .filter(|x| *x >= x_lo && *x <= x_hi)
        .collect();
    x_keys.sort_by(f64::total_cmp);
    x_keys.dedup();

    let mut chart = ChartBuilder::on(&body)
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (x_lo..x_hi).log_scale().with_key_points(x_keys),
            (y_lo..y_hi)
                .log_scale()
                .with_key_points(plot::decade_keys(y_lo, y_hi)),
        )?;
    chart
        .configure_mesh()
        .x_desc("file size (one capnp message of 16 KiB parts)")
        .y_desc("round trip: request sent to response's first part read")
        .x_label_formatter(&|b| fmt_size(b.round() as u64))
        .y_label_formatter(&fmt_time)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;

    // Flow-IPC's published figures, underneath.
    for (band, what, c) in [
        (
            FLOW_IPC_SOCKET,
            "Flow-IPC 2.0 Unix socket: range of 5 runs (*)",
            RGBColor(0xb0, 0x60, 0x20),
        ),
        (
            FLOW_IPC_ZERO_COPY,
            "Flow-IPC 2.0 zero copy: range of 5 runs (*)",
            RGBColor(0x20, 0x90, 0x50),
        ),
    ] {
        let mut outline: Vec<(f64, f64)> = band.iter().map(|b| (b.0, b.1)).collect();
        outline.extend(band.iter().rev().map(|b| (b.0, b.2)));
        chart.draw_series(std::iter::once(Polygon::new(outline, c.mix(0.18).filled())))?;
        legend.push((what.to_string(), Swatch::Band(c)));
        for &(x, lo, hi) in band {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x, lo), (x, hi)],
                c.stroke_width(2),
            )))?;
            for y in [lo, hi] {
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(x / 1.08, y), (x * 1.08, y)],
                    c.stroke_width(2),
                )))?;
            }
        }
    }

    if let Some(ring) = ring {
        let grey = RGBColor(0x55, 0x55, 0x55);
        chart.draw_series(DashedLineSeries::new(
            [(x_lo, ring), (x_hi, ring)],
            3,
            5,
            grey.stroke_width(1),
        ))?;
        legend.push((
            format!("flowipc-ring 64 B round trip p50 ({})", fmt_time(&ring)),
            Swatch::Dotted(grey),
        ));
    }

    for system in &systems {
        let c = colour(system);
        let p50 = points(system, |r| r.p50_ns);
        let p99 = points(system, |r| r.p99_ns);
        chart.draw_series(LineSeries::new(p50.iter().copied(), c.stroke_width(3)))?;
        legend.push((format!("{} p50", describe(system)), Swatch::Solid(c)));
        chart.draw_series(p50.iter().map(|&p| Circle::new(p, 5, c.filled())))?;
        chart.draw_series(DashedLineSeries::new(
            p99.iter().copied(),
            8,
            5,
            c.stroke_width(1),
        ))?;
        legend.push((format!("{} p99", describe(system)), Swatch::Dashed(c)));
        chart.draw_series(p99.iter().map(|&p| Circle::new(p, 4, c.stroke_width(1))))?;
    }

    // The legend, drawn by hand: plotters' own measures its text through a font, which the SVG
    // must not need.
    let row_h = 24;
    for (i, (label, swatch)) in legend.iter().enumerate() {
        let y = 40 + row_h * i as i32;
        let (a, b) = ((10, y), (44, y));
        match *swatch {
            Swatch::Band(c) => legend_area.draw(&Rectangle::new(
                [(10, y - 7), (44, y + 7)],
                c.mix(0.35).filled(),
            ))?,
            Swatch::Dotted(c) => {
                legend_area.draw(&DashedPathElement::new(vec![a, b], 3, 5, c.stroke_width(1)))?
            }
            Swatch::Solid(c) => {
                legend_area.draw(&PathElement::new(vec![a, b], c.stroke_width(3)))?;
                legend_area.draw(&Circle::new((27, y), 5, c.filled()))?;
            }
            Swatch::Dashed(c) => {
                legend_area.draw(&DashedPathElement::new(vec![a, b], 8, 5, c.stroke_width(1)))?;
                legend_area.draw(&Circle::new((27, y), 4, c.stroke_width(1)))?;
            }
        }
        legend_area.draw(&Text::new(label.clone(), (52, y - 8), (FONT, 14)))?;
    }

    foot.draw(&Text::new(
        format!("(*) {FLOW_IPC_SOURCE}."),
        (20, 8),
        (FONT, 13),
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: &str, size: u64, p50: f64) -> Row {
        Row {
            system: system.into(),
            mode: "spin-then-block".into(),
            placement: "cross-core".into(),
            kind: "rtt".into(),
            size_bytes: size,
            p50_ns: Some(p50),
            p99_ns: Some(p50 * 2.0),
            p999_ns: Some(p50 * 3.0),
            msgs_per_s: None,
            gbytes_per_s: None,
        }
    }

    #[test]
    fn svg_has_the_lines_and_the_reference() {
        let rows = vec![
            row("flowipc-ring", 64, 500.0),
            row("perf_demo-classic", 100 << 10, 80e3),
            row("perf_demo-classic", 1 << 20, 600e3),
            row("perf_demo-copy", 100 << 10, 30e3),
            row("perf_demo-copy", 1 << 20, 200e3),
        ];
        let dir = std::env::temp_dir().join(format!("perf-demo-figure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.svg");
        // Without registering a font: the layout must not need one.
        plot::svg_with(&path, (WIDTH, HEIGHT), false, |root| draw(root, &rows, "t")).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("copy mode p50"));
        assert!(svg.contains("Flow-IPC 2.0 zero copy"));
        assert!(svg.contains("flowipc-ring 64 B"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
