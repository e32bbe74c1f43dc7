//! `cargo xtask experiment figure1`: the paper's synthetic experiment (Section 5.1, Figures 1 and
//! 2). Runs methods x N x seeds on `gmm` and `circles` (1000 steps, MMD² on 10,000 samples),
//! caching every finished cell so an interrupted experiment picks up where it stopped, then writes
//! a CSV of every run, a markdown table of mean +- standard error, MMD-vs-N plots with error bands,
//! and a grid of IPLD sample scatters per N.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ipld_diffusion::{Ddpm, SamplerConfig};
use ipld_train::rundir::{CHECKPOINT_FILE, SUMMARY_FILE, open_run};
use ipld_train::{Progress, RunConfig, RunPlan, RunSummary};
use plotters::prelude::*;

/// What to run.
#[derive(Debug, Clone)]
pub struct Figure1 {
    /// Datasets (presets).
    pub datasets: Vec<String>,
    /// Methods.
    pub methods: Vec<String>,
    /// Particle counts N.
    pub particles: Vec<usize>,
    /// Seeds 0..seeds.
    pub seeds: u64,
    /// Training steps per run.
    pub steps: u64,
    /// Evaluation samples per run.
    pub samples: usize,
    /// Extra `--set` overrides for every run (ablations), applied after the method's.
    pub sets: Vec<String>,
    /// Where the run directories live (cache).
    pub work_dir: PathBuf,
    /// Where the CSV, table and figures go.
    pub out_dir: PathBuf,
    /// `runs.csv` files of earlier runs of this experiment: a cell that is not cached is taken
    /// from them when they hold it (same dataset, method, particle noise scale, N, seed and
    /// steps) and the experiment has the default samples and no `--set` (the CSV
    /// does not record those).
    pub reuse: Vec<PathBuf>,
}

/// Training steps per run in the paper (and by default).
pub const DEFAULT_STEPS: u64 = 1000;
/// Evaluation samples per run in the paper (and by default).
pub const DEFAULT_SAMPLES: usize = 10_000;

#[derive(Debug, Clone)]
struct Cell {
    dataset: String,
    method: String,
    particles: usize,
    seed: u64,
}

impl Cell {
    /// The cell's cache directory. Runs with other steps, samples or overrides than the
    /// defaults get their own directories (a tag), so they never replace the default cells.
    fn dir(&self, exp: &Figure1) -> PathBuf {
        let mut tag = String::new();
        if exp.steps != DEFAULT_STEPS {
            tag += &format!("-steps{}", exp.steps);
        }
        if exp.samples != DEFAULT_SAMPLES {
            tag += &format!("-samples{}", exp.samples);
        }
        if !exp.sets.is_empty() {
            tag += &format!("-x{:08x}", fnv1a(exp.sets.join("\n").as_bytes()) as u32);
        }
        exp.work_dir.join(format!(
            "{}-{}-n{}-seed{}{tag}",
            self.dataset, self.method, self.particles, self.seed
        ))
    }

    fn config(&self, exp: &Figure1) -> anyhow::Result<RunConfig> {
        let mut sets = ipld_train::config::method_overrides(&self.method, false)?;
        sets.extend([
            format!("particles.count={}", self.particles),
            format!("seed={}", self.seed),
            format!("train.steps={}", exp.steps),
            format!("eval.samples={}", exp.samples),
        ]);
        sets.extend(exp.sets.iter().cloned());
        Ok(RunConfig::preset(&self.dataset)?.with_overrides(&sets, &self.dataset)?)
    }
}

/// FNV-1a, a stable (toolchain-independent) hash for directory tags.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn read_summary(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join(SUMMARY_FILE)).ok()?).ok()
}

/// Whether the cached run in `dir` was made with `config` up to the keys a resume may change
/// (a changed preset or default makes a cell stale, so it is recomputed, not silently reused).
/// `particles.noise_scale` counts only for IPLD: DiffusionVAE has no particle noise and PGD and
/// MPGD their own, so the presets' move to the posterior's noise leaves their cells valid.
fn same_config(dir: &Path, config: &RunConfig) -> bool {
    // Both validated, so `data.normalize` is resolved on each side: configs saved before the key
    // existed still match.
    let valid = |c: RunConfig| c.validated("figure1 cell").ok().map(|v| v.into_inner());
    let Some(config) = valid(config.clone()) else {
        return false;
    };
    let config = &config;
    std::fs::read_to_string(dir.join(ipld_train::rundir::CONFIG_FILE))
        .ok()
        .and_then(|s| RunConfig::from_toml(&s, "cached config").ok())
        .and_then(valid)
        .is_some_and(|mut saved| {
            if config.method != ipld_train::config::Method::Ipld {
                saved.particles.noise_scale = config.particles.noise_scale;
            }
            ipld_train::rundir::check_resumable(&saved, config).is_ok()
        })
}

