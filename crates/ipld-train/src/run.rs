//! A training run: start (or resume) the run directory's trainer, train with progress reporting,
//! metrics and checkpoints, then evaluate (MMD², and for images the sample grid, the pictures
//! and FID) and write the summary and the run record; a signal stops training with a checkpoint
//! (`interrupt`). How a run starts or resumes is in `start`.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ipld_data::{Dataset, ImageSet, write_atomically};
use serde::Serialize;

use crate::collective::{Collective, single_process};
use crate::error::{RunError, TrainError};
use crate::eval::{Quality, Samples, generate_with_progress, mmd, quality, reference};
use crate::fid::fid_of_samples;
use crate::history::save_checkpoint;
use crate::interrupt;
use crate::progress::{Progress, sig5};
use crate::record::Invocation;
use crate::rundir::{
    CHECKPOINT_FILE, CONFIG_FILE, LineClock, METRICS_FILE, SAMPLES_PNG, SUMMARY_FILE,
    logged_train_seconds, metrics_line,
};
use crate::start::{RunPlan, Started, start};
use crate::trainer::{StepMetrics, Trainer};
use crate::{periodic, pictures, plot};

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
    /// Wall-clock seconds of this invocation's training loop, without the evaluations during
    /// training (`eval.every`) and the cloud pictures (`eval.cloud_epochs`).
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
    /// Image runs with `eval.classifier`: how recognisable the samples are to a classifier
    /// trained on the labelled images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recognisability: Option<ipld_eval::Recognisability>,
    /// What the samples score beyond the MMD² (issue 22): the data-vs-data floor, and the mode
    /// or ring metrics on the synthetic data.
    #[serde(flatten)]
    pub quality: Quality,
    /// The `data.normalize` the run trained with; samples and the MMD are in the data's own
    /// units whatever it is.
    pub data_normalize: String,
    /// Settings that do not do all they say, and a loss that exploded (absent when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The run directory.
    pub run_dir: String,
}

/// Trains (or resumes) as planned, then evaluates; writes everything into the run directory.
pub fn run(plan: RunPlan) -> Result<RunSummary, RunError> {
    run_on(plan, single_process()).map(|s| s.expect("a single process is rank 0"))
}

