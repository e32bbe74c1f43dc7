//! The commands that reopen a finished run: `ipld-train sample` (samples to a matrix file or a
//! PNG folder) and `ipld-train eval` (fresh samples, MMD² and, for image runs, FID).

use std::path::Path;

use ipld_data::{Dataset, ImageSet, InMemoryDataset, save_matrix};
use ipld_diffusion::{GuidanceConfig, SamplerConfig};

use crate::error::RunError;
use crate::eval::{
    Latents, decode_gaussian, decode_particles, generate_with_progress, mmd, quality, reference,
};
use crate::fid::fid_of_samples;
use crate::progress::Progress;
use crate::rundir::{enclosing_run, open_run};
use crate::trainer::Trainer;

/// Prefix of the PNG files `ipld-train sample` writes into a folder.
const SAMPLE_PREFIX: &str = "sample-";

/// Whether `name` is a file `ipld-train sample` writes: `sample-NNNNN.png`.
fn is_sample_png(name: &str) -> bool {
    name.strip_prefix(SAMPLE_PREFIX)
        .and_then(|r| r.strip_suffix(".png"))
        .is_some_and(|d| d.len() >= 5 && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The PNG files directly inside `dir` (none if it does not exist).
fn pngs_in(dir: &Path) -> Result<Vec<String>, RunError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| RunError::io(dir, e))? {
        let name = e.map_err(|e| RunError::io(dir, e))?.file_name();
        let name = name.to_string_lossy().into_owned();
        if name.to_ascii_lowercase().ends_with(".png") {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Refuses an output that would destroy something before any sample is drawn: a path in or at a
/// run directory (its checkpoint and records), an existing file, or a folder that already holds
/// PNGs (old and new samples would mix) unless `force`; with `force` a folder may hold only
/// earlier `sample-NNNNN.png` files, which are replaced.
pub fn check_sample_out(out: &Path, folder: bool, force: bool) -> Result<(), RunError> {
    if let Some(run) = enclosing_run(out) {
        return Err(RunError::invalid(
            out,
            format!(
                "lies in the run directory {}; write samples outside it (its checkpoint and \
                 records must stay intact)",
                run.display()
            ),
        ));
    }
    if !folder {
        if out.is_dir() {
            return Err(RunError::invalid(out, "is a directory, not a file"));
        }
        if out.exists() && !force {
            return Err(RunError::invalid(
                out,
                "exists; pass --force to overwrite it, or choose another --out",
            ));
        }
        return Ok(());
    }
    if out.exists() && !out.is_dir() {
        return Err(RunError::invalid(
            out,
            "exists and is not a folder (image samples are written as a folder of PNGs; \
             name a .npy or .safetensors file for a matrix)",
        ));
    }
    let pngs = pngs_in(out)?;
    if pngs.is_empty() {
        return Ok(());
    }
    if !force {
        return Err(RunError::invalid(
            out,
            format!(
                "already holds {} PNG files (e.g. {}); pass --force to replace earlier samples, \
                 or choose an empty folder",
                pngs.len(),
                pngs[0]
            ),
        ));
    }
    if let Some(other) = pngs.iter().find(|n| !is_sample_png(n)) {
        return Err(RunError::invalid(
            out,
            format!(
                "holds {other}, which `ipld-train sample` did not write; choose another folder \
                 (--force replaces only sample-NNNNN.png files)"
            ),
        ));
    }
    Ok(())
}

/// Removes the earlier `sample-NNNNN.png` files of `dir` (after [`check_sample_out`] allowed it).
fn remove_old_samples(dir: &Path) -> Result<(), RunError> {
    for name in pngs_in(dir)? {
        if is_sample_png(&name) {
            let p = dir.join(&name);
            std::fs::remove_file(&p).map_err(|e| RunError::io(&p, e))?;
        }
    }
    Ok(())
}

/// `ipld-train sample`: draws `n` samples from a finished run and writes them to `out`
/// (`.npy`/`.safetensors`, [n, d_x], or for an image run a folder of PNGs). `force` allows
/// overwriting an existing file or earlier samples in the folder ([`check_sample_out`]).
pub fn sample_run(
    dir: &Path,
    n: usize,
    sampling: &Sampling,
    seed: u64,
    out: &Path,
    force: bool,
    progress: Progress,
) -> Result<serde_json::Value, RunError> {
    let trainer = open_run(dir, &[])?;
    let is_matrix = out
        .extension()
        .is_some_and(|e| e == "npy" || e == "safetensors");
    let folder = trainer.config().data.images.is_some() && !is_matrix;
    check_sample_out(out, folder, force)?;
    let (sampler, guidance) = sampling.resolve(&trainer, dir)?;
    if n == 0 {
        return Err(RunError::invalid(out, "need at least one sample"));
    }
    let s = generate_with_progress(&trainer, n, &sampler, guidance.as_ref(), seed, progress)?;
    if let (Some(src), true) = (&trainer.config().data.images, folder) {
        // Image runs: a folder of PNGs (what `ipld-train fid` reads).
        let set = ImageSet::from_f32(&s.data, src.shape(), "generated samples")?;
        remove_old_samples(out)?;
        ipld_data::save_image_folder(&set, out, SAMPLE_PREFIX)?;
    } else {
        let data = InMemoryDataset::new(s.data, n, trainer.data().dim(), "generated samples")?;
        save_matrix(out, &data)?;
    }
    Ok(
        serde_json::json!({ "run_dir": dir.display().to_string(), "samples": n, "out": out.display().to_string(), "sample_seconds": s.seconds }),
    )
}

/// What `ipld-train eval` is asked for.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// Samples (default: the run's `eval.samples`).
    pub samples: Option<usize>,
    /// Sampling seed (default: the run's seed).
    pub seed: Option<u64>,
    /// Decode prior samples or the particles.
    pub latents: Latents,
    /// The sampler and guidance (default: the run's).
    pub sampling: Sampling,
}

/// The sampler and particle guidance a `sample` or `eval` command asks for; None fields fall
/// back to the run's `eval.sampler` and `eval.guidance`.
#[derive(Debug, Clone, Default)]
pub struct Sampling {
    /// The sampler.
    pub sampler: Option<SamplerConfig>,
    /// Particle guidance (`Some` with strength 0 turns the run's off).
    pub guidance: Option<GuidanceConfig>,
}

impl Sampling {
    /// The sampler and guidance to use on `trainer`, checked against its schedule.
    fn resolve(
        &self,
        trainer: &Trainer,
        dir: &Path,
    ) -> Result<(SamplerConfig, Option<GuidanceConfig>), RunError> {
        let cfg = trainer.config();
        let sampler = self.sampler.unwrap_or(cfg.eval.sampler);
        sampler
            .validate(trainer.schedule())
            .map_err(|e| RunError::invalid(dir, e.to_string()))?;
        let guidance = self.guidance.or(cfg.eval.guidance);
        if let Some(g) = &guidance {
            g.validate()
                .map_err(|e| RunError::invalid(dir, e.under("guidance").to_string()))?;
        }
        Ok((sampler, guidance))
    }
}

impl EvalRequest {
    /// The run's own evaluation: its sample count, seed and sampler, from the prior.
    pub fn of_run() -> Self {
        Self {
            samples: None,
            seed: None,
            latents: Latents::Prior,
            sampling: Sampling::default(),
        }
    }
}

/// `ipld-train eval`: re-evaluates a finished run (MMD², structure metrics, FID and
/// recognisability where configured) with fresh samples.
pub fn eval_run(
    dir: &Path,
    req: &EvalRequest,
    progress: Progress,
) -> Result<serde_json::Value, RunError> {
    let EvalRequest {
        samples,
        seed,
        latents,
        sampling,
    } = req.clone();
    let trainer = open_run(dir, &[])?;
    let cfg = trainer.config();
    let (sampler, guidance) = sampling.resolve(&trainer, dir)?;
    let n = samples.unwrap_or(cfg.eval.samples);
    if n < 2 {
        return Err(RunError::invalid(dir, "eval needs at least 2 samples"));
    }
    let s = match latents {
        Latents::Prior => generate_with_progress(
            &trainer,
            n,
            &sampler,
            guidance.as_ref(),
            seed.unwrap_or(cfg.seed),
            progress,
        )?,
        Latents::Particles => {
            decode_particles(&trainer, n).map_err(|e| RunError::invalid(dir, e.to_string()))?
        }
        Latents::Gaussian => decode_gaussian(&trainer, n, seed.unwrap_or(cfg.seed))
            .map_err(|e| RunError::invalid(dir, e.to_string()))?,
    };
    let n = s.data.len() / trainer.data().dim();
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
    // The keys in the order of a run's summary.json.
    let mut out = serde_json::json!({
        "method": cfg.method.name(),
        "dataset": cfg.data.name(),
        "particles": trainer.particles_per_point(),
        "steps": trainer.step(),
        "seed": seed.unwrap_or(cfg.seed),
        "latents": latents.name(),
        "sampler": serde_json::to_value(sampler).unwrap_or_default(),
        "guidance": serde_json::to_value(guidance).unwrap_or_default(),
        "sample_seconds": s.seconds,
        "samples": n,
        "mmd": mmd,
        "fid": fid,
        "recognisability": recognisability,
    });
    let o = out.as_object_mut().expect("an object");
    // Quality is plain numbers, so it always serialises to an object.
    if let Ok(serde_json::Value::Object(q)) = serde_json::to_value(quality) {
        o.extend(q);
    }
    o.insert(
        "data_normalize".into(),
        trainer.normalizer().kind().name().into(),
    );
    o.insert("data_points".into(), trainer.data().len().into());
    o.insert("run_dir".into(), dir.display().to_string().into());
    Ok(out)
}