/// Runs (or loads) every cell, then writes the results.
pub fn run(exp: &Figure1) -> anyhow::Result<()> {
    // The runs happen in this process: as `ipld-train` does for the presets' two shards.
    ipld_train::quiet_candle_pool(2);
    // Seeds outermost: an interrupted experiment holds complete seed sets, so rerunning with
    // fewer --seeds writes results at once from the cache.
    let mut cells = Vec::new();
    for seed in 0..exp.seeds {
        for d in &exp.datasets {
            for &n in &exp.particles {
                for m in &exp.methods {
                    cells.push(Cell {
                        dataset: d.clone(),
                        method: m.clone(),
                        particles: n,
                        seed,
                    });
                }
            }
        }
    }
    std::fs::create_dir_all(&exp.work_dir)
        .with_context(|| format!("creating {}", exp.work_dir.display()))?;
    let bar = indicatif::ProgressBar::new(cells.len() as u64);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "figure1 {bar:30} {pos}/{len} cells [{elapsed_precise}<{eta_precise}] {msg}",
    )?);
    let reused = read_reused(exp)?;
    let mut rows: Vec<(Cell, serde_json::Value)> = Vec::new();
    for cell in cells {
        let dir = cell.dir(exp);
        bar.set_message(format!(
            "{} {} N={} seed {}",
            cell.dataset, cell.method, cell.particles, cell.seed
        ));
        let config = cell.config(exp)?;
        let fresh = same_config(&dir, &config);
        let noise = noise_label(&config);
        let key = ReuseKey {
            dataset: cell.dataset.clone(),
            method: same_runs_label(&cell.method).to_string(),
            noise: noise.clone(),
            particles: cell.particles,
            seed: cell.seed,
        };
        if !dir.join(SUMMARY_FILE).exists()
            && let Some(v) = reused.get(&key)
        {
            rows.push((cell, v.clone()));
            bar.inc(1);
            continue;
        }
        let summary = match read_summary(&dir) {
            Some(s)
                if fresh
                    && s["steps"].as_u64() == Some(exp.steps)
                    && s["samples"].as_u64() == Some(exp.samples as u64) =>
            {
                s
            }
            _ => {
                if dir.exists() && !fresh {
                    // The cache is ours: a run made with another configuration is discarded.
                    bar.println(format!(
                        "stale cell {} (config changed): rerun",
                        dir.display()
                    ));
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("removing stale {}", dir.display()))?;
                }
                let resume = ipld_train::rundir::is_run_dir(&dir);
                let s: RunSummary = ipld_train::run(RunPlan {
                    config,
                    run_dir: dir.clone(),
                    resume,
                    progress: Progress::Quiet,
                    accept_data_change: false,
                    from_step: None,
                })
                .with_context(|| format!("cell {}", dir.display()))?;
                serde_json::to_value(s)?
            }
        };
        let mut summary = summary;
        if quality_of(&summary).is_none() && dir.join(CHECKPOINT_FILE).exists() {
            backfill_quality(&dir, &mut summary, exp.samples)?;
        }
        summary["noise_scale"] = noise.clone().into();
        rows.push((cell, summary));
        bar.inc(1);
    }
    bar.finish();
    std::fs::create_dir_all(&exp.out_dir)?;
    write_csv(&exp.out_dir.join("runs.csv"), &rows)?;
    let stats = aggregate(&rows, |v| v["mmd"].as_f64());
    let quality = aggregate(&rows, quality_of);
    write_table(&exp.out_dir.join("table.md"), &stats, &quality, exp)?;
    for d in &exp.datasets {
        plot_vs_n(
            &exp.out_dir.join(format!("mmd-vs-n-{d}.png")),
            d,
            &stats,
            &exp.methods,
            Metric::Mmd,
        )?;
        plot_vs_n(
            &exp.out_dir.join(format!("quality-vs-n-{d}.png")),
            d,
            &quality,
            &exp.methods,
            Metric::Quality,
        )?;
    }
    plot_grid(&exp.out_dir.join("samples-grid.png"), exp)?;
    if exp.methods.len() > 1 {
        plot_methods(&exp.out_dir.join("methods-grid.png"), exp)?;
    }
    println!("wrote {}", exp.out_dir.display());
    Ok(())
}

/// What identifies a reusable row: the labels `ipld`, `ipld-paper` and `ipld-posterior` are one
/// method whose runs differ only by their noise scale, so a row of one stands in for a cell of
/// another made with the same noise (the `ipld` rows of a runs.csv from before 2026-12-06 are
/// `ipld-paper` cells now).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ReuseKey {
    dataset: String,
    method: String,
    noise: String,
    particles: usize,
    seed: u64,
}

