//! One training state and its step, for IPLD (Algorithm 2 with the loss of eq. 64) and the
//! baselines that share its data, decoder, prior and evaluation:
//!
//! 1. draw the minibatch B (a fresh permutation of \[M\] each epoch);
//! 2. latents (`latents`): the minibatch's particles (IPLD, PGD, MPGD), or N reparameterised
//!    draws from the encoder (DiffusionVAE);
//! 3. L-hat = 1/(N|B|) sum_{m in B, n} [gamma_t L_simple(theta, z^{m,n}) - log p_phi(x^m | z^{m,n})]
//!    (eq. 64), minus gamma_t times the encoder's entropy for DiffusionVAE (Section 2's VI
//!    analogue of the free energy, eq. 6), in data-parallel shards (`loss`);
//! 4. move the particles by the method's rule (or step the encoder), then AdamW on theta and phi
//!    and the EMA of theta.
//!
//! The published PGD and MPGD (`published`) share the data, decoder, particles and evaluation but
//! have no prior network: their step is their own.
//!
//! After the joint steps an optional prior refit trains theta alone (`refit`). The state saves
//! itself component by component (`checkpoint`). Every random draw is a pure function of
//! (seed, stream, step) ([`crate::streams`]), so resuming needs no generator state beyond the
//! step and reproduces an uninterrupted run exactly.

mod checkpoint;
mod ema;
mod latents;
mod loss;
mod network;
mod published;
mod refit;
mod schedule;
#[cfg(test)]
mod tests;

use candle_core::{Device, Tensor, Var};
use ipld_data::{Dataset, InMemoryDataset, Normalizer};
use ipld_diffusion::{DiffusionLoss, NoiseSchedule, gaussian, sample_timesteps, timestep_tensor};
use ipld_particles::{ParticleCloud, StepContext};

use crate::config::{RunConfig, ValidConfig};
use crate::error::TrainError;
use crate::nets::{DecoderNet, PriorNet};
use crate::streams::Stream;
use ema::EmaPrior;
use latents::Latents;
use loss::{MinibatchLoss, ShardInputs, add_grads, run_shards, scaled};
use network::{OptimizerChoice, Trained};
use schedule::{batching, epoch_permutation, step_context};

/// What one step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepMetrics {
    /// The step just taken (0-based).
    pub step: u64,
    /// L-hat of eq. (64).
    pub loss: f64,
    /// Mean simple diffusion loss (before the gamma_t weight).
    pub diffusion_loss: f64,
    /// Mean decoder negative log-likelihood.
    pub nll: f64,
    /// gamma_t.
    pub gamma: f64,
    /// Particle step size h_z.
    pub particle_step_size: f64,
    /// Mean ||z|| over the minibatch's particles after the update.
    pub particle_norm: f64,
    /// Mean over minibatch points of the per-coordinate standard deviation across its particles.
    pub particle_spread: f64,
    /// The learning rate theta's AdamW step used (the refit's in that phase).
    pub lr_theta: f64,
    /// The learning rate phi's AdamW step used, after its per-epoch decay (0 in a refit step,
    /// which does not step phi).
    pub lr_phi: f64,
    /// Whether this was a prior-refit step (`train.prior_refit`): then `loss` is the diffusion
    /// loss alone and `nll` is NaN (no decoder pass).
    pub prior_refit: bool,
}

/// The epsilon-network samples are drawn with: the trained one, or a network holding the EMA.
pub enum SamplingPrior<'a> {
    /// The trained network.
    Trained(&'a PriorNet),
    /// A network built from the EMA of theta.
    Ema(Box<PriorNet>),
}

impl std::ops::Deref for SamplingPrior<'_> {
    type Target = PriorNet;
    fn deref(&self) -> &PriorNet {
        match self {
            Self::Trained(n) => n,
            Self::Ema(n) => n,
        }
    }
}

