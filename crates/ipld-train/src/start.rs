//! Starting a run (issue 23): a new run in a new or empty directory, a resume from the
//! directory's checkpoint (only resumable keys may change, the data must match `run.json`'s
//! fingerprint, the run may not be shortened), or a restart from step 0 of a run stopped before
//! its first checkpoint; each under the directory's lock.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use ipld_data::{Dataset, InMemoryDataset};

use crate::collective::Collective;
use crate::config::{RunConfig, ValidConfig};
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

/// What [`start`] hands the run: the trainer, the run record and the directory's lock (held by
/// rank 0 only).
pub(crate) struct Started {
    pub trainer: Trainer,
    pub record: RunRecord,
    pub lock: Option<RunLock>,
    /// [`config_warnings`] for the run's config and data.
    pub warnings: Vec<String>,
}

/// How the trainer is built: fresh, restarted from step 0, or from the directory's checkpoint.
enum Build {
    Fresh(ValidConfig),
    Restart(ValidConfig),
    Resume {
        saved: Box<ValidConfig>,
        new: Box<ValidConfig>,
    },
}

/// What rank 0 settles before any trainer exists: the directory's checks and lock, the record,
/// the data and how to build.
struct Prepared {
    build: Build,
    data: InMemoryDataset,
    record: RunRecord,
    /// Taken on resume; a new run's directory is made and locked once its trainer is built.
    lock: Option<RunLock>,
    warnings: Vec<String>,
}

/// The plan's trainer: reopened from the run directory's checkpoint on resume (its config may
/// change only in the resumable keys, its data must match the record), restarted from step 0
/// when the run stopped before its first checkpoint, else a fresh one in a new directory. With
/// more than one rank, rank 0 checks and locks the directory, every rank builds its shard of the
/// state, and a failure on any rank fails all of them.
pub(crate) fn start(plan: &RunPlan, comm: Arc<dyn Collective>) -> Result<Started, RunError> {
    let dir = &plan.run_dir;
    let root = comm.rank() == 0;
    let say = |line: String| {
        if plan.progress != Progress::Quiet && root {
            eprintln!("{line}");
        }
    };
    let prepared = match root {
        true => prepare(plan).map(Some),
        false => Ok(None),
    };
    let prepared = settle(&*comm, dir, prepared)?;
    let (build, data, record, lock, warnings) = match prepared {
        Some(p) => {
            // The other ranks' `follow` is agreed on here.
            settle(&*comm, dir, Ok(()))?;
            (p.build, p.data, Some(p.record), p.lock, p.warnings)
        }
        None => {
            let (build, data) = settle(&*comm, dir, follow(plan))?;
            (build, data, None, None, Vec::new())
        }
    };
    let fingerprint = same_as_rank_0(&*comm, dir, &build, &data)?;
    // Only rank 0 writes the record; the other ranks' fills the slot with their fingerprint.
    let record = match (record, fingerprint) {
        (Some(r), _) => r,
        (None, Some(data)) => RunRecord {
            data,
            invocations: Vec::new(),
        },
        (None, None) => return Err(RunError::invalid(dir, "a rank other than 0 in one process")),
    };
    let built = match build {
        Build::Fresh(cfg) => Trainer::new_on(cfg, data, Device::Cpu, comm.clone()),
        Build::Restart(cfg) => {
            let t = Trainer::new_on(cfg, data, Device::Cpu, comm.clone());
            if let Ok(t) = &t {
                say(format!(
                    "{} has no checkpoint (it stopped before its first): restarting it from step \
                     0 of {}",
                    dir.display(),
                    t.config().total_steps()
                ));
            }
            t
        }
        Build::Resume { saved, new } => Trainer::new_on(*saved, data, Device::Cpu, comm.clone())
            .and_then(|mut t| {
                if plan.accept_data_change {
                    t.adopt_checkpoint_normalizer(&dir.join(CHECKPOINT_FILE))?;
                }
                t.load_checkpoint(&dir.join(CHECKPOINT_FILE))?;
                t.set_config(*new)?;
                Ok(t)
            }),
    };
    let trainer = settle(&*comm, dir, built.map_err(RunError::from))?;
    if plan.resume && dir.join(CHECKPOINT_FILE).exists() {
        check_steps_ahead(&trainer, dir)?;
        if root {
            truncate_metrics(&dir.join(METRICS_FILE), trainer.step())?;
        }
        say(format!(
            "resuming {} from step {} of {}",
            dir.display(),
            trainer.step(),
            trainer.config().total_steps()
        ));
    } else if plan.resume && root {
        truncate_metrics(&dir.join(METRICS_FILE), 0)?;
    }
    let lock = match (root, lock) {
        (true, None) => {
            fs::create_dir_all(dir).map_err(|e| RunError::io(dir, e))?;
            Some(RunLock::acquire(dir)?)
        }
        (_, lock) => lock,
    };
    Ok(Started {
        trainer,
        record,
        lock,
        warnings,
    })
}

