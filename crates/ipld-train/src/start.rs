//! Starting a run (issue 23): a new run in a new or empty directory, a resume from the
//! directory's checkpoint (only resumable keys may change, the data must match `run.json`'s
//! fingerprint, the run may not be shortened), or a restart from step 0 of a run stopped before
//! its first checkpoint; each under the directory's lock.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::Device;
use ipld_data::Dataset;

use crate::config::RunConfig;
use crate::data::load_data;
use crate::error::RunError;
use crate::lock::RunLock;
use crate::progress::Progress;
use crate::record::{DataFingerprint, RunRecord, check_data};
use crate::rundir::{
    CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, check_resumable, truncate_metrics,
};
use crate::trainer::Trainer;

/// A validated plan: what the binary hands to [`crate::run()`].
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
    /// On resume, continue even if the data differ from the run's recorded fingerprint.
    pub accept_data_change: bool,
    /// On resume, roll back to this kept checkpoint (`train.keep_checkpoints`) first.
    pub from_step: Option<u64>,
}

/// Refuses a resume that would shorten the run (fewer total steps than its checkpoint holds) or
/// train nothing on a finished run, before any record is touched: `config.toml` and
/// `summary.json` would otherwise describe a run that did not happen. A run whose checkpoint is
/// at its last step but that has no summary (interrupted during evaluation) is evaluated.
fn check_steps_ahead(t: &Trainer, dir: &Path) -> Result<(), RunError> {
    let (at, total) = (t.step(), t.config().total_steps());
    let refit = t.config().train.prior_refit.map_or(0, |r| r.steps);
    let steps = match refit {
        0 => format!("train.steps = {total}"),
        r => format!("train.steps + train.prior_refit.steps = {total} ({r} refit)"),
    };
    if total < at {
        return Err(RunError::invalid(
            dir,
            format!(
                "its checkpoint is at step {at}, and {steps} would go back; a run cannot be \
                 shortened (copy the directory at an earlier checkpoint, or start a new run)"
            ),
        ));
    }
    if total == at && dir.join(SUMMARY_FILE).exists() {
        return Err(RunError::invalid(
            dir,
            format!(
                "is already at step {at} ({steps}): nothing to train; raise the steps to continue, \
                 or re-evaluate with `ipld-train eval --run {}`",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// What [`start`] hands the run: the trainer, the run record and the directory's lock.
pub(crate) struct Started {
    pub trainer: Trainer,
    pub record: RunRecord,
    pub lock: RunLock,
    /// [`config_warnings`] for the run's config and data.
    pub warnings: Vec<String>,
}

/// The plan's trainer: reopened from the run directory's checkpoint on resume (its config may
/// change only in the resumable keys, its data must match the record), restarted from step 0
/// when the run stopped before its first checkpoint, else a fresh one in a new directory.
pub(crate) fn start(plan: &RunPlan) -> Result<Started, RunError> {
    let dir = &plan.run_dir;
    let origin = dir.display().to_string();
    let say = |line: String| {
        if plan.progress != Progress::Quiet {
            eprintln!("{line}");
        }
    };
    if plan.resume {
        let lock = RunLock::acquire(dir)?;
        // Compared validated, so a config that leaves `data.normalize` to its default matches the
        // resolved value the run saved.
        let new = plan.config.clone().validated(&origin)?;
        let saved = RunConfig::from_file(&dir.join(CONFIG_FILE))?.validated(&origin)?;
        check_resumable(&saved, &new).map_err(|m| RunError::invalid(dir, m))?;
        let data = load_data(&new)?;
        let warnings = config_warnings(&new, data.len(), data.dim());
        check_memory(&new, data.len())?;
        let fingerprint = DataFingerprint::of(&new, &data);
        let record = check_data(
            dir,
            RunRecord::read(dir)?,
            fingerprint,
            plan.accept_data_change,
        )?;
        if let Some(step) = plan.from_step {
            let latest = match dir.join(CHECKPOINT_FILE).exists() {
                true => crate::history::checkpoint_step(&dir.join(CHECKPOINT_FILE))?,
                false => 0,
            };
            if let Some(aside) = crate::history::roll_back(dir, step, latest)? {
                say(format!(
                    "rolled {} back from step {latest} to step {step}; the later checkpoints, \
                     metrics and summary are kept in {}",
                    dir.display(),
                    aside.display()
                ));
            }
        }
        let trainer = if !dir.join(CHECKPOINT_FILE).exists() {
            // Stopped before its first checkpoint (an interrupt, a kill, a NaN at step 1):
            // nothing to continue from, so the run starts over.
            let t = Trainer::new(new, data, Device::Cpu)?;
            truncate_metrics(&dir.join(METRICS_FILE), 0)?;
            say(format!(
                "{} has no checkpoint (it stopped before its first): restarting it from step 0 \
                 of {}",
                dir.display(),
                t.config().total_steps()
            ));
            t
        } else {
            let mut t = Trainer::new(saved, data, Device::Cpu)?;
            if plan.accept_data_change {
                t.adopt_checkpoint_normalizer(&dir.join(CHECKPOINT_FILE))?;
            }
            t.load_checkpoint(&dir.join(CHECKPOINT_FILE))?;
            t.set_config(new)
                .map_err(|e| RunError::invalid(dir, e.to_string()))?;
            check_steps_ahead(&t, dir)?;
            truncate_metrics(&dir.join(METRICS_FILE), t.step())?;
            say(format!(
                "resuming {} from step {} of {}",
                dir.display(),
                t.step(),
                t.config().total_steps()
            ));
            t
        };
        return Ok(Started {
            trainer,
            record,
            lock,
            warnings,
        });
    }
    if dir.join(CONFIG_FILE).exists() || dir.join(CHECKPOINT_FILE).exists() {
        let hint = match dir.join(CHECKPOINT_FILE).exists() {
            true => "continue it with --resume",
            false => "it stopped before its first checkpoint: restart it from step 0 with --resume",
        };
        return Err(RunError::invalid(
            dir,
            format!("already holds a run; {hint}, or choose another --out"),
        ));
    }
    check_empty(dir)?;
    if plan.config.eval.fid {
        let w = crate::fid::default_weights();
        if !w.exists() {
            return Err(RunError::invalid(
                &w,
                "eval.fid needs the Inception weights: run `cargo xtask fetch-inception` \
                 (or --set eval.fid=false)",
            ));
        }
    }
    let cfg = plan.config.clone().validated(&origin)?;
    let data = load_data(&cfg)?;
    let warnings = config_warnings(&cfg, data.len(), data.dim());
    check_memory(&cfg, data.len())?;
    let record = RunRecord {
        data: DataFingerprint::of(&cfg, &data),
        invocations: Vec::new(),
    };
    let t = Trainer::new(cfg, data, Device::Cpu)?;
    fs::create_dir_all(dir).map_err(|e| RunError::io(dir, e))?;
    let lock = RunLock::acquire(dir)?;
    Ok(Started {
        trainer: t,
        record,
        lock,
        warnings,
    })
}

/// A new run's `--out` must be new or empty: a folder of other files (an unrelated
/// `metrics.jsonl`, say) would be mixed with the run's.
fn check_empty(dir: &Path) -> Result<(), RunError> {
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(RunError::invalid(dir, "is a file, not a run directory"));
    }
    let mut entries = fs::read_dir(dir).map_err(|e| RunError::io(dir, e))?;
    if let Some(Ok(e)) = entries.next() {
        return Err(RunError::invalid(
            dir,
            format!(
                "is not empty (it holds {}) and holds no run: a new run needs a new or empty \
                 directory",
                e.file_name().to_string_lossy()
            ),
        ));
    }
    Ok(())
}

/// The particle cloud's size in bytes: M N d_z f32 values for the positions, and as many again
/// for each per-particle state of the update rule (AdaptiveLangevin's two moments, the kinetic
/// rules' velocity).
pub fn cloud_bytes(cfg: &RunConfig, points: usize) -> u64 {
    use ipld_particles::UpdateConfig as U;
    if !cfg.method.uses_particles() {
        return 0;
    }
    let buffers = match cfg.particles.update {
        U::AdaptiveLangevin(_) => 3,
        U::KineticLangevin(_) | U::UnderdampedLangevin(_) => 2,
        U::Langevin(_) | U::BatchLangevin(_) => 1,
    };
    (points as u64) * (cfg.particles.count as u64) * (cfg.data.latent_dim as u64) * 4 * buffers
}

/// The machine's available memory in bytes (`MemAvailable` of /proc/meminfo; None elsewhere).
fn available_memory() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses a particle cloud larger than the memory available, before allocating it.
fn check_memory(cfg: &RunConfig, points: usize) -> Result<(), RunError> {
    let need = cloud_bytes(cfg, points);
    match available_memory() {
        Some(have) if need > have => Err(RunError::invalid(
            Path::new("particles.count"),
            format!(
                "the particle cloud needs {:.1} GiB ({points} points x {} particles x {} latent \
                 values, with the update rule's state) but the machine has {:.1} GiB available; \
                 lower particles.count or data.latent_dim, or use data.max_points",
                gib(need),
                cfg.particles.count,
                cfg.data.latent_dim,
                gib(have)
            ),
        )),
        _ => Ok(()),
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Settings that are accepted but do not do all they say, each as a one-line warning naming the
/// key (logged at the start, and kept in the summary).
pub fn config_warnings(cfg: &RunConfig, points: usize, dim: usize) -> Vec<String> {
    let mut w = Vec::new();
    let t = &cfg.train;
    if t.batch_size > points {
        w.push(format!(
            "train.batch_size = {} exceeds the {points} data points: each step uses all {points}",
            t.batch_size
        ));
    }
    let batch = t.batch_size.min(points);
    if t.shards > batch {
        w.push(format!(
            "train.shards = {} exceeds the {batch} points of a minibatch: it runs {batch} shards",
            t.shards
        ));
    }
    let warm = cfg.particles.warm_start_steps;
    if warm > 0 && warm >= t.steps && cfg.particles.count > 1 && cfg.method.uses_particles() {
        w.push(format!(
            "particles.warm_start_steps = {warm} is not below train.steps = {}: the run trains \
             with 1 particle per point throughout, not particles.count = {}",
            t.steps, cfg.particles.count
        ));
    }
    if cfg.data.latent_dim > dim {
        w.push(format!(
            "data.latent_dim = {} exceeds the data's {dim} dimensions: the latent space is larger \
             than the data it explains",
            cfg.data.latent_dim
        ));
    }
    w
}
