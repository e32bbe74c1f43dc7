//! The epsilon-network of the synthetic experiments (Appendix B.1): an MLP with 3 hidden layers
//! of 128 units and ReLU, conditioned on the timestep by concatenating a sinusoidal embedding of
//! k to the input. Implements [`EpsModel`], so every sampler and loss in `ipld-diffusion` uses it.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};

use candle_nn::{Linear, VarBuilder};
use ipld_diffusion::EpsModel;
use serde::{Deserialize, Serialize};

use crate::{Activation, ModelError, dense, sinusoidal_embedding, sinusoidal_frequencies};

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
            return Err(ModelError::param("hidden/layers", "must be at least 1"));
        }
        if self.time_embedding == 0 || self.time_embedding % 2 == 1 {
            return Err(ModelError::param(
                "time_embedding",
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
    /// emb(k) for k = 0..=k_max in one dtype, built on first use: the embedding has no
    /// parameters, and computing sin/cos per row cost 8% of a gmm step at N = 1.
    embeddings: Arc<Mutex<Option<Tensor>>>,
    dim: usize,
}

impl MlpEps {
    /// The VarBuilder path (under the network's own prefix) of the layer producing eps.
    pub fn output_layer(&self) -> String {
        format!("l{}", self.layers.len() - 1)
    }

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
            embeddings: Arc::new(Mutex::new(None)),
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
    /// The first layer's weight split into its latent columns W_z [H, d] and timestep columns
    /// W_t [H, E]: the layer is then z W_z^T + (emb W_t^T + b), the same product as on [z, emb].
    fn first_weights(&self) -> candle_core::Result<(Tensor, Tensor)> {
        let w = self.layers[0].weight();
        let w_z = w.narrow(1, 0, self.dim)?;
        let w_t = w.narrow(1, self.dim, w.dim(1)? - self.dim)?;
        Ok((w_z, w_t))
    }

    /// emb(k) for the timesteps `ks` ([len, E]), gathered from the cached table (rebuilt to
    /// cover a larger k or another dtype).
    fn embed(&self, ks: &[u32], dtype: DType) -> candle_core::Result<Tensor> {
        let k_max = ks.iter().copied().max().unwrap_or(0) as usize;
        let mut cache = self
            .embeddings
            .lock()
            .map_err(|_| candle_core::Error::Msg("embedding cache poisoned".into()))?;
        let fits = matches!(&*cache, Some(t) if t.dtype() == dtype && t.dim(0)? > k_max);
        if !fits {
            // Whole multiples of 1024 rows, so the usual K = 1000 builds the table once.
            let n = (k_max / 1024 + 1) * 1024;
            let all: Vec<u32> = (0..n as u32).collect();
            let all = Tensor::from_vec(all, n, self.freqs.device())?;
            *cache = Some(sinusoidal_embedding(&all, &self.freqs, dtype)?);
        }
        let table = cache.as_ref().expect("filled above");
        table.index_select(&Tensor::from_slice(ks, ks.len(), table.device())?, 0)
    }

    fn bias(layer: &Linear) -> candle_core::Result<&Tensor> {
        layer
            .bias()
            .ok_or_else(|| candle_core::Error::Msg("MlpEps layers have biases".into()))
    }

    /// emb(k) W_t^T + b for each timestep of `ks` ([len, H]).
    fn timestep_product(&self, ks: &[u32], dtype: DType) -> candle_core::Result<Tensor> {
        let (_, w_t) = self.first_weights()?;
        let b = Self::bias(&self.layers[0])?;
        dense(&self.embed(ks, dtype)?, &w_t, b, Activation::Identity)
    }

    /// The timestep term of the first layer, emb(k) W_t^T + b, for each row of `k` ([R, H]).
    /// Rows share one of at most K timesteps, so when they repeat it is computed once per distinct
    /// k and gathered: at B N = 8,000 rows and K = 1,000 that replaces an 8,000-row product (and
    /// its backward) by a 1,000-row one.
    fn timestep_term(&self, k: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
        let ks: Vec<u32> = k.to_dtype(DType::U32)?.to_vec1()?;
        let mut distinct = ks.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if 2 * distinct.len() > ks.len() {
            return self.timestep_product(&ks, dtype);
        }
        let rows: Vec<u32> = ks
            .iter()
            .map(|v| distinct.partition_point(|d| d < v) as u32)
            .collect();
        let table = self.timestep_product(&distinct, dtype)?;
        table.index_select(&Tensor::from_vec(rows, ks.len(), k.device())?, 0)
    }

    /// The network given the first layer's timestep term `cond` ([R, H], or \[H\] for all rows).
    fn forward_with_term(&self, z_k: &Tensor, cond: &Tensor) -> candle_core::Result<Tensor> {
        let (w_z, _) = self.first_weights()?;
        let mut h = dense(z_k, &w_z, cond, Activation::Relu)?;
        let last = self.layers.len() - 1;
        for (j, layer) in self.layers.iter().enumerate().skip(1) {
            let act = if j == last {
                Activation::Identity
            } else {
                Activation::Relu
            };
            h = dense(&h, layer.weight(), Self::bias(layer)?, act)?;
        }
        Ok(h)
    }
}

impl EpsModel for MlpEps {
    fn predict_eps(&self, z_k: &Tensor, k: &Tensor) -> candle_core::Result<Tensor> {
        let cond = self.timestep_term(k, z_k.dtype())?;
        self.forward_with_term(z_k, &cond)
    }

    fn predict_eps_uniform(&self, z_k: &Tensor, k: usize) -> candle_core::Result<Tensor> {
        let cond = self.timestep_product(&[k as u32], z_k.dtype())?;
        self.forward_with_term(z_k, &cond.squeeze(0)?)
    }
}
