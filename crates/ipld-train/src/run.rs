//! A training run on disk: the run directory (resolved `config.toml`, `metrics.jsonl`, an atomic
//! safetensors checkpoint, `samples.png`, `summary.json`), the training loop with progress
//! reporting, resume, and the `sample` / `eval` entry points that reopen a finished run.
//! Nothing existing is overwritten in place: every file is written to a temporary sibling and
//! renamed, and a new run refuses a directory that already holds one.

use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use ipld_data::{
    Dataset, ImageSet, ImageSourceConfig, InMemoryDataset, SyntheticConfig, load_matrix,
    save_matrix, write_atomically,
};
use ipld_diffusion::SamplerConfig;
use serde::Serialize;

use crate::eval::{Samples, generate, mmd, reference};
use crate::trainer::{StepMetrics, TrainError, Trainer};
use crate::{RunConfig, pictures, plot};

/// File names inside a run directory.
pub const CONFIG_FILE: &str = "config.toml";
/// Metrics, one JSON object per line.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The checkpoint.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// Scatter of data vs samples.
pub const SAMPLES_PNG: &str = "samples.png";
/// The run's summary.
pub const SUMMARY_FILE: &str = "summary.json";

/// Errors of a run; each names the file or step at fault.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A file or directory operation failed.
    #[error("{}: {message}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Configuration error.
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    /// Training error.
    #[error(transparent)]
    Train(#[from] TrainError),
}

fn io(path: &Path, e: impl std::fmt::Display) -> RunError {
    RunError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// An indicatif bar (interactive terminals).
    Bar,
    /// Plain log lines through `tracing` every `train.log_every` steps.
    Log,
    /// Nothing.
    Quiet,
}

impl Progress {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub fn auto() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Bar
        } else {
            Self::Log
        }
    }
}

/// A validated plan: what the binary hands to [`run`].
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// The resolved configuration.
    pub config: RunConfig,
    /// The run directory.
    pub run_dir: PathBuf,
    /// Continue the run in `run_dir` from its checkpoint instead of starting one.
    pub resume: bool,
    /// Progress display.
    pub progress: Progress,
}

/// The final report (also `summary.json` and the binary's last stdout line).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunSummary {
    /// Training method.
    pub method: String,
    /// Dataset name.
    pub dataset: String,
    /// Particles per point N.
    pub particles: usize,
    /// Total steps of the run.
    pub steps: u64,
    /// Steps taken by this invocation.
    pub steps_this_invocation: u64,
    /// Seed.
    pub seed: u64,
    /// Wall-clock seconds of this invocation's training loop.
    pub train_seconds: f64,
    /// This invocation's training steps per second.
    pub steps_per_second: f64,
    /// Wall-clock seconds spent sampling and decoding the evaluation samples.
    pub sample_seconds: f64,
    /// Number of evaluation samples.
    pub samples: usize,
    /// Unbiased MMD² between decoded samples and training points (Appendix B.1).
    pub mmd: f64,
    /// The last step's loss L-hat.
    pub final_loss: Option<f64>,
    /// Image runs with `eval.fid`: FID of the samples against `eval.reference_points` training
    /// images (TF-FID Inception-v3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fid: Option<f64>,
    /// The run directory.
    pub run_dir: String,
}

/// Loads the training data the config names.
pub fn load_data(cfg: &RunConfig) -> Result<InMemoryDataset, RunError> {
    if let Some(src) = &cfg.data.images {
        let set = load_images(src, cfg.data.max_points)?;
        let idx: Vec<usize> = (0..set.len()).collect();
        let mut flat = Vec::with_capacity(set.len() * set.dim());
        set.gather_into(&idx, &mut flat).map_err(TrainError::from)?;
        return Ok(
            InMemoryDataset::new(flat, set.len(), set.dim(), set.source())
                .map_err(TrainError::from)?,
        );
    }
    let data = if cfg.data.path.is_empty() {
        SyntheticConfig {
            kind: cfg.data.synthetic,
            points: cfg.data.points,
            ambient_dim: cfg.data.ambient_dim,
            seed: cfg.data.seed,
        }
        .generate()
        .map_err(TrainError::from)?
        .observed
    } else {
        load_matrix(Path::new(&cfg.data.path)).map_err(TrainError::from)?
    };
    Ok(data)
}

/// Resolves a configured image path: as given when it exists, else under the data directory.
pub fn resolve_image_path(src: &ImageSourceConfig) -> ImageSourceConfig {
    let p = src.path();
    if p.exists() || p.is_absolute() {
        return src.clone();
    }
    let alt = ipld_data::default_data_dir().join(p);
    let mut out = src.clone();
    if alt.exists() {
        out.set_path(alt);
    }
    out
}

