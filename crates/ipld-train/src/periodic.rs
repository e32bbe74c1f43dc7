//! Evaluation during training (`eval.every`, issue 23): every S steps, `eval.every_samples`
//! samples from the current prior and decoder (the final evaluation's sampler and seed, so the
//! evaluations of a run are comparable with each other), their MMD² and structure metrics
//! against as many training points, optionally FID, logged as a `phase = "eval"` line of
//! `metrics.jsonl` and drawn to `evals/step-SSSSSSSS.png`. This is how a researcher sees a run
//! going wrong before it ends.

use std::fs;
use std::path::{Path, PathBuf};

use ipld_data::{Dataset, ImageSet};
use serde_json::json;

use crate::error::RunError;
use crate::eval::{generate, mmd, quality, reference};
use crate::progress::{Progress, sig5};
use crate::trainer::Trainer;
use crate::{pictures, plot};

/// The folder of pictures drawn during training.
pub const EVALS_DIR: &str = "evals";

/// The picture of the evaluation at `step`.
pub fn picture_path(dir: &Path, step: u64) -> PathBuf {
    dir.join(EVALS_DIR).join(format!("step-{step:08}.png"))
}

/// Whether an evaluation is due after `done` steps.
pub fn due(trainer: &Trainer, done: u64) -> bool {
    let every = trainer.config().eval.every;
    every > 0 && done.is_multiple_of(every)
}

/// Evaluates the trainer as it is now; returns the `metrics.jsonl` line and draws the picture.
pub fn evaluate(trainer: &Trainer, dir: &Path, progress: Progress) -> Result<String, RunError> {
    let cfg = trainer.config();
    let step = trainer.step();
    let n = cfg.eval.every_samples;
    let start = std::time::Instant::now();
    let samples = generate(trainer, n, &cfg.eval.sampler, cfg.seed, &mut |_| {})?;
    // As many training points as samples, evenly spaced over the reference set (so a file
    // sorted by class keeps every class).
    let dim = trainer.data().dim();
    let all = reference(trainer)?;
    let rows = all.len() / dim;
    let k = n.min(rows);
    let mut refs = Vec::with_capacity(k * dim);
    for i in 0..k {
        let r = i * rows / k;
        refs.extend_from_slice(&all[r * dim..(r + 1) * dim]);
    }
    let mmd = mmd(trainer, &samples, &refs)?;
    let q = quality(trainer, &samples, &refs)?;
    fs::create_dir_all(dir.join(EVALS_DIR)).map_err(|e| RunError::io(&dir.join(EVALS_DIR), e))?;
    let path = picture_path(dir, step);
    let mut fid = None;
    if let Some(src) = &cfg.data.images {
        let set = ImageSet::from_f32(&samples.data, src.shape(), "generated samples")?;
        let shown = set.len().min(64);
        let title = format!(
            "{}: step {step}, {n} samples, MMD² {}",
            pictures::run_name(dir),
            sig5(mmd)
        );
        let cols = 8.min(shown);
        pictures::save_labelled_grid(&set, (shown.div_ceil(cols), cols), &title, &[], &path)?;
        if cfg.eval.every_fid {
            fid = Some(crate::fid::fid_of_samples(trainer, &set, progress)?);
        }
    } else {
        let title = format!(
            "{}, step {step}, {n} samples: {}",
            pictures::run_name(dir),
            q.title_line(mmd)
        );
        plot::draw_atomically(&path, |tmp| {
            plot::scatter_pair(tmp, &title, &refs, &samples.data, dim)
        })?;
    }
    let mut line = json!({
        "step": step,
        "phase": "eval",
        "samples": n,
        "mmd": mmd,
    });
    let extra = serde_json::to_value(&q).expect("quality serialises");
    if let (Some(o), Some(e)) = (line.as_object_mut(), extra.as_object()) {
        for (key, v) in e {
            o.insert(key.clone(), v.clone());
        }
        if let Some(f) = fid {
            o.insert("fid".into(), json!(f));
        }
        o.insert("seconds".into(), json!(start.elapsed().as_secs_f64()));
    }
    if progress == Progress::Log {
        tracing::info!(step, mmd = %sig5(mmd), fid = ?fid.map(sig5), "evaluation");
    }
    Ok(line.to_string())
}
