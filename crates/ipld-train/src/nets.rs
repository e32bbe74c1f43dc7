//! The networks a run is made of, chosen by the config: the prior's epsilon-network (the MLP of
//! Appendix B.1, the DiT of B.2, or residual convolutions at the latent's resolution), the decoder g_phi (linear, or the LDM convolutional decoder of
//! Table 2) and DiffusionVAE's encoder (linear, or the mirrored convolutional encoder). Each enum
//! forwards to the concrete network, so the trainer and samplers see one type per role.

use candle_core::Tensor;
use candle_nn::{VarBuilder, VarMap};
use ipld_diffusion::EpsModel;
use ipld_models::{
    ConvDecoder, ConvEncoder, ConvEps, Decoder, Dit, LinearDecoder, LinearGaussianEncoder, MlpEps,
    ModelError,
};

use crate::config::{DecoderConfig, PriorConfig};

/// The prior's epsilon-network.
pub enum PriorNet {
    /// Residual MLP (Appendix B.1).
    Mlp(MlpEps),
    /// DiT with adaLN-Zero (B.2).
    Dit(Dit),
    /// Residual convolutions at the latent's resolution.
    Conv(ConvEps),
}

impl PriorNet {
    /// Builds the network `cfg` names for latents of dimension `dz` under `vb` and draws its
    /// seeded initial weights into `vars`.
    pub fn new(
        cfg: &PriorConfig,
        dz: usize,
        vars: &VarMap,
        vb: VarBuilder,
        seed: u64,
    ) -> Result<Self, ModelError> {
        Ok(match cfg {
            PriorConfig::Dit(d) => {
                let net = Dit::new(d, vb)?;
                Dit::init(vars, seed)?;
                Self::Dit(net)
            }
            PriorConfig::Conv(c) => {
                let net = ConvEps::new(c, vb)?;
                ConvEps::init(vars, seed)?;
                Self::Conv(net)
            }
            PriorConfig::Mlp(m) => {
                let net = MlpEps::new(m, dz, vb)?;
                ipld_models::seeded_init(vars, seed)?;
                Self::Mlp(net)
            }
        })
    }

    /// The path under `eps.` of the layer producing eps (zeroed when a Gaussian base starts).
    pub fn output_layer(&self) -> String {
        match self {
            Self::Mlp(m) => m.output_layer(),
            Self::Dit(_) => Dit::OUTPUT_LAYER.to_string(),
            Self::Conv(_) => ConvEps::OUTPUT_LAYER.to_string(),
        }
    }
}

impl EpsModel for PriorNet {
    fn predict_eps(&self, z_k: &Tensor, k: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Mlp(m) => m.predict_eps(z_k, k),
            Self::Dit(m) => m.predict_eps(z_k, k),
            Self::Conv(m) => m.predict_eps(z_k, k),
        }
    }

    fn predict_eps_uniform(&self, z_k: &Tensor, k: usize) -> candle_core::Result<Tensor> {
        match self {
            Self::Mlp(m) => m.predict_eps_uniform(z_k, k),
            Self::Dit(m) => m.predict_eps_uniform(z_k, k),
            Self::Conv(m) => m.predict_eps_uniform(z_k, k),
        }
    }
}

/// The decoder g_phi, taking flat latents [B, d_z] to flat observations [B, d_x].
pub enum DecoderNet {
    /// Linear map (Appendix B.1).
    Linear(LinearDecoder),
    /// LDM convolutional decoder (Table 2).
    Conv(Box<ConvDecoder>),
}

impl DecoderNet {
    /// Builds the decoder `cfg` names from latents of dimension `dz` to data of dimension
    /// `dx`, with seeded weights.
    pub fn new(
        cfg: &DecoderConfig,
        dz: usize,
        dx: usize,
        vars: &VarMap,
        vb: VarBuilder,
        seed: u64,
    ) -> Result<Self, ModelError> {
        Ok(match cfg {
            DecoderConfig::Conv(c) => {
                let net = ConvDecoder::new(c, vb)?;
                ConvDecoder::init(vars, seed)?;
                Self::Conv(Box::new(net))
            }
            DecoderConfig::Linear(l) => {
                let net = LinearDecoder::new(l, dz, dx, vb)?;
                ipld_models::seeded_init(vars, seed)?;
                if l.init_gain != 1.0 {
                    for var in vars.all_vars() {
                        var.set(&(var.as_tensor() * l.init_gain)?)?;
                    }
                }
                Self::Linear(net)
            }
        })
    }
}

impl Decoder for DecoderNet {
    fn decode(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Linear(d) => d.decode(z),
            Self::Conv(d) => d.decode(z),
        }
    }
}

/// DiffusionVAE's Gaussian encoder q(z | x).
pub enum EncoderNet {
    /// One linear layer to mean and log-variance (the paper's synthetic re-implementation).
    Linear(LinearGaussianEncoder),
    /// The mirrored LDM encoder (B.2).
    Conv(Box<ConvEncoder>),
}

impl EncoderNet {
    /// Builds the encoder mirroring the decoder `cfg` (data of dimension `dx` to latents of
    /// dimension `dz`), with seeded weights.
    pub fn new(
        cfg: &DecoderConfig,
        dz: usize,
        dx: usize,
        vars: &VarMap,
        vb: VarBuilder,
        seed: u64,
    ) -> Result<Self, ModelError> {
        Ok(match cfg {
            DecoderConfig::Conv(c) => {
                let net = ConvEncoder::new(c, vb)?;
                // Same rule as the decoder: PyTorch-default convs, unit GroupNorm.
                ConvDecoder::init(vars, seed)?;
                Self::Conv(Box::new(net))
            }
            DecoderConfig::Linear(_) => {
                let net = LinearGaussianEncoder::new(dx, dz, vb)?;
                ipld_models::seeded_init(vars, seed)?;
                Self::Linear(net)
            }
        })
    }

    /// Mean and log-variance, each [B, d_z], of flat data [B, d_x].
    pub fn encode(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        match self {
            Self::Linear(e) => e.encode(x),
            Self::Conv(e) => e.encode(x),
        }
    }
}
