//! The minibatch loss L-hat of eq. (64) and its gradients, computed in data-parallel shards:
//! L-hat is a mean over the minibatch's latent rows, so its gradient is the sum of the shards'
//! gradients, and the shards can run on separate threads. Every random draw is made for the
//! whole minibatch before the split, so the shard count changes only the order of float sums.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use ipld_diffusion::DiffusionLoss;
use ipld_models::{Decoder, LinearGaussianEncoder, gaussian_nll};
use rayon::prelude::*;

use crate::error::TrainError;
use crate::nets::{DecoderNet, EncoderNet};

/// `t` times `factor`, untouched at factor 1 so the paper's latent scale keeps its bits.
pub(crate) fn scaled(t: &Tensor, factor: f64) -> candle_core::Result<Tensor> {
    if factor == 1.0 {
        Ok(t.clone())
    } else {
        t.affine(factor, 0.0)
    }
}

/// A minibatch's loss and gradients, shards merged.
pub(crate) struct MinibatchLoss {
    /// L-hat of eq. (64).
    pub loss: f64,
    /// Sums over the latent rows of the diffusion loss and of the decoder's NLL.
    pub diffusion_sum: f64,
    pub nll_sum: f64,
    /// Gradients of L-hat (the shards' added).
    pub grads: GradStore,
    /// Per shard, in order: the gradient of the shard's particles (None when none reached
    /// them) and its latents.
    pub z_grads: Vec<Option<Tensor>>,
    pub z_values: Vec<Tensor>,
    /// gamma_t of this step.
    pub gamma: f64,
}

/// The sum of the shards' gradient stores, added in shard order (so the bits do not depend on
/// which thread finished first).
pub(crate) fn add_grads(
    stores: impl IntoIterator<Item = GradStore>,
) -> Result<GradStore, TrainError> {
    let mut sum = GradStore::default();
    for g in stores {
        sum.extend(g)?;
    }
    Ok(sum)
}

/// `shards` contiguous ranges of a minibatch's `points` (fewer if there are fewer points).
pub(crate) fn even_ranges(shards: usize, points: usize) -> Vec<std::ops::Range<usize>> {
    let shards = shards.clamp(1, points.max(1));
    (0..shards)
        .map(|s| s * points / shards..(s + 1) * points / shards)
        .collect()
}

/// Runs `shard` on each of `ranges` (of a minibatch's points) and returns the results in range
/// order. On the CPU the shards run in parallel; with a shard per core, the kernels inside each
/// stay on its thread. The loss (64) is a mean over the minibatch, so its gradient is the sum of
/// the shards' gradients: sharding changes only the order of float sums, and a result depends
/// on the shard count, never on the thread count.
pub(crate) fn run_shards<T: Send>(
    device: &Device,
    ranges: Vec<std::ops::Range<usize>>,
    shard: impl Fn(std::ops::Range<usize>) -> Result<T, TrainError> + Sync,
) -> Result<Vec<T>, TrainError> {
    if ranges.len() == 1 || !device.is_cpu() {
        return ranges.into_iter().map(&shard).collect();
    }
    let per_core = ranges.len() >= candle_core::utils::get_num_threads();
    ranges
        .into_par_iter()
        .map(|r| match per_core {
            true => ipld_models::on_this_thread(|| shard(r)),
            false => shard(r),
        })
        .collect()
}

/// The latents a shard's loss is computed from.
pub(crate) enum ShardLatents<'a> {
    /// The particles of this rank's part of the minibatch, [rows, d] row-major, starting at
    /// the minibatch's latent row `first`.
    Particles { z: Vec<f32>, first: usize },
    /// DiffusionVAE: the encoder, the minibatch's points [B, d_x] and the reparameterisation
    /// noise [B N, d].
    Encoder {
        encoder: &'a EncoderNet,
        x: Tensor,
        noise: Tensor,
    },
}

