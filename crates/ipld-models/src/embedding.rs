//! Sinusoidal timestep embedding (Vaswani et al. 2017, as used by Ho et al. 2020):
//! emb(k)_i = sin(k w_i), emb(k)_{i + D/2} = cos(k w_i), w_i = 10000^(-i / (D/2)).

use candle_core::{DType, Device, Tensor};

/// Frequencies w_i for an embedding of even dimension `dim`.
pub fn sinusoidal_frequencies(dim: usize, device: &Device) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let w: Vec<f32> = (0..half)
        .map(|i| (-(10_000f64.ln()) * i as f64 / half as f64).exp() as f32)
        .collect();
    Tensor::from_vec(w, (1, half), device)
}

/// Embeds the timesteps `k` (\[B\], any numeric dtype) as [B, dim] in `dtype`.
pub fn sinusoidal_embedding(
    k: &Tensor,
    freqs: &Tensor,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    let args = k.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(freqs)?;
    Tensor::cat(&[args.sin()?, args.cos()?], 1)?.to_dtype(dtype)
}

/// The embedding of the timesteps `k` \[B\] in `like`'s dtype, as an eps-network conditions on it.
pub(crate) fn embed_like(k: &Tensor, freqs: &Tensor, like: &Tensor) -> candle_core::Result<Tensor> {
    sinusoidal_embedding(k, freqs, DType::F32)?.to_dtype(like.dtype())
}

/// One row [1, dim] for a timestep `k` shared by a whole batch (broadcast by the network).
pub(crate) fn embed_one_like(
    k: usize,
    freqs: &Tensor,
    like: &Tensor,
) -> candle_core::Result<Tensor> {
    embed_like(&Tensor::new(&[k as u32], like.device())?, freqs, like)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_closed_form() {
        let dev = Device::Cpu;
        let f = sinusoidal_frequencies(8, &dev).unwrap();
        let k = Tensor::new(&[0u32, 1, 500], &dev).unwrap();
        let e: Vec<Vec<f32>> = sinusoidal_embedding(&k, &f, DType::F32)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (r, kk) in [0.0f64, 1.0, 500.0].iter().enumerate() {
            for i in 0..4 {
                let w = 10_000f64.powf(-(i as f64) / 4.0);
                assert!(
                    (e[r][i] as f64 - (kk * w).sin()).abs() < 1e-4,
                    "sin {r} {i}"
                );
                assert!(
                    (e[r][i + 4] as f64 - (kk * w).cos()).abs() < 1e-4,
                    "cos {r} {i}"
                );
            }
        }
    }
}
