//! Plots of a run: RTT p50 against payload size and streaming throughput against payload size,
//! written as SVG and PNG with plotters.
//!
//! Each figure has one panel per placement (cross-core, same-core) with both axes logarithmic, one
//! line per system and mode, and a shared legend on the right: the colour names the system, the
//! marker and the dashes the mode. flowipc systems are drawn thickest, the raw baselines thinnest.
//!
//! Text: the SVG names the `sans-serif` family and leaves rendering to the viewer; the PNG rasterises
//! its text with a TrueType file found at run time ([`FONT_ENV`] or a list of usual places), so
//! nothing is needed at build time. Without a font the PNG is skipped with a message, and the SVG's
//! layout falls back to estimated text widths ([`SvgFontFree`]).

use std::collections::BTreeMap;
use std::error::Error;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::combinators::BindKeyPoints;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters_backend::{BackendColor, BackendCoord, DrawingErrorKind};

use crate::report::Row;

/// Environment variable naming a TrueType/OpenType font file to use instead of the usual places.
pub const FONT_ENV: &str = "FLOWIPC_BENCH_FONT";

/// Where fonts usually are on Debian/Ubuntu, Fedora, Arch and Alpine.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// The font family the figures name (registered by [`font`] for the PNG).
pub const FONT: &str = "sans-serif";
const WIDTH: u32 = 1600;
const HEIGHT: u32 = 720;
const LEGEND_WIDTH: u32 = 340;

/// What [`write_plots`] did.
#[derive(Debug, Default)]
pub struct PlotReport {
    /// Files written.
    pub written: Vec<PathBuf>,
    /// Figures or formats skipped, and why.
    pub notes: Vec<String>,
}

/// What drawing returns.
pub type Res<T> = Result<T, Box<dyn Error>>;

/// (payload bytes, value) pairs.
type Points = Vec<(f64, f64)>;

/// One line: a system in one mode at one placement.
struct Line {
    system: String,
    mode: String,
    points: Points,
}

struct Figure {
    title: String,
    y_desc: &'static str,
    y_fmt: fn(&f64) -> String,
    /// Placement name and its lines, cross-core first.
    panels: Vec<(String, Vec<Line>)>,
    /// The systems in the order the run measured them.
    run_order: Vec<String>,
}

/// Registers a font with plotters once per process; returns where it came from, or why none.
pub fn font() -> Result<&'static str, &'static str> {
    static FONT_FILE: OnceLock<Result<String, &'static str>> = OnceLock::new();
    FONT_FILE
        .get_or_init(|| {
            let from_env = std::env::var(FONT_ENV).ok();
            let candidates = from_env
                .iter()
                .map(String::as_str)
                .chain(FONT_CANDIDATES.iter().copied());
            for path in candidates {
                let Ok(bytes) = std::fs::read(path) else {
                    continue;
                };
                // plotters keeps the font for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                    return Ok(path.to_string());
                }
            }
            Err("no usable font found (install fonts-dejavu-core or set FLOWIPC_BENCH_FONT=/path/to/font.ttf)")
        })
        .as_ref()
        .map(String::as_str)
        .map_err(|e| *e)
}

/// Writes `rtt.svg`, `rtt.png`, `stream.svg` and `stream.png` for `rows` into `dir` (created if
/// missing). Figures without any rows are skipped; so is everything if no font can be found.
pub fn write_plots(rows: &[Row], dir: &Path) -> std::io::Result<PlotReport> {
    let mut report = PlotReport::default();
    let font = font();
    std::fs::create_dir_all(dir)?;
    let stamp = format!("{} | {}", today(), machine());
    let figures = [
        (
            "rtt",
            Figure {
                title: format!("Round trip p50 vs payload size   ({stamp})"),
                y_desc: "RTT p50",
                y_fmt: fmt_ns,
                panels: panels(rows, "rtt", |r| r.p50_ns),
                run_order: run_order(rows),
            },
        ),
        (
            "stream",
            Figure {
                title: format!("Streaming throughput vs payload size   ({stamp})"),
                y_desc: "payload GB/s (1e9 B/s)",
                y_fmt: fmt_gbps,
                panels: panels(rows, "stream", |r| r.gbytes_per_s),
                run_order: run_order(rows),
            },
        ),
    ];
    for (stem, fig) in &figures {
        if fig.panels.is_empty() {
            report.notes.push(format!("{stem}: no rows, not plotted"));
            continue;
        }
        let svg = dir.join(format!("{stem}.svg"));
        match write_svg(fig, &svg, font.is_ok()) {
            Ok(()) => report.written.push(svg),
            Err(e) => report
                .notes
                .push(format!("{}: not written: {e}", svg.display())),
        }
        let png = dir.join(format!("{stem}.png"));
        if let Err(why) = font {
            report
                .notes
                .push(format!("{}: not written: {why}", png.display()));
            continue;
        }
        match write_png(fig, &png) {
            Ok(()) => report.written.push(png),
            Err(e) => report
                .notes
                .push(format!("{}: not written: {e}", png.display())),
        }
    }
    Ok(report)
}

