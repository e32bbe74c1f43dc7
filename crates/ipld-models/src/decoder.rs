//! Gaussian decoders p_phi(x | z) = N(x; g_phi(z), sigma² I) (eq. 1). The synthetic experiments
//! use a single linear layer g_phi (Appendix B.1: "equivalent to a matrix of dimension d_z x d_x").

use candle_core::Tensor;
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::ModelError;

/// A decoder mean g_phi.
pub trait Decoder {
    /// g_phi(z) for a batch of latents [B, ...] -> [B, ...].
    fn decode(&self, z: &Tensor) -> candle_core::Result<Tensor>;
}

/// Linear decoder settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearDecoderConfig {
    /// Add a bias (the paper's decoder is a plain matrix: false).
    pub bias: bool,
    /// Observation noise sigma of p_phi(x | z) (1 in Appendix B).
    pub sigma: f64,
    /// Multiplies the initial weight and bias (PyTorch's U(+-1/sqrt(d_z)), which the paper's
    /// code inherits): 1 = that init, what a config without the key means; 0 starts from W = 0.
    #[serde(default = "one")]
    pub init_gain: f64,
}

/// serde default of `init_gain`.
fn one() -> f64 {
    1.0
}

impl LinearDecoderConfig {
    /// Checks sigma > 0 (keys relative to this struct).
    pub fn validate(&self) -> Result<(), ModelError> {
        if !(self.sigma > 0.0 && self.sigma.is_finite()) {
            return Err(ModelError::param(
                "sigma",
                format!("must be > 0, got {}", self.sigma),
            ));
        }
        if !(self.init_gain >= 0.0 && self.init_gain.is_finite()) {
            return Err(ModelError::param(
                "init_gain",
                format!("must be finite and >= 0, got {}", self.init_gain),
            ));
        }
        Ok(())
    }
}

impl Default for LinearDecoderConfig {
    fn default() -> Self {
        Self {
            bias: false,
            sigma: 1.0,
            init_gain: 1.0,
        }
    }
}

/// g_phi(z) = W z (+ b).
#[derive(Debug, Clone)]
pub struct LinearDecoder {
    linear: Linear,
}

impl LinearDecoder {
    /// Builds d_z -> d_x with weight `weight` (and `bias`) under `vb`.
    pub fn new(
        cfg: &LinearDecoderConfig,
        latent_dim: usize,
        data_dim: usize,
        vb: VarBuilder,
    ) -> Result<Self, ModelError> {
        cfg.validate()?;
        let linear = if cfg.bias {
            candle_nn::linear(latent_dim, data_dim, vb)?
        } else {
            candle_nn::linear_no_bias(latent_dim, data_dim, vb)?
        };
        Ok(Self { linear })
    }
}

impl Decoder for LinearDecoder {
    fn decode(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        self.linear.forward(z)
    }
}

/// Per-sample negative log-likelihood -log N(x; mean, sigma² I) without the constant
/// (d/2) log(2 pi sigma²): ||x - mean||² / (2 sigma²), a tensor \[B\].
pub fn gaussian_nll(x: &Tensor, mean: &Tensor, sigma: f64) -> candle_core::Result<Tensor> {
    (x - mean)?.sqr()?.flatten_from(1)?.sum(1)? / (2.0 * sigma * sigma)
}
