//! Evaluation (Appendix B.1): draw samples from the latent DDPM prior (N(0, I) for the published
//! PGD and MPGD), decode them with g_phi, and compare with training points by the unbiased MMD².

use candle_core::{DType, Tensor};
use ipld_data::Dataset;
use ipld_diffusion::{SamplerConfig, SamplerProgress, gaussian};
use ipld_eval::mmd2_unbiased;
use ipld_models::Decoder;
use rand::seq::index::sample;

use crate::error::TrainError;
use crate::progress::Progress;
use crate::streams::Stream;
use crate::trainer::Trainer;

/// Generated data and how long it took.
#[derive(Debug, Clone)]
pub struct Samples {
    /// Latents z_0 from the prior, [n, d_z] row-major.
    pub latent: Vec<f32>,
    /// Decoded samples g_phi(z_0), [n, d_x] row-major.
    pub data: Vec<f32>,
    /// Wall-clock seconds spent sampling and decoding.
    pub seconds: f64,
}

/// Draws `n` samples with `sampler`, seeded by (`seed`, stream), reporting progress.
pub fn generate(
    trainer: &Trainer,
    n: usize,
    sampler: &SamplerConfig,
    seed: u64,
    progress: &mut dyn FnMut(SamplerProgress),
) -> Result<Samples, TrainError> {
    let start = std::time::Instant::now();
    let dz = trainer.config().data.latent_dim;
    let mut rng = Stream::Sample.rng(seed, n as u64);
    let z = gaussian(&mut rng, (n, dz), DType::F32, trainer.device())?;
    let z0 = match trainer.sampling_prior()? {
        Some(prior) => {
            let u = sampler
                .sampler()
                .sample(&*prior, trainer.schedule(), z, &mut rng, progress)?;
            trainer.latent_space(&u)?
        }
        // PGD and MPGD: their prior N(0, I) itself.
        None => z,
    };
    let x = trainer.decoder().decode(&z0)?;
    let to_vec = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
        t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
    };
    Ok(Samples {
        latent: to_vec(&z0)?,
        data: to_vec(&x)?,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The reference set: all training points, or a seeded subset of `eval.reference_points`.
pub fn reference(trainer: &Trainer) -> Result<Vec<f32>, TrainError> {
    let data = trainer.data();
    let idx = reference_indices(trainer);
    let mut out = Vec::with_capacity(idx.len() * data.dim());
    data.gather_into(&idx, &mut out)?;
    Ok(out)
}

/// Indices of the reference set: all training points, or a seeded sorted subset of
/// `eval.reference_points`.
pub fn reference_indices(trainer: &Trainer) -> Vec<usize> {
    let n = trainer.data().len();
    let want = trainer.config().eval.reference_points;
    if want >= n {
        (0..n).collect()
    } else {
        let mut rng = Stream::Reference.rng(trainer.config().seed, 0);
        let mut v = sample(&mut rng, n, want).into_vec();
        v.sort_unstable();
        v
    }
}

/// MMD² between generated samples and the reference set (from [`reference()`]).
pub fn mmd(trainer: &Trainer, samples: &Samples, reference: &[f32]) -> Result<f64, TrainError> {
    if samples.data.iter().any(|v| !v.is_finite()) {
        return Err(TrainError::NonFinite {
            step: trainer.step(),
            what: "a generated sample".into(),
        });
    }
    Ok(mmd2_unbiased(
        &samples.data,
        reference,
        trainer.data().dim(),
        &trainer.config().eval.mmd,
    )?)
}

/// [`generate`] with progress shown as `progress` says.
pub fn generate_with_progress(
    trainer: &Trainer,
    n: usize,
    sampler: &SamplerConfig,
    seed: u64,
    progress: Progress,
) -> Result<Samples, TrainError> {
    let total = match trainer.config().method.is_published() {
        true => 0,
        false => sampler.sampler().evaluations(trainer.schedule()) as u64,
    };
    let bar = progress.bar(
        total,
        "sample {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}]",
    );
    let mut cb = |p: SamplerProgress| {
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
