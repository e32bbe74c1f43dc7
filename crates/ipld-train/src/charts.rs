//! `ipld-train plot --run R` (issue 23): a run's `metrics.jsonl` drawn to one PNG of four
//! panels: the loss (64) and its terms, the sample metrics (MMD² and FID of the evaluations
//! during training, `eval.every`, and of the final evaluation), the particle cloud's statistics,
//! and the learning rates and particle step size in use.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

use crate::canvas::Canvas;
use crate::error::RunError;
use crate::rundir::{METRICS_FILE, SUMMARY_FILE, is_run_dir};

/// The picture's default name inside the run directory.
pub const CHARTS_PNG: &str = "training.png";

type Series = (String, Vec<(f64, f64)>);

const COLOURS: [RGBColor; 4] = [
    RGBColor(200, 60, 40),
    RGBColor(40, 90, 160),
    RGBColor(60, 150, 70),
    RGBColor(150, 90, 170),
];

/// The values of `key` (a dotted path into nested objects) against `step`, over `lines`.
fn series(lines: &[&Value], key: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter_map(|v| {
            let x = v["step"].as_f64()?;
            let y = key.split('.').fold(*v, |v, k| &v[k]).as_f64()?;
            y.is_finite().then_some((x, y))
        })
        .collect()
}

