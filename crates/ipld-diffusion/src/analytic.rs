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