/// Loads the image set of `[data.images]` (the first `max_points` images when > 0).
pub fn load_images(src: &ImageSourceConfig, max_points: usize) -> Result<ImageSet, RunError> {
    let src = resolve_image_path(src);
    let set = src.load().map_err(|e| {
        let hint = if src.path().exists() {
            String::new()
        } else {
            format!(
                " (not found here nor under the data directory {}; mnist5k and digits come from                  `cargo xtask fetch-data NAME`)",
                ipld_data::default_data_dir().display()
            )
        };
        io(src.path(), format!("{e}{hint}"))
    })?;
    if max_points == 0 || max_points >= set.len() {
        return Ok(set);
    }
    // Evenly spaced, so a file sorted by class (mnist5k) keeps every class.
    let idx: Vec<usize> = (0..max_points)
        .map(|i| i * set.len() / max_points)
        .collect();
    Ok(set.select(&idx).map_err(TrainError::from)?)
}

/// The default run directory `runs/<dataset>-<method>-n<N>-seed<S>`, suffixed `-2`, `-3`, ... if
/// taken.
pub fn default_run_dir(cfg: &RunConfig) -> PathBuf {
    let base = format!(
        "{}-{}-n{}-seed{}",
        cfg.data.name(),
        cfg.method.name(),
        cfg.particles.count,
        cfg.seed
    );
    let root = PathBuf::from("runs");
    let mut dir = root.join(&base);
    let mut i = 2;
    while dir.exists() {
        dir = root.join(format!("{base}-{i}"));
        i += 1;
    }
    dir
}

fn metrics_line(m: &StepMetrics, cfg: &RunConfig, seconds: f64) -> String {
    serde_json::json!({
        "step": m.step + 1,
        "loss": m.loss,
        "diffusion_loss": m.diffusion_loss,
        "nll": m.nll,
        "gamma": m.gamma,
        "particle_step_size": m.particle_step_size,
        "particle_norm": m.particle_norm,
        "particle_spread": m.particle_spread,
        "phase": if m.prior_refit { "prior-refit" } else { "joint" },
        "lr_theta": cfg.train.optimizer_theta.lr,
        "lr_phi": cfg.train.optimizer_phi.lr,
        "seconds": seconds,
    })
    .to_string()
}

/// Keeps only metrics lines with step <= `step` (so a resumed run does not repeat lines).
fn truncate_metrics(path: &Path, step: u64) -> Result<(), RunError> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomically(path, kept.as_bytes()).map_err(|e| io(path, e))
}

/// Keys a resumed run may change: anything else would make it a different run than the one its
/// checkpoint belongs to (and break exact resumption).
pub const RESUMABLE_KEYS: &[&str] = &[
    "train.steps",
    "train.prior_refit",
    "train.log_every",
    "train.checkpoint_every",
    "eval",
];

/// Checks that `new` differs from `saved` only in [`RESUMABLE_KEYS`].
pub fn check_resumable(saved: &RunConfig, new: &RunConfig) -> Result<(), String> {
    fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let leaves = |c: &RunConfig| {
        let mut out = Vec::new();
        flatten(
            "",
            &toml::Value::try_from(c).expect("config serialises"),
            &mut out,
        );
        out.into_iter()
            .collect::<std::collections::BTreeMap<String, String>>()
    };
    let (a, b) = (leaves(saved), leaves(new));
    let allowed = |k: &str| {
        RESUMABLE_KEYS
            .iter()
            .any(|r| k == *r || k.starts_with(&format!("{r}.")))
    };
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let (va, vb) = (a.get(k), b.get(k));
        if va != vb && !allowed(k) {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "absent".into());
            return Err(format!(
                "`{k}` differs from the saved run ({} vs {}); on --resume only {} may change",
                show(va),
                show(vb),
                RESUMABLE_KEYS.join(", ")
            ));
        }
    }
    Ok(())
}

/// A fresh CPU trainer on an embedded preset with `overrides` applied (benchmarks, experiments).
pub fn preset_trainer(name: &str, overrides: &[String]) -> Result<Trainer, RunError> {
    let cfg = RunConfig::preset(name)?.with_overrides(overrides, &format!("preset {name}"))?;
    let data = load_data(&cfg)?;
    Ok(Trainer::new(cfg, data, Device::Cpu)?)
}

