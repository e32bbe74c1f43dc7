//! The epsilon-network of the synthetic experiments (Appendix B.1): an MLP with 3 hidden layers
//! of 128 units and ReLU, conditioned on the timestep by concatenating a sinusoidal embedding of
//! k to the input. Implements [`EpsModel`], so every sampler and loss in `ipld-diffusion` uses it.

use candle_core::{Device, Tensor};

use candle_nn::{Linear, Module, VarBuilder};
use ipld_diffusion::EpsModel;
use serde::{Deserialize, Serialize};

use crate::{ModelError, sinusoidal_embedding, sinusoidal_frequencies};

/// MLP epsilon-network shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpEpsConfig {
    /// Width of each hidden layer (128).
    pub hidden: usize,
    /// Number of hidden layers (3).
    pub layers: usize,
    /// Dimension of the sinusoidal timestep embedding (even).
    pub time_embedding: usize,
}

impl Default for MlpEpsConfig {
    fn default() -> Self {
        Self {
            hidden: 128,
            layers: 3,
            time_embedding: 128,
        }
    }
}

impl MlpEpsConfig {
    /// Checks the sizes.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.hidden == 0 || self.layers == 0 {
            return Err(ModelError::param(
                "model.eps.hidden/layers",
                "must be at least 1",
            ));
        }
        if self.time_embedding == 0 || self.time_embedding % 2 == 1 {
            return Err(ModelError::param(
                "model.eps.time_embedding",
                format!("must be even and >= 2, got {}", self.time_embedding),
            ));
        }
        Ok(())
    }
}

/// eps_theta(z_k, k) = MLP([z_k, emb(k)]) for flat latents z_k in R^d.
#[derive(Debug, Clone)]
pub struct MlpEps {
    layers: Vec<Linear>,
    freqs: Tensor,
    dim: usize,
}

impl MlpEps {
    /// Builds the network for latents of dimension `dim`; weights are named `l0`, `l1`, ...
    /// under `vb` (PyTorch's default uniform initialisation, via candle_nn::linear).
    pub fn new(cfg: &MlpEpsConfig, dim: usize, vb: VarBuilder) -> Result<Self, ModelError> {
        cfg.validate()?;
        let mut layers = Vec::with_capacity(cfg.layers + 1);
        let mut fan_in = dim + cfg.time_embedding;
        for i in 0..cfg.layers {
            layers.push(candle_nn::linear(
                fan_in,
                cfg.hidden,
                vb.pp(format!("l{i}")),
            )?);
            fan_in = cfg.hidden;
        }
        layers.push(candle_nn::linear(
            fan_in,
            dim,
            vb.pp(format!("l{}", cfg.layers)),
        )?);
        Ok(Self {
            layers,
            freqs: sinusoidal_frequencies(cfg.time_embedding, vb.device())?,
            dim,
        })
    }

    /// Latent dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.freqs.device()
    }
}

impl MlpEps {
    /// The network on [z, emb]: the first layer is applied as z W_z^T + emb W_t^T + b (the same
    /// product as on the concatenation), so an `emb` of one row broadcasts over the batch.
    fn forward_with_embedding(&self, z_k: &Tensor, emb: &Tensor) -> candle_core::Result<Tensor> {
        let first = &self.layers[0];
        let w = first.weight();
        let w_z = w.narrow(1, 0, self.dim)?.t()?.contiguous()?;
        let w_t = w
            .narrow(1, self.dim, w.dim(1)? - self.dim)?
            .t()?
            .contiguous()?;
        let mut cond = emb.matmul(&w_t)?;
        if let Some(b) = first.bias() {
            cond = cond.broadcast_add(b)?;
        }
        let mut h = z_k.matmul(&w_z)?.broadcast_add(&cond)?;
        for layer in &self.layers[1..] {
            h = layer.forward(&h.relu()?)?;
        }
        Ok(h)
    }
}

impl EpsModel for MlpEps {
    fn predict_eps(&self, z_k: &Tensor, k: &Tensor) -> candle_core::Result<Tensor> {
        let emb = sinusoidal_embedding(k, &self.freqs, z_k.dtype())?;
        self.forward_with_embedding(z_k, &emb)
    }

    fn predict_eps_uniform(&self, z_k: &Tensor, k: usize) -> candle_core::Result<Tensor> {
        let one = Tensor::new(&[k as u32], z_k.device())?;
        let emb = sinusoidal_embedding(&one, &self.freqs, z_k.dtype())?;
        self.forward_with_embedding(z_k, &emb)
    }
}
