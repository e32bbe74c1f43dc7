//! One joint step of Algorithm 2 with the loss of eq. (64) (IPLD and DiffusionVAE): the
//! minibatch, this rank's shards of the loss and backward, the shards' shares combined over the
//! ranks, the latents' update, then AdamW on theta and phi and the EMA.

use candle_core::{Tensor, Var};
use ipld_diffusion::{gaussian, sample_timesteps, timestep_tensor};

use super::exchange::{ShardShare, combine};
use super::loss::{MinibatchLoss, ShardInputs, run_shards};
use super::{StepMetrics, Trainer};
use crate::error::TrainError;
use crate::streams::Stream;

impl Trainer {
    /// Takes one training step of the configured method (a prior-refit step once the joint
    /// steps are done and `train.prior_refit` is set).
    pub fn train_step(&mut self) -> Result<StepMetrics, TrainError> {
        if let Some(r) = self.cfg.train.prior_refit
            && self.step >= self.cfg.train.steps
        {
            return self.prior_refit_step(r);
        }
        if self.cfg.method.is_published() {
            return self.published_step();
        }
        let t = self.step;
        let batch = self.batch_indices(t);
        let mine = batch[self.local_points()].to_vec();
        self.latents.prepare(t, &mine, &self.cfg.particles)?;
        let (b, per_epoch) = self.batching();
        let epoch = t / per_epoch;
        let phi_scale = self.phi_decay(epoch);
        let rows = b * self.particles_per_point();

        let reference = match self.cfg.diffusion.loss.is_stf() {
            true => {
                let r = self.stf_reference(&batch, t, t)?;
                Some(self.prior_space(&r)?)
            }
            false => None,
        };
        let mb = self.minibatch_loss(t, &batch, self.cfg.train.shards, reference.as_ref())?;

        let ctx = self.step_context(t);
        let lr_encoder = self.cfg.train.optimizer_encoder.lr * phi_scale;
        let after =
            self.latents
                .update(&mb, &mine, &ctx, &self.cfg.particles.update, lr_encoder)?;
        let stats = self.latent_stats(&after, b)?;
        let (lr_theta, lr_phi) = (
            self.cfg.train.optimizer_theta.lr,
            self.cfg.train.optimizer_phi.lr * phi_scale,
        );
        self.trained_prior()?.step(&mb.grads, lr_theta)?;
        self.decoder.step(&mb.grads, lr_phi)?;
        self.update_ema(t)?;
        self.step += 1;

        Ok(StepMetrics {
            step: t,
            loss: mb.loss,
            diffusion_loss: mb.diffusion_sum / rows as f64,
            nll: mb.nll_sum / rows as f64,
            gamma: mb.gamma,
            particle_step_size: ctx.step_size,
            particle_norm: stats.0,
            particle_spread: stats.1,
            lr_theta,
            lr_phi,
            prior_refit: false,
        })
    }

    /// B.2: the decoder's (and encoder's) learning rate decays exponentially per epoch; this is
    /// its factor at `epoch` (PGD's and MPGD's h_phi decays the same way).
    pub(super) fn phi_decay(&self, epoch: u64) -> f64 {
        self.cfg
            .train
            .lr_decay_phi
            .powi(epoch.min(i32::MAX as u64) as i32)
    }

    /// L-hat of eq. (64) on the minibatch `batch` at step `t` and its gradients: this rank
    /// computes its data-parallel shards ([`run_shards`]) and the shards' shares are combined
    /// over the ranks in shard order (`exchange`); with an STF reference batch (prior space),
    /// theta's gradient is that of the stable target field's loss.
    pub(super) fn minibatch_loss(
        &self,
        t: u64,
        batch: &[usize],
        shards: usize,
        stf_reference: Option<&Tensor>,
    ) -> Result<MinibatchLoss, TrainError> {
        let b = batch.len();
        let (n, dz) = (self.particles_per_point(), self.cfg.data.latent_dim);
        let rows = b * n;
        let x = self.repeated_points(batch)?;
        let mut rng = Stream::Loss.rng(self.cfg.seed, t);
        // R draws of (k, eps) per latent for the diffusion loss's Monte Carlo estimate.
        let r_draws = self.cfg.train.diffusion_samples;
        let k = timestep_tensor(
            &sample_timesteps(&mut rng, r_draws * rows, self.schedule.steps()),
            self.schedule.steps(),
            &self.device,
        )?;
        let noise = gaussian(
            &mut rng,
            (r_draws * rows, dz),
            candle_core::DType::F32,
            &self.device,
        )?;
        let gamma = self.cfg.train.kl.gamma(t);
        // Every draw is made here for the whole minibatch, so the shards below change only the
        // order of float sums, never a random number.
        let local = self
            .layout()
            .with_shards(shards)
            .rank_points(self.comm.rank(), self.comm.size());
        let source = self.latents.shard_source(
            batch,
            local.clone(),
            &self.data,
            &mut rng,
            dz,
            &self.device,
        )?;
        let eps = self.eps_model().ok_or_else(|| {
            TrainError::Invalid("the diffusion loss needs a prior network".into())
        })?;
        let theta: Vec<Var> = match (&self.prior, stf_reference) {
            (Some(p), Some(_)) => p.vars.all_vars(),
            _ => Vec::new(),
        };
        let inputs = ShardInputs {
            eps,
            stf: stf_reference.map(|r| (r, theta.as_slice())),
            decoder: &self.decoder.net,
            loss: &self.loss,
            latent_scale: self.cfg.diffusion.latent_scale,
            two_stage: self.cfg.train.two_stage,
            sigma: self.cfg.decoder_sigma(),
            gamma,
            points: b,
            n,
            dz,
            r_draws,
            x: &x,
            k: &k,
            noise: &noise,
            source: &source,
        };
        let layout = self.layout().with_shards(shards);
        let (rank, ranks) = (self.comm.rank(), self.comm.size());
        let ranges = layout
            .rank_shards(rank, ranks)
            .map(|s| layout.part(s))
            .collect();
        let outs = run_shards(&self.device, ranges, |p| inputs.run(p))?;
        let mut shares = Vec::with_capacity(outs.len());
        let mut z_grads = Vec::with_capacity(outs.len());
        let mut z_values = Vec::with_capacity(outs.len());
        for o in outs {
            let finite_z = match &o.z_grad {
                Some(g) => g
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .all(|v| v.is_finite()),
                None => true,
            };
            shares.push(ShardShare {
                loss: o.loss,
                diffusion_sum: o.diffusion_sum,
                nll_sum: o.nll_sum,
                finite_z,
                grads: o.grads,
            });
            z_grads.push(o.z_grad);
            z_values.push(o.z);
        }
        // Shards in order, so the sums depend neither on which thread finished first nor on
        // how many ranks computed them.
        let all = combine(&*self.comm, || self.network_vars(), shares)?;
        if !all.loss.is_finite() {
            return Err(TrainError::NonFinite {
                step: t,
                what: "the loss".into(),
            });
        }
        if !all.finite_z {
            return Err(TrainError::NonFinite {
                step: t,
                what: "the particle gradient".into(),
            });
        }
        Ok(MinibatchLoss {
            loss: all.loss,
            diffusion_sum: all.diffusion_sum,
            nll_sum: all.nll_sum,
            grads: all.grads,
            z_grads,
            z_values,
            gamma,
        })
    }
}