fn same_runs_label(method: &str) -> &str {
    match method {
        "ipld-paper" | "ipld-posterior" => "ipld",
        m => m,
    }
}

/// The rows of the `--reuse-csv` files that fit this experiment, as the summary fields
/// `write_csv` reads back.
fn read_reused(exp: &Figure1) -> anyhow::Result<BTreeMap<ReuseKey, serde_json::Value>> {
    let mut out = BTreeMap::new();
    if exp.reuse.is_empty() {
        return Ok(out);
    }
    anyhow::ensure!(
        exp.samples == DEFAULT_SAMPLES && exp.sets.is_empty(),
        "--reuse-csv needs the default --samples and no --set (a runs.csv does not record them)"
    );
    for path in &exp.reuse {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        // A runs.csv from before the noise_scale column: every preset then ran the paper's noise.
        let old = header == OLD_CSV_HEADER;
        let columns = match header {
            OLD_CSV_HEADER => 9,
            V2_CSV_HEADER => 10,
            _ => 13,
        };
        anyhow::ensure!(
            old || header == V2_CSV_HEADER || header == CSV_HEADER,
            "{}: not a figure1 runs.csv (header `{header}`)",
            path.display()
        );
        for (i, line) in lines.enumerate() {
            let f: Vec<&str> = line.split(',').collect();
            let bad =
                || anyhow::anyhow!("{} line {}: malformed row `{line}`", path.display(), i + 2);
            anyhow::ensure!(f.len() == columns, bad());
            let num = |s: &str| -> anyhow::Result<f64> { s.parse::<f64>().map_err(|_| bad()) };
            let steps: u64 = f[4].parse().map_err(|_| bad())?;
            if steps != exp.steps {
                continue;
            }
            let noise = if old { old_noise_label(f[1]) } else { f[9] };
            let key = ReuseKey {
                dataset: f[0].to_string(),
                method: same_runs_label(f[1]).to_string(),
                noise: noise.to_string(),
                particles: f[2].parse().map_err(|_| bad())?,
                seed: f[3].parse().map_err(|_| bad())?,
            };
            let mut v = serde_json::json!({
                "noise_scale": noise,
                "steps": steps,
                "mmd": num(f[5])?,
                // `null` where the cell's summary came from a resume that trained nothing
                // (before issue 23 kept such records untouched).
                "final_loss": if f[6] == "null" { None } else { Some(num(f[6])?) },
                "train_seconds": num(f[7])?,
                "sample_seconds": num(f[8])?,
            });
            // The structure metrics, where the run had them (empty fields otherwise).
            if columns == 13 {
                let field = |i: usize| -> anyhow::Result<Option<f64>> {
                    if f[i].is_empty() {
                        Ok(None)
                    } else {
                        num(f[i]).map(Some)
                    }
                };
                if let (Some(p), false) = (field(10)?, f[11].is_empty()) {
                    let covered: u64 = f[11].parse().map_err(|_| bad())?;
                    v["modes"] = serde_json::json!({ "precision": p, "modes_covered": covered });
                }
                if let Some(r) = field(12)? {
                    v["rings"] = serde_json::json!({ "ring_fraction": r });
                }
            }
            out.insert(key, v);
        }
    }
    Ok(out)
}

const CSV_HEADER: &str = "dataset,method,particles,seed,steps,mmd,final_loss,train_seconds,sample_seconds,noise_scale,precision,modes_covered,ring_fraction";
/// The header before the structure metrics (issue 22).
const V2_CSV_HEADER: &str =
    "dataset,method,particles,seed,steps,mmd,final_loss,train_seconds,sample_seconds,noise_scale";
const OLD_CSV_HEADER: &str =
    "dataset,method,particles,seed,steps,mmd,final_loss,train_seconds,sample_seconds";

/// A run's particle noise as runs.csv records it: IPLD's `particles.noise_scale`, with
/// `+v-per-point` and `+bias-corrected` for Algorithm 2's options that change the law its
/// particles sample; `-` for the methods it does not apply to (DiffusionVAE has no particle
/// noise; PGD and MPGD have their own). A reused row is one made with the noise the cell's
/// configuration asks for.
fn noise_label(config: &RunConfig) -> String {
    if config.method != ipld_train::config::Method::Ipld {
        return "-".into();
    }
    let mut s = config.particles.noise_scale.name().to_string();
    if let ipld_particles::UpdateConfig::AdaptiveLangevin(r) = &config.particles.update {
        if r.second_moment_of == ipld_particles::SecondMomentOf::Point {
            s += "+v-per-point";
        }
        if r.bias_correction {
            s += "+bias-corrected";
        }
    }
    s
}

