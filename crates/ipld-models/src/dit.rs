//! The Diffusion Transformer prior of the image experiments (Appendix B.2): DiT (Peebles & Xie
//! 2023) on the 4 x 8 x 8 latent with patch size 1 (64 tokens), a fixed 2-d sin-cos position
//! embedding, adaLN-Zero conditioning on the timestep k, and an epsilon-only output (no learned
//! variance). DiT-S is depth 12, width 384, 6 heads; smaller presets exist for CPU-scale runs.
//!
//! Every op here has a backward pass in candle 0.11: layer norm is written from primitives
//! (DiT's norms have no affine parameters), attention uses `ops::softmax(_, D::Minus1)`, not
//! the fused kernels that record no gradient, and GELU is composed so its gradient is exact.

use candle_core::{D, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use ipld_diffusion::EpsModel;
use serde::{Deserialize, Serialize};

use crate::attention::MultiHeadAttention;
use crate::embedding::{embed_like, embed_one_like};
use crate::{InitRule, ModelError, seeded_init_with, sinusoidal_frequencies};

/// DiT shape. The latent is [channels, size, size]; particles store it flattened (CHW).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DitConfig {
    /// Latent channels (4 in the paper).
    pub channels: usize,
    /// Latent height = width (8 in the paper).
    pub size: usize,
    /// Patch side (1 in the paper: one token per latent pixel).
    pub patch: usize,
    /// Transformer width (DiT-S: 384).
    pub hidden: usize,
    /// Number of blocks (DiT-S: 12).
    pub depth: usize,
    /// Attention heads (DiT-S: 6); must divide `hidden`.
    pub heads: usize,
    /// MLP width as a multiple of `hidden` (4).
    pub mlp_ratio: usize,
    /// Dimension of the sinusoidal timestep features fed to the timestep MLP (256).
    pub frequency_dim: usize,
}

impl DitConfig {
    /// DiT-S/1 on a 4 x 8 x 8 latent, as in the paper.
    pub fn s() -> Self {
        Self {
            channels: 4,
            size: 8,
            patch: 1,
            hidden: 384,
            depth: 12,
            heads: 6,
            mlp_ratio: 4,
            frequency_dim: 256,
        }
    }

    /// A CPU-sized variant (width 128, depth 4, 4 heads) for minute-long runs.
    pub fn cpu_small() -> Self {
        Self {
            hidden: 128,
            depth: 4,
            heads: 4,
            ..Self::s()
        }
    }

    /// Number of latent values per particle (C H W).
    pub fn latent_dim(&self) -> usize {
        self.channels * self.size * self.size
    }

    /// Checks the sizes.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |k: &str, r: String| Err(ModelError::param(k, r));
        if self.channels == 0 || self.size == 0 || self.depth == 0 || self.mlp_ratio == 0 {
            return bad("channels/size/depth/mlp_ratio", "must be at least 1".into());
        }
        if self.patch == 0 || !self.size.is_multiple_of(self.patch) {
            return bad(
                "patch",
                format!("{} must divide the latent size {}", self.patch, self.size),
            );
        }
        if self.heads == 0 || !self.hidden.is_multiple_of(self.heads) {
            return bad(
                "heads",
                format!("{} heads must divide hidden {}", self.heads, self.hidden),
            );
        }
        if !self.hidden.is_multiple_of(4) {
            return bad(
                "hidden",
                format!(
                    "{} must be a multiple of 4 (2-d sin-cos embedding)",
                    self.hidden
                ),
            );
        }
        if self.frequency_dim < 2 || self.frequency_dim % 2 == 1 {
            return bad("frequency_dim", "must be even and >= 2".into());
        }
        Ok(())
    }
}

/// Fixed 2-d sin-cos position embedding [T, hidden] for a `grid` x `grid` token grid: half the
/// channels encode the row, half the column, each as [sin(p w_i), cos(p w_i)] with
/// w_i = 10000^(-i / (hidden / 4)).
pub fn sincos_2d(hidden: usize, grid: usize, device: &Device) -> candle_core::Result<Tensor> {
    let quarter = hidden / 4;
    let mut v = Vec::with_capacity(grid * grid * hidden);
    for r in 0..grid {
        for c in 0..grid {
            for pos in [r, c] {
                for f in [f64::sin, f64::cos] {
                    for i in 0..quarter {
                        let w = 10_000f64.powf(-(i as f64) / quarter as f64);
                        v.push(f(pos as f64 * w) as f32);
                    }
                }
            }
        }
    }
    Tensor::from_vec(v, (grid * grid, hidden), device)
}

/// Layer norm over the last dimension without affine parameters, from primitives.
fn layer_norm(x: &Tensor) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + 1e-6)?.sqrt()?)
}

/// GELU with the tanh approximation (DiT's `approximate="tanh"`), from primitives: candle's
/// fused `gelu` differentiates with constants truncated to 6 digits, so its gradient disagrees
/// with its own forward pass by about 1e-5 relative (caught by the finite-difference test).
fn gelu_tanh(x: &Tensor) -> candle_core::Result<Tensor> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = ((x + (x.powf(3.0)? * 0.044715)?)? * c)?;
    ((inner.tanh()? + 1.0)? * x)? * 0.5
}

/// x (1 + scale) + shift with per-sample [B, hidden] modulations broadcast over tokens.
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_mul(&(scale.unsqueeze(1)? + 1.0)?)?
        .broadcast_add(&shift.unsqueeze(1)?)
}