/// [`run()`] as one of `comm`'s ranks (issue 26): every rank trains its shard of the state;
/// rank 0 alone writes the run directory's records, metrics, pictures and the main checkpoint,
/// evaluates, and returns the summary (the other ranks return None).
pub fn run_on(plan: RunPlan, comm: Arc<dyn Collective>) -> Result<Option<RunSummary>, RunError> {
    let dir = plan.run_dir.clone();
    let root = comm.rank() == 0;
    let plan = RunPlan {
        progress: match root {
            true => plan.progress,
            false => Progress::Quiet,
        },
        ..plan
    };
    let Started {
        mut trainer,
        mut record,
        lock: _lock,
        mut warnings,
    } = start(&plan, comm)?;
    let cfg = trainer.config().clone();
    if !root {
        train(&mut trainer, &dir, plan.progress)?;
        report_memory(&trainer, plan.progress);
        if cfg.is_image_run() {
            pictures::interpolation(&trainer, &dir.join(pictures::INTERPOLATION_PNG), false)?;
        }
        return Ok(None);
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if plan.progress != Progress::Quiet {
        eprintln!("{}", banner(&trainer, &dir));
    }
    write_atomically(&dir.join(CONFIG_FILE), cfg.to_toml().as_bytes())?;
    record.invocations.push(Invocation::begin(trainer.step()));
    record.write(&dir)?;
    let first = trainer.step();
    let start = Instant::now();
    let trained = train(&mut trainer, &dir, plan.progress);
    let outcome = match &trained {
        Ok(_) => "finished",
        Err(RunError::Interrupted { .. }) => "interrupted",
        Err(RunError::Diverged { .. }) => "diverged",
        Err(_) => "failed",
    };
    if trained.is_err() {
        record.finish(trainer.step(), outcome);
        record.write(&dir)?;
    }
    let Trained {
        last,
        first_loss,
        paused,
    } = trained?;
    if let Some(w) = loss_explosion(&dir.join(METRICS_FILE), first_loss) {
        tracing::warn!("{w}");
        warnings.push(w);
    }
    let train_seconds = start.elapsed().saturating_sub(paused).as_secs_f64();
    let steps_now = trainer.step() - first;
    report_memory(&trainer, plan.progress);

    let samples = generate_with_progress(
        &trainer,
        cfg.eval.samples,
        &cfg.eval.sampler,
        cfg.eval.guidance.as_ref(),
        cfg.seed,
        plan.progress,
    )?;
    let reference = reference(&trainer)?;
    let mmd = mmd(&trainer, &samples, &reference)?;
    let quality = quality(&trainer, &samples, &reference)?;
    let fid = if cfg.is_image_run() {
        // Collective (the particles of its points may be on other ranks): before anything
        // that only rank 0 does.
        pictures::interpolation(&trainer, &dir.join(pictures::INTERPOLATION_PNG), true)?;
        image_outputs(&trainer, &samples, &dir, plan.progress)?
    } else {
        write_plot(
            &trainer,
            &samples,
            &reference,
            &quality.title_line(mmd),
            &dir,
        )?;
        None
    };
    let recognisability = match cfg.eval.classifier {
        true => Some(crate::recognise::recognisability(&trainer, &samples)?),
        false => None,
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
        recognisability,
        quality,
        data_normalize: trainer.normalizer().kind().name().into(),
        warnings,
        run_dir: dir.display().to_string(),
    };
    let mut json = serde_json::to_string_pretty(&summary).expect("summary serialises");
    json.push('\n');
    write_atomically(&dir.join(SUMMARY_FILE), json.as_bytes())?;
    record.finish(trainer.step(), "finished");
    record.write(&dir)?;
    Ok(Some(summary))
}

/// After training, each rank's particle memory and peak resident memory (one line per rank on
/// stderr; a single process reports it unless quiet): what docs/distributed.md's memory table
/// and `cargo xtask bench`'s scaling rows read.
fn report_memory(t: &Trainer, progress: Progress) {
    let comm = t.collective();
    if comm.size() == 1 && progress == Progress::Quiet {
        return;
    }
    let (rows, bytes) = t.cloud().map_or((0, 0), |c| {
        let [m, n, d] = c.shape();
        (m, 3 * m * n * d * 4)
    });
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        });
    tracing::info!(
        "rank {} of {}: particles of {rows} points ({:.1} MiB with their moments), peak RSS {} MiB",
        comm.rank(),
        comm.size(),
        bytes as f64 / (1u64 << 20) as f64,
        peak.map_or("unknown".into(), |kib| format!("{:.1}", kib / 1024.0))
    );
}

/// What the run is, printed when it starts: directory, data, method, network sizes, the particle
/// cloud's bytes, device, threads and steps.
fn banner(t: &Trainer, dir: &Path) -> String {
    let cfg = t.config();
    let (prior, decoder) = t.parameter_counts();
    let cloud = crate::start::cloud_bytes(cfg, t.data().len());
    format!(
        "run {}: {} on {} ({} points x {} values), N = {}, prior {prior} and decoder {decoder} \
         parameters, particle cloud {:.1} MiB{}, cpu ({}) with {} threads, steps {} of {}",
        dir.display(),
        cfg.method.name(),
        cfg.data.name(),
        t.data().len(),
        t.data().dim(),
        cfg.particles.count,
        cloud as f64 / (1u64 << 20) as f64,
        match t.collective().size() {
            1 => String::new(),
            r => format!(
                " over {r} {} ranks (1/{r} each)",
                t.collective().transport()
            ),
        },
        ipld_particles::active_isa().name(),
        rayon::current_num_threads(),
        t.step(),
        cfg.total_steps()
    )
}