/// The noise of a row of a runs.csv made before the column existed, by its label: the presets
/// ran the paper's noise, and `ipld-posterior` set the posterior's.
fn old_noise_label(method: &str) -> &'static str {
    match method {
        "ipld-posterior" => "posterior",
        m if m.starts_with("ipld") => "paper",
        _ => "-",
    }
}

fn write_csv(path: &Path, rows: &[(Cell, serde_json::Value)]) -> anyhow::Result<()> {
    let mut s = format!("{CSV_HEADER}\n");
    for (c, v) in rows {
        writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            c.dataset,
            c.method,
            c.particles,
            c.seed,
            v["steps"],
            v["mmd"],
            v["final_loss"],
            v["train_seconds"],
            v["sample_seconds"],
            v["noise_scale"].as_str().unwrap_or("-"),
            number_or_empty(&v["modes"]["precision"]),
            number_or_empty(&v["modes"]["modes_covered"]),
            number_or_empty(&v["rings"]["ring_fraction"])
        )?;
    }
    ipld_data::write_atomically(path, s.as_bytes())?;
    Ok(())
}

/// A CSV field: the number as JSON writes it, or empty where the run has none.
fn number_or_empty(v: &serde_json::Value) -> String {
    if v.is_number() {
        v.to_string()
    } else {
        String::new()
    }
}

/// (dataset, method, N) -> (mean, standard error, median), standard error = sd / sqrt(n) with
/// numpy's default sd (ddof = 0), as in Appendix B.1.
type Stats = BTreeMap<(String, String, usize), (f64, f64, f64)>;

/// A cell's structure metric (issue 22): gmm's precision (fraction of samples within 3 sd of a
/// mode) or circles' ring fraction; None for runs made before the metrics existed and not
/// re-evaluated (rows taken from a runs.csv).
fn quality_of(v: &serde_json::Value) -> Option<f64> {
    v["modes"]["precision"]
        .as_f64()
        .or_else(|| v["rings"]["ring_fraction"].as_f64())
}

/// Adds the quality block to a cached cell made before it existed: `ipld-train eval` with the
/// run's own seed and sample count draws the very samples the run drew (its MMD² must match to
/// the bit), so the metrics are the run's. The summary file is rewritten in place (atomically).
fn backfill_quality(
    dir: &Path,
    summary: &mut serde_json::Value,
    samples: usize,
) -> anyhow::Result<()> {
    let e = ipld_train::eval_run(
        dir,
        &ipld_train::commands::EvalRequest {
            samples: Some(samples),
            ..ipld_train::commands::EvalRequest::of_run()
        },
        Progress::Quiet,
    )
    .with_context(|| format!("re-evaluating {}", dir.display()))?;
    anyhow::ensure!(
        e["mmd"].as_f64().map(f64::to_bits) == summary["mmd"].as_f64().map(f64::to_bits),
        "{}: re-evaluation gives MMD² {} against the run's {}; not the run's samples",
        dir.display(),
        e["mmd"],
        summary["mmd"]
    );
    for key in ["mmd_data_halves", "mmd_bandwidths", "modes", "rings"] {
        if let Some(v) = e.get(key) {
            summary[key] = v.clone();
        }
    }
    let json = serde_json::to_string_pretty(summary)?;
    ipld_data::write_atomically(&dir.join(SUMMARY_FILE), json.as_bytes())?;
    Ok(())
}

fn aggregate(
    rows: &[(Cell, serde_json::Value)],
    metric: impl Fn(&serde_json::Value) -> Option<f64>,
) -> Stats {
    // A group with a row that lacks the metric is left out, so every mean is over all seeds.
    let mut groups: BTreeMap<(String, String, usize), Option<Vec<f64>>> = BTreeMap::new();
    for (c, v) in rows {
        let g = groups
            .entry((c.dataset.clone(), c.method.clone(), c.particles))
            .or_insert_with(|| Some(Vec::new()));
        match (metric(v), g.as_mut()) {
            (Some(m), Some(vals)) => vals.push(m),
            _ => *g = None,
        }
    }
    groups
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .map(|(k, v)| {
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
            let mut sorted = v.clone();
            sorted.sort_by(f64::total_cmp);
            let mid = sorted.len() / 2;
            let median = if !sorted.len().is_multiple_of(2) {
                sorted[mid]
            } else {
                0.5 * (sorted[mid - 1] + sorted[mid])
            };
            (k, (mean, sd / n.sqrt(), median))
        })
        .collect()
}

