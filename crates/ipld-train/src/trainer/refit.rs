//! The optional prior refit after the joint steps (`train.prior_refit`, not in the paper):
//! prior-only steps of the diffusion loss of eq. (64) on random points' latents, frozen at the
//! end of the joint phase; AdamW on theta (its state carries over) and the EMA. Under
//! `train.minibatches = "per-shard"` each shard draws its part of the refit batch from its own
//! slice of the data, so the refit runs over MPI ranks too (issue 26), with the same result.
//! `min_snr_gamma` trains it on the Min-SNR-gamma weighting of the same squared errors.

use std::ops::Range;

use candle_core::DType;
use candle_core::backprop::GradStore;
use ipld_data::Dataset;
use ipld_diffusion::{DiffusionLoss, LossWeighting, gaussian, sample_timesteps, timestep_tensor};

use super::exchange::{ShardShare, combine, sum_shards};
use super::loss::{even_ranges, particle_sums, run_shards};
use super::{StepMetrics, Trainer};
use crate::config::{MinibatchDraw, PriorRefitConfig};
use crate::error::TrainError;
use crate::streams::{Stream, mix_seed};

impl Trainer {
    /// One prior-only step on `r.batch_size` points drawn without replacement, each with all its
    /// latents.
    pub(super) fn prior_refit_step(
        &mut self,
        r: PriorRefitConfig,
    ) -> Result<StepMetrics, TrainError> {
        let t = self.step;
        let joint = self.cfg.train.steps;
        if self.base_due() {
            let loss = self.fit_gaussian_base()?;
            tracing::info!(
                step = t,
                gaussian_loss = loss,
                "prior refit: the network now learns the residual over N(mu, Sigma) fitted to the cloud"
            );
        }
        let b = r.batch_size.min(self.data.len());
        let mut rng = Stream::Refit.rng(self.cfg.seed, t);
        let (batch, ranges) = self.refit_batch(b, t, &mut rng);
        let local = ranges[0].start..ranges[ranges.len() - 1].end;
        let (n, dz) = (self.particles_per_point(), self.cfg.data.latent_dim);
        let rows = b * n;
        // This rank's points' latents ([local rows, d]).
        let z = self.latents.frozen(
            &batch,
            local.clone(),
            joint,
            &self.data,
            &mut rng,
            dz,
            &self.device,
        )?;
        let k = timestep_tensor(
            &sample_timesteps(&mut rng, rows, self.schedule.steps()),
            self.schedule.steps(),
            &self.device,
        )?;
        let noise = gaussian(&mut rng, (rows, dz), DType::F32, &self.device)?;
        let z_prior = self.prior_space(&z)?;
        let reference = match self.cfg.diffusion.loss.is_stf() {
            true => {
                let r = self.stf_reference(&batch, t, joint)?;
                Some(self.prior_space(&r)?)
            }
            false => None,
        };
        // Theta's gradient keeps the scale it had in the joint loss, gamma times the diffusion
        // loss (eq. 64): AdamW's moments carry over, and an unscaled loss (1/gamma = 20 times
        // larger at c_KL = 0.05) made its first few hundred steps several times too long.
        let gamma = self.cfg.train.kl.gamma(joint);
        // Tabulated per step (1,000 weights, nothing next to the network's pass) so that a
        // resume may change the cap.
        let reweighted = r
            .min_snr_gamma
            .map(|g| {
                DiffusionLoss::new(
                    &self.schedule,
                    LossWeighting::MinSnr { gamma: g },
                    &self.device,
                )
            })
            .transpose()?;
        let eps = self
            .eps_model()
            .ok_or_else(|| TrainError::Invalid("a prior refit needs a prior network".into()))?;
        let refit_shard = |p: Range<usize>| -> Result<(f64, GradStore), TrainError> {
            let (r0, len) = (p.start * n, p.len() * n);
            let (z_s, noise_s, k_s) = (
                z_prior.narrow(0, r0 - local.start * n, len)?,
                noise.narrow(0, r0, len)?,
                k.narrow(0, r0, len)?,
            );
            let mean = |t: &candle_core::Tensor| t.sum_all()?.affine(1.0 / rows as f64, 0.0);
            // The reported loss is the simple one under either objective, so runs compare.
            let (reported, trained) = match (&reference, &reweighted) {
                (None, None) => {
                    let l = mean(&self.loss.per_sample(&eps, &z_s, &noise_s, &k_s)?.total)?;
                    (l.clone(), l)
                }
                (None, Some(w)) => {
                    let (simple, weighted) =
                        self.loss.per_sample_pair(w, &eps, &z_s, &noise_s, &k_s)?;
                    (mean(&simple.total)?, mean(&weighted.total)?)
                }
                (Some(r), _) => {
                    let t = self.loss.per_sample_stf(&eps, &z_s, &noise_s, &k_s, r)?;
                    (mean(&t.dsm.total)?, mean(&t.stf.total)?)
                }
            };
            let value = reported.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            Ok((value, trained.affine(gamma, 0.0)?.backward()?))
        };
        let outs = run_shards(&self.device, ranges.clone(), refit_shard)?;
        let shares = outs
            .into_iter()
            .map(|(loss, grads)| ShardShare {
                loss,
                diffusion_sum: loss,
                nll_sum: 0.0,
                finite_z: true,
                grads,
            })
            .collect();
        // Shards in order, over the ranks (`exchange`).
        let all = combine(&*self.comm, || self.network_vars(), shares)?;
        let loss_v = all.loss;
        if !loss_v.is_finite() {
            return Err(TrainError::NonFinite {
                step: t,
                what: "the prior-refit loss".into(),
            });
        }
        let lr = r.lr_at(t - joint);
        self.trained_prior()?.step(&all.grads, lr)?;
        self.update_ema(t)?;
        self.step += 1;
        let zs: Vec<f32> = z.flatten_all()?.to_vec1()?;
        let w = n * dz;
        let sums: Vec<(f64, f64)> = ranges
            .iter()
            .map(|p| {
                let rows = (p.start - local.start) * w..(p.end - local.start) * w;
                particle_sums(&zs[rows], n, dz)
            })
            .collect();
        let (norm, spread) = sum_shards(&*self.comm, &sums)?;
        let stats = (norm / rows as f64, spread / (b * dz) as f64);
        Ok(StepMetrics {
            step: t,
            loss: loss_v,
            diffusion_loss: loss_v,
            nll: f64::NAN,
            gamma,
            particle_step_size: 0.0,
            particle_norm: stats.0,
            particle_spread: stats.1,
            lr_theta: lr,
            lr_phi: 0.0,
            prior_refit: true,
        })
    }

