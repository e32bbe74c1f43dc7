//! `cargo xtask experiment curves`: training curves of several runs side by side, the headline
//! metric of each run's evaluations during training (`eval.every`; FID for image runs with
//! `eval.every_fid`, else gmm's mode precision, circles' ring fraction, else MMD²) against steps
//! and against training seconds. The second panel is the comparison at equal wall time that a
//! dearer training objective (STF, thesis chapter 3) has to win (issue 27). Training seconds are
//! the metrics lines' `train_seconds_total`, which leave out the evaluations themselves; an
//! evaluation between two logged lines gets the seconds interpolated linearly between them.
//!
//! Writes `curves.csv` and `curves.png` into --out.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use crate::samplers::{labelled_line, legend_box, metric};

/// One evaluation of one run.
#[derive(Debug, Clone, PartialEq)]
struct Point {
    step: f64,
    seconds: f64,
    value: f64,
    /// gmm's modes covered, when the evaluation reports them.
    modes: Option<f64>,
}

/// A run's curve: its label, the metric's name, whether lower is better, and its points.
#[derive(Debug)]
struct Curve {
    label: String,
    metric: &'static str,
    lower_better: bool,
    points: Vec<Point>,
}

/// Training seconds at `step` from the (step, seconds) pairs of the training lines (sorted by
/// step): exact at a logged step, linear between two, none outside them.
fn seconds_at(clock: &[(f64, f64)], step: f64) -> Option<f64> {
    let i = clock.partition_point(|c| c.0 < step);
    let hi = clock.get(i)?;
    if hi.0 == step {
        return Some(hi.1);
    }
    let lo = clock.get(i.checked_sub(1)?)?;
    Some(lo.1 + (hi.1 - lo.1) * (step - lo.0) / (hi.0 - lo.0))
}

/// The curve of one run's `metrics.jsonl` text.
fn curve(label: &str, text: &str, source: &Path) -> anyhow::Result<Curve> {
    let mut clock: Vec<(f64, f64)> = vec![(0.0, 0.0)];
    let mut evals = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: line {} is not JSON", source.display(), i + 1))?;
        let step = v["step"]
            .as_f64()
            .with_context(|| format!("{}: line {} has no step", source.display(), i + 1))?;
        if v["phase"] == "eval" {
            evals.push((step, v));
        } else if let Some(s) = v["train_seconds_total"].as_f64() {
            clock.push((step, s));
        }
    }
    clock.sort_by(|a, b| a.0.total_cmp(&b.0));
    anyhow::ensure!(
        !evals.is_empty(),
        "{}: no evaluations during training (run with eval.every > 0)",
        source.display()
    );
    let (_, name, lower_better) = metric(&evals[0].1);
    let mut points = Vec::new();
    for (step, e) in &evals {
        let (value, n, _) = metric(e);
        anyhow::ensure!(
            n == name,
            "{}: the evaluation at step {step} reports {n}, the first one {name}",
            source.display()
        );
        let seconds = seconds_at(&clock, *step).with_context(|| {
            format!(
                "{}: no training seconds logged around step {step}",
                source.display()
            )
        })?;
        points.push(Point {
            step: *step,
            seconds,
            value,
            modes: e["modes"]["modes_covered"].as_f64(),
        });
    }
    Ok(Curve {
        label: label.to_string(),
        metric: name,
        lower_better,
        points,
    })
}