fn write_svg(fig: &Figure, path: &Path, have_font: bool) -> Res<()> {
    svg_with(path, (WIDTH, HEIGHT), have_font, |root| draw(root, fig))
}

fn write_png(fig: &Figure, path: &Path) -> Res<()> {
    png_with(path, (WIDTH, HEIGHT), |root| draw(root, fig))
}

/// Writes an SVG of `size` pixels drawn by `draw` (which other figures, such as perf_demo's, share
/// with this module). `have_font`: a font is registered ([`font`]), so text is measured with it.
pub fn svg_with(
    path: &Path,
    size: (u32, u32),
    have_font: bool,
    draw: impl FnOnce(&DrawingArea<SvgFontFree<'_>, Shift>) -> Res<()>,
) -> Res<()> {
    let root = SvgFontFree {
        inner: SVGBackend::new(path, size),
        measure: have_font,
    }
    .into_drawing_area();
    draw(&root)?;
    root.present()?;
    Ok(())
}

/// Writes a PNG of `size` pixels drawn by `draw`: rendered into an RGB buffer and encoded with
/// `png`. Needs a registered font ([`font`]) for its text.
pub fn png_with(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Res<()>,
) -> Res<()> {
    let mut rgb = vec![0u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        draw(&root)?;
        root.present()?;
    }
    let mut encoder = png::Encoder::new(BufWriter::new(File::create(path)?), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&rgb)?;
    writer.finish()?;
    Ok(())
}

/// The SVG backend, with text sizes estimated from the character count when no font is registered
/// (plotters measures text through the font to lay out labels; the SVG itself only names a family).
pub struct SvgFontFree<'a> {
    inner: SVGBackend<'a>,
    /// A font is registered: measure with it.
    measure: bool,
}

impl DrawingBackend for SvgFontFree<'_> {
    type ErrorType = <SVGBackend<'static> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_pixel(point, color)
    }

    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_path(path, style)
    }

    fn draw_circle<S: plotters_backend::BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.fill_polygon(vert, style)
    }

    fn draw_text<S: plotters_backend::BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_text(text, style, pos)
    }

    fn estimate_text_size<S: plotters_backend::BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        if self.measure {
            return self.inner.estimate_text_size(text, style);
        }
        // An average sans-serif glyph is a little over half an em wide.
        let em = style.size() / 1.24;
        let width = text.chars().count() as f64 * em * 0.55;
        Ok((width.ceil() as u32, em.ceil() as u32))
    }
}

/// The systems of `rows`, in the order they first appear.
fn run_order(rows: &[Row]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in rows {
        if !names.contains(&r.system) {
            names.push(r.system.clone());
        }
    }
    names
}

/// Groups the rows of `kind` into panels by placement and lines by (system, mode).
fn panels(rows: &[Row], kind: &str, value: fn(&Row) -> Option<f64>) -> Vec<(String, Vec<Line>)> {
    let mut by_placement: BTreeMap<&str, BTreeMap<(&str, &str), Points>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.kind == kind) {
        let Some(v) = value(r).filter(|v| *v > 0.0 && v.is_finite()) else {
            continue;
        };
        by_placement
            .entry(r.placement.as_str())
            .or_default()
            .entry((r.system.as_str(), r.mode.as_str()))
            .or_default()
            .push((r.size_bytes.max(1) as f64, v));
    }
    let order = |p: &str| match p {
        "cross-core" => 0,
        "same-core" => 1,
        _ => 2,
    };
    let mut out: Vec<(String, Vec<Line>)> = by_placement
        .into_iter()
        .map(|(placement, lines)| {
            let lines = lines
                .into_iter()
                .map(|((system, mode), mut points)| {
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Line {
                        system: system.to_string(),
                        mode: mode.to_string(),
                        points,
                    }
                })
                .collect();
            (placement.to_string(), lines)
        })
        .collect();
    out.sort_by_key(|(p, _)| order(p));
    out
}