/// A warning when the run's last logged loss is over 100 times its first (the first logged
/// line's, or `first_loss`, this invocation's first step's, when no earlier line exists): a step
/// size or learning rate too large, whatever the final metric says.
fn loss_explosion(metrics: &Path, first_loss: Option<f64>) -> Option<String> {
    let text = fs::read_to_string(metrics).ok()?;
    let losses: Vec<(u64, f64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?)))
        .collect();
    let &(s1, l1) = losses.last()?;
    let (s0, l0) = match (losses.first(), first_loss) {
        (Some(&(s, l)), _) if s < s1 => (s, l),
        (_, Some(l)) => (1, l),
        _ => return None,
    };
    let bound = 100.0 * l0.abs().max(1.0);
    (l1 > bound).then(|| {
        format!(
            "the loss exploded: {} at step {s1} against {} at step {s0} (over 100 times); the \
             particle step size or a learning rate is probably too large, and the metrics of \
             this run are not to be trusted",
            sig5(l1),
            sig5(l0)
        )
    })
}

/// The training loop up to the config's total steps: metrics lines every `train.log_every`
/// steps, checkpoints every `train.checkpoint_every` and at the end, and for image runs the
/// particle-cloud pictures at the configured epochs. Returns the last step's metrics.
fn train(trainer: &mut Trainer, dir: &Path, progress: Progress) -> Result<Trained, RunError> {
    let cfg = trainer.config().clone();
    let root = trainer.collective().rank() == 0;
    let metrics_path = dir.join(METRICS_FILE);
    // Rank 0 writes the metrics; the other ranks' lines go nowhere.
    let mut metrics: Box<dyn Write> = match root {
        true => Box::new(
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .map_err(|e| RunError::io(&metrics_path, e))?,
        ),
        false => Box::new(std::io::sink()),
    };
    let first = trainer.step();
    let total = cfg.total_steps();
    let bar = progress.bar(
        total,
        "train {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}] {msg}",
    );
    let bar = bar.filter(|_| first < total);
    if let Some(b) = &bar {
        b.set_position(first);
    }
    let start = Instant::now();
    let before = logged_train_seconds(&metrics_path);
    let mut previous = (first, 0.0);
    // Time spent on evaluations and cloud pictures, left out of the logged training seconds.
    let mut paused = std::time::Duration::ZERO;
    let mut last: Option<StepMetrics> = None;
    let mut first_loss = None;
    let per_epoch = trainer.batching().1;
    let snapshot_due = |t: u64| {
        cfg.is_image_run()
            && t.is_multiple_of(per_epoch)
            && cfg.eval.cloud_epochs.contains(&(t / per_epoch))
    };
    let _deferred = interrupt::TrainingGuard::new();
    while trainer.step() < total {
        if snapshot_due(trainer.step()) {
            let t = Instant::now();
            pictures::cloud_snapshot(trainer, trainer.step() / per_epoch, dir, root)?;
            paused += t.elapsed();
        }
        let m = match trainer.train_step() {
            Ok(m) => m,
            Err(source @ TrainError::NonFinite { .. }) => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                let kept = if dir.join(CHECKPOINT_FILE).exists() {
                    "the last good checkpoint is kept"
                } else {
                    "no checkpoint was written yet (--resume restarts it from step 0)"
                };
                return Err(RunError::Diverged {
                    path: dir.to_path_buf(),
                    source: Box::new(source),
                    kept,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let done = m.step + 1;
        if done.is_multiple_of(cfg.train.log_every) || done == total {
            let seconds = start.elapsed().saturating_sub(paused).as_secs_f64();
            let rate = (done - previous.0) as f64 / (seconds - previous.1).max(1e-9);
            previous = (done, seconds);
            let line = metrics_line(
                &m,
                LineClock {
                    seconds,
                    train_seconds_total: before + seconds,
                    steps_per_second: rate,
                },
            );
            writeln!(metrics, "{line}").map_err(|e| RunError::io(&metrics_path, e))?;
            if progress == Progress::Log {
                tracing::info!(
                    step = done,
                    total,
                    loss = %sig5(m.loss),
                    nll = %sig5(m.nll),
                    diffusion = %sig5(m.diffusion_loss),
                    gamma = %sig5(m.gamma),
                    "training"
                );
            }
        }
        if root && periodic::due(trainer, done) {
            if let Some(b) = &bar {
                b.set_message(format!("evaluating at step {done}"));
            }
            let t = Instant::now();
            let line = periodic::evaluate(trainer, dir, progress)?;
            writeln!(metrics, "{line}").map_err(|e| RunError::io(&metrics_path, e))?;
            paused += t.elapsed();
        }
        if let Some(b) = &bar {
            b.set_position(done);
            b.set_message(format!(
                "loss {} nll {} diff {}",
                sig5(m.loss),
                sig5(m.nll),
                sig5(m.diffusion_loss)
            ));
        }
        if done.is_multiple_of(cfg.train.checkpoint_every) || done == total {
            metrics
                .flush()
                .map_err(|e| RunError::io(&metrics_path, e))?;
            save_checkpoint(trainer, dir)?;
        }
        first_loss = first_loss.or(Some(m.loss));
        last = Some(m);
        // Every rank stops at the same step, whichever received the signal.
        let stop = crate::collective::any(trainer.collective(), interrupt::requested())
            .map_err(|e| RunError::invalid(dir, e.to_string()))?;
        if stop && done < total {
            metrics
                .flush()
                .map_err(|e| RunError::io(&metrics_path, e))?;
            save_checkpoint(trainer, dir)?;
            if let Some(b) = &bar {
                b.abandon();
            }
            return Err(RunError::Interrupted {
                path: dir.to_path_buf(),
                step: done,
                total,
            });
        }
    }
    if let Some(b) = bar {
        b.finish();
    }
    if snapshot_due(trainer.step()) {
        let t = Instant::now();
        pictures::cloud_snapshot(trainer, trainer.step() / per_epoch, dir, root)?;
        paused += t.elapsed();
    }
    Ok(Trained {
        last,
        first_loss,
        paused,
    })
}

/// The loop's last step metrics, this invocation's first loss, and its time spent not training.
struct Trained {
    last: Option<StepMetrics>,
    first_loss: Option<f64>,
    paused: std::time::Duration,
}

/// Image runs: the sample grid (`samples.png`, 8 x 8), the interpolation picture and, with
/// `eval.fid`, FID against the first `eval.reference_points` training images.
fn image_outputs(
    trainer: &Trainer,
    samples: &Samples,
    dir: &Path,
    progress: Progress,
) -> Result<Option<f64>, RunError> {
    let cfg = trainer.config();
    let src = cfg.data.images.as_ref().expect("image run");
    let set = ImageSet::from_f32(&samples.data, src.shape(), "generated samples")?;
    let title = format!(
        "{}: {} on {}, N = {}, step {}",
        pictures::run_name(dir),
        cfg.method.name(),
        cfg.data.name(),
        trainer.particles_per_point(),
        trainer.step()
    );
    pictures::save_labelled_grid(&set, (8, 8), &title, &[], &dir.join(SAMPLES_PNG))?;
    if !cfg.eval.fid {
        return Ok(None);
    }
    fid_of_samples(trainer, &set, progress).map(Some)
}

/// Synthetic runs: `samples.png`, data beside samples, written to a temporary file and renamed.
fn write_plot(
    trainer: &Trainer,
    samples: &Samples,
    reference: &[f32],
    metrics: &str,
    dir: &Path,
) -> Result<(), RunError> {
    let cfg = trainer.config();
    let title = format!(
        "{} on {}, N = {}, {} steps: {metrics}",
        cfg.method.name(),
        cfg.data.name(),
        trainer.particles_per_point(),
        trainer.step()
    );
    plot::draw_atomically(&dir.join(SAMPLES_PNG), |tmp| {
        plot::scatter_pair(tmp, &title, reference, &samples.data, trainer.data().dim())
    })
}