/// Reads every run, writes `curves.csv` and `curves.png` into `out`.
pub fn run(runs: &[PathBuf], labels: &[String], out: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!runs.is_empty(), "name at least one --run");
    anyhow::ensure!(
        labels.is_empty() || labels.len() == runs.len(),
        "{} --label for {} --run: give one per run or none",
        labels.len(),
        runs.len()
    );
    let mut curves = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let path = run.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let label = match labels.get(i) {
            Some(l) => l.clone(),
            None => run
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| run.display().to_string()),
        };
        curves.push(curve(&label, &text, &path)?);
    }
    let first = (curves[0].metric, curves[0].lower_better);
    for c in &curves {
        anyhow::ensure!(
            c.metric == first.0,
            "run {} reports {}, run {} {}: curves must share a metric",
            c.label,
            c.metric,
            curves[0].label,
            first.0
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut csv = String::from("run,step,train_seconds,metric,value\n");
    for c in &curves {
        for p in &c.points {
            writeln!(
                csv,
                "{},{},{:.3},{},{}",
                c.label, p.step, p.seconds, c.metric, p.value
            )?;
        }
    }
    let csv_path = out.join("curves.csv");
    ipld_data::write_atomically(&csv_path, csv.as_bytes())
        .with_context(|| format!("writing {}", csv_path.display()))?;
    let png = out.join("curves.png");
    plot(&png, &curves, first.0, first.1)?;
    println!("wrote {} and {}", csv_path.display(), png.display());
    Ok(())
}

/// One row of panels: the y axis's name, whether lower is better, and a point's value on it.
type Row = (String, bool, fn(&Point) -> Option<f64>);

fn plot(path: &Path, curves: &[Curve], metric: &str, lower_better: bool) -> anyhow::Result<()> {
    ipld_train::plot::register_font();
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: {e}", path.display());
    let all = || curves.iter().flat_map(|c| &c.points);
    let mut rows: Vec<Row> = vec![(metric.to_string(), lower_better, |p| Some(p.value))];
    // gmm: precision alone rewards a prior that has collapsed onto one mode.
    if all().all(|p| p.modes.is_some()) {
        rows.push(("modes covered (of 25)".into(), false, |p| p.modes));
    }
    let root = ipld_train::canvas::Canvas::new(path, (1200, 60 + 440 * rows.len() as u32))
        .into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let better = if lower_better { "lower" } else { "higher" };
    let root = root
        .titled(
            &format!("Evaluations during training: {metric} ({better} is better)"),
            ("sans-serif", 20),
        )
        .map_err(|e| err(&e))?;
    let panels = root.split_evenly((rows.len(), 2));
    let steps = all().map(|p| p.step).fold(0f64, f64::max).max(1.0);
    let (s0, s1) = all()
        .map(|p| p.seconds)
        .filter(|s| *s > 0.0)
        .fold((f64::INFINITY, 0f64), |a, s| (a.0.min(s), a.1.max(s)));
    anyhow::ensure!(s1 > 0.0, "no training seconds to plot");
    for (r, (y_desc, lower, y_of)) in rows.iter().enumerate() {
        let ys: Vec<f64> = all().filter_map(y_of).filter(|v| v.is_finite()).collect();
        anyhow::ensure!(!ys.is_empty(), "no finite {y_desc} to plot");
        let (y0, y1) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, &y| {
            (a.0.min(y), a.1.max(y))
        });
        let pad = (y1 - y0).max(1e-6) * 0.08;
        let y = (y0 - pad)..(y1 + pad);
        let series = |x_of: fn(&Point) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
            curves
                .iter()
                .map(|c| {
                    let v = c
                        .points
                        .iter()
                        .filter_map(|p| y_of(p).map(|y| (x_of(p), y)))
                        .filter(|(x, y)| y.is_finite() && *x > 0.0)
                        .collect();
                    (c.label.clone(), v)
                })
                .collect()
        };
        panel(
            &panels[2 * r],
            0f64..steps * 1.03,
            y.clone(),
            ("training steps", y_desc),
            &series(|p| p.step),
            Some(*lower),
        )?;
        panel(
            &panels[2 * r + 1],
            (s0 / 1.3..s1 * 1.3).log_scale(),
            y,
            ("training seconds, log scale (evaluations left out)", y_desc),
            &series(|p| p.seconds),
            None,
        )?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// One panel: each run's (x, y) series as a labelled line on the given axes, with the legend (when
/// asked) where curves that improve with steps end least often: bottom right when higher is
/// better. The seconds panels share the step panels' colours and draw none.
fn panel<DB, X>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    x: X,
    y: std::ops::Range<f64>,
    (x_desc, y_desc): (&str, &str),
    series: &[(String, Vec<(f64, f64)>)],
    legend_if_lower_better: Option<bool>,
) -> anyhow::Result<()>
where
    DB: DrawingBackend,
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {y_desc} against {x_desc}: {e}");
    let mut chart = ChartBuilder::on(area)
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (label, v)) in series.iter().enumerate() {
        let colour = crate::figure1::PALETTE[i % crate::figure1::PALETTE.len()];
        labelled_line(&mut chart, v, colour, label)?;
    }
    match legend_if_lower_better {
        Some(true) => legend_box(&mut chart, SeriesLabelPosition::UpperRight),
        Some(false) => legend_box(&mut chart, SeriesLabelPosition::LowerRight),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_exact_at_logged_steps_and_linear_between() {
        let clock = [(0.0, 0.0), (50.0, 10.0), (100.0, 30.0)];
        assert_eq!(seconds_at(&clock, 50.0), Some(10.0));
        assert_eq!(seconds_at(&clock, 75.0), Some(20.0));
        assert_eq!(seconds_at(&clock, 100.0), Some(30.0));
        assert_eq!(seconds_at(&clock, 120.0), None);
    }

    #[test]
    fn a_curve_pairs_each_evaluation_with_the_training_clock() {
        let text = [
            r#"{"step":50,"phase":"joint","train_seconds_total":5.0}"#,
            r#"{"step":100,"phase":"joint","train_seconds_total":12.0}"#,
            r#"{"step":100,"phase":"eval","mmd":0.1,"modes":{"precision":0.4,"modes_covered":3},"seconds":99.0}"#,
            r#"{"step":150,"phase":"joint","train_seconds_total":20.0}"#,
            r#"{"step":200,"phase":"joint","train_seconds_total":30.0}"#,
            r#"{"step":175,"phase":"eval","mmd":0.05,"modes":{"precision":0.7},"seconds":99.0}"#,
        ]
        .join("\n");
        let c = curve("stf", &text, Path::new("m.jsonl")).unwrap();
        assert_eq!(c.metric, "precision (within 3 sd of a mode)");
        assert!(!c.lower_better);
        assert_eq!(
            c.points,
            vec![
                Point {
                    step: 100.0,
                    seconds: 12.0,
                    value: 0.4,
                    modes: Some(3.0)
                },
                Point {
                    step: 175.0,
                    seconds: 25.0,
                    value: 0.7,
                    modes: None
                },
            ]
        );
    }

    #[test]
    fn runs_without_evaluations_or_with_mixed_metrics_are_named() {
        let none = r#"{"step":50,"phase":"joint","train_seconds_total":5.0}"#;
        let e = curve("a", none, Path::new("a/metrics.jsonl")).unwrap_err();
        assert!(e.to_string().contains("a/metrics.jsonl") && e.to_string().contains("eval.every"));
        let mixed = [
            r#"{"step":50,"phase":"joint","train_seconds_total":5.0}"#,
            r#"{"step":50,"phase":"eval","mmd":0.1,"fid":80.0}"#,
            r#"{"step":50,"phase":"eval","mmd":0.1}"#,
        ]
        .join("\n");
        let e = curve("b", &mixed, Path::new("b.jsonl")).unwrap_err();
        assert!(e.to_string().contains("FID"), "{e}");
        let bad = "{\"step\":1}\nnot json";
        let e = curve("c", bad, Path::new("c.jsonl")).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
