//! Evaluation (Appendix B.1): draw samples from the latent DDPM prior (N(0, I) for the published
//! PGD and MPGD), decode them with g_phi, and compare with training points by the unbiased MMD².
//! Beside it ([`quality`], issue 22): the MMD² between two disjoint halves of the reference set
//! (the estimator's noise floor at that size), and on the synthetic data the mode metrics (gmm)
//! or ring metrics (circles) that see what one wide kernel does not.

use candle_core::{DType, Tensor};
use ipld_data::Dataset;
use ipld_data::KnownStructure;
use ipld_diffusion::{GuidanceConfig, ParticleGuidance, SamplerConfig, SamplerProgress, gaussian};
use ipld_eval::{
    MmdConfig, ModeReport, RingReport, median_heuristic_gamma, mmd2_unbiased, mode_metrics,
    ring_metrics,
};
use ipld_models::Decoder;
use rand::seq::index::sample;

use crate::data::synthetic_config;
use crate::error::TrainError;
use crate::progress::Progress;
use crate::streams::Stream;
use crate::trainer::Trainer;

/// Generated data and how long it took.
#[derive(Debug, Clone)]
pub struct Samples {
    /// Latents z_0 from the prior, [n, d_z] row-major.
    pub latent: Vec<f32>,
    /// Decoded samples g_phi(z_0) in the data's units (`data.normalize` inverted), [n, d_x]
    /// row-major.
    pub data: Vec<f32>,
    /// Wall-clock seconds spent sampling and decoding.
    pub seconds: f64,
}

/// Draws `n` samples with `sampler`, seeded by (`seed`, stream), reporting progress, with the
/// run's own `eval.guidance`.
pub fn generate(
    trainer: &Trainer,
    n: usize,
    sampler: &SamplerConfig,
    seed: u64,
    progress: &mut dyn FnMut(SamplerProgress),
) -> Result<Samples, TrainError> {
    let guidance = trainer.config().eval.guidance;
    generate_guided(trainer, n, sampler, guidance.as_ref(), seed, progress)
}

/// [`generate`] with particle guidance given explicitly (None: independent samples).
pub fn generate_guided(
    trainer: &Trainer,
    n: usize,
    sampler: &SamplerConfig,
    guidance: Option<&GuidanceConfig>,
    seed: u64,
    progress: &mut dyn FnMut(SamplerProgress),
) -> Result<Samples, TrainError> {
    let start = std::time::Instant::now();
    let dz = trainer.config().data.latent_dim;
    let mut rng = Stream::Sample.rng(seed, n as u64);
    let z = gaussian(&mut rng, (n, dz), DType::F32, trainer.device())?;
    let z0 = match trainer.sampling_prior()? {
        Some(prior) => {
            let guided = match guidance {
                Some(g) if g.strength > 0.0 => {
                    Some(ParticleGuidance::new(&prior, trainer.schedule(), *g)?)
                }
                _ => None,
            };
            let model: &dyn ipld_diffusion::EpsModel = match &guided {
                Some(g) => g,
                None => &prior,
            };
            let u = sampler
                .sampler()
                .sample(model, trainer.schedule(), z, &mut rng, progress)?;
            trainer.latent_space(&u)?
        }
        // PGD and MPGD: their prior N(0, I) itself.
        None => z,
    };
    let x = trainer.decoder().decode(&z0)?;
    let to_vec = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
        t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
    };
    let mut data = to_vec(&x)?;
    trainer.normalizer().invert(&mut data);
    Ok(Samples {
        latent: to_vec(&z0)?,
        data,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Which latents `ipld-train eval` decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Latents {
    /// Samples of the learned prior: the model's samples.
    Prior,
    /// The first particle of training points evenly spaced over the data: their
    /// reconstructions, a ceiling on what a perfect prior could reach (rFID for images).
    Particles,
    /// Draws of N(mu, Sigma) fitted to every particle: what the cloud's second moments alone
    /// give, the floor a learned prior has to beat.
    Gaussian,
}

impl Latents {
    /// The name `eval` reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Prior => "prior",
            Self::Particles => "particles",
            Self::Gaussian => "gaussian",
        }
    }
}

