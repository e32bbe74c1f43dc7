//! The image decoder g_phi of Appendix B.2 / Table 2: the latent-diffusion autoencoder's decoder
//! (Rombach et al. 2022) without attention. conv_in 3x3 to `base * mult[-1]` channels, a middle of
//! two residual blocks, then from the deepest level up `res_blocks + 1` residual blocks per level
//! with nearest-neighbour 2x upsampling (+ 3x3 conv) between levels, GroupNorm(32) + SiLU and a
//! 3x3 conv_out. Residual block: GN, SiLU, conv3x3, GN, SiLU, conv3x3, with a 1x1 shortcut when
//! the width changes. The latent [4, 8, 8] becomes a 3 x 32 x 32 image for mults (1, 2, 3) and
//! 3 x 64 x 64 for (1, 2, 2, 3). Input and output may be flat (CHW) or 4-d. [`ConvEncoder`] is
//! the mirrored encoder DiffusionVAE needs on images.

use candle_core::Tensor;
use candle_nn::{GroupNorm, Module, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::conv::conv2d;
use crate::{Decoder, InitRule, ModelError, seeded_init_with};

/// Decoder shape (Table 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvDecoderConfig {
    /// Latent channels (4).
    pub latent_channels: usize,
    /// Latent height = width (8).
    pub latent_size: usize,
    /// Output image channels (3, or 1 for grey data).
    pub out_channels: usize,
    /// Base width (128).
    pub base_channels: usize,
    /// Width multipliers per resolution, shallowest first ((1, 2, 3) for 32 x 32 images).
    pub channel_mult: Vec<usize>,
    /// Residual blocks per resolution (2; the decoder uses one more per level, as in LDM).
    pub res_blocks: usize,
    /// GroupNorm groups (32); must divide every width.
    pub groups: usize,
    /// Observation noise sigma of p_phi(x | z) (1 in Appendix B).
    pub sigma: f64,
}

impl ConvDecoderConfig {
    /// Table 2, 32 x 32 images (CIFAR-10, SVHN).
    pub fn table2_32() -> Self {
        Self {
            latent_channels: 4,
            latent_size: 8,
            out_channels: 3,
            base_channels: 128,
            channel_mult: vec![1, 2, 3],
            res_blocks: 2,
            groups: 32,
            sigma: 1.0,
        }
    }

    /// Table 2, 64 x 64 images (CelebA64).
    pub fn table2_64() -> Self {
        Self {
            channel_mult: vec![1, 2, 2, 3],
            ..Self::table2_32()
        }
    }

    /// Output image side: the latent side times 2^(levels - 1).
    pub fn image_size(&self) -> usize {
        self.latent_size << self.channel_mult.len().saturating_sub(1)
    }

    /// Checks the sizes.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.channel_mult.is_empty() || self.channel_mult.contains(&0) {
            return Err(ModelError::param(
                "channel_mult",
                "needs at least one level, all multipliers >= 1",
            ));
        }
        if self.latent_channels == 0 || self.latent_size == 0 || self.out_channels == 0 {
            return Err(ModelError::param(
                "latent_channels/latent_size/out_channels",
                "must be at least 1",
            ));
        }
        for m in &self.channel_mult {
            let w = self.base_channels * m;
            if self.groups == 0 || w == 0 || !w.is_multiple_of(self.groups) {
                return Err(ModelError::param(
                    "groups",
                    format!("{} groups must divide every width (got {w})", self.groups),
                ));
            }
        }
        if !(self.sigma > 0.0 && self.sigma.is_finite()) {
            return Err(ModelError::param("sigma", "must be > 0"));
        }
        Ok(())
    }
}

/// A 2-d convolution (weights `[out, in, k, k]` and bias, as `candle_nn::Conv2d` names them)
/// computed by [`conv2d`]: im2col + GEMM in both directions. candle 0.11's CPU conv backward
/// runs `conv_transpose2d` as a direct loop, which profiling showed to dominate an image
/// training step.
#[derive(Debug, Clone)]
pub struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv {
    /// A k x k convolution under `vb` (`weight`, `bias`).
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let bound = 1.0 / ((cin * k * k) as f64).sqrt();
        let init = candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        Ok(Self {
            weight: vb.get_with_hints((cout, cin, k, k), "weight", init)?,
            bias: vb.get_with_hints(cout, "bias", init)?,
            stride,
            padding,
        })
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        conv2d(x, &self.weight, Some(&self.bias), self.stride, self.padding)
    }
}

