//! PNG figures with plotters' bitmap backend.
//!
//! Text needs a font: plotters is built without system font lookup (no fontconfig), so the
//! crate ships DejaVu Sans (Bitstream Vera licence, `assets/DejaVu-LICENSE.txt`) and
//! registers it from bytes as `sans-serif`, the family plotters asks for by default.

use std::path::{Path, PathBuf};
use std::sync::Once;

use ndarray::Array2;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::StudyResults;
use crate::error::{EvalError, Result};

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Registers the bundled font once per process.
fn ensure_font() {
    REGISTER.call_once(|| {
        // The bytes are a valid TrueType file checked into the crate; a failure here would
        // only mean figures without text, so it is not fatal.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Space–time maps of one test sample: the current, the true v and each model's v.
#[derive(Debug, Clone)]
pub struct SampleMaps {
    /// Index of the sample in the test split.
    pub index: usize,
    /// Stimulus onset.
    pub t0: f64,
    /// Stimulus centre.
    pub x0: f64,
    /// Stimulus amplitude.
    pub amplitude: f64,
    /// The applied current `[nt, nx]`.
    pub current: Array2<f32>,
    /// The solver's v `[nt, nx]`.
    pub truth_v: Array2<f32>,
    /// Each model's predicted v, by label.
    pub predictions: Vec<(String, Array2<f32>)>,
}

/// What the figures need beyond [`StudyResults`].
#[derive(Debug, Clone, Default)]
pub struct FigureData {
    /// A few test samples to draw.
    pub maps: Vec<SampleMaps>,
    /// Final time of the output grid.
    pub t_end: f64,
    /// Domain length.
    pub length: f64,
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> EvalError {
    EvalError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Viridis, sampled at 5 anchors and interpolated linearly; `u` in [0, 1].
pub fn viridis(u: f64) -> RGBColor {
    const A: [(f64, f64, f64); 5] = [
        (68., 1., 84.),
        (59., 82., 139.),
        (33., 145., 140.),
        (94., 201., 98.),
        (253., 231., 37.),
    ];
    let u = if u.is_finite() {
        u.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let p = u * (A.len() - 1) as f64;
    let i = (p.floor() as usize).min(A.len() - 2);
    let f = p - i as f64;
    let lerp = |a: f64, b: f64| (a + f * (b - a)).round() as u8;
    RGBColor(
        lerp(A[i].0, A[i + 1].0),
        lerp(A[i].1, A[i + 1].1),
        lerp(A[i].2, A[i + 1].2),
    )
}

/// White to dark red for magnitudes; `u` in [0, 1].
pub fn reds(u: f64) -> RGBColor {
    let u = if u.is_finite() {
        u.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let c = |a: f64, b: f64| (a + u * (b - a)).round() as u8;
    RGBColor(c(255., 120.), c(255., 0.), c(255., 0.))
}

/// Draws one heat map panel of `field` ([nt, nx], t upwards) with a colour map over
/// `[lo, hi]`.
fn heat_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    field: &Array2<f32>,
    (lo, hi): (f64, f64),
    cmap: fn(f64) -> RGBColor,
    caption: &str,
    (t_end, length): (f64, f64),
) -> std::result::Result<(), String> {
    let (nt, nx) = field.dim();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(4)
        .x_label_area_size(28)
        .y_label_area_size(34)
        .build_cartesian_2d(0.0..length, 0.0..t_end)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("x")
        .y_desc("t")
        .x_labels(3)
        .y_labels(3)
        .label_style(("sans-serif", 11))
        .draw()
        .map_err(|e| e.to_string())?;
    let (hx, ht) = (length / nx.max(1) as f64, t_end / nt.max(1) as f64);
    let span = if hi > lo { hi - lo } else { 1.0 };
    chart
        .draw_series(field.indexed_iter().map(|((t, x), &v)| {
            let (x0, t0) = (x as f64 * hx, t as f64 * ht);
            Rectangle::new(
                [(x0, t0), (x0 + hx, t0 + ht)],
                cmap((f64::from(v) - lo) / span).filled(),
            )
        }))
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn min_max<'a>(fields: impl Iterator<Item = &'a Array2<f32>>) -> (f64, f64) {
    fields
        .flat_map(|f| f.iter())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            let v = f64::from(v);
            if v.is_finite() {
                (lo.min(v), hi.max(v))
            } else {
                (lo, hi)
            }
        })
}

/// One PNG per sample: rows of (prediction, |error|) panels under a row of (current, truth).
pub fn draw_sample_maps(m: &SampleMaps, domain: (f64, f64), path: &Path) -> Result<()> {
    ensure_font();
    let rows = 1 + m.predictions.len();
    let (pw, ph) = (330u32, 230u32);
    let root = BitMapBackend::new(path, (2 * pw, 40 + rows as u32 * ph)).into_drawing_area();
    let draw = || -> std::result::Result<(), String> {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (title, body) = root.split_vertically(40);
        title
            .titled(
                &format!(
                    "test sample {}: onset t0 = {:.2}, centre x0 = {:.2}, amplitude {:.2}",
                    m.index, m.t0, m.x0, m.amplitude
                ),
                ("sans-serif", 17),
            )
            .map_err(|e| e.to_string())?;
        let panels = body.split_evenly((rows, 2));
        let v_range =
            min_max(std::iter::once(&m.truth_v).chain(m.predictions.iter().map(|(_, p)| p)));
        let i_range = min_max(std::iter::once(&m.current));
        heat_panel(
            &panels[0],
            &m.current,
            i_range,
            viridis,
            &format!("current I (max {:.2})", i_range.1),
            domain,
        )?;
        heat_panel(
            &panels[1],
            &m.truth_v,
            v_range,
            viridis,
            "true v (solver)",
            domain,
        )?;
        for (k, (label, pred)) in m.predictions.iter().enumerate() {
            let err = (pred - &m.truth_v).mapv(f32::abs);
            let emax = min_max(std::iter::once(&err)).1.max(1e-12);
            heat_panel(
                &panels[2 * k + 2],
                pred,
                v_range,
                viridis,
                &format!("{label}: v"),
                domain,
            )?;
            heat_panel(
                &panels[2 * k + 3],
                &err,
                (0.0, emax),
                reds,
                &format!("{label}: |error| (max {emax:.2})"),
                domain,
            )?;
        }
        root.present().map_err(|e| e.to_string())
    };
    draw().map_err(|e| plot_err(path, e))
}

fn palette(i: usize) -> RGBColor {
    let c = Palette99::pick(i).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

/// The lowest value a log-scale chart draws; values below it are drawn on it.
const FLOOR: f64 = 1e-5;

/// A legend entry: the label, marked "(≤ 1e-5)" where every point of its series is at or
/// below [`FLOOR`]. Such a curve (exact equivariance up to rounding: the solver, the causal
/// operator) is drawn on the floor line, under the others there, and the reader would not
/// find it without the mark.
fn legend_text(
    label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    reference: Option<(&str, &[(f64, f64)])>,
) -> String {
    let of_label = series
        .iter()
        .filter(|(l, _)| l == label)
        .flat_map(|(_, p)| p.iter())
        .chain(
            reference
                .iter()
                .filter(|(l, _)| *l == label)
                .flat_map(|(_, p)| p.iter()),
        );
    let mut finite = of_label.filter(|(_, y)| y.is_finite()).peekable();
    if finite.peek().is_some() && finite.all(|&(_, y)| y <= FLOOR) {
        format!("{label} (≤ 1e-5)")
    } else {
        label.to_string()
    }
}

/// A log-scale line chart of several series `(label, points)`, with an optional black
/// dashed reference series.
fn log_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    (x_desc, y_desc): (&str, &str),
    series: &[(String, Vec<(f64, f64)>)],
    reference: Option<(&str, &[(f64, f64)])>,
    points_only: bool,
) -> std::result::Result<(), String> {
    let all = series
        .iter()
        .flat_map(|(_, p)| p.iter())
        .chain(reference.iter().flat_map(|(_, p)| p.iter()));
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in all {
        if x.is_finite() && y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y.max(FLOOR));
            y1 = y1.max(y.max(FLOOR));
        }
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.01, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let (y0, y1) = (y0 / 1.5, (y1 * 1.5).max(y0 * 2.0));
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 17))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(("sans-serif", 12))
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()
        .map_err(|e| e.to_string())?;
    let legend = |label: &str| legend_text(label, series, reference);
    // One colour per label; a label given several times (one series per seed) is drawn in
    // that colour each time, with one legend entry.
    let mut labels: Vec<&str> = Vec::new();
    for (label, pts) in series {
        let first = !labels.contains(&label.as_str());
        if first {
            labels.push(label);
        }
        let i = labels.iter().position(|l| *l == label).unwrap_or(0);
        let color = palette(i);
        let pts: Vec<(f64, f64)> = pts
            .iter()
            .map(|&(x, y)| (x, y.max(FLOOR)))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let anno = if points_only {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| e.to_string())?
        } else {
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| e.to_string())?
        };
        if first {
            anno.label(legend(label)).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(3))
            });
        }
    }
    if let Some((label, pts)) = reference {
        let pts: Vec<(f64, f64)> = pts.iter().map(|&(x, y)| (x, y.max(FLOOR))).collect();
        chart
            .draw_series(DashedLineSeries::new(pts, 6, 4, BLACK.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(legend(label))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Training loss and validation error against the epoch, one line per model and seed (a
/// colour per model).
pub fn draw_training_curves(r: &StudyResults, path: &Path) -> Result<()> {
    ensure_font();
    let root = BitMapBackend::new(path, (1200, 480)).into_drawing_area();
    let draw = || -> std::result::Result<(), String> {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (a, b) = root.split_horizontally(600);
        let train: Vec<(String, Vec<(f64, f64)>)> = r
            .models
            .iter()
            .map(|m| {
                (
                    m.label.clone(),
                    m.epochs
                        .iter()
                        .map(|e| (e.epoch as f64 + 1.0, e.train_loss))
                        .collect(),
                )
            })
            .collect();
        let val: Vec<(String, Vec<(f64, f64)>)> = r
            .models
            .iter()
            .map(|m| {
                (
                    m.label.clone(),
                    m.epochs
                        .iter()
                        .filter_map(|e| e.val_error.map(|v| (e.epoch as f64 + 1.0, v)))
                        .collect(),
                )
            })
            .collect();
        log_lines(
            &a,
            "training loss",
            ("epoch", "relative L2"),
            &train,
            None,
            false,
        )?;
        log_lines(
            &b,
            "validation error",
            ("epoch", "relative L2"),
            &val,
            None,
            false,
        )?;
        root.present().map_err(|e| e.to_string())
    };
    draw().map_err(|e| plot_err(path, e))
}

/// E(s) of v over delays and over space shifts, every model (a line per seed, a colour per
/// model) and the solver (dashed).
pub fn draw_equivariance(r: &StudyResults, path: &Path) -> Result<()> {
    ensure_font();
    let root = BitMapBackend::new(path, (1200, 480)).into_drawing_area();
    let pts = |c: &crate::translation::EquivarianceCurve| -> Vec<(f64, f64)> {
        c.points
            .iter()
            .filter(|p| p.steps != 0)
            .map(|p| (p.shift, p.channels[0].mean))
            .collect()
    };
    let draw = || -> std::result::Result<(), String> {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (a, b) = root.split_horizontally(600);
        let time: Vec<_> = r
            .models
            .iter()
            .map(|m| (m.label.clone(), pts(&m.time_curve)))
            .collect();
        let space: Vec<_> = r
            .models
            .iter()
            .map(|m| (m.label.clone(), pts(&m.space_curve)))
            .collect();
        let st = pts(&r.solver_time_curve);
        let ss = pts(&r.solver_space_curve);
        log_lines(
            &a,
            "equivariance error, delays",
            ("delay of the stimulus (time units)", "E(s) of v"),
            &time,
            Some(("solver", &st)),
            false,
        )?;
        log_lines(
            &b,
            "equivariance error, space shifts",
            ("space shift of the stimulus", "E(s) of v"),
            &space,
            Some(("solver", &ss)),
            false,
        )?;
        root.present().map_err(|e| e.to_string())
    };
    draw().map_err(|e| plot_err(path, e))
}

/// Translated-test relative L2 of v against the stimulus onset, one colour per model (the
/// points of every seed).
pub fn draw_error_vs_onset(r: &StudyResults, path: &Path) -> Result<()> {
    ensure_font();
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    let draw = || -> std::result::Result<(), String> {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let series: Vec<_> = r
            .models
            .iter()
            .map(|m| {
                (
                    m.label.clone(),
                    m.test_by_onset.iter().map(|o| (o.t0, o.rel_l2_v)).collect(),
                )
            })
            .collect();
        log_lines(
            &root,
            "translated test: error against stimulus onset (training onset t0 = 1)",
            ("onset t0", "relative L2 of v"),
            &series,
            None,
            true,
        )?;
        root.present().map_err(|e| e.to_string())
    };
    draw().map_err(|e| plot_err(path, e))
}

/// A figure drawn from the results alone.
type Drawer = fn(&StudyResults, &Path) -> Result<()>;

/// Runs `draw` on a temporary sibling of `path` (same extension: plotters picks the format
/// from it) and renames it to `path`, so that a failed drawing leaves any previous figure
/// intact; errors name `path`, not the temporary file.
fn draw_atomically(path: &Path, draw: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    crate::strict::persist_with(path, |_, tmp| {
        draw(tmp).map_err(|e| match e {
            EvalError::Plot { reason, .. } => EvalError::Plot {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })
    })
}

/// Draws every figure into `dir`, each atomically; returns their paths.
pub fn draw_all(r: &StudyResults, data: &FigureData, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let domain = (data.t_end, data.length);
    for (k, m) in data.maps.iter().enumerate() {
        let p = dir.join(format!("maps_sample{k}.png"));
        draw_atomically(&p, |tmp| draw_sample_maps(m, domain, tmp))?;
        out.push(p);
    }
    let figs: [(&str, Drawer); 3] = [
        ("training_curves.png", draw_training_curves),
        ("equivariance.png", draw_equivariance),
        ("error_vs_onset.png", draw_error_vs_onset),
    ];
    for (name, f) in figs {
        let p = dir.join(name);
        draw_atomically(&p, |tmp| f(r, tmp))?;
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legend_marks_only_curves_on_the_floor() {
        let series = vec![
            ("causal".to_string(), vec![(1.0, 0.0), (2.0, 3e-7)]),
            ("causal".to_string(), vec![(1.0, 1e-6)]),
            ("fno".to_string(), vec![(1.0, 0.0), (2.0, 0.3)]),
            ("empty".to_string(), vec![]),
        ];
        let solver = [(1.0, 0.0), (2.0, f64::NAN)];
        let text = |l: &str| legend_text(l, &series, Some(("solver", &solver)));
        assert_eq!(text("causal"), "causal (≤ 1e-5)");
        assert_eq!(text("fno"), "fno");
        assert_eq!(text("empty"), "empty");
        assert_eq!(text("solver"), "solver (≤ 1e-5)");
    }

    #[test]
    fn colour_maps_hit_their_anchors() {
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(viridis(0.5), RGBColor(33, 145, 140));
        assert_eq!(viridis(f64::NAN), viridis(0.0));
        assert_eq!(reds(0.0), RGBColor(255, 255, 255));
        assert_eq!(reds(2.0), RGBColor(120, 0, 0));
    }

    #[test]
    fn sample_maps_are_written_as_png() {
        let dir = tempfile::tempdir().unwrap();
        let f = Array2::from_shape_fn((20, 16), |(t, x)| {
            ((t as f32) * 0.1 - (x as f32) * 0.05).sin()
        });
        let m = SampleMaps {
            index: 3,
            t0: 1.0,
            x0: 0.5,
            amplitude: 1.0,
            current: f.clone(),
            truth_v: f.clone(),
            predictions: vec![("fno".into(), f.mapv(|v| v * 0.9))],
        };
        let p = dir.path().join("m.png");
        draw_sample_maps(&m, (40.0, 1.0), &p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }
}