/// With several ranks: every rank's resolved config and data must be rank 0's (the same seed,
/// keys and values), or every rank stops, naming the ones that differ. Returns this rank's data
/// fingerprint (None for a single process, whose record already holds it).
fn same_as_rank_0(
    c: &dyn Collective,
    dir: &Path,
    build: &Build,
    data: &InMemoryDataset,
) -> Result<Option<DataFingerprint>, RunError> {
    if c.size() == 1 {
        return Ok(None);
    }
    let fp = DataFingerprint::of(build.config(), data);
    let mine = format!(
        "{}\n{} points x {} values, sha256 {}",
        build.config().to_toml(),
        fp.points,
        fp.dim,
        fp.sha256
    );
    let mut root = mine.clone().into_bytes();
    c.broadcast(&mut root, 0)
        .map_err(|e| RunError::invalid(dir, e.to_string()))?;
    let same = match root == mine.as_bytes() {
        true => Ok(()),
        false => Err(RunError::invalid(
            dir,
            "this rank's resolved config or data differ from rank 0's: every rank must be \
             started with the same arguments and see the same data",
        )),
    };
    settle(c, dir, same).map(|()| Some(fp))
}

impl Build {
    fn config(&self) -> &ValidConfig {
        match self {
            Self::Fresh(c) | Self::Restart(c) => c,
            Self::Resume { new, .. } => new,
        }
    }
}

/// Every rank's `local` outcome agreed: this rank's own error, or one naming the ranks that
/// failed (so none waits in a collective for a rank that gave up).
fn settle<T>(c: &dyn Collective, dir: &Path, local: Result<T, RunError>) -> Result<T, RunError> {
    if c.size() == 1 {
        return local;
    }
    match crate::collective::agree(c, local.as_ref().map(|_| ()).map_err(|e| e.to_string())) {
        Ok(()) => local,
        Err(others) => Err(local
            .err()
            .unwrap_or_else(|| RunError::invalid(dir, others))),
    }
}

/// A rank other than 0, after rank 0 prepared the directory: the same decision from the same
/// files, and its own copy of the data.
fn follow(plan: &RunPlan) -> Result<(Build, InMemoryDataset), RunError> {
    let dir = &plan.run_dir;
    let origin = dir.display().to_string();
    let new = plan.config.clone().validated(&origin)?;
    let data = load_data(&new)?;
    let build = match (plan.resume, dir.join(CHECKPOINT_FILE).exists()) {
        (true, true) => Build::Resume {
            saved: Box::new(RunConfig::from_file(&dir.join(CONFIG_FILE))?.validated(&origin)?),
            new: Box::new(new),
        },
        (true, false) => Build::Restart(new),
        (false, _) => Build::Fresh(new),
    };
    Ok((build, data))
}

/// Rank 0's checks before building: on resume the config's resumable keys, the data's
/// fingerprint and a roll-back (`--from-step`); for a new run an empty directory and the FID
/// weights; the memory the cloud needs, and the directory's lock.
fn prepare(plan: &RunPlan) -> Result<Prepared, RunError> {
    let dir = &plan.run_dir;
    let origin = dir.display().to_string();
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
            if let Some(aside) = crate::history::roll_back(dir, step, latest)?
                && plan.progress != Progress::Quiet
            {
                eprintln!(
                    "rolled {} back from step {latest} to step {step}; the later checkpoints, \
                     metrics and summary are kept in {}",
                    dir.display(),
                    aside.display()
                );
            }
        }
        // Stopped before its first checkpoint (an interrupt, a kill, a NaN at step 1): nothing
        // to continue from, so the run starts over.
        let build = match dir.join(CHECKPOINT_FILE).exists() {
            true => Build::Resume {
                saved: Box::new(saved),
                new: Box::new(new),
            },
            false => Build::Restart(new),
        };
        return Ok(Prepared {
            build,
            data,
            record,
            lock: Some(lock),
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
    Ok(Prepared {
        build: Build::Fresh(cfg),
        data,
        record,
        lock: None,
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
