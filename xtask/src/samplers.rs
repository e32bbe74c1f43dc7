//! `cargo xtask experiment samplers`: quality against network evaluations (NFE) for every sampler
//! on one trained run (Xu 2024, thesis Figure 5.1b's view), and particle guidance's effect on
//! small sets. Each point is `ipld-train eval` on the run with one sampler; the metric is FID for
//! image runs with `eval.fid`, else the gmm mode precision or circles' ring fraction, else MMD².
//! Writes `samplers.csv`, `guidance.csv` (gmm/circles runs) and `quality-vs-nfe.png` into --out.
//! Rows already in --out for the same run, checkpoint step and sample count (`sweep.json`) are
//! kept rather than re-evaluated, so a `--quick` sweep can be completed later by its costly rows.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use ipld_diffusion::{
    Bandwidth, Ddim, Ddpm, DpmSolverPp, GuidanceConfig, Heun, Restart, SamplerConfig,
};
use ipld_train::Progress;
use ipld_train::commands::{EvalRequest, Sampling};
use ipld_train::rundir::open_run;
use plotters::prelude::*;

/// The sweep's samplers: (family, setting label, sampler). `quick` keeps the cheap end (what an
/// image run can afford on a CPU). Restart runs on the thesis's interval [0.06, 0.30], chosen for
/// CIFAR-10 scaled to [-1, 1] (per-coordinate sd about 0.5), and on that interval times
/// `scale` = the prior-space latents' rms / 0.5, since the interval is in the data's units.
fn sweep(quick: bool, scale: f64) -> Vec<(&'static str, String, SamplerConfig)> {
    let mut v: Vec<(&'static str, String, SamplerConfig)> = Vec::new();
    let ddim = |steps, eta| SamplerConfig::Ddim(Ddim { steps, eta });
    for s in [10, 25, 50, 100] {
        v.push(("ddim eta 0", format!("steps {s}"), ddim(s, 0.0)));
        v.push(("ddim eta 1", format!("steps {s}"), ddim(s, 1.0)));
    }
    for s in [6, 10, 18, 30] {
        let h = Heun {
            steps: s,
            ..Heun::default()
        };
        v.push(("heun", format!("levels {s}"), SamplerConfig::Heun(h)));
    }
    for s in [10, 25, 50] {
        let d = DpmSolverPp {
            steps: s,
            ..DpmSolverPp::default()
        };
        v.push((
            "dpm-solver++",
            format!("levels {s}"),
            SamplerConfig::DpmSolverPp(d),
        ));
    }
    for k in [2, 5, 10] {
        let r = Restart {
            repetitions: k,
            ..Restart::default()
        };
        v.push(("restart", format!("K {k}"), SamplerConfig::Restart(r)));
        let scaled = Restart {
            t_min: r.t_min * scale,
            t_max: r.t_max * scale,
            ..r
        };
        v.push((
            "restart (scaled interval)",
            format!("K {k} [{:.3} {:.3}]", scaled.t_min, scaled.t_max),
            SamplerConfig::Restart(scaled),
        ));
    }
    if !quick {
        v.push((
            "ddpm",
            "K steps".into(),
            SamplerConfig::Ddpm(Ddpm::default()),
        ));
    }
    v
}

/// The headline metrics: name and whether lower is better.
const METRICS: [(&str, bool); 4] = [
    ("FID", true),
    ("precision (within 3 sd of a mode)", false),
    ("ring fraction", false),
    ("MMD²", true),
];

const CSV_HEADER: &str =
    "family,setting,nfe,metric,value,mmd,modes_covered,confident,seconds,dataset\n";

/// The run's headline metric in an eval result, its name, and whether lower is better.
pub(crate) fn metric(e: &serde_json::Value) -> (f64, &'static str, bool) {
    let found = [
        e["fid"].as_f64(),
        e["modes"]["precision"].as_f64(),
        e["rings"]["ring_fraction"].as_f64(),
    ];
    match found.iter().position(Option::is_some) {
        Some(i) => (found[i].unwrap_or(f64::NAN), METRICS[i].0, METRICS[i].1),
        None => (
            e["mmd"].as_f64().unwrap_or(f64::NAN),
            METRICS[3].0,
            METRICS[3].1,
        ),
    }
}

/// One row of an earlier sweep's `samplers.csv`.
struct Row {
    family: String,
    setting: String,
    metric: String,
    value: f64,
    dataset: String,
    line: String,
}

/// The rows of an earlier sweep in `out` of the same run, step and sample count (`sweep.json`
/// equal to `identity`); none when there is no such sweep.
fn earlier_rows(out: &Path, identity: &serde_json::Value) -> anyhow::Result<Vec<Row>> {
    let (meta, csv) = (out.join("sweep.json"), out.join("samplers.csv"));
    let (Ok(m), Ok(c)) = (
        std::fs::read_to_string(&meta),
        std::fs::read_to_string(&csv),
    ) else {
        return Ok(Vec::new());
    };
    let same: serde_json::Value =
        serde_json::from_str(&m).with_context(|| format!("reading {}", meta.display()))?;
    if same != *identity || !c.starts_with(CSV_HEADER) {
        return Ok(Vec::new());
    }
    c.lines()
        .skip(1)
        .enumerate()
        .map(|(i, line)| {
            // The dataset's name is the last field, so it may hold commas.
            let f: Vec<&str> = line.splitn(10, ',').collect();
            anyhow::ensure!(
                f.len() == 10,
                "{} line {}: expected 10 fields, got {}",
                csv.display(),
                i + 2,
                f.len()
            );
            Ok(Row {
                family: f[0].to_string(),
                setting: f[1].to_string(),
                metric: f[3].to_string(),
                value: f[4].parse().with_context(|| {
                    format!("{} line {}: value `{}`", csv.display(), i + 2, f[4])
                })?,
                dataset: f[9].to_string(),
                line: line.to_string(),
            })
        })
        .collect()
}

/// Runs the sweep on `run` and writes the CSVs and the plot into `out`.
pub fn run(run: &Path, samples: usize, quick: bool, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let trainer = open_run(run, &[])?;
    let schedule = trainer.schedule().clone();
    // The prior-space latents' rms per coordinate, from up to 1,000 points' first particles.
    let z = ipld_train::eval::decode_particles(&trainer, 1000)?.latent;
    let s = trainer.config().diffusion.latent_scale;
    let rms = (z.iter().map(|v| (*v as f64 / s).powi(2)).sum::<f64>() / z.len() as f64).sqrt();
    let scale = rms / 0.5;
    eprintln!(
        "prior-space latent rms {rms:.3}: the scaled Restart interval is {scale:.2} times the thesis's"
    );
    let identity = serde_json::json!({
        "run": std::fs::canonicalize(run)?.display().to_string(),
        "step": trainer.step(),
        "samples": samples,
    });
    drop(trainer);
    let done = earlier_rows(out, &identity)?;
    ipld_data::write_atomically(
        &out.join("sweep.json"),
        serde_json::to_string_pretty(&identity)?.as_bytes(),
    )?;
    let mut csv = String::from(CSV_HEADER);
    let mut points: Vec<(&'static str, f64, f64)> = Vec::new();
    let mut name = "";
    let mut lower_better = true;
    let mut dataset = String::new();
    for (family, setting, sampler) in sweep(quick, scale) {
        let nfe = sampler.sampler().evaluations(&schedule);
        if let Some(row) = done
            .iter()
            .find(|r| r.family == family && r.setting == setting)
        {
            (name, lower_better) = METRICS
                .iter()
                .find(|m| m.0 == row.metric)
                .map(|m| (m.0, m.1))
                .unwrap_or((METRICS[0].0, METRICS[0].1));
            dataset.clone_from(&row.dataset);
            eprintln!("{family} {setting}: kept from {}", out.display());
            points.push((family, nfe as f64, row.value));
            csv.push_str(&row.line);
            csv.push('\n');
            continue;
        }
        let e = ipld_train::eval_run(
            run,
            &EvalRequest {
                samples: Some(samples),
                sampling: Sampling {
                    sampler: Some(sampler),
                    guidance: None,
                },
                ..EvalRequest::of_run()
            },
            Progress::Quiet,
        )
        .with_context(|| format!("evaluating {} with {family} {setting}", run.display()))?;
        let (v, n, lb) = metric(&e);
        (name, lower_better) = (n, lb);
        dataset = e["dataset"].as_str().unwrap_or_default().to_string();
        let show = |x: &serde_json::Value| x.as_f64().map_or(String::new(), |f| format!("{f}"));
        writeln!(
            csv,
            "{family},{setting},{nfe},{n},{v},{},{},{},{},{}",
            show(&e["mmd"]),
            show(&e["modes"]["modes_covered"]),
            show(&e["recognisability"]["confident_fraction"]),
            show(&e["sample_seconds"]),
            e["dataset"].as_str().unwrap_or_default(),
        )?;
        eprintln!("{family} {setting}: NFE {nfe}, {n} {v:.4}");
        points.push((family, nfe as f64, v));
        ipld_data::write_atomically(&out.join("samplers.csv"), csv.as_bytes())?;
    }
    let what = format!("{dataset}, {samples} samples");
    plot(
        &out.join("quality-vs-nfe.png"),
        &points,
        name,
        lower_better,
        &what,
    )?;
    if let Some(g) = guidance_sets(run)? {
        ipld_data::write_atomically(&out.join("guidance.csv"), g.as_bytes())?;
        eprint!("{g}");
    }
    Ok(())
}

/// Particle guidance on small sets (gmm runs): 40 sets of 25 and of 100 samples, DDIM-50,
/// without and with guidance (the fixed bandwidth and strength of the closed-form test, and the
/// median heuristic), mean modes covered and precision. The run is opened and its modes built
/// once; each set is drawn as `ipld-train eval --samples M --seed S` would draw it. None for runs
/// without known modes.
fn guidance_sets(run: &Path) -> anyhow::Result<Option<String>> {
    let trainer = open_run(run, &[])?;
    let Some(synthetic) = ipld_train::data::synthetic_config(trainer.config()) else {
        return Ok(None);
    };
    let ipld_data::KnownStructure::Modes { centers, sd } = synthetic.generate()?.structure() else {
        return Ok(None);
    };
    let dim = ipld_data::Dataset::dim(trainer.data());
    let radius = ipld_train::eval::STRUCTURE_SDS * sd;
    let sampler = SamplerConfig::Ddim(Ddim {
        steps: 50,
        eta: 0.0,
    });
    let mut csv = String::from("set_size,guidance,strength,bandwidth,modes_covered,precision\n");
    for set in [25usize, 100] {
        let configs: [(f64, Bandwidth); 3] = [
            (0.0, Bandwidth::Median),
            (0.1, Bandwidth::Fixed(0.3)),
            (0.01, Bandwidth::Median),
        ];
        for (strength, bandwidth) in configs {
            let guidance = GuidanceConfig {
                strength,
                bandwidth,
                set_size: 0,
            };
            let (mut covered, mut precision, mut n) = (0.0, 0.0, 0.0);
            for seed in 0..40u64 {
                let s = ipld_train::eval::generate_guided(
                    &trainer,
                    set,
                    &sampler,
                    Some(&guidance),
                    1000 + seed,
                    &mut |_| {},
                )?;
                let m = ipld_eval::mode_metrics(&s.data, dim, &centers, radius)?;
                covered += m.modes_covered as f64;
                precision += m.precision;
                n += 1.0;
            }
            let bw = match bandwidth {
                Bandwidth::Median => "median".to_string(),
                Bandwidth::Fixed(h) => format!("{h}"),
            };
            writeln!(
                csv,
                "{set},{},{strength},{bw},{},{}",
                if strength > 0.0 { "particle" } else { "none" },
                covered / n,
                precision / n
            )?;
        }
    }
    Ok(Some(csv))
}

fn plot(
    path: &Path,
    points: &[(&'static str, f64, f64)],
    metric: &str,
    lower_better: bool,
    what: &str,
) -> anyhow::Result<()> {
    ipld_train::plot::register_font();
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: {e}", path.display());
    let xs: Vec<f64> = points.iter().map(|p| p.1).collect();
    let ys: Vec<f64> = points
        .iter()
        .map(|p| p.2)
        .filter(|y| y.is_finite())
        .collect();
    anyhow::ensure!(!ys.is_empty(), "no finite metric to plot");
    let (x0, x1) = xs
        .iter()
        .fold((f64::INFINITY, 0f64), |a, &x| (a.0.min(x), a.1.max(x)));
    let (y0, y1) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, &y| {
        (a.0.min(y), a.1.max(y))
    });
    let pad = (y1 - y0).max(1e-6) * 0.1;
    let root = ipld_train::canvas::Canvas::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let title = format!(
        "{metric} vs network evaluations ({what}; {})",
        if lower_better {
            "lower is better"
        } else {
            "higher is better"
        },
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), (y0 - pad)..(y1 + pad))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("network evaluations (log scale)")
        .x_labels(12)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(metric)
        .draw()
        .map_err(|e| err(&e))?;
    let colors = crate::figure1::PALETTE;
    let mut families: Vec<&str> = Vec::new();
    for p in points {
        if !families.contains(&p.0) {
            families.push(p.0);
        }
    }
    for (i, f) in families.iter().enumerate() {
        let mut v: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.0 == *f && p.2.is_finite())
            .map(|p| (p.1, p.2))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        labelled_line(&mut chart, &v, colors[i % colors.len()], f)?;
    }
    legend_box(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Draws `v` as a labelled line with a dot at each point, in `colour`.
pub(crate) fn labelled_line<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    v: &[(f64, f64)],
    colour: RGBColor,
    label: &str,
) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {label}: {e}");
    chart
        .draw_series(LineSeries::new(v.to_vec(), colour.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(3)));
    chart
        .draw_series(v.iter().map(|&p| Circle::new(p, 3, colour.filled())))
        .map_err(|e| err(&e))?;
    Ok(())
}

/// Draws the series' legend in a bordered box at `position`.
pub(crate) fn legend_box<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(position)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| anyhow::anyhow!("drawing the legend: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, identity: &serde_json::Value, rows: &[&str]) {
        std::fs::write(dir.join("sweep.json"), identity.to_string()).unwrap();
        let mut csv = String::from(CSV_HEADER);
        for r in rows {
            csv.push_str(r);
            csv.push('\n');
        }
        std::fs::write(dir.join("samplers.csv"), csv).unwrap();
    }

    #[test]
    fn earlier_rows_are_kept_only_for_the_same_run_step_and_samples() {
        let tmp = tempfile::tempdir().unwrap();
        let id = serde_json::json!({"run": "/r", "step": 4200, "samples": 500});
        let row = "ddim eta 1,steps 10,10,FID,60.35,0.01,,0.4,20.7,my,data";
        write(tmp.path(), &id, &[row]);
        let rows = earlier_rows(tmp.path(), &id).unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(
            (r.family.as_str(), r.setting.as_str()),
            ("ddim eta 1", "steps 10")
        );
        assert_eq!((r.metric.as_str(), r.value), ("FID", 60.35));
        assert_eq!(r.dataset, "my,data");
        assert_eq!(r.line, row);
        // Another step, sample count or run: nothing is kept.
        for other in [
            serde_json::json!({"run": "/r", "step": 4201, "samples": 500}),
            serde_json::json!({"run": "/r", "step": 4200, "samples": 2000}),
            serde_json::json!({"run": "/s", "step": 4200, "samples": 500}),
        ] {
            assert!(earlier_rows(tmp.path(), &other).unwrap().is_empty());
        }
        // No earlier sweep: nothing.
        let empty = tempfile::tempdir().unwrap();
        assert!(earlier_rows(empty.path(), &id).unwrap().is_empty());
        // A damaged row is an error naming the file and line.
        write(
            tmp.path(),
            &id,
            &[row, "heun,levels 6,11,FID,oops,,,,,mnist"],
        );
        let e = earlier_rows(tmp.path(), &id).err().unwrap().to_string();
        assert!(
            e.contains("samplers.csv line 3") && e.contains("oops"),
            "{e}"
        );
        write(tmp.path(), &id, &["heun,levels 6,11"]);
        let e = earlier_rows(tmp.path(), &id).err().unwrap().to_string();
        assert!(
            e.contains("line 2") && e.contains("expected 10 fields"),
            "{e}"
        );
    }

    #[test]
    fn the_headline_metric_is_fid_then_modes_then_rings_then_mmd() {
        let e = serde_json::json!({"fid": 61.5, "mmd": 0.003});
        assert_eq!(metric(&e), (61.5, "FID", true));
        let e = serde_json::json!({"modes": {"precision": 0.8}, "mmd": 0.003});
        assert_eq!(metric(&e), (0.8, METRICS[1].0, false));
        let e = serde_json::json!({"rings": {"ring_fraction": 0.9}, "mmd": 0.003});
        assert_eq!(metric(&e), (0.9, "ring fraction", false));
        let e = serde_json::json!({"mmd": 0.003});
        assert_eq!(metric(&e), (0.003, "MMD²", true));
    }
}