/// Decodes the first particle of `n` training points spread evenly over the data (all of them
/// when `n` is larger): what a prior that matched the particles exactly would give at best.
pub fn decode_particles(trainer: &Trainer, n: usize) -> Result<Samples, TrainError> {
    let start = std::time::Instant::now();
    let cloud = cloud_of(trainer)?;
    let m = trainer.data().len();
    let n = n.min(m);
    let points: Vec<usize> = (0..n).map(|i| i * m / n).collect();
    let (per, dz) = (cloud.particles(), trainer.config().data.latent_dim);
    let mut all = Vec::new();
    cloud.gather_into(&points, &mut all)?;
    let z: Vec<f32> = all
        .chunks_exact(per * dz)
        .flat_map(|p| p[..dz].iter().copied())
        .collect();
    decode(trainer, z, start)
}

/// Decodes `n` draws (stream `Sample` at `seed`) of N(mu, Sigma) fitted to every particle of
/// every point: z = mu + U diag(sqrt(lambda)) e with Sigma = U diag(lambda) U^T.
pub fn decode_gaussian(trainer: &Trainer, n: usize, seed: u64) -> Result<Samples, TrainError> {
    let start = std::time::Instant::now();
    let cloud = cloud_of(trainer)?;
    let dz = trainer.config().data.latent_dim;
    let fit = ipld_diffusion::GaussianFit::of_rows(cloud.z(), dz)?;
    let mut rng = Stream::Sample.rng(seed, n as u64);
    let e: Vec<Vec<f64>> =
        gaussian(&mut rng, (n, dz), DType::F64, &candle_core::Device::Cpu)?.to_vec2()?;
    let z: Vec<f32> = e
        .iter()
        .flat_map(|e| {
            let fit = &fit;
            (0..dz).map(move |r| {
                let row = &fit.eigenvectors[r * dz..(r + 1) * dz];
                let x: f64 = (0..dz)
                    .map(|c| row[c] * fit.eigenvalues[c].sqrt() * e[c])
                    .sum();
                (fit.mean[r] + x) as f32
            })
        })
        .collect();
    decode(trainer, z, start)
}

/// The synced particle cloud, or an error naming the method that keeps none.
fn cloud_of(trainer: &Trainer) -> Result<ipld_particles::ParticleCloud, TrainError> {
    trainer.synced_cloud()?.ok_or_else(|| {
        TrainError::Invalid(format!(
            "{} keeps no particles to decode",
            trainer.config().method.name()
        ))
    })
}

