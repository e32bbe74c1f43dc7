//! A convolutional epsilon-network for spatial latents: the residual blocks of the DDPM / ADM
//! U-Net (Ho et al. 2020; Dhariwal & Nichol 2021, "scale-shift norm") at the latent's own
//! resolution, without down- or upsampling (a 7 x 7 or 8 x 8 latent is covered by a few 3 x 3
//! layers). It is the prior eps_theta(z_k, k) of eq. (41) for image runs, beside the DiT of
//! Appendix B.2: convolutions share weights across positions and see only neighbourhoods, a
//! stronger inductive bias than attention over all tokens, which matters when the prior learns
//! from a few thousand latents.
//!
//! conv_in 3x3 (C -> W); `blocks` residual blocks, each GN, SiLU, conv3x3, GN modulated by the
//! timestep (h (1 + scale) + shift, from a linear map of the timestep embedding), SiLU, conv3x3,
//! plus the block's input; with `attention_heads > 0`, each block is followed by multi-head
//! self-attention over the S x S positions (ADM's attention blocks at low resolution: GN, one
//! linear map to q, k, v, softmax(q k^T / sqrt(d)) v, an output projection, plus the input);
//! GN, SiLU, conv_out 3x3 (W -> C). The timestep embedding is the sinusoidal features of k
//! through Linear, SiLU, Linear. The last conv of every block, every attention's output
//! projection and conv_out start at zero, so the network starts as eps = 0 with each block the
//! identity. Every op has an exact backward in candle 0.11 (GroupNorm is composed from
//! primitives, the softmax is `ops::softmax`, not the fused `softmax_last_dim`; the
//! convolutions are [`crate::conv2d`]).

use candle_core::Tensor;
use candle_nn::{GroupNorm, Linear, Module, VarBuilder, VarMap};
use ipld_diffusion::EpsModel;
use serde::{Deserialize, Serialize};

use crate::attention::MultiHeadAttention;
use crate::conv_decoder::Conv;
use crate::embedding::{embed_like, embed_one_like};
use crate::{InitRule, ModelError, seeded_init_with, sinusoidal_frequencies};

/// Shape of the convolutional epsilon-network. The latent is [channels, size, size]; particles
/// store it flattened (CHW).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvEpsConfig {
    /// Latent channels.
    pub channels: usize,
    /// Latent height = width.
    pub size: usize,
    /// Width (channels of every hidden layer).
    pub width: usize,
    /// Residual blocks (two 3 x 3 convolutions each).
    pub blocks: usize,
    /// GroupNorm groups; must divide `width`.
    pub groups: usize,
    /// Dimension of the sinusoidal timestep features (even).
    pub frequency_dim: usize,
    /// Heads of a self-attention layer after every residual block; must divide `width`. 0 (the
    /// default, and configs before this key) = convolutions only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attention_heads: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl ConvEpsConfig {
    /// Number of latent values per particle (C H W).
    pub fn latent_dim(&self) -> usize {
        self.channels * self.size * self.size
    }

    /// Checks the sizes.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.channels == 0 || self.size == 0 || self.width == 0 || self.blocks == 0 {
            return Err(ModelError::param(
                "channels/size/width/blocks",
                "must be at least 1",
            ));
        }
        if self.groups == 0 || !self.width.is_multiple_of(self.groups) {
            return Err(ModelError::param(
                "groups",
                format!("{} groups must divide width {}", self.groups, self.width),
            ));
        }
        if self.attention_heads > 0 && !self.width.is_multiple_of(self.attention_heads) {
            return Err(ModelError::param(
                "attention_heads",
                format!(
                    "{} heads must divide width {}",
                    self.attention_heads, self.width
                ),
            ));
        }
        if self.frequency_dim < 2 || self.frequency_dim % 2 == 1 {
            return Err(ModelError::param("frequency_dim", "must be even and >= 2"));
        }
        Ok(())
    }
}

/// One residual block with scale-shift timestep modulation.
#[derive(Debug, Clone)]
struct Block {
    norm1: GroupNorm,
    conv1: Conv,
    emb: Linear,
    norm2: GroupNorm,
    conv2: Conv,
}