fn write_table(path: &Path, stats: &Stats, quality: &Stats, exp: &Figure1) -> anyhow::Result<()> {
    let mut s = format!(
        "MMD² (mean ± standard error over {} seeds; {} steps; {} samples; sd with ddof = 0 as in Appendix B.1)\n\n",
        exp.seeds, exp.steps, exp.samples
    );
    let mut sections = Vec::new();
    for d in &exp.datasets {
        sections.push((d.clone(), "mean ± s.e.".to_string(), false, stats));
        sections.push((d.clone(), "median".to_string(), true, stats));
    }
    for d in &exp.datasets {
        if quality.keys().any(|(dd, _, _)| dd == d) {
            let what = if d == "circles" {
                "fraction of samples within 3 noise sd of a ring (data 0.997)"
            } else {
                "precision, fraction of samples within 3 sd of a mode (data 0.99)"
            };
            sections.push((d.clone(), format!("{what}, mean ± s.e."), false, quality));
        }
    }
    for (d, title, median, stats) in sections {
        writeln!(s, "### {d}: {title}\n")?;
        write!(s, "| N |")?;
        for m in &exp.methods {
            write!(s, " {m} |")?;
        }
        writeln!(s)?;
        writeln!(s, "|---|{}", "---|".repeat(exp.methods.len()))?;
        for &n in &exp.particles {
            write!(s, "| {n} |")?;
            for m in &exp.methods {
                match stats.get(&(d.clone(), m.clone(), n)) {
                    Some((_, _, med)) if median => write!(s, " {med:.5} |")?,
                    Some((mean, se, _)) => write!(s, " {mean:.5} ± {se:.5} |")?,
                    None => write!(s, " – |")?,
                }
            }
            writeln!(s)?;
        }
        writeln!(s)?;
    }
    ipld_data::write_atomically(path, s.as_bytes())?;
    Ok(())
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

/// One method's points (log2 N, mean, standard error).
type Curve<'a> = (&'a String, Vec<(f64, f64, f64)>);

/// What a figure1 panel plots against N.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Metric {
    /// MMD² (Figure 1).
    Mmd,
    /// gmm's mode precision or circles' ring fraction (issue 22).
    Quality,
}

/// Line colours of the experiments' curves, in order.
pub(crate) const PALETTE: [RGBColor; 8] = [
    RGBColor(200, 60, 40),
    RGBColor(40, 90, 160),
    RGBColor(60, 150, 60),
    RGBColor(150, 80, 170),
    RGBColor(230, 150, 20),
    RGBColor(20, 160, 170),
    RGBColor(90, 90, 90),
    RGBColor(170, 110, 60),
];

fn plot_vs_n(
    path: &Path,
    dataset: &str,
    stats: &Stats,
    methods: &[String],
    metric: Metric,
) -> anyhow::Result<()> {
    ipld_train::plot::register_font();
    let pts: Vec<Curve> = methods
        .iter()
        .map(|m| {
            let v = stats
                .iter()
                .filter(|((d, mm, _), _)| d == dataset && mm == m)
                .map(|((_, _, n), (mean, se, _))| ((*n as f64).log2(), *mean, *se))
                .collect();
            (m, v)
        })
        .collect();
    let all: Vec<&(f64, f64, f64)> = pts.iter().flat_map(|(_, v)| v.iter()).collect();
    if all.is_empty() {
        return Ok(());
    }
    let (xmin, xmax) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| {
        (a.0.min(p.0), a.1.max(p.0))
    });
    let (ymin, ymax) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| {
        (a.0.min(p.1 - p.2), a.1.max(p.1 + p.2))
    });
    let pad = (ymax - ymin).max(1e-4) * 0.15;
    let ns: Vec<f64> = all.iter().map(|p| p.0).collect();
    let root = ipld_train::canvas::Canvas::new(path, (640, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            match metric {
                Metric::Mmd => format!("MMD² vs particles N: {dataset}"),
                Metric::Quality if dataset == "circles" => {
                    "samples within 3 sd of a ring vs N: circles".to_string()
                }
                Metric::Quality => format!("precision (within 3 sd of a mode) vs N: {dataset}"),
            },
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (xmin - 0.3)..(xmax + 0.3),
            (ymin - pad).max(0.0)..(ymax + pad),
        )
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("N (log scale)")
        .disable_x_mesh()
        .y_desc(match metric {
            Metric::Mmd => "MMD²",
            Metric::Quality => "fraction of samples",
        })
        .x_labels(64)
        .x_label_formatter(&|x| {
            // Label only the N values that were run (ticks fall on a fine grid of log2 N).
            if ns.iter().any(|n| (n - x).abs() < 1e-6) {
                format!("{}", 2f64.powf(*x).round())
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.4}"))
        .draw()
        .map_err(plot_err)?;
    // Six colours, as these figures have always used.
    let colors = &PALETTE[..6];
    for (i, (m, v)) in pts.iter().enumerate() {
        let c = colors[i % colors.len()];
        if v.is_empty() {
            continue;
        }
        let band: Vec<(f64, f64)> = v
            .iter()
            .map(|p| (p.0, p.1 + p.2))
            .chain(v.iter().rev().map(|p| (p.0, p.1 - p.2)))
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(band, c.mix(0.2).filled())))
            .map_err(plot_err)?;
        let style = if *m == "ipld" {
            c.stroke_width(3)
        } else {
            c.stroke_width(2)
        };
        chart
            .draw_series(LineSeries::new(v.iter().map(|p| (p.0, p.1)), style))
            .map_err(plot_err)?
            .label(m.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3)));
        chart
            .draw_series(v.iter().map(|p| Circle::new((p.0, p.1), 3, c.filled())))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// The first two coordinates of 2,000 samples of the cached run `cell` (seed 0).