/// Decodes latents `z` ([n, d_z] row-major) into samples in the data's units.
fn decode(
    trainer: &Trainer,
    z: Vec<f32>,
    start: std::time::Instant,
) -> Result<Samples, TrainError> {
    let dz = trainer.config().data.latent_dim;
    let zt = Tensor::from_vec(z.clone(), (z.len() / dz, dz), trainer.device())?;
    let mut data: Vec<f32> = trainer
        .decoder()
        .decode(&zt)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    trainer.normalizer().invert(&mut data);
    Ok(Samples {
        latent: z,
        data,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The reference set in the data's units: all training points, or a seeded subset of
/// `eval.reference_points`.
pub fn reference(trainer: &Trainer) -> Result<Vec<f32>, TrainError> {
    let data = trainer.data();
    let idx = reference_indices(trainer);
    let mut out = Vec::with_capacity(idx.len() * data.dim());
    data.gather_into(&idx, &mut out)?;
    trainer.normalizer().invert(&mut out);
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

/// How many standard deviations of a component (gmm) or of the noise (circles) count as "on"
/// a mode or ring: the data score 0.989 (2-d Gaussian) and 0.997 (radial noise).
pub const STRUCTURE_SDS: f64 = 3.0;

/// Rows of each sample pooled for the median heuristic (about 500,000 pairs).
const MEDIAN_ROWS: usize = 1000;

/// MMD² at a multiple of the median-heuristic bandwidth (`eval.mmd_bandwidths`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BandwidthMmd {
    /// The multiple of sigma_med.
    pub scale: f64,
    /// The kernel's gamma, 1 / (2 (scale sigma_med)²).
    pub gamma: f64,
    /// Unbiased MMD² with that kernel.
    pub mmd: f64,
}

/// Sample quality beyond the MMD² (issue 22).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Quality {
    /// MMD² (same kernel) between two disjoint random halves of the reference set: what the
    /// data score against themselves at half the size, the floor under the run's MMD².
    pub mmd_data_halves: Option<f64>,
    /// MMD² at multiples of the median-heuristic bandwidth (`eval.mmd_bandwidths`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mmd_bandwidths: Vec<BandwidthMmd>,
    /// gmm: precision, modes covered and KL to uniform, within 3 component sd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modes: Option<ModeReport>,
    /// circles: fraction of samples within 3 noise sd of a ring, and the split between rings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rings: Option<RingReport>,
}

impl Quality {
    /// One line for a picture's title: the MMD² with its data-vs-data floor, and the mode or
    /// ring metrics where the data have them.
    pub fn title_line(&self, mmd: f64) -> String {
        let mut s = format!("MMD² {mmd:.4}");
        if let Some(f) = self.mmd_data_halves {
            s += &format!(" (data halves {f:.4})");
        }
        if let Some(m) = &self.modes {
            s += &format!(
                ", precision {:.2}, modes {}/{}",
                m.precision, m.modes_covered, m.modes
            );
        }
        if let Some(r) = &self.rings {
            let shares: Vec<String> = r.ring_shares.iter().map(|v| format!("{v:.2}")).collect();
            s += &format!(
                ", on a ring {:.2} (split {})",
                r.ring_fraction,
                shares.join("/")
            );
        }
        s
    }
}

/// [`Quality`] of `samples` against the reference set (from [`reference()`]).
pub fn quality(
    trainer: &Trainer,
    samples: &Samples,
    reference: &[f32],
) -> Result<Quality, TrainError> {
    let cfg = trainer.config();
    let dim = trainer.data().dim();
    let n = reference.len() / dim;
    let mmd_data_halves = if n >= 4 {
        let mut rng = Stream::Reference.rng(cfg.seed, 1);
        let mut first = vec![false; n];
        for i in sample(&mut rng, n, n / 2) {
            first[i] = true;
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (row, &f) in reference.chunks_exact(dim).zip(&first) {
            if f { &mut a } else { &mut b }.extend_from_slice(row);
        }
        Some(mmd2_unbiased(&a, &b, dim, &cfg.eval.mmd)?)
    } else {
        None
    };
    let mut mmd_bandwidths = Vec::new();
    if !cfg.eval.mmd_bandwidths.is_empty() {
        let median = median_heuristic_gamma(&samples.data, reference, dim, MEDIAN_ROWS)?;
        for &scale in &cfg.eval.mmd_bandwidths {
            let gamma = median / (scale * scale);
            let kernel = MmdConfig {
                gamma,
                ..cfg.eval.mmd
            };
            let mmd = mmd2_unbiased(&samples.data, reference, dim, &kernel)?;
            mmd_bandwidths.push(BandwidthMmd { scale, gamma, mmd });
        }
    }
    let (mut modes, mut rings) = (None, None);
    if let Some(synthetic) = synthetic_config(cfg) {
        match synthetic.generate()?.structure() {
            KnownStructure::Modes { centers, sd } => {
                modes = Some(mode_metrics(
                    &samples.data,
                    dim,
                    &centers,
                    STRUCTURE_SDS * sd,
                )?);
            }
            KnownStructure::Rings { plane, radii, sd } => {
                rings = Some(ring_metrics(
                    &samples.data,
                    dim,
                    &plane,
                    &radii,
                    STRUCTURE_SDS * sd,
                )?);
            }
        }
    }
    Ok(Quality {
        mmd_data_halves,
        mmd_bandwidths,
        modes,
        rings,
    })
}

/// [`generate_guided`] with progress shown as `progress` says.
pub fn generate_with_progress(
    trainer: &Trainer,
    n: usize,
    sampler: &SamplerConfig,
    guidance: Option<&GuidanceConfig>,
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
    let s = generate_guided(trainer, n, sampler, guidance, seed, &mut cb)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(s)
}
