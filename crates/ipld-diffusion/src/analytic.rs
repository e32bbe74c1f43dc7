//! The exact epsilon-predictor for Gaussian data z_0 ~ N(mu, s^2 I). Under eq. (30) the marginal
//! is z_k ~ N(sqrt(abar_k) mu, v_k I) with v_k = abar_k s^2 + 1 - abar_k, so the optimal predictor
//! is E[eps | z_k] = sqrt(1 - abar_k) (z_k - sqrt(abar_k) mu) / v_k. It lets samplers be tested
//! without training and serves as a sanity baseline in other diffusion projects.

use candle_core::{DType, Tensor};

use crate::{DiffusionError, EpsModel, NoiseSchedule};

/// Closed-form eps for N(mean, std^2 I) data under a given schedule.
#[derive(Debug, Clone)]
pub struct GaussianEps {
    mean: Vec<f64>,
    std: f64,
    alpha_bars: Vec<f64>,
}

impl GaussianEps {
    /// `mean` has one entry per latent dimension (data shaped [B, d]).
    pub fn new(schedule: &NoiseSchedule, mean: Vec<f64>, std: f64) -> Result<Self, DiffusionError> {
        if !(std > 0.0 && std.is_finite()) || mean.iter().any(|m| !m.is_finite()) {
            return Err(DiffusionError::Input(format!(
                "Gaussian data needs finite mean and std > 0, got std = {std}"
            )));
        }
        Ok(Self {
            mean,
            std,
            alpha_bars: schedule.alpha_bars().to_vec(),
        })
    }
}

impl EpsModel for GaussianEps {
    fn predict_eps(&self, z_k: &Tensor, k: &Tensor) -> candle_core::Result<Tensor> {
        let (b, d) = z_k.dims2()?;
        if d != self.mean.len() {
            candle_core::bail!(
                "GaussianEps has dimension {} but z_k is {:?}",
                self.mean.len(),
                z_k.dims()
            );
        }
        let ks: Vec<u32> = k.to_dtype(DType::U32)?.to_vec1()?;
        let mut scale = Vec::with_capacity(b);
        let mut shift = Vec::with_capacity(b * d);
        for &kk in &ks {
            let abar = self.alpha_bars[kk as usize - 1];
            let v = abar * self.std * self.std + 1.0 - abar;
            let c = (1.0 - abar).sqrt() / v;
            scale.push(c as f32);
            shift.extend(self.mean.iter().map(|m| (c * abar.sqrt() * m) as f32));
        }
        let dev = z_k.device();
        let scale = Tensor::from_vec(scale, (b, 1), dev)?.to_dtype(z_k.dtype())?;
        let shift = Tensor::from_vec(shift, (b, d), dev)?.to_dtype(z_k.dtype())?;
        z_k.broadcast_mul(&scale)? - shift
    }
}

/// Closed-form eps for an isotropic Gaussian mixture sum_c pi_c N(m_c, s_c^2 I). Under eq. (30)
/// component c's marginal is N(sqrt(abar_k) m_c, v_c I) with v_c = abar_k s_c^2 + 1 - abar_k, so
/// E[eps | z_k] = sum_c r_c(z_k) sqrt(1 - abar_k) (z_k - sqrt(abar_k) m_c) / v_c with the
/// responsibilities r_c proportional to pi_c N(z_k; sqrt(abar_k) m_c, v_c I). Computed in f64 on
/// the host (log-sum-exp); for testing samplers on a multimodal law without training.
#[derive(Debug, Clone)]
pub struct GaussianMixtureEps {
    weights: Vec<f64>,
    means: Vec<Vec<f64>>,
    stds: Vec<f64>,
    alpha_bars: Vec<f64>,
}

impl GaussianMixtureEps {
    /// Components with weights (normalised here), means (one dimension for all) and standard
    /// deviations.
    pub fn new(
        schedule: &NoiseSchedule,
        weights: Vec<f64>,
        means: Vec<Vec<f64>>,
        stds: Vec<f64>,
    ) -> Result<Self, DiffusionError> {
        let c = weights.len();
        let d = means.first().map_or(0, Vec::len);
        let bad = c == 0
            || means.len() != c
            || stds.len() != c
            || d == 0
            || means
                .iter()
                .any(|m| m.len() != d || m.iter().any(|v| !v.is_finite()))
            || stds.iter().any(|s| !(*s > 0.0 && s.is_finite()))
            || weights.iter().any(|w| !(*w > 0.0 && w.is_finite()));
        if bad {
            return Err(DiffusionError::Input(format!(
                "a Gaussian mixture needs as many positive weights, equal-length finite means and positive stds (got {c} weights, {} means, {} stds)",
                means.len(),
                stds.len()
            )));
        }
        let total: f64 = weights.iter().sum();
        Ok(Self {
            weights: weights.iter().map(|w| w / total).collect(),
            means,
            stds,
            alpha_bars: schedule.alpha_bars().to_vec(),
        })
    }

    /// The data dimension.
    pub fn dim(&self) -> usize {
        self.means[0].len()
    }

    /// E[eps | z_k] for one row.
    pub fn eps_row(&self, z: &[f64], k: usize) -> Vec<f64> {
        let ab = self.alpha_bars[k - 1];
        let (a, s2) = (ab.sqrt(), 1.0 - ab);
        let d = z.len() as f64;
        let v: Vec<f64> = self.stds.iter().map(|s| ab * s * s + s2).collect();
        let logp: Vec<f64> = (0..self.weights.len())
            .map(|c| {
                let dist: f64 = z
                    .iter()
                    .zip(&self.means[c])
                    .map(|(zi, m)| (zi - a * m).powi(2))
                    .sum();
                self.weights[c].ln() - 0.5 * d * v[c].ln() - dist / (2.0 * v[c])
            })
            .collect();
        let mx = logp.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let r: Vec<f64> = logp.iter().map(|l| (l - mx).exp()).collect();
        let norm: f64 = r.iter().sum();
        (0..z.len())
            .map(|j| {
                (0..r.len())
                    .map(|c| r[c] / norm * s2.sqrt() * (z[j] - a * self.means[c][j]) / v[c])
                    .sum()
            })
            .collect()
    }
}

impl EpsModel for GaussianMixtureEps {
    fn predict_eps(&self, z_k: &Tensor, k: &Tensor) -> candle_core::Result<Tensor> {
        let (b, d) = z_k.dims2()?;
        if d != self.dim() {
            candle_core::bail!(
                "GaussianMixtureEps has dimension {} but z_k is {:?}",
                self.dim(),
                z_k.dims()
            );
        }
        let ks: Vec<u32> = k.to_dtype(DType::U32)?.to_vec1()?;
        let zs: Vec<Vec<f64>> = z_k.to_dtype(DType::F64)?.to_vec2()?;
        let mut out = Vec::with_capacity(b * d);
        for (z, &kk) in zs.iter().zip(&ks) {
            out.extend(self.eps_row(z, kk as usize));
        }
        Tensor::from_vec(out, (b, d), z_k.device())?.to_dtype(z_k.dtype())
    }
}
