//! Multi-head self-attention over tokens (Vaswani et al. 2017), shared by the DiT blocks of
//! Appendix B.2 and the convolutional prior's attention layers: one linear map to q, k, v,
//! softmax(q k^T / sqrt(d)) v per head, an output projection. The softmax is
//! `ops::softmax(_, D::Minus1)`, which has a backward in candle 0.11 (`softmax_last_dim` does
//! not), and the input is made contiguous first: candle 0.11's CPU matmul returns wrong values
//! for a transposed 3-d lhs against the batch-broadcast weight that `Linear` uses (candle issue
//! 3744).

use candle_core::{D, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

/// The attention's two linear maps (`qkv`, `proj` under its VarBuilder prefix) and head count.
#[derive(Debug, Clone)]
pub(crate) struct MultiHeadAttention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
}

impl MultiHeadAttention {
    /// Width `dim` (divisible by `heads`, checked by the networks' configs).
    pub(crate) fn new(dim: usize, heads: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            qkv: candle_nn::linear(dim, 3 * dim, vb.pp("qkv"))?,
            proj: candle_nn::linear(dim, dim, vb.pp("proj"))?,
            heads,
        })
    }

    /// `x` [B, T, dim] -> [B, T, dim].
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let hd = h / self.heads;
        let qkv = self
            .qkv
            .forward(&x.contiguous()?)?
            .reshape((b, t, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let logits = (q.matmul(&k.t()?.contiguous()?)? / (hd as f64).sqrt())?;
        let attn = candle_nn::ops::softmax(&logits, D::Minus1)?;
        let out = attn.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        self.proj.forward(&out)
    }

    /// The q-k-v and output maps (tests compare the layer against explicit loops).
    #[cfg(test)]
    pub(crate) fn linears(&self) -> (&Linear, &Linear) {
        (&self.qkv, &self.proj)
    }
}