impl Block {
    fn new(cfg: &ConvEpsConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let (w, g) = (cfg.width, cfg.groups);
        Ok(Self {
            norm1: candle_nn::group_norm(g, w, 1e-6, vb.pp("norm1"))?,
            conv1: Conv::new(w, w, 3, 1, 1, vb.pp("conv1"))?,
            emb: candle_nn::linear(w, 2 * w, vb.pp("emb"))?,
            norm2: candle_nn::group_norm(g, w, 1e-6, vb.pp("norm2"))?,
            conv2: Conv::new(w, w, 3, 1, 1, vb.pp("conv2"))?,
        })
    }

    /// `x` [B, W, S, S]; `c` the timestep embedding [B, W] (or [1, W] for one shared k).
    fn forward(&self, x: &Tensor, c: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?;
        let m = self.emb.forward(&c.silu()?)?.chunk(2, 1)?;
        let (scale, shift) = (
            m[0].unsqueeze(2)?.unsqueeze(3)?,
            m[1].unsqueeze(2)?.unsqueeze(3)?,
        );
        let h = self
            .norm2
            .forward(&h)?
            .broadcast_mul(&(scale + 1.0)?)?
            .broadcast_add(&shift)?;
        x + self.conv2.forward(&h.silu()?)?
    }
}

/// Multi-head self-attention over a feature map's positions, as a residual layer.
#[derive(Debug, Clone)]
struct Attention {
    norm: GroupNorm,
    attn: MultiHeadAttention,
}

impl Attention {
    fn new(cfg: &ConvEpsConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let w = cfg.width;
        Ok(Self {
            norm: candle_nn::group_norm(cfg.groups, w, 1e-6, vb.pp("norm"))?,
            attn: MultiHeadAttention::new(w, cfg.attention_heads, vb)?,
        })
    }

    /// `x` [B, W, S, S] -> the same shape; the positions are the tokens.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, w, s, _) = x.dims4()?;
        let t = self
            .norm
            .forward(x)?
            .reshape((b, w, s * s))?
            .transpose(1, 2)?;
        let out = self
            .attn
            .forward(&t)?
            .transpose(1, 2)?
            .reshape((b, w, s, s))?;
        x + out
    }
}

/// The convolutional epsilon-network. Input and output are flat [B, C H W] latents (CHW order)
/// or [B, C, H, W]; the output has the input's shape.
#[derive(Debug, Clone)]
pub struct ConvEps {
    cfg: ConvEpsConfig,
    t1: Linear,
    t2: Linear,
    conv_in: Conv,
    blocks: Vec<Block>,
    /// One per block when `attention_heads > 0`, else empty.
    attention: Vec<Attention>,
    norm_out: GroupNorm,
    conv_out: Conv,
    freqs: Tensor,
}

impl ConvEps {
    /// The VarBuilder path (under the network's own prefix) of the layer producing eps.
    pub const OUTPUT_LAYER: &'static str = "conv_out";

