//! The epsilon-model interface every sampler and loss is written against: eps_theta(z_k, k), the
//! noise predictor of Ho et al. (2020) used in the reparameterised mean of eq. (34),
//! mu_theta,k(z_k) = (z_k - beta_k / sqrt(1 - abar_k) eps_theta,k(z_k)) / sqrt(alpha_k).

use candle_core::Tensor;

/// A network (or closed form) predicting the noise in z_k.
pub trait EpsModel {
    /// eps_theta(z_k, k) for a batch: `z_k` is [B, ...] and `k` a u32 tensor \[B\] of 1-based
    /// timesteps; returns a tensor shaped like `z_k`.
    fn predict_eps(&self, z_k: &Tensor, k: &Tensor) -> candle_core::Result<Tensor>;

    /// eps_theta(z_k, k) when every row shares the timestep `k` (as in sampling). Models can
    /// override it to compute the timestep conditioning once per call instead of once per row.
    fn predict_eps_uniform(&self, z_k: &Tensor, k: usize) -> candle_core::Result<Tensor> {
        let ks = Tensor::full(k as u32, z_k.dim(0)?, z_k.device())?;
        self.predict_eps(z_k, &ks)
    }
}

impl<T: EpsModel + ?Sized> EpsModel for &T {
    fn predict_eps(&self, z_k: &Tensor, k: &Tensor) -> candle_core::Result<Tensor> {
        (**self).predict_eps(z_k, k)
    }
    fn predict_eps_uniform(&self, z_k: &Tensor, k: usize) -> candle_core::Result<Tensor> {
        (**self).predict_eps_uniform(z_k, k)
    }
}

impl<T: EpsModel + ?Sized> EpsModel for Box<T> {
    fn predict_eps(&self, z_k: &Tensor, k: &Tensor) -> candle_core::Result<Tensor> {
        (**self).predict_eps(z_k, k)
    }
    fn predict_eps_uniform(&self, z_k: &Tensor, k: usize) -> candle_core::Result<Tensor> {
        (**self).predict_eps_uniform(z_k, k)
    }
}