fn conv(cin: usize, cout: usize, k: usize, vb: VarBuilder) -> candle_core::Result<Conv> {
    Conv::new(cin, cout, k, 1, k / 2, vb)
}

#[derive(Debug, Clone)]
struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv,
    norm2: GroupNorm,
    conv2: Conv,
    shortcut: Option<Conv>,
}

impl ResBlock {
    fn new(cin: usize, cout: usize, groups: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            norm1: candle_nn::group_norm(groups, cin, 1e-6, vb.pp("norm1"))?,
            conv1: conv(cin, cout, 3, vb.pp("conv1"))?,
            norm2: candle_nn::group_norm(groups, cout, 1e-6, vb.pp("norm2"))?,
            conv2: conv(cout, cout, 3, vb.pp("conv2"))?,
            shortcut: (cin != cout)
                .then(|| conv(cin, cout, 1, vb.pp("shortcut")))
                .transpose()?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?;
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?)?;
        match &self.shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

/// The convolutional decoder.
#[derive(Debug, Clone)]
pub struct ConvDecoder {
    cfg: ConvDecoderConfig,
    conv_in: Conv,
    mid: [ResBlock; 2],
    /// Deepest level first: its residual blocks and the upsampling conv (none for the last).
    levels: Vec<(Vec<ResBlock>, Option<Conv>)>,
    norm_out: GroupNorm,
    conv_out: Conv,
}

impl ConvDecoder {
    /// Builds the decoder under `vb` (then [`ConvDecoder::init`] for a seeded initialisation).
    pub fn new(cfg: &ConvDecoderConfig, vb: VarBuilder) -> Result<Self, ModelError> {
        cfg.validate()?;
        let g = cfg.groups;
        let top = cfg.base_channels * cfg.channel_mult[cfg.channel_mult.len() - 1];
        let conv_in = conv(cfg.latent_channels, top, 3, vb.pp("conv_in"))?;
        let mid = [
            ResBlock::new(top, top, g, vb.pp("mid.0"))?,
            ResBlock::new(top, top, g, vb.pp("mid.1"))?,
        ];
        let mut levels = Vec::new();
        let mut cin = top;
        for (depth, level) in (0..cfg.channel_mult.len()).rev().enumerate() {
            let cout = cfg.base_channels * cfg.channel_mult[level];
            let vb_l = vb.pp(format!("up.{depth}"));
            let mut blocks = Vec::new();
            for i in 0..=cfg.res_blocks {
                blocks.push(ResBlock::new(cin, cout, g, vb_l.pp(format!("block.{i}")))?);
                cin = cout;
            }
            let up = (level > 0)
                .then(|| conv(cout, cout, 3, vb_l.pp("upsample")))
                .transpose()?;
            levels.push((blocks, up));
        }
        Ok(Self {
            cfg: cfg.clone(),
            conv_in,
            mid,
            levels,
            norm_out: candle_nn::group_norm(g, cin, 1e-6, vb.pp("norm_out"))?,
            conv_out: conv(cin, cfg.out_channels, 3, vb.pp("conv_out"))?,
        })
    }