/// Colours for systems, given in [`system_order`].
const PALETTE: &[RGBColor] = &[
    RGBColor(0xd6, 0x27, 0x28), // red
    RGBColor(0x1f, 0x77, 0xb4), // blue
    RGBColor(0x2c, 0xa0, 0x2c), // green
    RGBColor(0xff, 0x7f, 0x0e), // orange
    RGBColor(0x94, 0x67, 0xbd), // purple
    RGBColor(0x8c, 0x56, 0x4b), // brown
    RGBColor(0xe3, 0x77, 0xc2), // pink
    RGBColor(0x7f, 0x7f, 0x7f), // grey
    RGBColor(0xbc, 0xbd, 0x22), // olive
    RGBColor(0x17, 0xbe, 0xcf), // cyan
    RGBColor(0x00, 0x00, 0x00), // black
    RGBColor(0x39, 0x3b, 0x79), // navy
    RGBColor(0x00, 0x80, 0x80), // teal
    RGBColor(0x80, 0x00, 0x00), // maroon
    RGBColor(0xb8, 0x86, 0x0b), // dark gold
    RGBColor(0x55, 0x6b, 0x2f), // dark olive
];

/// flowipc systems first, then peers, then the raw baselines.
fn group(system: &str) -> u8 {
    if system.starts_with("flowipc") {
        0
    } else if system.starts_with("raw-") {
        2
    } else {
        1
    }
}

/// The systems of a figure by [`group`], each group in the order of the run.
fn system_order(fig: &Figure) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for line in fig.panels.iter().flat_map(|(_, lines)| lines) {
        if !names.contains(&line.system.as_str()) {
            names.push(&line.system);
        }
    }
    names.sort_by_key(|n| (group(n), fig.run_order.iter().position(|s| s == n)));
    names
}

/// Each system's colour, in [`system_order`].
fn system_colours(fig: &Figure) -> BTreeMap<String, RGBColor> {
    system_order(fig)
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), PALETTE[i % PALETTE.len()]))
        .collect()
}

/// flowipc drawn thickest, the raw baselines thinnest.
fn stroke(system: &str) -> u32 {
    match group(system) {
        0 => 3,
        1 => 2,
        _ => 1,
    }
}

/// Draws the marker of `mode` at `at` (a filled circle for busy-poll, a triangle for
/// spin-then-block, a cross for block).
fn draw_marker<DB: DrawingBackend, C: plotters::coord::CoordTranslate>(
    area: &DrawingArea<DB, C>,
    at: C::From,
    mode: &str,
    colour: RGBColor,
) -> Res<()>
where
    C::From: Clone,
    DB::ErrorType: 'static,
{
    match mode {
        "busy-poll" => area.draw(&Circle::new(at, 4, colour.filled()))?,
        "spin-then-block" => area.draw(&TriangleMarker::new(at, 6, colour.filled()))?,
        _ => area.draw(&Cross::new(at, 5, colour.stroke_width(2)))?,
    }
    Ok(())
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, fig: &Figure) -> Res<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let body = root.titled(&fig.title, (FONT, 22))?;
    let (charts, legend) = body.split_horizontally(WIDTH - LEGEND_WIDTH);
    let colours = system_colours(fig);

    let all = || {
        fig.panels
            .iter()
            .flat_map(|(_, l)| l)
            .flat_map(|l| &l.points)
    };
    let x_max = all().map(|p| p.0).fold(64.0, f64::max);
    let x_min = all().map(|p| p.0).fold(x_max, f64::min).min(64.0);
    let y_min = all().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_max = all().map(|p| p.1).fold(0.0, f64::max);
    let (y_lo, y_hi) = (y_min / 1.6, y_max * 1.6);
    let x_keys = size_keys(x_min, x_max);
    let y_keys = decade_keys(y_lo, y_hi);

    for ((placement, lines), area) in fig
        .panels
        .iter()
        .zip(charts.split_evenly((1, fig.panels.len())))
    {
        let mut chart = ChartBuilder::on(&area)
            .caption(placement, (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (x_min / 1.15..x_max * 1.15)
                    .log_scale()
                    .with_key_points(x_keys.clone()),
                (y_lo..y_hi).log_scale().with_key_points(y_keys.clone()),
            )?;
        chart
            .configure_mesh()
            .x_desc("payload size")
            .y_desc(fig.y_desc)
            .x_label_formatter(&fmt_size)
            .y_label_formatter(&fig.y_fmt)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.12))
            .draw()?;
        for line in lines {
            let colour = colours[&line.system];
            let style = colour.stroke_width(stroke(&line.system));
            match dashes(&line.mode) {
                None => chart.draw_series(LineSeries::new(line.points.iter().copied(), style))?,
                Some((on, off)) => chart.draw_series(DashedLineSeries::new(
                    line.points.iter().copied(),
                    on,
                    off,
                    style,
                ))?,
            };
            for &p in &line.points {
                draw_marker(chart.plotting_area(), p, &line.mode, colour)?;
            }
        }
    }

    // The shared legend: one entry per (system, mode) in any panel.
    let mut entries: Vec<(&str, &str)> = fig
        .panels
        .iter()
        .flat_map(|(_, lines)| lines.iter().map(|l| (l.system.as_str(), l.mode.as_str())))
        .collect();
    let order = system_order(fig);
    entries.sort_by_key(|(s, m)| (order.iter().position(|o| o == s), mode_rank(m)));
    entries.dedup();
    let row_h = 22;
    let top = 40;
    legend.draw(&Text::new(
        "system, mode",
        (10, top - 26),
        (FONT, 15).into_font().style(FontStyle::Bold),
    ))?;
    for (i, (system, mode)) in entries.iter().enumerate() {
        let y = top + row_h * i as i32;
        let colour = colours[*system];
        let style = colour.stroke_width(stroke(system));
        match dashes(mode) {
            None => legend.draw(&PathElement::new(vec![(10, y), (44, y)], style))?,
            Some((on, off)) => legend.draw(&DashedPathElement::new(
                vec![(10, y), (44, y)],
                on,
                off,
                style,
            ))?,
        }
        draw_marker(&legend, (27, y), mode, colour)?;
        legend.draw(&Text::new(
            format!("{system}  {mode}"),
            (52, y - 8),
            (FONT, 14),
        ))?;
    }
    Ok(())
}