fn sample_panel(cell: &Cell, exp: &Figure1) -> anyhow::Result<Vec<(f32, f32)>> {
    let n_points = 2000;
    let trainer = open_run(&cell.dir(exp), &[])?;
    let s = ipld_train::eval::generate(
        &trainer,
        n_points,
        &SamplerConfig::Ddpm(Ddpm::default()),
        0,
        &mut |_| {},
    )?;
    let dx = s.data.len() / n_points;
    Ok(s.data.chunks_exact(dx).map(|r| (r[0], r[1])).collect())
}

/// Figure 2: IPLD samples (first two coordinates) for each N, seed 0, one row per dataset.
fn plot_grid(path: &Path, exp: &Figure1) -> anyhow::Result<()> {
    if !exp.methods.iter().any(|m| m == "ipld") {
        return Ok(());
    }
    let mut panels = Vec::new();
    for d in &exp.datasets {
        for &n in &exp.particles {
            let cell = Cell {
                dataset: d.clone(),
                method: "ipld".into(),
                particles: n,
                seed: 0,
            };
            panels.push((format!("{d}, N = {n}"), sample_panel(&cell, exp)?));
        }
    }
    plot_panels(
        path,
        "IPLD samples, first two of 64 coordinates (cf. Figure 2)",
        (exp.datasets.len(), exp.particles.len()),
        &panels,
    )
}

/// Every method's samples side by side (seed 0, N = 4 when run, else the smallest N), one row
/// per dataset: what the MMD² of each method is made of.
fn plot_methods(path: &Path, exp: &Figure1) -> anyhow::Result<()> {
    let Some(&n) = exp
        .particles
        .iter()
        .find(|&&n| n == 4)
        .or(exp.particles.iter().min())
    else {
        return Ok(());
    };
    let mut panels = Vec::new();
    for d in &exp.datasets {
        for m in &exp.methods {
            let cell = Cell {
                dataset: d.clone(),
                method: m.clone(),
                particles: n,
                seed: 0,
            };
            panels.push((format!("{d}, {m}"), sample_panel(&cell, exp)?));
        }
    }
    plot_panels(
        path,
        &format!("Samples of each method, N = {n}, seed 0, first two of 64 coordinates"),
        (exp.datasets.len(), exp.methods.len()),
        &panels,
    )
}

