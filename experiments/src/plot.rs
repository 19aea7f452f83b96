//! PNG plots of regret curves: log-x axis, one line per policy, reference
//! curves dashed-looking (thin, black).
//!
//! The font is loaded at run time from [`FONT_PATH`] and registered with
//! plotters' `ab_glyph` backend; nothing is drawn without it.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::report::ScenarioResult;

/// The TrueType font the plots use.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// Plot size in pixels.
pub const SIZE_PX: (u32, u32) = (960, 600);

static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Registers [`FONT_PATH`] as `sans-serif`, once per process.
pub fn ensure_font() -> Result<()> {
    FONT.get_or_init(|| {
        let bytes = std::fs::read(FONT_PATH).map_err(|e| {
            format!("font {FONT_PATH} missing ({e}); install it with `apt-get install fonts-dejavu-core`")
        })?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("font {FONT_PATH} is not a usable TrueType font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// The y-range: three times the best non-zero final regret (or the
/// reference curves, if larger), so that the interesting curves are not
/// flattened by linear-regret baselines, which run off the top instead.
fn y_max(result: &ScenarioResult) -> f64 {
    let finals: Vec<f64> = result
        .policies
        .iter()
        .map(|p| p.band.last().0)
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let best = finals.iter().copied().fold(f64::INFINITY, f64::min);
    let worst = finals.iter().copied().fold(0.0f64, f64::max);
    let reference = result
        .references
        .iter()
        .filter_map(|r| r.values.last().copied())
        .fold(0.0f64, f64::max);
    let top = (3.0 * best).max(1.1 * reference);
    if top.is_finite() {
        top.min(1.05 * worst.max(reference)).max(1.0)
    } else {
        1.0
    }
}

/// The curve's points up to where it leaves the plot at `y_max`, the last
/// one interpolated onto the top edge (log-x).
fn clipped(steps: &[u64], values: &[f64], y_max: f64) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = Vec::with_capacity(steps.len());
    for (&t, &v) in steps.iter().zip(values) {
        let t = t as f64;
        if v <= y_max {
            points.push((t, v));
            continue;
        }
        if let Some(&(t0, v0)) = points.last() {
            let f = (y_max - v0) / (v - v0);
            points.push(((t0.ln() + f * (t.ln() - t0.ln())).exp(), y_max));
        }
        break;
    }
    points
}

/// The x axis of a plot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XAxis {
    /// Log-spaced t, for regret curves.
    Log,
    /// Linear t, to see a change at a given step (drift).
    Linear,
}

/// Draws `result`'s mean regret curves to `path`.
pub fn regret_plot(result: &ScenarioResult, path: &Path, x_axis: XAxis) -> Result<()> {
    ensure_font()?;
    if result.checkpoints.steps().len() < 2 {
        bail!("need at least two checkpoints to plot");
    }
    let x_max = result.horizon() as f64;
    let root = BitMapBackend::new(path, SIZE_PX).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
    let title = format!("{} (seed {})", result.scenario, result.seed);
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    let y_max = y_max(result);
    match x_axis {
        XAxis::Log => {
            let chart = builder
                .build_cartesian_2d((1f64..x_max).log_scale(), 0f64..y_max)
                .map_err(|e| anyhow!("plot: {e}"))?;
            draw(chart, result, y_max, "t (log scale)", &|x| {
                format!("{x:.0e}")
            })?;
        }
        XAxis::Linear => {
            let chart = builder
                .build_cartesian_2d(0f64..x_max, 0f64..y_max)
                .map_err(|e| anyhow!("plot: {e}"))?;
            draw(chart, result, y_max, "t", &|x| format!("{x:.1e}"))?;
        }
    }
    root.present()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

fn draw<'a, X>(
    mut chart: ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, RangedCoordf64>>,
    result: &ScenarioResult,
    y_max: f64,
    x_desc: &str,
    x_format: &dyn Fn(&f64) -> String,
) -> Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let steps = result.checkpoints.steps();
    chart
        .configure_mesh()
        .max_light_lines(2)
        .x_desc(x_desc)
        .y_desc("cumulative regret (curves leaving the top are clipped)")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_label_formatter(x_format)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    for (i, p) in result.policies.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points = clipped(steps, &p.band.mean, y_max);
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| anyhow!("plot: {e}"))?
            .label(p.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    for r in &result.references {
        let points = clipped(steps, &r.values, y_max);
        chart
            .draw_series(LineSeries::new(points, BLACK.stroke_width(1)))
            .map_err(|e| anyhow!("plot: {e}"))?
            .label(r.name.clone())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    Ok(())
}

/// One curve of a [`line_plot`].
#[derive(Debug, Clone)]
pub struct Line {
    /// Legend entry.
    pub name: String,
    /// (x, y) points, x increasing.
    pub points: Vec<(f64, f64)>,
    /// Drawn thin and black, as a reference (e.g. an oracle).
    pub reference: bool,
}

/// Colours of a [`line_plot`]'s curves, in order: distinct and readable
/// on white.
const LINE_COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
];

/// Draws `lines` on linear axes to `path`: x from 0 to the largest x, y
/// from 0 to 1.1 × the largest y.
pub fn line_plot(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
) -> Result<()> {
    ensure_font()?;
    let x_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(0.0f64, f64::max);
    let y_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .filter(|y| y.is_finite())
        .fold(0.0f64, f64::max);
    if x_max <= 0.0 || y_max <= 0.0 {
        bail!("nothing to plot: every point is at 0");
    }
    let root = BitMapBackend::new(path, SIZE_PX).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..1.1 * y_max)
        .map_err(|e| anyhow!("plot: {e}"))?;
    chart
        .configure_mesh()
        .max_light_lines(2)
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    let mut colors = 0;
    for line in lines {
        let style = if line.reference {
            BLACK.stroke_width(1)
        } else {
            colors += 1;
            LINE_COLORS[(colors - 1) % LINE_COLORS.len()].stroke_width(2)
        };
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), style))
            .map_err(|e| anyhow!("plot: {e}"))?
            .label(line.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    root.present()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::{Band, Checkpoints, Curve};
    use crate::report::PolicyResult;

    #[test]
    fn clipping_interpolates_onto_the_top_edge() {
        let p = clipped(&[1, 10, 100], &[0.0, 5.0, 15.0], 10.0);
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].1, 10.0);
        assert!((p[2].0 - 10f64.powf(1.5)).abs() < 1e-9, "{p:?}");
    }

    #[test]
    fn draws_a_png_when_the_font_exists() {
        if !Path::new(FONT_PATH).exists() {
            println!("plot: skipped, {FONT_PATH} missing");
            return;
        }
        let checkpoints = Checkpoints::from_steps(vec![1, 10, 100]);
        let band = Band::from_curves(&[Curve {
            regret: vec![0.5, 3.0, 8.0],
            clicks: vec![0.0, 1.0, 5.0],
        }]);
        let result = ScenarioResult {
            scenario: "unit".into(),
            seed: 1,
            params: serde_json::json!({}),
            checkpoints,
            policies: vec![PolicyResult {
                name: "ts".into(),
                band,
                examples_per_s: 1.0,
                note: String::new(),
            }],
            references: Vec::new(),
            notes: Vec::new(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unit.png");
        regret_plot(&result, &path, XAxis::Log).unwrap();
        regret_plot(&result, &path, XAxis::Linear).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }

    #[test]
    fn draws_lines_and_refuses_an_empty_plot() {
        if !Path::new(FONT_PATH).exists() {
            println!("plot: skipped, {FONT_PATH} missing");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lines.png");
        let line = |name: &str, points: Vec<(f64, f64)>, reference| Line {
            name: name.into(),
            points,
            reference,
        };
        let lines = [
            line("a", vec![(0.0, 0.01), (10.0, 0.02)], false),
            line("oracle", vec![(0.0, 0.03), (10.0, 0.03)], true),
        ];
        line_plot(&path, "unit", "t", "CTR", &lines).unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[1..4], b"PNG");
        let flat = [line("zero", vec![(0.0, 0.0), (10.0, 0.0)], false)];
        assert!(line_plot(&path, "unit", "t", "CTR", &flat).is_err());
    }
}
