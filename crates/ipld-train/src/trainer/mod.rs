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

mod base;
mod checkpoint;
mod ema;
mod exchange;
mod joint;
mod latents;
mod latents_io;
mod loss;
mod network;
mod published;
mod ranks;
mod refit;
mod schedule;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use candle_core::{Device, Tensor};
use ipld_data::{Dataset, InMemoryDataset, Normalizer};
use ipld_diffusion::{DiffusionLoss, EpsModel, GaussianBase, NoiseSchedule};
use ipld_particles::{ParticleCloud, StepContext};

use crate::collective::{Collective, single_process};
use crate::config::{RunConfig, ValidConfig};
use crate::error::TrainError;
use crate::nets::{DecoderNet, PriorNet};
use crate::streams::Stream;
pub use base::PriorEps;
pub use checkpoint::particle_shard_file;
use ema::EmaPrior;
use latents::Latents;
use loss::scaled;
use network::{OptimizerChoice, Trained};
use schedule::{ShardLayout, batching, step_context};

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

/// The epsilon-model samples are drawn with: the trained network or a network holding the EMA
/// of theta, plus the refit's Gaussian base when there is one.
pub struct SamplingPrior<'a> {
    net: SamplingNet<'a>,
    base: Option<&'a GaussianBase>,
}

/// The network of a [`SamplingPrior`].
enum SamplingNet<'a> {
    Trained(&'a PriorNet),
    Ema(Box<PriorNet>),
}

impl SamplingPrior<'_> {
    /// The network (without the base).
    pub fn net(&self) -> &PriorNet {
        match &self.net {
            SamplingNet::Trained(n) => n,
            SamplingNet::Ema(n) => n,
        }
    }

    /// The network with the base, as the losses see theirs.
    fn eps(&self) -> PriorEps<'_> {
        PriorEps {
            net: self.net(),
            base: self.base,
        }
    }
}

impl EpsModel for SamplingPrior<'_> {
    fn predict_eps(&self, z_k: &Tensor, k: &Tensor) -> candle_core::Result<Tensor> {
        self.eps().predict_eps(z_k, k)
    }

    fn predict_eps_uniform(&self, z_k: &Tensor, k: usize) -> candle_core::Result<Tensor> {
        self.eps().predict_eps_uniform(z_k, k)
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
    /// The Gaussian the prior's network learns the residual of, fitted when the refit begins
    /// (`train.prior_refit.gaussian_base`; module `base`).
    base: Option<GaussianBase>,
    step: u64,
    /// The ranks this state trains with (one process: [`crate::collective::SingleProcess`]).
    comm: Arc<dyn Collective>,
}

impl Trainer {
    /// Builds a fresh state at step 0 for the raw `data` ([M, d_x]), which it normalises as
    /// `data.normalize` says.
    pub fn new(
        cfg: ValidConfig,
        data: InMemoryDataset,
        device: Device,
    ) -> Result<Self, TrainError> {
        Self::new_on(cfg, data, device, single_process())
    }

    /// A fresh state as one of `comm`'s ranks (issue 26): it holds the particles of its shards'
    /// slices of the data only, computes its shards of each minibatch, and takes rank 0's initial
    /// weights. Every rank must be given the same config and data.
    pub fn new_on(
        cfg: ValidConfig,
        data: InMemoryDataset,
        device: Device,
        comm: Arc<dyn Collective>,
    ) -> Result<Self, TrainError> {
        Self::check_ranks(&cfg, comm.size(), data.len())?;
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
        let rows = ShardLayout::new(&cfg, m).rank_rows(comm.rank(), comm.size());
        let latents = Latents::new(&cfg, m, rows, dx, &device)?;
        let mut t = Self {
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
            base: None,
            step: 0,
            comm,
        };
        if t.comm.size() > 1 {
            exchange::broadcast_vars(&*t.comm, &t.network_vars())?;
            // The EMA starts from the weights every rank now shares.
            if let (Some(ec), Some(p)) = (t.cfg.train.ema, &t.prior) {
                t.ema = Some(EmaPrior::new(ec, &p.vars)?);
            }
        }
        Ok(t)
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
    /// The prior's eps being trained: theta's network, plus the refit's Gaussian base once
    /// fitted (None for the published PGD and MPGD).
    pub fn eps_model(&self) -> Option<PriorEps<'_>> {
        self.prior.as_ref().map(|p| PriorEps {
            net: &p.net,
            base: self.base.as_ref(),
        })
    }
    /// The epsilon-network samples are drawn with: the EMA of theta when `train.ema` is set (a
    /// network built for it; the training state is not touched), else the trained network.
    /// None for the published PGD and MPGD, whose prior is N(0, I).
    pub fn sampling_prior(&self) -> Result<Option<SamplingPrior<'_>>, TrainError> {
        let Some(prior) = &self.prior else {
            return Ok(None);
        };
        let net = match &self.ema {
            None => SamplingNet::Trained(&prior.net),
            Some(ema) => SamplingNet::Ema(Box::new(ema.network(
                &self.cfg.model.prior,
                self.cfg.data.latent_dim,
                &self.device,
            )?)),
        };
        Ok(Some(SamplingPrior {
            net,
            base: self.base.as_ref(),
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

    /// The minibatch of step `t` (all ranks'): a block of epoch `t / steps_per_epoch`'s
    /// permutation, or with per-shard draws one block of each shard's slice's.
    pub fn batch_indices(&self, t: u64) -> Vec<usize> {
        self.layout().minibatch(t)
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
        let wanted = self.cfg.train.prior_refit.is_some_and(|r| r.gaussian_base);
        let base = match joint < self.step && wanted != self.base.is_some() {
            true => Err(Self::base_change(wanted)),
            false => Ok(()),
        };
        if let Err(e) = self.check_joint_steps(joint).and(base) {
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

    /// The points of `batch`, each repeated N times ([B N, d_x]), aligned with the [B, N, d]
    /// particle layout.
    fn repeated_points(&self, batch: &[usize]) -> Result<Tensor, TrainError> {
        let n = self.particles_per_point();
        let repeat: Vec<usize> = batch
            .iter()
            .flat_map(|&m| std::iter::repeat_n(m, n))
            .collect();
        Ok(self.data.gather(&repeat, &self.device)?)
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