/// The training state: data, networks, optimisers, latents and the step counter.
pub struct Trainer {
    cfg: ValidConfig,
    device: Device,
    /// The training data in training units (after `data.normalize`).
    data: InMemoryDataset,
    /// `data.normalize` fitted to the raw data: samples are mapped back through it.
    normalizer: Normalizer,
    schedule: NoiseSchedule,
    loss: DiffusionLoss,
    /// The prior's epsilon-network, theta and its AdamW (None for the published PGD and MPGD,
    /// whose prior is N(0, I)).
    prior: Option<Trained<PriorNet>>,
    /// The EMA of theta (`train.ema`).
    ema: Option<EmaPrior>,
    /// The decoder, phi and its update (AdamW; PGD's or MPGD's own for those).
    decoder: Trained<DecoderNet>,
    latents: Latents,
    step: u64,
}

impl Trainer {
    /// Builds a fresh state at step 0 for the raw `data` ([M, d_x]), which it normalises as
    /// `data.normalize` says.
    pub fn new(
        cfg: ValidConfig,
        data: InMemoryDataset,
        device: Device,
    ) -> Result<Self, TrainError> {
        let normalizer = Normalizer::fit(cfg.data.normalization(), &data);
        let data = normalizer.normalized(data)?;
        let (m, dx, dz) = (data.len(), data.dim(), cfg.data.latent_dim);
        if m < 2 {
            return Err(TrainError::Invalid(format!(
                "the dataset has {m} points; IPLD needs at least 2"
            )));
        }
        let schedule = cfg.diffusion.schedule.build()?;
        let loss = DiffusionLoss::new(&schedule, cfg.diffusion.loss.weighting(), &device)?;
        // candle's CPU generator cannot be seeded: the networks redraw their weights from the
        // run's seed.
        let init = |role| Stream::NetworkInit.seed(cfg.seed, role);
        let prior = match cfg.method.is_published() {
            true => None,
            false => Some(Trained::new(
                &device,
                "eps",
                OptimizerChoice::AdamW(cfg.train.optimizer_theta),
                |v, vb| PriorNet::new(&cfg.model.prior, dz, v, vb, init(1)),
            )?),
        };
        let phi_opt = match cfg.train.phi_update {
            Some(p) if cfg.method.is_published() => OptimizerChoice::Phi(p),
            _ => OptimizerChoice::AdamW(cfg.train.optimizer_phi),
        };
        let decoder = Trained::new(&device, "decoder", phi_opt, |v, vb| {
            DecoderNet::new(&cfg.model.decoder, dz, dx, v, vb, init(2))
        })?;
        let ema = match (cfg.train.ema, &prior) {
            (Some(ec), Some(p)) => Some(EmaPrior::new(ec, &p.vars)?),
            _ => None,
        };
        let latents = Latents::new(&cfg, m, dx, &device)?;
        Ok(Self {
            cfg,
            device,
            data,
            normalizer,
            schedule,
            loss,
            prior,
            ema,
            decoder,
            latents,
            step: 0,
        })
    }

    /// The run's configuration.
    pub fn config(&self) -> &RunConfig {
        &self.cfg
    }
    /// Steps taken so far.
    pub fn step(&self) -> u64 {
        self.step
    }
    /// Joint (Algorithm 2) steps taken so far: the particles' clock, which stops when a prior
    /// refit (`train.prior_refit`) begins.
    pub fn joint_steps(&self) -> u64 {
        match self.cfg.train.prior_refit {
            Some(_) => self.step.min(self.cfg.train.steps),
            None => self.step,
        }
    }
    /// The particle cloud with every particle's noise applied through the current step: with
    /// lazy noise a synced copy (the training state is not changed), else a copy of the cloud.
    /// None for DiffusionVAE.
    pub fn synced_cloud(&self) -> Result<Option<ParticleCloud>, TrainError> {
        self.latents.synced_cloud(self.joint_steps())
    }
    /// The particle cloud as stored (None for DiffusionVAE); with lazy noise, particles not in
    /// the last minibatch may lag behind (see [`Trainer::synced_cloud`]).
    pub fn cloud(&self) -> Option<&ParticleCloud> {
        self.latents.cloud()
    }
    /// Particles (or encoder samples) per training point in use now.
    pub fn particles_per_point(&self) -> usize {
        self.latents.per_point()
    }