/// Opens an existing run (its config with `overrides` applied, data, and checkpoint).
pub fn open_run(dir: &Path, overrides: &[String]) -> Result<Trainer, RunError> {
    let cfg_path = dir.join(CONFIG_FILE);
    if !cfg_path.exists() {
        return Err(io(
            dir,
            format!("no {CONFIG_FILE} here: not a run directory"),
        ));
    }
    let cfg = RunConfig::from_file(&cfg_path)?
        .with_overrides(overrides, &cfg_path.display().to_string())?;
    let data = load_data(&cfg)?;
    let mut trainer = Trainer::new(cfg, data, Device::Cpu)?;
    trainer.load_checkpoint(&dir.join(CHECKPOINT_FILE))?;
    Ok(trainer)
}

fn save_checkpoint(trainer: &Trainer, dir: &Path) -> Result<(), RunError> {
    let path = dir.join(CHECKPOINT_FILE);
    let bytes = trainer.checkpoint_bytes()?;
    write_atomically(&path, &bytes).map_err(|e| io(&path, e))
}

/// Trains (or resumes) as planned, then evaluates; writes everything into the run directory.
pub fn run(plan: RunPlan) -> Result<RunSummary, RunError> {
    let dir = plan.run_dir.clone();
    let mut trainer = if plan.resume {
        let mut t = open_run(&dir, &[])?;
        check_resumable(&t.cfg, &plan.config).map_err(|m| io(&dir, m))?;
        t.set_config(plan.config.clone())
            .map_err(|e| io(&dir, e.to_string()))?;
        truncate_metrics(&dir.join(METRICS_FILE), t.step())?;
        t
    } else {
        if dir.join(CONFIG_FILE).exists() || dir.join(CHECKPOINT_FILE).exists() {
            return Err(io(
                &dir,
                "already holds a run; continue it with --resume, or choose another --out",
            ));
        }
        if plan.config.eval.fid {
            let w = crate::fid::default_weights();
            if !w.exists() {
                return Err(io(
                    &w,
                    "eval.fid needs the Inception weights: run `cargo xtask fetch-inception` \
                     (or --set eval.fid=false)",
                ));
            }
        }
        let data = load_data(&plan.config)?;
        let t = Trainer::new(plan.config.clone(), data, Device::Cpu)?;
        fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        t
    };
    let cfg = trainer.cfg.clone();
    write_atomically(&dir.join(CONFIG_FILE), cfg.to_toml().as_bytes())
        .map_err(|e| io(&dir.join(CONFIG_FILE), e))?;

    let metrics_path = dir.join(METRICS_FILE);
    let mut metrics = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| io(&metrics_path, e))?;
    let first = trainer.step();
    let total = cfg.total_steps();
    let bar = (plan.progress == Progress::Bar && first < total).then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "train {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .expect("template"),
        );
        b.set_position(first);
        b
    });
    let start = Instant::now();
    let mut last: Option<StepMetrics> = None;
    let per_epoch = trainer.batching().1;
    let snapshot_due = |t: u64| {
        cfg.is_image_run()
            && t.is_multiple_of(per_epoch)
            && cfg.eval.cloud_epochs.contains(&(t / per_epoch))
    };
    while trainer.step() < total {
        if snapshot_due(trainer.step()) {
            pictures::cloud_snapshot(&trainer, trainer.step() / per_epoch, &dir)?;
        }
        let m = match trainer.train_step() {
            Ok(m) => m,
            Err(e @ TrainError::NonFinite { .. }) => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                let kept = if dir.join(CHECKPOINT_FILE).exists() {
                    "the last good checkpoint is kept"
                } else {
                    "no checkpoint was written yet"
                };
                return Err(io(&dir, format!("{e}; training stopped and {kept}")));
            }
            Err(e) => return Err(e.into()),
        };
        let done = m.step + 1;
        if done.is_multiple_of(cfg.train.log_every) || done == total {
            let line = metrics_line(&m, &cfg, start.elapsed().as_secs_f64());
            writeln!(metrics, "{line}").map_err(|e| io(&metrics_path, e))?;
            if plan.progress == Progress::Log {
                tracing::info!(
                    step = done,
                    total,
                    loss = m.loss,
                    nll = m.nll,
                    diffusion = m.diffusion_loss,
                    gamma = m.gamma,
                    "training"
                );
            }
        }
        if let Some(b) = &bar {
            b.set_position(done);
            b.set_message(format!(
                "loss {:.4} nll {:.4} diff {:.4}",
                m.loss, m.nll, m.diffusion_loss
            ));
        }
        if done.is_multiple_of(cfg.train.checkpoint_every) || done == total {
            metrics.flush().map_err(|e| io(&metrics_path, e))?;
            save_checkpoint(&trainer, &dir)?;
        }
        last = Some(m);
    }
    if let Some(b) = bar {
        b.finish();
    }
    let train_seconds = start.elapsed().as_secs_f64();
    if snapshot_due(trainer.step()) {
        pictures::cloud_snapshot(&trainer, trainer.step() / per_epoch, &dir)?;
    }
    let steps_now = trainer.step() - first;

    let samples = sample_with_progress(
        &trainer,
        cfg.eval.samples,
        &cfg.eval.sampler,
        cfg.seed,
        plan.progress,
    )?;
    let reference = reference(&trainer)?;
    let mmd = mmd(&trainer, &samples, &reference)?;
    let fid = if cfg.is_image_run() {
        image_outputs(&trainer, &samples, &dir, plan.progress)?
    } else {
        write_plot(&trainer, &samples, &reference, &dir)?;
        None
    };
    let summary = RunSummary {
        method: cfg.method.name().into(),
        dataset: cfg.data.name(),
        particles: trainer.particles_per_point(),
        steps: trainer.step(),
        steps_this_invocation: steps_now,
        seed: cfg.seed,
        train_seconds,
        steps_per_second: if train_seconds > 0.0 {
            steps_now as f64 / train_seconds
        } else {
            0.0
        },
        sample_seconds: samples.seconds,
        samples: cfg.eval.samples,
        mmd,
        final_loss: last.map(|m| m.loss),
        fid,
        run_dir: dir.display().to_string(),
    };
    let json = serde_json::to_string_pretty(&summary).expect("summary serialises");
    write_atomically(&dir.join(SUMMARY_FILE), json.as_bytes())
        .map_err(|e| io(&dir.join(SUMMARY_FILE), e))?;
    Ok(summary)
}