/// Draws the run in `dir` to `out` (default `dir/training.png`) and refreshes its CSV copies;
/// returns the path written.
pub fn plot_run(dir: &Path, out: Option<&Path>) -> Result<PathBuf, RunError> {
    if !is_run_dir(dir) {
        return Err(RunError::invalid(dir, "not a run directory"));
    }
    let path = dir.join(METRICS_FILE);
    let lines = crate::csv::metrics_lines(dir)
        .ok_or_else(|| RunError::invalid(&path, "cannot be read: no metrics to plot"))?;
    // The CSV copies are refreshed from the same lines.
    crate::csv::write_csv_of(dir, &lines)?;
    let (evals, train) = crate::csv::by_phase(&lines);
    if train.is_empty() {
        return Err(RunError::invalid(&path, "no training lines to plot yet"));
    }
    let summary: Option<Value> = std::fs::read_to_string(dir.join(SUMMARY_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let mut metric: Vec<Series> = vec![("MMD²".into(), series(&evals, "mmd"))];
    let mut fid = series(&evals, "fid");
    if let Some(s) = &summary
        && let (Some(step), Some(m)) = (s["steps"].as_f64(), s["mmd"].as_f64())
    {
        metric.push(("final MMD²".into(), vec![(step, m)]));
        if let Some(f) = s["fid"].as_f64() {
            fid.push((step, f));
        }
    }
    let fid: Vec<Series> = vec![("FID".into(), fid)];
    let run = crate::pictures::run_name(dir);
    let out = out.map_or_else(|| dir.join(CHARTS_PNG), Path::to_path_buf);
    crate::plot::draw_atomically(&out, |tmp| draw(tmp, &run, &train, &metric, &fid))?;
    Ok(out)
}

fn draw(
    path: &Path,
    run: &str,
    train: &[&Value],
    metric: &[Series],
    fid: &[Series],
) -> Result<(), String> {
    crate::plot::register_font();
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let root = Canvas::new(path, (1200, 860)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root
        .titled(&format!("{run}: training"), ("sans-serif", 22))
        .map_err(|x| e(&x))?;
    let panels = root.split_evenly((2, 2));
    // One step axis for every panel: 0 to the last step logged or evaluated.
    let last = train
        .iter()
        .filter_map(|v| v["step"].as_f64())
        .chain(
            metric
                .iter()
                .chain(fid)
                .flat_map(|(_, v)| v.iter().map(|p| p.0)),
        )
        .fold(1.0f64, f64::max);
    let xs = (0.0, last);
    let named = |keys: &[(&str, &str)]| -> Vec<Series> {
        keys.iter()
            .map(|(k, label)| (label.to_string(), series(train, k)))
            .collect()
    };
    panel(
        &panels[0],
        "loss (eq. 64) and its terms",
        &named(&[
            ("loss", "loss"),
            ("nll", "decoder NLL"),
            ("diffusion_loss", "diffusion loss"),
        ]),
        xs,
    )?;
    let has_fid = fid.iter().any(|(_, v)| !v.is_empty());
    let has_mmd = metric.iter().any(|(_, v)| !v.is_empty());
    if has_fid {
        panel(&panels[1], "FID of samples", fid, xs)?;
    } else if has_mmd {
        panel(
            &panels[1],
            "MMD² of samples (eval.every, final)",
            metric,
            xs,
        )?;
    } else {
        message(
            &panels[1],
            "no sample metrics yet: set eval.every, or let the run finish",
        )?;
    }
    panel(
        &panels[2],
        "particle cloud",
        &named(&[
            ("particle_norm", "mean |z|"),
            ("particle_spread", "spread within a point"),
        ]),
        xs,
    )?;
    panel(
        &panels[3],
        "learning rates and particle step",
        &named(&[
            ("lr_theta", "lr theta (prior)"),
            ("lr_phi", "lr phi (decoder)"),
            ("particle_step_size", "particle step h"),
        ]),
        xs,
    )?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// A tick label: up to 4 significant decimals without trailing zeros, or scientific notation
/// for very small and very large values.
fn tick(y: f64) -> String {
    let a = y.abs();
    if y == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{y:.2e}")
    } else {
        let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
        let s = format!("{y:.decimals$}");
        match s.contains('.') {
            true => s.trim_end_matches('0').trim_end_matches('.').to_string(),
            false => s,
        }
    }
}

fn message(area: &DrawingArea<Canvas<'_>, Shift>, text: &str) -> Result<(), String> {
    let (_, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        text.to_string(),
        (20, h as i32 / 2),
        ("sans-serif", 16).into_font().color(&RGBColor(90, 90, 90)),
    ))
    .map_err(|x| x.to_string())?;
    Ok(())
}

/// One panel of line series against the step; a log y axis when every value is positive and
/// they span more than a factor of 20.
fn panel(
    area: &DrawingArea<Canvas<'_>, Shift>,
    title: &str,
    all: &[Series],
    (x0, x1): (f64, f64),
) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let shown: Vec<&Series> = all.iter().filter(|(_, v)| !v.is_empty()).collect();
    if shown.is_empty() {
        return message(area, &format!("{title}: nothing logged"));
    }
    let pts = || shown.iter().flat_map(|(_, v)| v.iter());
    let (mut y0, mut y1) = (f64::MAX, f64::MIN);
    for &(_, y) in pts() {
        (y0, y1) = (y0.min(y), y1.max(y));
    }
    let log = y0 > 0.0 && y1 / y0 > 20.0;
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", 17))
        .margin(10)
        .x_label_area_size(34)
        .y_label_area_size(74);
    let style = |c: RGBColor| ShapeStyle::from(&c).stroke_width(2);
    let single = |v: &[(f64, f64)]| v.len() == 1;
    macro_rules! finish {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("step")
                .x_labels(6)
                .y_labels(6)
                .light_line_style(RGBColor(235, 235, 235))
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| tick(*y))
                .draw()
                .map_err(|x| e(&x))?;
            for (i, (name, v)) in shown.iter().enumerate() {
                let c = COLOURS[i % COLOURS.len()];
                if single(v) {
                    chart
                        .draw_series(v.iter().map(|p| Circle::new(*p, 5, c.filled())))
                        .map_err(|x| e(&x))?
                        .label(name.as_str())
                        .legend(move |(x, y)| Circle::new((x + 9, y), 4, c.filled()));
                } else {
                    chart
                        .draw_series(LineSeries::new(v.iter().copied(), style(c)))
                        .map_err(|x| e(&x))?
                        .label(name.as_str())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], style(c))
                        });
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(200, 200, 200))
                .label_font(("sans-serif", 13))
                .draw()
                .map_err(|x| e(&x))?;
        }};
    }
    if log {
        let chart = builder
            .build_cartesian_2d(x0..x1, (y0 / 1.3..y1 * 1.3).log_scale())
            .map_err(|x| e(&x))?;
        finish!(chart);
    } else {
        let pad = ((y1 - y0) * 0.08).max(y1.abs() * 1e-3).max(1e-12);
        let chart = builder
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(|x| e(&x))?;
        finish!(chart);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_short() {
        for (y, want) in [
            (0.08, "0.08"),
            (100.0, "100"),
            (0.1234567, "0.1235"),
            (2.5, "2.5"),
            (0.0, "0"),
            (1e-4, "1.00e-4"),
            (-0.5, "-0.5"),
            (12345.6, "12346"),
        ] {
            assert_eq!(tick(y), want, "{y}");
        }
    }
}