    /// PyTorch's default initialisation for every conv (U(+-1/sqrt(fan_in)), fan_in =
    /// c_in k²), GroupNorm scales 1 and shifts 0, drawn from `seed`.
    pub fn init(vars: &VarMap, seed: u64) -> Result<(), ModelError> {
        seeded_init_with(vars, seed, |name, _| {
            if name.contains("norm") {
                InitRule::Const(if name.ends_with(".weight") { 1.0 } else { 0.0 })
            } else {
                InitRule::TorchDefault
            }
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ConvDecoderConfig {
        &self.cfg
    }
}

impl Decoder for ConvDecoder {
    fn decode(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let c = &self.cfg;
        let b = z.dim(0)?;
        let flat = z.rank() == 2;
        let x = z.reshape((b, c.latent_channels, c.latent_size, c.latent_size))?;
        let mut h = self.conv_in.forward(&x)?;
        for m in &self.mid {
            h = m.forward(&h)?;
        }
        for (blocks, up) in &self.levels {
            for blk in blocks {
                h = blk.forward(&h)?;
            }
            if let Some(conv) = up {
                let (_, _, hh, ww) = h.dims4()?;
                h = conv.forward(&h.upsample_nearest2d(2 * hh, 2 * ww)?)?;
            }
        }
        let out = self.conv_out.forward(&self.norm_out.forward(&h)?.silu()?)?;
        if flat { out.flatten_from(1) } else { Ok(out) }
    }
}

/// The mirrored encoder for DiffusionVAE on images (the LDM encoder without attention): conv_in
/// 3x3 to `base`, per level `res_blocks` residual blocks and a stride-2 3x3 downsampling conv
/// (zero padding on the bottom/right only, as in LDM) except at the deepest level, a middle of
/// two residual blocks, GroupNorm + SiLU and a 3x3 conv_out to 2 x latent channels: the mean
/// and log-variance of a diagonal Gaussian q(z | x), flattened CHW.
#[derive(Debug, Clone)]
pub struct ConvEncoder {
    cfg: ConvDecoderConfig,
    conv_in: Conv,
    levels: Vec<(Vec<ResBlock>, Option<Conv>)>,
    mid: [ResBlock; 2],
    norm_out: GroupNorm,
    conv_out: Conv,
}

impl ConvEncoder {
    /// Builds the encoder mirroring the decoder described by `cfg` (images of
    /// `cfg.out_channels` x `cfg.image_size()`², latents `cfg.latent_channels` x
    /// `cfg.latent_size`²).
    pub fn new(cfg: &ConvDecoderConfig, vb: VarBuilder) -> Result<Self, ModelError> {
        cfg.validate()?;
        let g = cfg.groups;
        let conv_in = conv(cfg.out_channels, cfg.base_channels, 3, vb.pp("conv_in"))?;
        let mut cin = cfg.base_channels;
        let mut levels = Vec::new();
        for (level, m) in cfg.channel_mult.iter().enumerate() {
            let cout = cfg.base_channels * m;
            let vb_l = vb.pp(format!("down.{level}"));
            let mut blocks = Vec::new();
            for i in 0..cfg.res_blocks {
                blocks.push(ResBlock::new(cin, cout, g, vb_l.pp(format!("block.{i}")))?);
                cin = cout;
            }
            let down = (level + 1 < cfg.channel_mult.len())
                .then(|| Conv::new(cin, cin, 3, 2, 0, vb_l.pp("downsample")))
                .transpose()?;
            levels.push((blocks, down));
        }
        Ok(Self {
            cfg: cfg.clone(),
            conv_in,
            levels,
            mid: [
                ResBlock::new(cin, cin, g, vb.pp("mid.0"))?,
                ResBlock::new(cin, cin, g, vb.pp("mid.1"))?,
            ],
            norm_out: candle_nn::group_norm(g, cin, 1e-6, vb.pp("norm_out"))?,
            conv_out: conv(cin, 2 * cfg.latent_channels, 3, vb.pp("conv_out"))?,
        })
    }

    /// Mean and log-variance of q(z | x), each [B, C H W], for images [B, C, H, W] or flat.
    pub fn encode(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let c = &self.cfg;
        let (b, s) = (x.dim(0)?, c.image_size());
        let mut h = self
            .conv_in
            .forward(&x.reshape((b, c.out_channels, s, s))?)?;
        for (blocks, down) in &self.levels {
            for blk in blocks {
                h = blk.forward(&h)?;
            }
            if let Some(conv) = down {
                h = conv.forward(&h.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?)?;
            }
        }
        for m in &self.mid {
            h = m.forward(&h)?;
        }
        let out = self.conv_out.forward(&self.norm_out.forward(&h)?.silu()?)?;
        let d = c.latent_channels * c.latent_size * c.latent_size;
        let out = out.flatten_from(1)?;
        Ok((
            out.narrow(1, 0, d)?.contiguous()?,
            out.narrow(1, d, d)?.contiguous()?,
        ))
    }
}