/// Image runs: the sample grid (`samples.png`, 8 x 8) and, with `eval.fid`, FID against the
/// first `eval.reference_points` training images (their statistics cached under the data
/// directory's `fid-stats/`).
fn image_outputs(
    trainer: &Trainer,
    samples: &Samples,
    dir: &Path,
    progress: Progress,
) -> Result<Option<f64>, RunError> {
    let cfg = &trainer.cfg;
    let src = cfg.data.images.as_ref().expect("image run");
    let shape = src.shape();
    let set =
        ImageSet::from_f32(&samples.data, shape, "generated samples").map_err(TrainError::from)?;
    ipld_data::save_image_grid(&set, 8, 8, &dir.join(SAMPLES_PNG)).map_err(TrainError::from)?;
    pictures::interpolation(trainer, &dir.join(pictures::INTERPOLATION_PNG))?;
    if !cfg.eval.fid {
        return Ok(None);
    }
    fid_of_samples(trainer, &set, progress).map(Some)
}

/// FID of decoded samples against the first `eval.reference_points` training images (a seeded
/// subset when fewer, the MMD reference), the reference statistics cached under the data
/// directory's `fid-stats/`.
pub fn fid_of_samples(
    trainer: &Trainer,
    set: &ImageSet,
    progress: Progress,
) -> Result<f64, RunError> {
    let cfg = &trainer.cfg;
    let dir = Path::new(set.source());
    let src = cfg
        .data
        .images
        .as_ref()
        .ok_or_else(|| io(dir, "FID needs an image run"))?;
    let shape = src.shape();
    let weights = crate::fid::default_weights();
    let net = ipld_eval::InceptionV3::load(&weights, &Device::Cpu).map_err(|e| io(&weights, e))?;
    let n_ref = cfg.eval.reference_points.min(trainer.data().len());
    let src = resolve_image_path(src);
    let key = format!(
        "{}-{}-{n_ref}-seed{}-{:016x}",
        cfg.data.name(),
        shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x"),
        cfg.seed,
        crate::fid::fnv1a(src.path().display().to_string().as_bytes())
    );
    let cache = ipld_data::default_data_dir()
        .join("fid-stats")
        .join(format!("{key}.safetensors"));
    let real = match ipld_eval::GaussianStats::load(&cache) {
        Ok(s) if s.count == n_ref => s,
        _ => {
            // The same training points as the MMD reference (a seeded subset when fewer).
            let idx = crate::eval::reference_indices(trainer);
            let data = load_images(&src, cfg.data.max_points)?
                .select(&idx)
                .map_err(TrainError::from)?;
            let s = crate::fid::image_stats(&net, &data, n_ref, 50, progress, "FID reference")?;
            if let Some(parent) = cache.parent() {
                fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
            }
            s.save(&cache).map_err(|e| io(&cache, e))?;
            s
        }
    };
    let fake = crate::fid::image_stats(&net, set, usize::MAX, 50, progress, "FID samples")?;
    ipld_eval::frechet_distance(&real, &fake).map_err(|e| io(dir, e))
}