/// Line pattern of a mode: busy-poll solid, spin-then-block long dashes, block short dashes.
fn dashes(mode: &str) -> Option<(u32, u32)> {
    match mode {
        "busy-poll" => None,
        "spin-then-block" => Some((10, 4)),
        _ => Some((4, 4)),
    }
}

fn mode_rank(mode: &str) -> u8 {
    match mode {
        "busy-poll" => 0,
        "spin-then-block" => 1,
        "block" => 2,
        _ => 3,
    }
}

/// Size ticks: powers of 4 from 64 B (or the smallest size) to the largest size.
fn size_keys(min: f64, max: f64) -> Vec<f64> {
    let mut keys = Vec::new();
    let mut v = 64.0f64;
    while v / 4.0 >= min {
        v /= 4.0;
    }
    while v <= max * 1.01 {
        keys.push(v);
        v *= 4.0;
    }
    keys
}

/// 1-2-5 ticks per decade inside `lo..hi`; just the decades if that would be crowded.
pub fn decade_keys(lo: f64, hi: f64) -> Vec<f64> {
    let mut keys = Vec::new();
    let decades = (hi / lo).log10();
    let steps: &[f64] = if decades > 4.0 {
        &[1.0]
    } else {
        &[1.0, 2.0, 5.0]
    };
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for s in steps {
            let v = decade * s;
            if v >= lo && v <= hi {
                keys.push(v);
            }
        }
        decade *= 10.0;
    }
    keys
}

fn fmt_size(b: &f64) -> String {
    let b = b.round() as u64;
    match b {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1024 && b % 1024 == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

pub fn fmt_ns(ns: &f64) -> String {
    match *ns {
        v if v >= 1e6 => format!("{} ms", trim(v / 1e6)),
        v if v >= 1e3 => format!("{} us", trim(v / 1e3)),
        v => format!("{} ns", trim(v)),
    }
}

fn fmt_gbps(g: &f64) -> String {
    trim(*g)
}

/// Today's date (UTC) as YYYY-MM-DD.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Gregorian date of a day count since 1970-01-01 (the days-to-civil algorithm: shift the year to
/// start in March so that the leap day is last, then split into 400-year eras).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A one-line description of the machine: CPU model and how many CPUs it has (from `/proc/cpuinfo`,
/// not the affinity mask, which the bench narrows to one CPU while it runs).
pub fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(
            || "unknown CPU".to_string(),
            |(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "),
        );
    let cpus = info.lines().filter(|l| l.starts_with("processor")).count();
    format!("{model}, {cpus} CPUs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn svg_without_font() {
        let fig = Figure {
            title: "t".into(),
            y_desc: "y",
            y_fmt: fmt_gbps,
            panels: vec![(
                "cross-core".into(),
                vec![Line {
                    system: "flowipc-ring".into(),
                    mode: "block".into(),
                    points: vec![(64.0, 1.0), (1024.0, 2.0)],
                }],
            )],
            run_order: vec!["flowipc-ring".into()],
        };
        let dir = std::env::temp_dir().join(format!("flowipc-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.svg");
        // Deliberately without `font()`: the layout must not need one.
        write_svg(&fig, &path, false).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("flowipc-ring"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys() {
        assert_eq!(
            size_keys(64.0, 1048576.0),
            vec![64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0]
        );
        assert_eq!(decade_keys(0.5, 3.0), vec![0.5, 1.0, 2.0]);
        assert_eq!(fmt_ns(&1500.0), "1.5 us");
        assert_eq!(fmt_size(&65536.0), "64 KiB");
    }
}