    /// Trainable values of the prior's epsilon-network (0 for PGD and MPGD) and of the decoder.
    pub fn parameter_counts(&self) -> (usize, usize) {
        let count =
            |v: &candle_nn::VarMap| v.all_vars().iter().map(|x| x.elem_count()).sum::<usize>();
        let prior = self.prior.as_ref().map_or(0, |p| count(&p.vars));
        (prior, count(&self.decoder.vars))
    }

    /// The fitted `data.normalize`: [`Normalizer::invert`] maps decoded samples to data units.
    pub fn normalizer(&self) -> &Normalizer {
        &self.normalizer
    }

    /// The training data in training units (see [`Trainer::normalizer`]).
    pub fn data(&self) -> &InMemoryDataset {
        &self.data
    }
    /// The epsilon-network being trained (None for the published PGD and MPGD).
    pub fn eps_model(&self) -> Option<&PriorNet> {
        self.prior.as_ref().map(|p| &p.net)
    }
    /// The epsilon-network samples are drawn with: the EMA of theta when `train.ema` is set (a
    /// network built for it; the training state is not touched), else the trained network.
    /// None for the published PGD and MPGD, whose prior is N(0, I).
    pub fn sampling_prior(&self) -> Result<Option<SamplingPrior<'_>>, TrainError> {
        let Some(prior) = &self.prior else {
            return Ok(None);
        };
        Ok(Some(match &self.ema {
            None => SamplingPrior::Trained(&prior.net),
            Some(ema) => SamplingPrior::Ema(Box::new(ema.network(
                &self.cfg.model.prior,
                self.cfg.data.latent_dim,
                &self.device,
            )?)),
        }))
    }

    /// The prior being trained, for the steps that need one (every method but PGD and MPGD).
    fn trained_prior(&mut self) -> Result<&mut Trained<PriorNet>, TrainError> {
        self.prior.as_mut().ok_or_else(|| {
            TrainError::Invalid(format!(
                "method `{}` has no prior network",
                self.cfg.method.name()
            ))
        })
    }
    /// The decoder.
    pub fn decoder(&self) -> &DecoderNet {
        &self.decoder.net
    }
    /// The noise schedule.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }
    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Effective minibatch size min(|B|, M) and steps per epoch floor(M / |B|).
    pub fn batching(&self) -> (usize, u64) {
        batching(&self.cfg, self.data.len())
    }

    /// The minibatch of step `t`: a slice of epoch `t / steps_per_epoch`'s permutation.
    pub fn batch_indices(&self, t: u64) -> Vec<usize> {
        let (b, per_epoch) = self.batching();
        let (epoch, pos) = (t / per_epoch, (t % per_epoch) as usize);
        epoch_permutation(self.cfg.seed, self.data.len(), epoch)[pos * b..(pos + 1) * b].to_vec()
    }

    /// The particle update's context at step `t` (what [`Trainer::train_step`] passes).
    pub fn step_context(&self, t: u64) -> StepContext {
        step_context(&self.cfg, self.data.len(), t)
    }

    /// Replaces the configuration of a loaded state (a resumed run's new `train.steps`,
    /// `train.prior_refit`, ...), refusing a change of the joint phase once the refit has begun.
    pub fn set_config(&mut self, cfg: ValidConfig) -> Result<(), TrainError> {
        let joint = self.joint_steps();
        let old = std::mem::replace(&mut self.cfg, cfg);
        if let Err(e) = self.check_joint_steps(joint) {
            self.cfg = old;
            return Err(TrainError::Invalid(e));
        }
        Ok(())
    }

    /// A state with `joint` joint steps out of `self.step` must, if its refit has begun, keep
    /// ending its joint phase there.
    fn check_joint_steps(&self, joint: u64) -> Result<(), String> {
        if joint < self.step && self.joint_steps() != joint {
            return Err(format!(
                "the run's prior refit began after {joint} joint steps, so train.steps must stay {joint} (got {}) and train.prior_refit must stay set",
                self.cfg.train.steps
            ));
        }
        Ok(())
    }

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
        self.latents.prepare(t, &batch, &self.cfg.particles)?;
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
        let stats =
            self.latents
                .update(&mb, &batch, &ctx, &self.cfg.particles.update, lr_encoder)?;
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
    fn phi_decay(&self, epoch: u64) -> f64 {
        self.cfg
            .train
            .lr_decay_phi
            .powi(epoch.min(i32::MAX as u64) as i32)
    }

    /// L-hat of eq. (64) on the minibatch `batch` at step `t` and its gradients, computed in
    /// `shards` data-parallel shards ([`run_shards`]); with an STF reference batch (prior space),
    /// theta's gradient is that of the stable target field's loss.
    fn minibatch_loss(
        &self,
        t: u64,
        batch: &[usize],
        shards: usize,
        stf_reference: Option<&Tensor>,
    ) -> Result<MinibatchLoss, TrainError> {
        let b = batch.len();
        let (n, dz) = (self.particles_per_point(), self.cfg.data.latent_dim);
        let rows = b * n;
        // Each data row repeated N times, aligned with the [B, N, d] particle layout.
        let repeat: Vec<usize> = batch
            .iter()
            .flat_map(|&m| std::iter::repeat_n(m, n))
            .collect();
        let x = self.data.gather(&repeat, &self.device)?;
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
        let source = self
            .latents
            .shard_source(batch, &self.data, &mut rng, dz, &self.device)?;
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
        let outs = run_shards(&self.device, shards, b, |p| inputs.run(p))?;
        // Shards in order, so the sums do not depend on which thread finished first.
        let loss_v: f64 = outs.iter().map(|o| o.loss).sum();
        let diffusion_sum: f64 = outs.iter().map(|o| o.diffusion_sum).sum();
        let nll_sum: f64 = outs.iter().map(|o| o.nll_sum).sum();
        if !loss_v.is_finite() {
            return Err(TrainError::NonFinite {
                step: t,
                what: "the loss".into(),
            });
        }
        let mut grads = Vec::with_capacity(outs.len());
        let mut z_grads = Vec::with_capacity(outs.len());
        let mut z_values = Vec::with_capacity(outs.len());
        for o in outs {
            grads.push(o.grads);
            z_grads.push(o.z_grad);
            z_values.push(o.z);
        }
        Ok(MinibatchLoss {
            loss: loss_v,
            diffusion_sum,
            nll_sum,
            grads: add_grads(grads)?,
            z_grads,
            z_values,
            gamma,
        })
    }

    /// Latents as the prior sees them: z / `diffusion.latent_scale`.
    pub fn prior_space(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        scaled(z, 1.0 / self.cfg.diffusion.latent_scale)
    }

    /// Prior samples u back in latent space: s u (inverse of [`Trainer::prior_space`]).
    pub fn latent_space(&self, u: &Tensor) -> candle_core::Result<Tensor> {
        scaled(u, self.cfg.diffusion.latent_scale)
    }

    /// Folds theta after step `t` into its EMA (when `train.ema` is set).
    fn update_ema(&mut self, t: u64) -> Result<(), TrainError> {
        if let (Some(ema), Some(prior)) = (&mut self.ema, &self.prior) {
            ema.update(t, &prior.vars)?;
        }
        Ok(())
    }
}
