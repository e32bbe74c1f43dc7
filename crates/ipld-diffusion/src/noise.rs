//! Seeded standard-normal tensors drawn on the host, so that every sampler and loss estimate is
//! reproducible from a seed regardless of the device the tensors then live on.

use candle_core::{DType, Device, Shape, Tensor};
use rand::Rng;
use rand_distr::StandardNormal;

/// A tensor of i.i.d. N(0, 1) entries drawn from `rng`.
pub fn gaussian<R: Rng + ?Sized, S: Into<Shape>>(
    rng: &mut R,
    shape: S,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let shape = shape.into();
    let v: Vec<f32> = (0..shape.elem_count())
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    Tensor::from_vec(v, shape, device)?.to_dtype(dtype)
}