#[derive(Debug, Clone)]
struct Block {
    attn: MultiHeadAttention,
    fc1: Linear,
    fc2: Linear,
    ada: Linear,
}

impl Block {
    fn new(cfg: &DitConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let h = cfg.hidden;
        Ok(Self {
            attn: MultiHeadAttention::new(h, cfg.heads, vb.pp("attn"))?,
            fc1: candle_nn::linear(h, cfg.mlp_ratio * h, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(cfg.mlp_ratio * h, h, vb.pp("mlp.fc2"))?,
            ada: candle_nn::linear(h, 6 * h, vb.pp("adaln"))?,
        })
    }

    fn forward(&self, x: &Tensor, c: &Tensor) -> candle_core::Result<Tensor> {
        let m = self.ada.forward(&c.silu()?)?.chunk(6, 1)?;
        let a = self
            .attn
            .forward(&modulate(&layer_norm(x)?, &m[0], &m[1])?)?;
        let x = (x + a.broadcast_mul(&m[2].unsqueeze(1)?)?)?;
        let y = modulate(&layer_norm(&x)?, &m[3], &m[4])?;
        let y = self.fc2.forward(&gelu_tanh(&self.fc1.forward(&y)?)?)?;
        x + y.broadcast_mul(&m[5].unsqueeze(1)?)?
    }
}

/// The DiT epsilon-network. Input and output are flat [B, C H W] latents (CHW order) or
/// [B, C, H, W]; the output has the input's shape.
#[derive(Debug, Clone)]
pub struct Dit {
    cfg: DitConfig,
    patch_embed: Linear,
    pos: Tensor,
    t1: Linear,
    t2: Linear,
    blocks: Vec<Block>,
    final_ada: Linear,
    final_linear: Linear,
    freqs: Tensor,
}

impl Dit {
    /// The VarBuilder path (under the network's own prefix) of the layer producing eps.
    pub const OUTPUT_LAYER: &'static str = "final.linear";

    /// Builds the network under `vb` (call [`Dit::init`] afterwards for DiT's initialisation).
    pub fn new(cfg: &DitConfig, vb: VarBuilder) -> Result<Self, ModelError> {
        cfg.validate()?;
        let h = cfg.hidden;
        let pp = cfg.patch * cfg.patch * cfg.channels;
        let grid = cfg.size / cfg.patch;
        let blocks = (0..cfg.depth)
            .map(|i| Block::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            cfg: *cfg,
            patch_embed: candle_nn::linear(pp, h, vb.pp("x_embed"))?,
            pos: sincos_2d(h, grid, vb.device())?.to_dtype(vb.dtype())?,
            t1: candle_nn::linear(cfg.frequency_dim, h, vb.pp("t_embed.0"))?,
            t2: candle_nn::linear(h, h, vb.pp("t_embed.2"))?,
            blocks,
            final_ada: candle_nn::linear(h, 2 * h, vb.pp("final.adaln"))?,
            final_linear: candle_nn::linear(h, pp, vb.pp("final.linear"))?,
            freqs: sinusoidal_frequencies(cfg.frequency_dim, vb.device())?,
        })
    }

    /// DiT's initialisation, seeded: Xavier-uniform linears with zero biases, N(0, 0.02²) for
    /// the timestep MLP, and zeros for every adaLN modulation and the final linear layer
    /// (adaLN-Zero: each block starts as the identity and the output as 0).
    pub fn init(vars: &VarMap, seed: u64) -> Result<(), ModelError> {
        seeded_init_with(vars, seed, |name, _| {
            if name.contains("adaln") || name.starts_with("final.linear") || name.ends_with(".bias")
            {
                InitRule::Const(0.0)
            } else if name.starts_with("t_embed") {
                InitRule::Normal(0.02)
            } else {
                InitRule::XavierUniform
            }
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DitConfig {
        &self.cfg
    }

    fn forward_with_embedding(&self, z: &Tensor, temb: &Tensor) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let (b, dims) = (z.dim(0)?, z.dims().to_vec());
        let (c, s, p) = (cfg.channels, cfg.size, cfg.patch);
        let g = s / p;
        // [B, C, g, p, g, p] -> [B, g, g, C, p, p] -> tokens [B, T, C p p].
        let x = z
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b, g * g, c * p * p))?;
        let mut x = self.patch_embed.forward(&x)?.broadcast_add(&self.pos)?;
        let cond = self.t2.forward(&self.t1.forward(temb)?.silu()?)?;
        let cond = if cond.dim(0)? == b {
            cond
        } else {
            cond.broadcast_as((b, cfg.hidden))?.contiguous()?
        };
        for block in &self.blocks {
            x = block.forward(&x, &cond)?;
        }
        let m = self.final_ada.forward(&cond.silu()?)?.chunk(2, 1)?;
        let x = self
            .final_linear
            .forward(&modulate(&layer_norm(&x)?, &m[0], &m[1])?)?;
        x.reshape((b, g, g, c, p, p))?
            .permute((0, 3, 1, 4, 2, 5))?
            .reshape(dims)
    }
}

impl EpsModel for Dit {
    fn predict_eps(&self, z_k: &Tensor, k: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with_embedding(z_k, &embed_like(k, &self.freqs, z_k)?)
    }

    fn predict_eps_uniform(&self, z_k: &Tensor, k: usize) -> candle_core::Result<Tensor> {
        self.forward_with_embedding(z_k, &embed_one_like(k, &self.freqs, z_k)?)
    }
}