fn sample_with_progress(
    trainer: &Trainer,
    n: usize,
    sampler: &SamplerConfig,
    seed: u64,
    progress: Progress,
) -> Result<Samples, RunError> {
    let total = sampler.sampler().evaluations(trainer.schedule()) as u64;
    let bar = (progress == Progress::Bar).then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "sample {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}]",
            )
            .expect("template"),
        );
        b
    });
    let mut cb = |p: ipld_diffusion::SamplerProgress| {
        if let Some(b) = &bar {
            b.set_position(p.step as u64);
        } else if progress == Progress::Log && (p.step.is_multiple_of(250) || p.step == p.total) {
            tracing::info!(step = p.step, total = p.total, "sampling");
        }
    };
    let s = generate(trainer, n, sampler, seed, &mut cb)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(s)
}

fn write_plot(
    trainer: &Trainer,
    samples: &Samples,
    reference: &[f32],
    dir: &Path,
) -> Result<(), RunError> {
    let path = dir.join(SAMPLES_PNG);
    let tmp = dir.join(format!(".{SAMPLES_PNG}.tmp{}.png", std::process::id()));
    let title = format!(
        "{} on {}, N = {}, {} steps",
        trainer.cfg.method.name(),
        trainer.cfg.data.name(),
        trainer.particles_per_point(),
        trainer.step()
    );
    let result = plot::scatter_pair(&tmp, &title, reference, &samples.data, trainer.data().dim())
        .map_err(|e| io(&path, e))
        .and_then(|_| fs::rename(&tmp, &path).map_err(|e| io(&path, e)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `ipld-train sample`: draws `n` samples from a finished run and writes them to `out`
/// (`.npy`/`.safetensors`, [n, d_x]).
pub fn sample_run(
    dir: &Path,
    n: usize,
    sampler: Option<SamplerConfig>,
    seed: u64,
    out: &Path,
    progress: Progress,
) -> Result<serde_json::Value, RunError> {
    let trainer = open_run(dir, &[])?;
    let sampler = sampler.unwrap_or(trainer.cfg.eval.sampler);
    sampler
        .validate(trainer.schedule())
        .map_err(|e| io(dir, e))?;
    if n == 0 {
        return Err(io(out, "need at least one sample"));
    }
    let s = sample_with_progress(&trainer, n, &sampler, seed, progress)?;
    let is_matrix = out
        .extension()
        .is_some_and(|e| e == "npy" || e == "safetensors");
    if let (Some(src), false) = (&trainer.cfg.data.images, is_matrix) {
        // Image runs: a folder of PNGs (what `ipld-train fid` reads).
        let set = ImageSet::from_f32(&s.data, src.shape(), "generated samples")
            .map_err(TrainError::from)?;
        ipld_data::save_image_folder(&set, out, "sample-").map_err(TrainError::from)?;
    } else {
        let data = InMemoryDataset::new(s.data, n, trainer.data().dim(), "generated samples")
            .map_err(TrainError::from)?;
        save_matrix(out, &data).map_err(TrainError::from)?;
    }
    Ok(
        serde_json::json!({ "run_dir": dir.display().to_string(), "samples": n, "out": out.display().to_string(), "sample_seconds": s.seconds }),
    )
}

/// `ipld-train eval`: re-evaluates a finished run's MMD with `samples` draws.
pub fn eval_run(
    dir: &Path,
    samples: Option<usize>,
    seed: Option<u64>,
    progress: Progress,
) -> Result<serde_json::Value, RunError> {
    let trainer = open_run(dir, &[])?;
    let n = samples.unwrap_or(trainer.cfg.eval.samples);
    if n < 2 {
        return Err(io(dir, "eval needs at least 2 samples"));
    }
    let s = sample_with_progress(
        &trainer,
        n,
        &trainer.cfg.eval.sampler,
        seed.unwrap_or(trainer.cfg.seed),
        progress,
    )?;
    let mmd = mmd(&trainer, &s, &reference(&trainer)?)?;
    let fid = match (&trainer.cfg.data.images, trainer.cfg.eval.fid) {
        (Some(src), true) => {
            let set = ImageSet::from_f32(&s.data, src.shape(), &dir.display().to_string())
                .map_err(TrainError::from)?;
            Some(fid_of_samples(&trainer, &set, progress)?)
        }
        _ => None,
    };
    Ok(serde_json::json!({
        "fid": fid,
        "run_dir": dir.display().to_string(),
        "steps": trainer.step(),
        "samples": n,
        "mmd": mmd,
        "sample_seconds": s.seconds,
        "data_points": trainer.data().len(),
    }))
}
