//! The DiffusionVAE baseline's encoder q_psi(z | x) = N(mu_psi(x), diag(exp(logvar_psi(x))))
//! (Wehenkel & Louppe 2021, as the paper re-implements it in Appendix B.1): a single linear
//! layer d_x -> 2 d_z whose output halves are the mean and the log-variance.

use candle_core::Tensor;
use candle_nn::{Linear, Module, VarBuilder};

use crate::ModelError;

/// Linear Gaussian encoder.
#[derive(Debug, Clone)]
pub struct LinearGaussianEncoder {
    linear: Linear,
    latent_dim: usize,
}

impl LinearGaussianEncoder {
    /// Builds d_x -> 2 d_z under `vb` (`weight`, `bias`).
    pub fn new(data_dim: usize, latent_dim: usize, vb: VarBuilder) -> Result<Self, ModelError> {
        if data_dim == 0 || latent_dim == 0 {
            return Err(ModelError::param(
                "data_dim/latent_dim",
                "must be at least 1",
            ));
        }
        Ok(Self {
            linear: candle_nn::linear(data_dim, 2 * latent_dim, vb)?,
            latent_dim,
        })
    }

    /// (mean, log-variance), each [B, d_z].
    pub fn encode(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let h = self.linear.forward(x)?;
        Ok((
            h.narrow(1, 0, self.latent_dim)?.contiguous()?,
            h.narrow(1, self.latent_dim, self.latent_dim)?
                .contiguous()?,
        ))
    }

    /// Reparameterised draw z = mean + exp(logvar / 2) * eps (eps shaped like mean).
    pub fn sample(mean: &Tensor, logvar: &Tensor, eps: &Tensor) -> candle_core::Result<Tensor> {
        mean + (logvar * 0.5)?.exp()? * eps
    }

    /// Entropy of N(mean, diag(exp(logvar))) per row: sum_j (1 + ln 2 pi + logvar_j) / 2.
    pub fn entropy(logvar: &Tensor) -> candle_core::Result<Tensor> {
        let d = logvar.dim(1)? as f64;
        logvar
            .sum(1)?
            .affine(0.5, 0.5 * d * (1.0 + (2.0 * std::f64::consts::PI).ln()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn entropy_and_sampling_match_closed_forms() {
        let dev = Device::Cpu;
        let logvar = Tensor::new(&[[0.0f64, 2.0f64.ln()]], &dev).unwrap();
        // H = 0.5 * sum(1 + ln(2 pi sigma_j²)) with sigma² = (1, 2).
        let want = 0.5 * (1.0 + (2.0 * std::f64::consts::PI).ln())
            + 0.5 * (1.0 + (4.0 * std::f64::consts::PI).ln());
        let got: Vec<f64> = LinearGaussianEncoder::entropy(&logvar)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!((got[0] - want).abs() < 1e-12);
        let mean = Tensor::new(&[[1.0f64, -1.0]], &dev).unwrap();
        let eps = Tensor::new(&[[0.5f64, 2.0]], &dev).unwrap();
        let z: Vec<Vec<f64>> = LinearGaussianEncoder::sample(&mean, &logvar, &eps)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert!(
            (z[0][0] - 1.5).abs() < 1e-12 && (z[0][1] - (-1.0 + 2.0 * 2f64.sqrt())).abs() < 1e-12
        );
        let vars = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F64, &dev);
        let enc = LinearGaussianEncoder::new(5, 2, vb).unwrap();
        let (m, lv) = enc
            .encode(&Tensor::zeros((3, 5), DType::F64, &dev).unwrap())
            .unwrap();
        assert_eq!((m.dims(), lv.dims()), (&[3usize, 2][..], &[3usize, 2][..]));
    }
}