    /// The refit batch of step `t` (`b` points) and the shards this rank computes (ranges of
    /// batch positions). Whole-data draws: `b` points of all M from `rng`, sorted, in
    /// `train.shards` even shards. Per-shard draws: shard s's part from its own slice (shard 0
    /// from `rng`, so one shard draws as the whole data does), each part sorted.
    fn refit_batch(
        &self,
        b: usize,
        t: u64,
        rng: &mut rand_chacha::ChaCha8Rng,
    ) -> (Vec<usize>, Vec<Range<usize>>) {
        let sample = |rng: &mut rand_chacha::ChaCha8Rng, from: Range<usize>, k: usize| {
            let mut v: Vec<usize> = rand::seq::index::sample(rng, from.len(), k)
                .into_iter()
                .map(|i| from.start + i)
                .collect();
            v.sort_unstable();
            v
        };
        if self.cfg.train.minibatches == MinibatchDraw::WholeData {
            let batch = sample(rng, 0..self.data.len(), b);
            return (batch, even_ranges(self.cfg.train.shards, b));
        }
        let layout = self.layout().with_batch(b);
        let mut batch = Vec::with_capacity(b);
        for s in 0..layout.shards {
            let k = layout.part(s).len();
            match s {
                0 => batch.extend(sample(rng, layout.slice(0), k)),
                _ => {
                    let seed = mix_seed(self.cfg.seed, Stream::Refit.id(), s as u64);
                    batch.extend(sample(&mut Stream::Refit.rng(seed, t), layout.slice(s), k));
                }
            }
        }
        let (rank, ranks) = (self.comm.rank(), self.comm.size());
        let ranges = layout
            .rank_shards(rank, ranks)
            .map(|s| layout.part(s))
            .collect();
        (batch, ranges)
    }

    /// The stable target field's reference batch at step `t` ([R N, d], detached, latent
    /// space): the latents of `batch` followed by those of `diffusion.stf_reference - |batch|`
    /// other points drawn without replacement (stream `StfReference`), brought up to step
    /// `upto`, from whichever ranks hold them (every rank gets the whole reference). Its first rows are the minibatch's own, so each row's z_0 is in it (thesis
    /// Algorithm 1 draws the minibatch from the reference batch).
    pub(super) fn stf_reference(
        &mut self,
        batch: &[usize],
        t: u64,
        upto: u64,
    ) -> Result<candle_core::Tensor, TrainError> {
        let m = self.data.len();
        let want = self.cfg.diffusion.stf_reference.clamp(batch.len(), m);
        let mut rng = Stream::StfReference.rng(self.cfg.seed, t);
        let mut in_batch = vec![false; m];
        batch.iter().for_each(|&i| in_batch[i] = true);
        let mut extra: Vec<usize> = rand::seq::index::sample(&mut rng, m, want)
            .into_iter()
            .filter(|&i| !in_batch[i])
            .take(want - batch.len())
            .collect();
        extra.sort_unstable();
        let own = self.frozen_everywhere(batch, upto, &mut rng)?;
        if extra.is_empty() {
            return Ok(own);
        }
        let others = self.frozen_everywhere(&extra, upto, &mut rng)?;
        Ok(candle_core::Tensor::cat(&[own, others], 0)?)
    }
}