    /// Builds the network under `vb` (call [`ConvEps::init`] afterwards for a seeded start).
    pub fn new(cfg: &ConvEpsConfig, vb: VarBuilder) -> Result<Self, ModelError> {
        cfg.validate()?;
        let w = cfg.width;
        let blocks = (0..cfg.blocks)
            .map(|i| Block::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<candle_core::Result<_>>()?;
        let attention = if cfg.attention_heads > 0 {
            (0..cfg.blocks)
                .map(|i| Attention::new(cfg, vb.pp(format!("attention.{i}"))))
                .collect::<candle_core::Result<_>>()?
        } else {
            Vec::new()
        };
        Ok(Self {
            cfg: *cfg,
            t1: candle_nn::linear(cfg.frequency_dim, w, vb.pp("t_embed.0"))?,
            t2: candle_nn::linear(w, w, vb.pp("t_embed.2"))?,
            conv_in: Conv::new(cfg.channels, w, 3, 1, 1, vb.pp("conv_in"))?,
            blocks,
            attention,
            norm_out: candle_nn::group_norm(cfg.groups, w, 1e-6, vb.pp("norm_out"))?,
            conv_out: Conv::new(w, cfg.channels, 3, 1, 1, vb.pp("conv_out"))?,
            freqs: sinusoidal_frequencies(cfg.frequency_dim, vb.device())?,
        })
    }

    /// Seeded initialisation: PyTorch's defaults for convolutions and linears, GroupNorm scales 1
    /// and shifts 0, and zeros for each block's second convolution, each attention's output
    /// projection and conv_out (the ADM U-Net's zero modules: every block starts as the
    /// identity and the output as eps = 0).
    pub fn init(vars: &VarMap, seed: u64) -> Result<(), ModelError> {
        seeded_init_with(vars, seed, |name, _| {
            if name.contains("norm") {
                InitRule::Const(if name.ends_with(".weight") { 1.0 } else { 0.0 })
            } else if name.contains("conv2.")
                || name.contains(".proj.")
                || name.starts_with("conv_out.")
            {
                InitRule::Const(0.0)
            } else {
                InitRule::TorchDefault
            }
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ConvEpsConfig {
        &self.cfg
    }

    fn forward_with_embedding(&self, z: &Tensor, temb: &Tensor) -> candle_core::Result<Tensor> {
        let c = &self.cfg;
        let (b, dims) = (z.dim(0)?, z.dims().to_vec());
        let x = z.reshape((b, c.channels, c.size, c.size))?;
        let cond = self.t2.forward(&self.t1.forward(temb)?.silu()?)?;
        let mut h = self.conv_in.forward(&x)?;
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward(&h, &cond)?;
            if let Some(attention) = self.attention.get(i) {
                h = attention.forward(&h)?;
            }
        }
        self.conv_out
            .forward(&self.norm_out.forward(&h)?.silu()?)?
            .reshape(dims)
    }
}

impl EpsModel for ConvEps {
    fn predict_eps(&self, z_k: &Tensor, k: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with_embedding(z_k, &embed_like(k, &self.freqs, z_k)?)
    }

    fn predict_eps_uniform(&self, z_k: &Tensor, k: usize) -> candle_core::Result<Tensor> {
        // One embedding row for the whole batch, broadcast over it inside each block.
        self.forward_with_embedding(z_k, &embed_one_like(k, &self.freqs, z_k)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn rows(t: &Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn attention_matches_explicit_loops() {
        let dev = Device::Cpu;
        let cfg = ConvEpsConfig {
            channels: 1,
            size: 3,
            width: 4,
            blocks: 1,
            groups: 2,
            frequency_dim: 4,
            attention_heads: 2,
        };
        let vars = VarMap::new();
        let layer = Attention::new(&cfg, VarBuilder::from_varmap(&vars, DType::F64, &dev)).unwrap();
        seeded_init_with(&vars, 11, |_, _| InitRule::Normal(0.5)).unwrap();
        let (b, w, s, heads) = (2, 4, 3, 2);
        let (l, hd) = (s * s, w / heads);
        let xv: Vec<f64> = (0..b * w * l).map(|i| ((i * 7 + 3) as f64).sin()).collect();
        let x = Tensor::from_vec(xv.clone(), (b, w, s, s), &dev).unwrap();
        let got = rows(&layer.forward(&x).unwrap());

        // The reference: the GroupNorm output from candle (tested elsewhere), then every product
        // as a loop over the weights.
        let n = rows(&layer.norm.forward(&x).unwrap());
        let (qkv, proj) = layer.attn.linears();
        let (qw, qb) = (rows(qkv.weight()), rows(qkv.bias().unwrap()));
        let (pw, pb) = (rows(proj.weight()), rows(proj.bias().unwrap()));
        let mut want = xv.clone();
        for bi in 0..b {
            // qkv[p][o] = sum_c n[b, c, p] W[o, c] + bias[o].
            let qkv: Vec<Vec<f64>> = (0..l)
                .map(|p| {
                    (0..3 * w)
                        .map(|o| {
                            qb[o]
                                + (0..w)
                                    .map(|c| n[(bi * w + c) * l + p] * qw[o * w + c])
                                    .sum::<f64>()
                        })
                        .collect()
                })
                .collect();
            let mut heads_out = vec![vec![0.0; w]; l];
            for h in 0..heads {
                for p in 0..l {
                    let logits: Vec<f64> = (0..l)
                        .map(|r| {
                            (0..hd)
                                .map(|d| qkv[p][h * hd + d] * qkv[r][w + h * hd + d])
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = logits.iter().map(|v| (v - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..hd {
                        heads_out[p][h * hd + d] =
                            (0..l).map(|r| e[r] / z * qkv[r][2 * w + h * hd + d]).sum();
                    }
                }
            }
            for p in 0..l {
                for o in 0..w {
                    let y = pb[o] + (0..w).map(|c| heads_out[p][c] * pw[o * w + c]).sum::<f64>();
                    want[(bi * w + o) * l + p] += y;
                }
            }
        }
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-12, "max error {err}");
        // The attention moved the input (a check that cannot pass with a zero layer).
        let moved = got
            .iter()
            .zip(&xv)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(moved > 0.1, "{moved}");
    }
}