/// Everything a step's loss needs, for the whole minibatch; [`ShardInputs::run`] takes one
/// shard's rows of it.
pub(crate) struct ShardInputs<'a> {
    pub eps: super::base::PriorEps<'a>,
    /// Under `diffusion.loss = "stf"`: the reference batch (prior space) and theta's variables,
    /// whose gradient becomes the stable target field's.
    pub stf: Option<(&'a Tensor, &'a [Var])>,
    pub decoder: &'a DecoderNet,
    pub loss: &'a DiffusionLoss,
    pub latent_scale: f64,
    pub two_stage: bool,
    pub sigma: f64,
    pub gamma: f64,
    pub points: usize,
    pub n: usize,
    pub dz: usize,
    pub r_draws: usize,
    /// Targets [B N, d_x], each point repeated N times.
    pub x: &'a Tensor,
    /// Timesteps and noise [R B N (, d)], draw-major.
    pub k: &'a Tensor,
    pub noise: &'a Tensor,
    pub source: &'a ShardLatents<'a>,
}

/// One shard's share of the loss and its gradients.
pub(crate) struct ShardOut {
    /// Its rows' sum of the loss terms divided by the minibatch's row count, so the shards'
    /// values add up to L-hat.
    pub loss: f64,
    /// Sums over its rows of the diffusion loss and of the decoder's NLL.
    pub diffusion_sum: f64,
    pub nll_sum: f64,
    pub grads: GradStore,
    /// The shard's latents and their gradient (particles only; None when nothing reached them).
    pub z: Tensor,
    pub z_grad: Option<Tensor>,
}

impl ShardInputs<'_> {
    /// The loss of eq. (64) over the points `p` of the minibatch (rows p.start N .. p.end N),
    /// scaled by 1/(N |B|), and its backward. L-hat is a mean over latent rows, so its gradient
    /// is the sum of the shards' gradients: shards can run on separate threads, and the result
    /// depends on the shard count (float summation order) but never on the thread count.
    pub(crate) fn run(&self, p: std::ops::Range<usize>) -> Result<ShardOut, TrainError> {
        let (n, dz) = (self.n, self.dz);
        let rows = self.points * n;
        let (r0, len) = (p.start * n, p.len() * n);
        let x = self.x.narrow(0, r0, len)?;
        let (k, noise) = if self.r_draws == 1 {
            (self.k.narrow(0, r0, len)?, self.noise.narrow(0, r0, len)?)
        } else {
            let take = |t: &Tensor| -> candle_core::Result<Tensor> {
                let parts = (0..self.r_draws)
                    .map(|j| t.narrow(0, j * rows + r0, len))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&parts, 0)
            };
            (take(self.k)?, take(self.noise)?)
        };
        let (z, particle_var, entropy) = match self.source {
            ShardLatents::Particles { z: zb, first } => {
                let rows_z = &zb[(r0 - first) * dz..(r0 - first + len) * dz];
                let var = Var::from_slice(rows_z, (len, dz), x.device())?;
                (var.as_tensor().clone(), Some(var), None)
            }
            ShardLatents::Encoder { encoder, x, noise } => {
                let x = x.narrow(0, p.start, p.len())?;
                let (z, logvar) = encoder_draws(encoder, &x, n, &noise.narrow(0, r0, len)?)?;
                (z, None, Some(LinearGaussianEncoder::entropy(&logvar)?))
            }
        };
        let z_in = if self.two_stage {
            z.detach()
        } else {
            z.clone()
        };
        let z_prior = scaled(&z_in, 1.0 / self.latent_scale)?;
        let zr = match self.r_draws {
            1 => z_prior,
            r => z_prior.repeat((r, 1))?,
        };
        let draws_mean = |t: Tensor| -> candle_core::Result<Tensor> {
            match self.r_draws {
                1 => Ok(t),
                r => t.reshape((r, len))?.mean(0),
            }
        };
        // Under STF one forward pass gives both: the simple loss, whose gradient the particles
        // and the decoder follow, and the correction that turns theta's gradient into STF's.
        let (total, theta_correction) = match self.stf {
            None => (
                draws_mean(self.loss.per_sample(&self.eps, &zr, &noise, &k)?.total)?,
                None,
            ),
            Some((reference, _)) => {
                let t = self
                    .loss
                    .per_sample_stf(&self.eps, &zr, &noise, &k, reference)?;
                (
                    draws_mean(t.dsm.total)?,
                    Some(draws_mean(t.theta_correction)?),
                )
            }
        };
        let nll = gaussian_nll(&x, &self.decoder.decode(&z)?, self.sigma)?;
        let kl = match &entropy {
            Some(h) => (&total - h)?,
            None => total.clone(),
        };
        let loss = (kl.affine(self.gamma, 0.0)? + &nll)?
            .sum_all()?
            .affine(1.0 / rows as f64, 0.0)?;
        let value =
            |t: &Tensor| -> candle_core::Result<f64> { t.to_dtype(DType::F64)?.to_scalar::<f64>() };
        let mut grads = loss.backward()?;
        if let (Some(c), Some((_, theta))) = (theta_correction, self.stf) {
            // A second backward through the prior only, kept for theta's variables (the
            // particles' and the decoder's gradients stay the simple loss's).
            let extra = c
                .sum_all()?
                .affine(self.gamma / rows as f64, 0.0)?
                .backward()?;
            for v in theta {
                if let Some(g) = extra.get(v.as_tensor()) {
                    let sum = match grads.get(v.as_tensor()) {
                        Some(g0) => (g0 + g)?,
                        None => g.clone(),
                    };
                    grads.insert(v.as_tensor(), sum);
                }
            }
        }
        let z_grad = particle_var.and_then(|v| grads.get(v.as_tensor()).cloned());
        Ok(ShardOut {
            loss: value(&loss)?,
            diffusion_sum: value(&total.sum_all()?)?,
            nll_sum: value(&nll.sum_all()?)?,
            grads,
            z,
            z_grad,
        })
    }
}

