//! The commands that reopen a finished run: `ipld-train sample` (samples to a matrix file or a
//! PNG folder) and `ipld-train eval` (fresh samples, MMD² and, for image runs, FID).

use std::path::Path;

use ipld_data::{Dataset, ImageSet, InMemoryDataset, save_matrix};
use ipld_diffusion::SamplerConfig;

use crate::error::RunError;
use crate::eval::{generate_with_progress, mmd, quality, reference};
use crate::fid::fid_of_samples;
use crate::progress::Progress;
use crate::rundir::open_run;

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
    let sampler = sampler.unwrap_or(trainer.config().eval.sampler);
    sampler
        .validate(trainer.schedule())
        .map_err(|e| RunError::invalid(dir, e.to_string()))?;
    if n == 0 {
        return Err(RunError::invalid(out, "need at least one sample"));
    }
    let s = generate_with_progress(&trainer, n, &sampler, seed, progress)?;
    let is_matrix = out
        .extension()
        .is_some_and(|e| e == "npy" || e == "safetensors");
    if let (Some(src), false) = (&trainer.config().data.images, is_matrix) {
        // Image runs: a folder of PNGs (what `ipld-train fid` reads).
        let set = ImageSet::from_f32(&s.data, src.shape(), "generated samples")?;
        ipld_data::save_image_folder(&set, out, "sample-")?;
    } else {
        let data = InMemoryDataset::new(s.data, n, trainer.data().dim(), "generated samples")?;
        save_matrix(out, &data)?;
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
    let cfg = trainer.config();
    let n = samples.unwrap_or(cfg.eval.samples);
    if n < 2 {
        return Err(RunError::invalid(dir, "eval needs at least 2 samples"));
    }
    let s = generate_with_progress(
        &trainer,
        n,
        &cfg.eval.sampler,
        seed.unwrap_or(cfg.seed),
        progress,
    )?;
    let reference = reference(&trainer)?;
    let mmd = mmd(&trainer, &s, &reference)?;
    let quality = quality(&trainer, &s, &reference)?;
    let fid = match (&cfg.data.images, cfg.eval.fid) {
        (Some(src), true) => {
            let set = ImageSet::from_f32(&s.data, src.shape(), &dir.display().to_string())?;
            Some(fid_of_samples(&trainer, &set, progress)?)
        }
        _ => None,
    };
    let recognisability = match cfg.eval.classifier {
        true => Some(crate::recognise::recognisability(&trainer, &s)?),
        false => None,
    };
    let mut out = serde_json::json!({
        "fid": fid,
        "run_dir": dir.display().to_string(),
        "steps": trainer.step(),
        "samples": n,
        "mmd": mmd,
        "sample_seconds": s.seconds,
        "data_points": trainer.data().len(),
        "data_normalize": trainer.normalizer().kind().name(),
        "recognisability": recognisability,
    });
    // Quality is plain numbers, so it always serialises to an object.
    if let (Some(o), Ok(serde_json::Value::Object(q))) =
        (out.as_object_mut(), serde_json::to_value(quality))
    {
        o.extend(q);
    }
    Ok(out)
}
