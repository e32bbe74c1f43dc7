//! Fixed-potential particle guidance (Xu 2024, thesis section 6.4, eq. 6.4): the samples of one
//! batch are drawn jointly, each pushed away from the others by the gradient of a pairwise RBF
//! kernel, which raises a small set's diversity without retraining.
//!
//! Eq. 6.4 adds -alpha t grad_{x_i} sum_j k_t(x_i, x_j) to the score. With eps = -sqrt(1 - abar_k)
//! score (eq. 30), the guided prediction is
//!
//!   eps_i' = eps_i - sqrt(1 - abar_k) alpha (k / K) sum_j (2 / h) (z_i - z_j) exp(-||z_i - z_j||^2 / h),
//!
//! on the current noised states z, so every sampler (which only sees eps) runs it unchanged. The
//! bandwidth h is fixed, or the median heuristic of SVGD (median squared distance / ln(n + 1)),
//! recomputed at every evaluation as the set contracts. Strength 0 gives the plain sampler bit for
//! bit.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::{DiffusionError, EpsModel, NoiseSchedule};

/// The RBF kernel's bandwidth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bandwidth {
    /// h = median_{i<j} ||z_i - z_j||^2 / ln(n + 1), per evaluation.
    Median,
    /// A fixed h > 0 (squared distance units of the latents).
    Fixed(f64),
}

/// Particle guidance settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuidanceConfig {
    /// alpha in eq. 6.4; 0 turns guidance off.
    pub strength: f64,
    /// The kernel's bandwidth.
    #[serde(default = "median")]
    pub bandwidth: Bandwidth,
    /// Rows per jointly guided set: each call's rows are cut into consecutive sets of this many
    /// (the last may be smaller), each guided on its own; 0 guides all rows of a call as one set.
    /// The cost is quadratic in the set size.
    #[serde(default)]
    pub set_size: usize,
}

fn median() -> Bandwidth {
    Bandwidth::Median
}

impl GuidanceConfig {
    /// Checks the strength and the bandwidth.
    pub fn validate(&self) -> Result<(), DiffusionError> {
        if !(self.strength >= 0.0 && self.strength.is_finite()) {
            return Err(DiffusionError::param(
                "strength",
                &format!("must be finite and >= 0, got {}", self.strength),
            ));
        }
        if let Bandwidth::Fixed(h) = self.bandwidth
            && !(h > 0.0 && h.is_finite())
        {
            return Err(DiffusionError::param(
                "bandwidth",
                &format!("a fixed bandwidth must be positive, got {h}"),
            ));
        }
        Ok(())
    }
}

/// An eps-model wrapped with particle guidance over the rows of each call.
pub struct ParticleGuidance<'a> {
    model: &'a dyn EpsModel,
    config: GuidanceConfig,
    sqrt_one_minus: Vec<f64>,
}

impl<'a> ParticleGuidance<'a> {
    /// Wraps `model` under `schedule`.
    pub fn new(
        model: &'a dyn EpsModel,
        schedule: &NoiseSchedule,
        config: GuidanceConfig,
    ) -> Result<Self, DiffusionError> {
        config.validate()?;
        Ok(Self {
            model,
            config,
            sqrt_one_minus: schedule
                .alpha_bars()
                .iter()
                .map(|ab| (1.0 - ab).max(0.0).sqrt())
                .collect(),
        })
    }

    /// sum_j (2 / h) (z_i - z_j) exp(-||z_i - z_j||^2 / h) for every row, [n, d] row-major.
    fn repulsion(&self, z: &[f64], n: usize, d: usize) -> Vec<f64> {
        if n < 2 {
            return vec![0.0; n * d];
        }
        let mut dist = vec![0f64; n * n];
        for i in 0..n {
            for j in i + 1..n {
                let s: f64 = (0..d).map(|c| (z[i * d + c] - z[j * d + c]).powi(2)).sum();
                dist[i * n + j] = s;
                dist[j * n + i] = s;
            }
        }
        let h = match self.config.bandwidth {
            Bandwidth::Fixed(h) => h,
            Bandwidth::Median => {
                let mut pairs: Vec<f64> = (0..n)
                    .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
                    .map(|(i, j)| dist[i * n + j])
                    .collect();
                pairs.sort_by(f64::total_cmp);
                let med = pairs.get(pairs.len() / 2).copied().unwrap_or(1.0);
                (med / ((n + 1) as f64).ln()).max(f64::MIN_POSITIVE)
            }
        };
        let mut g = vec![0f64; n * d];
        for i in 0..n {
            for j in 0..n {
                if i == j {
                    continue;
                }
                let w = 2.0 / h * (-dist[i * n + j] / h).exp();
                for c in 0..d {
                    g[i * d + c] += w * (z[i * d + c] - z[j * d + c]);
                }
            }
        }
        g
    }
}

impl EpsModel for ParticleGuidance<'_> {
    fn predict_eps(&self, z_k: &Tensor, k: &Tensor) -> candle_core::Result<Tensor> {
        let eps = self.model.predict_eps(z_k, k)?;
        let n = z_k.dim(0)?;
        if self.config.strength == 0.0 || n < 2 {
            return Ok(eps);
        }
        let ks: Vec<u32> = k.to_dtype(DType::U32)?.to_vec1()?;
        let kk = ks[0] as usize;
        if ks.iter().any(|&v| v as usize != kk) {
            candle_core::bail!("particle guidance needs one timestep per call (a sampler's)");
        }
        let d = z_k.elem_count() / n;
        let z: Vec<f64> = z_k.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
        let set = match self.config.set_size {
            0 => n,
            s => s.min(n),
        };
        let g: Vec<f64> = z
            .chunks(set * d)
            .flat_map(|c| self.repulsion(c, c.len() / d, d))
            .collect();
        let big_k = self.sqrt_one_minus.len() as f64;
        let c = self.sqrt_one_minus[kk - 1] * self.config.strength * kk as f64 / big_k;
        let push = Tensor::from_vec(g, z_k.shape(), z_k.device())?
            .to_dtype(eps.dtype())?
            .affine(c, 0.0)?;
        eps - push
    }
}