/// N reparameterised draws from the encoder per row of `x` ([B N, d], rows grouped by point)
/// with the noise `e` [B N, d], and the matching log-variances.
pub(crate) fn encoder_draws(
    encoder: &EncoderNet,
    x: &Tensor,
    n: usize,
    e: &Tensor,
) -> Result<(Tensor, Tensor), TrainError> {
    let (mu, logvar) = encoder.encode(x)?;
    let b = mu.dim(0)?;
    let rep: Vec<u32> = (0..b as u32)
        .flat_map(|i| std::iter::repeat_n(i, n))
        .collect();
    let rep = Tensor::from_vec(rep, b * n, x.device())?;
    let (mu, logvar) = (mu.index_select(&rep, 0)?, logvar.index_select(&rep, 0)?);
    Ok((LinearGaussianEncoder::sample(&mu, &logvar, e)?, logvar))
}

/// Sums of particle norms (over the b n rows) and of within-point standard deviations (over
/// the b points and d coordinates) of a [b, n, d] buffer: divided by b n and b d they are the
/// mean norm and mean spread. Shards' sums add up, so ranks can combine them.
pub(crate) fn particle_sums(z: &[f32], n: usize, d: usize) -> (f64, f64) {
    let norm = z
        .chunks_exact(d)
        .map(|p| p.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt())
        .sum::<f64>();
    if n < 2 {
        return (norm, 0.0);
    }
    let mut spread = 0.0;
    for point in z.chunks_exact(n * d) {
        for j in 0..d {
            let xs = point.iter().skip(j).step_by(d).map(|v| *v as f64);
            let mean = xs.clone().sum::<f64>() / n as f64;
            spread += (xs.map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        }
    }
    (norm, spread)
}

/// Mean particle norm and mean within-point spread of a [b, n, d] buffer.
pub(crate) fn particle_stats(z: &[f32], b: usize, n: usize, d: usize) -> (f64, f64) {
    let (norm, spread) = particle_sums(z, n, d);
    (norm / (b * n) as f64, spread / (b * d) as f64)
}