/// Scatter panels in a (rows, cols) grid under `title`.
fn plot_panels(
    path: &Path,
    title: &str,
    (rows, cols): (usize, usize),
    panels: &[(String, Vec<(f32, f32)>)],
) -> anyhow::Result<()> {
    ipld_train::plot::register_font();
    let root = ipld_train::canvas::Canvas::new(path, (260 * cols as u32, 280 * rows as u32))
        .into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(plot_err)?;
    for (area, (title, pts)) in root.split_evenly((rows, cols)).iter().zip(panels) {
        let lim = pts
            .iter()
            .fold(1.0f32, |a, p| a.max(p.0.abs()).max(p.1.abs()))
            .min(40.0)
            * 1.05;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 15))
            .margin(6)
            .margin_right(16)
            .x_label_area_size(18)
            .y_label_area_size(28)
            .build_cartesian_2d(-lim..lim, -lim..lim)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(4)
            .y_labels(4)
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(
                pts.iter()
                    .map(|p| Circle::new(*p, 1, RGBColor(200, 60, 40).mix(0.35).filled())),
            )
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(steps: u64, samples: usize, sets: &[&str]) -> Figure1 {
        Figure1 {
            datasets: vec!["circles".into()],
            methods: vec!["ipld".into()],
            particles: vec![16],
            seeds: 1,
            steps,
            samples,
            sets: sets.iter().map(|s| s.to_string()).collect(),
            work_dir: PathBuf::from("cache"),
            out_dir: PathBuf::from("out"),
            reuse: Vec::new(),
        }
    }

    /// A group with a row lacking the metric is left out of the statistics, so a mean is never
    /// over fewer seeds than the table says.
    #[test]
    fn incomplete_groups_are_left_out() {
        let cell = |n: usize, seed: u64| Cell {
            dataset: "gmm".into(),
            method: "ipld".into(),
            particles: n,
            seed,
        };
        let rows = vec![
            (
                cell(1, 0),
                serde_json::json!({ "mmd": 1.0, "modes": { "precision": 0.5 } }),
            ),
            (
                cell(1, 1),
                serde_json::json!({ "mmd": 3.0, "modes": { "precision": 0.7 } }),
            ),
            (
                cell(4, 0),
                serde_json::json!({ "mmd": 2.0, "modes": { "precision": 0.9 } }),
            ),
            (cell(4, 1), serde_json::json!({ "mmd": 2.0 })),
        ];
        let mmd = aggregate(&rows, |v| v["mmd"].as_f64());
        assert_eq!(mmd.len(), 2);
        let q = aggregate(&rows, quality_of);
        let key = ("gmm".to_string(), "ipld".to_string(), 1);
        assert_eq!(q.keys().collect::<Vec<_>>(), vec![&key]);
        let (mean, se, median) = q[&key];
        assert!((mean - 0.6).abs() < 1e-12 && (se - 0.1 / 2f64.sqrt()).abs() < 1e-12);
        assert!((median - 0.6).abs() < 1e-12);
    }

    /// A cached summary's MMD² reads back to the bit (serde_json's default float parser can be
    /// one ulp off, which made a cached run's CSV row differ from a fresh one's).
    #[test]
    fn cached_summaries_read_back_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let x = 0.009884904878290905f64;
        std::fs::write(
            tmp.path().join(SUMMARY_FILE),
            serde_json::to_string(&serde_json::json!({ "mmd": x })).unwrap(),
        )
        .unwrap();
        let v = read_summary(tmp.path()).unwrap();
        assert_eq!(v["mmd"].as_f64().unwrap().to_bits(), x.to_bits());
    }

    /// A cached cell made with the paper's noise stays valid for the methods the noise scale does
    /// not apply to, and is stale for IPLD, whose runs it changes.
    #[test]
    fn the_noise_scale_makes_only_ipld_cells_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let e = exp(DEFAULT_STEPS, DEFAULT_SAMPLES, &[]);
        for (method, valid) in [
            ("ipld", false),
            ("diffusion-vae", true),
            ("pgd", true),
            ("mpgd", true),
        ] {
            let cell = Cell {
                dataset: "circles".into(),
                method: method.into(),
                particles: 4,
                seed: 1,
            };
            let config = cell.config(&e).unwrap();
            let old = config
                .with_overrides(&["particles.noise_scale=paper".into()], "t")
                .unwrap();
            let dir = tmp.path().join(method);
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(ipld_train::rundir::CONFIG_FILE);
            std::fs::write(&file, old.to_toml()).unwrap();
            assert_eq!(same_config(&dir, &config), valid, "{method}");
            std::fs::write(&file, config.to_toml()).unwrap();
            assert!(same_config(&dir, &config), "{method}");
            let other = config
                .with_overrides(&["train.batch_size=100".into()], "t")
                .unwrap();
            assert!(!same_config(&dir, &other), "{method}");
        }
    }

    /// A run with other steps, samples or overrides must not share (and so replace) the
    /// default cell's directory; the default name stays as the existing caches have it.
    #[test]
    fn non_default_runs_get_their_own_cells() {
        let cell = Cell {
            dataset: "circles".into(),
            method: "ipld".into(),
            particles: 16,
            seed: 3,
        };
        let name = |e: &Figure1| cell.dir(e).display().to_string();
        let default = name(&exp(DEFAULT_STEPS, DEFAULT_SAMPLES, &[]));
        assert_eq!(
            default,
            Path::new("cache")
                .join("circles-ipld-n16-seed3")
                .display()
                .to_string()
        );
        let others = [
            name(&exp(2000, DEFAULT_SAMPLES, &[])),
            name(&exp(DEFAULT_STEPS, 1000, &[])),
            name(&exp(DEFAULT_STEPS, DEFAULT_SAMPLES, &["seed=1"])),
            name(&exp(2000, 1000, &["seed=1"])),
        ];
        assert!(others[0].ends_with("seed3-steps2000"), "{}", others[0]);
        assert!(others[1].ends_with("seed3-samples1000"), "{}", others[1]);
        for (i, a) in others.iter().enumerate() {
            assert_ne!(a, &default);
            for b in &others[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    /// A runs.csv's rows come back as summaries for cells of the same steps only; a file that is
    /// not a runs.csv, a malformed row, or --set with --reuse-csv are errors naming the cause.
    #[test]
    fn reused_csv_rows_fill_matching_cells_only() {
        let tmp = tempfile::tempdir().unwrap();
        let csv = tmp.path().join("runs.csv");
        std::fs::write(
            &csv,
            format!(
                "{CSV_HEADER}\ngmm,ipld,4,7,1000,0.0081,0.06,5.2,8.1,posterior,0.61,25,\ngmm,ipld,4,8,2000,0.0042,0.05,10.0,8.0,posterior,,,\n"
            ),
        )
        .unwrap();
        let mut e = exp(DEFAULT_STEPS, DEFAULT_SAMPLES, &[]);
        e.reuse = vec![csv.clone()];
        let key = |m: &str, noise: &str| ReuseKey {
            dataset: "gmm".into(),
            method: m.into(),
            noise: noise.into(),
            particles: 4,
            seed: 7,
        };
        let got = read_reused(&e).unwrap();
        assert_eq!(got.len(), 1);
        let v = &got[&key("ipld", "posterior")];
        assert_eq!(v["mmd"].as_f64(), Some(0.0081));
        assert_eq!(v["steps"].as_u64(), Some(1000));
        assert_eq!(v["noise_scale"].as_str(), Some("posterior"));
        assert_eq!(quality_of(v), Some(0.61));
        assert!(v.get("rings").is_none());
        // The header before the structure metrics still reads, without them.
        std::fs::write(
            &csv,
            format!("{V2_CSV_HEADER}\ngmm,ipld,4,7,1000,0.0081,0.06,5.2,8.1,posterior\n"),
        )
        .unwrap();
        let got = read_reused(&e).unwrap();
        assert_eq!(quality_of(&got[&key("ipld", "posterior")]), None);
        // A runs.csv from before the column: its `ipld` rows ran the paper's noise, so they stand
        // in for `ipld-paper` cells, not for the presets' (posterior) `ipld` cells; its
        // `ipld-posterior` rows do.
        std::fs::write(
            &csv,
            format!(
                "{OLD_CSV_HEADER}\ngmm,ipld,4,7,1000,0.0081,0.06,5.2,8.1\ngmm,ipld-posterior,4,7,1000,0.0079,0.06,5.2,8.1\ngmm,pgd,4,7,1000,0.024,0.06,5.2,8.1\n"
            ),
        )
        .unwrap();
        let got = read_reused(&e).unwrap();
        assert_eq!(got[&key("ipld", "paper")]["mmd"].as_f64(), Some(0.0081));
        assert_eq!(got[&key("ipld", "posterior")]["mmd"].as_f64(), Some(0.0079));
        assert_eq!(got[&key("pgd", "-")]["mmd"].as_f64(), Some(0.024));
        assert_eq!(got.len(), 3);
        let cell = |m: &str| Cell {
            dataset: "gmm".into(),
            method: m.into(),
            particles: 4,
            seed: 7,
        };
        let label = |m: &str| noise_label(&cell(m).config(&e).unwrap());
        assert_eq!(label("ipld"), "posterior");
        assert_eq!(label("ipld-posterior"), "posterior");
        assert_eq!(label("ipld-paper"), "paper");
        assert_eq!(label("ipld-langevin"), "posterior");
        assert_eq!(label("pgd"), "-");
        assert_eq!(label("diffusion-vae"), "-");
        let mut c = cell("ipld-paper").config(&e).unwrap();
        c = c
            .with_overrides(
                &[
                    "particles.noise_scale=posterior".into(),
                    "particles.update.second_moment_of=point".into(),
                    "particles.update.bias_correction=true".into(),
                ],
                "t",
            )
            .unwrap();
        assert_eq!(noise_label(&c), "posterior+v-per-point+bias-corrected");
        for m in ["ipld", "ipld-paper", "ipld-posterior"] {
            assert_eq!(same_runs_label(m), "ipld");
        }
        assert_eq!(same_runs_label("ipld-langevin"), "ipld-langevin");
        std::fs::write(
            &csv,
            format!("{CSV_HEADER}\ngmm,ipld,4,x,1000,0.1,0.1,1,1,paper,,,\n"),
        )
        .unwrap();
        let err = read_reused(&e).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        std::fs::write(&csv, "a,b\n").unwrap();
        let err = read_reused(&e).unwrap_err().to_string();
        assert!(err.contains("not a figure1 runs.csv"), "{err}");
        let mut e = exp(DEFAULT_STEPS, DEFAULT_SAMPLES, &["seed=1"]);
        e.reuse = vec![csv];
        assert!(read_reused(&e).unwrap_err().to_string().contains("--set"));
    }
}
