//! One training state and its step, for IPLD (Algorithm 2 with the loss of eq. 64) and the
//! baselines that share its data, decoder, prior and evaluation:
//!
//! 1. draw the minibatch B (a fresh permutation of [M] each epoch);
//! 2. latents: the minibatch's particles (IPLD, PGD, MPGD), or N reparameterised draws from the
//!    encoder (DiffusionVAE);
//! 3. L-hat = 1/(N|B|) sum_{m in B, n} [gamma_t L_simple(theta, z^{m,n}) - log p_phi(x^m | z^{m,n})]
//!    (eq. 64), minus gamma_t times the encoder's entropy for DiffusionVAE (Section 2's VI
//!    analogue of the free energy, eq. 6);
//! 4. backward (once per data-parallel shard of the minibatch, `train.shards`: L-hat is a mean
//!    over rows, so the shards' gradients add up to its gradient); move the particles by the
//!    method's rule (or step the encoder), then AdamW on theta and phi.
//!
//! Every random draw is a pure function of (seed, step): the epoch permutation, the timesteps and
//! noise of the loss estimate, and the particle noise (counter-based). Resuming from a checkpoint
//! therefore needs no generator state beyond the step, and reproduces an uninterrupted run exactly.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use ipld_data::{Dataset, InMemoryDataset};
use ipld_diffusion::{
    DiffusionLoss, Ema, EpsModel, NoiseSchedule, gaussian, sample_timesteps, timestep_tensor,
};
use ipld_models::{Decoder, LinearGaussianEncoder, gaussian_nll};
use ipld_particles::{LAZY_STREAM, LazyNoise, NoiseStream, ParticleCloud, StepContext};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::RunConfig;
use crate::config::PriorRefitConfig;
use crate::nets::{DecoderNet, EncoderNet, PriorNet};
use crate::optim::AdamW;

/// Errors while building, stepping, saving or loading a training state.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration does not fit the data or the checkpoint.
    #[error("{0}")]
    Invalid(String),
    /// The loss or a gradient became NaN/Inf.
    #[error("training diverged at step {step}: {what} is not finite")]
    NonFinite {
        /// The step at which it happened.
        step: u64,
        /// What turned non-finite.
        what: String,
    },
    /// A checkpoint file is unreadable, truncated or does not match the run.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Data loading failed.
    #[error(transparent)]
    Data(#[from] ipld_data::DataError),
    /// Another crate's error.
    #[error("{0}")]
    Other(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

macro_rules! other {
    ($e:expr) => {
        $e.map_err(|e| TrainError::Other(e.to_string()))
    };
}

/// Stream ids that keep the run's random draws independent.
const STREAM_BATCH: u64 = 1;
const STREAM_LOSS: u64 = 2;
const STREAM_REFIT: u64 = 3;
/// Noise-stream id of the particle updates.
pub const PARTICLE_NOISE_STREAM: u32 = 7;

/// `t` times `factor`, untouched at factor 1 so the paper's latent scale keeps its bits.
fn scaled(t: &Tensor, factor: f64) -> candle_core::Result<Tensor> {
    if factor == 1.0 {
        Ok(t.clone())
    } else {
        t.affine(factor, 0.0)
    }
}

/// SplitMix64 finaliser: mixes (seed, a, b) into one well-spread 64-bit seed.
pub fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    let f = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    f(seed ^ f(a ^ f(b)))
}

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
    /// Whether this was a prior-refit step (`train.prior_refit`): then `loss` is the diffusion
    /// loss alone and `nll` is NaN (no decoder pass).
    pub prior_refit: bool,
}

/// Where a method's latents come from.
enum Latents {
    /// A particle cloud moved by a Langevin-type rule (IPLD, PGD, MPGD).
    Particles(ParticleCloud),
    /// An amortised Gaussian encoder and its optimiser (DiffusionVAE); `n` samples per point.
    Encoder {
        encoder: EncoderNet,
        vars: VarMap,
        opt: AdamW,
        n: usize,
    },
}

/// The training state: data, networks, optimisers, latents and the step counter.
pub struct Trainer {
    /// The run's configuration.
    pub cfg: RunConfig,
    device: Device,
    data: InMemoryDataset,
    schedule: NoiseSchedule,
    loss: DiffusionLoss,
    theta: VarMap,
    phi: VarMap,
    eps: PriorNet,
    decoder: DecoderNet,
    /// EMA of theta for sampling: the average, and a second prior network it is copied into.
    ema: Option<(Ema, VarMap, PriorNet)>,
    opt_theta: AdamW,
    opt_phi: AdamW,
    latents: Latents,
    /// Exact lazy noise state (`particles.lazy_noise`).
    lazy: Option<LazyNoise>,
    step: u64,
}

fn sorted_vars(map: &VarMap) -> Vec<(String, Var)> {
    let mut v: Vec<(String, Var)> = map
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

impl Trainer {
    /// Builds a fresh state at step 0 for `data` ([M, d_x]).
    pub fn new(cfg: RunConfig, data: InMemoryDataset, device: Device) -> Result<Self, TrainError> {
        let (m, dx, dz) = (data.len(), data.dim(), cfg.data.latent_dim);
        if m < 2 {
            return Err(TrainError::Invalid(format!(
                "the dataset has {m} points; IPLD needs at least 2"
            )));
        }
        let schedule = other!(cfg.diffusion.schedule.build())?;
        let loss = other!(DiffusionLoss::new(&schedule, cfg.diffusion.loss, &device))?;
        // candle's CPU generator cannot be seeded: the networks redraw their weights from the
        // run's seed.
        let theta = VarMap::new();
        let eps = other!(PriorNet::new(
            &cfg,
            &theta,
            VarBuilder::from_varmap(&theta, DType::F32, &device).pp("eps"),
            mix_seed(cfg.seed, 0, 1)
        ))?;
        let phi = VarMap::new();
        let decoder = other!(DecoderNet::new(
            &cfg,
            dx,
            &phi,
            VarBuilder::from_varmap(&phi, DType::F32, &device).pp("decoder"),
            mix_seed(cfg.seed, 0, 2)
        ))?;
        let ema = match cfg.train.ema {
            Some(ec) => {
                let vars = VarMap::new();
                let net = other!(PriorNet::new(
                    &cfg,
                    &vars,
                    VarBuilder::from_varmap(&vars, DType::F32, &device).pp("eps"),
                    0
                ))?;
                let params: Vec<Tensor> = sorted_vars(&theta)
                    .into_iter()
                    .map(|(_, v)| v.as_tensor().clone())
                    .collect();
                Some((other!(Ema::new(ec, &params))?, vars, net))
            }
            None => None,
        };
        let opt_theta = AdamW::new(cfg.train.optimizer_theta, sorted_vars(&theta))?;
        let opt_phi = AdamW::new(cfg.train.optimizer_phi, sorted_vars(&phi))?;
        let latents = if cfg.method.uses_particles() {
            let n0 = if cfg.particles.warm_start_steps > 0 {
                1
            } else {
                cfg.particles.count
            };
            Latents::Particles(other!(ParticleCloud::gaussian(0, m, n0, dz, cfg.seed))?)
        } else {
            let vars = VarMap::new();
            let encoder = other!(EncoderNet::new(
                &cfg,
                dx,
                &vars,
                VarBuilder::from_varmap(&vars, DType::F32, &device).pp("encoder"),
                mix_seed(cfg.seed, 0, 3)
            ))?;
            let opt = AdamW::new(cfg.train.optimizer_encoder, sorted_vars(&vars))?;
            Latents::Encoder {
                encoder,
                vars,
                opt,
                n: cfg.particles.count,
            }
        };
        let lazy = match &latents {
            Latents::Particles(cloud) if cfg.particles.lazy_noise => {
                Some(LazyNoise::new(cloud, 0, cfg.particles.update.lazy_eps()))
            }
            _ => None,
        };
        Ok(Self {
            cfg,
            device,
            data,
            schedule,
            loss,
            theta,
            phi,
            eps,
            decoder,
            ema,
            opt_theta,
            opt_phi,
            latents,
            lazy,
            step: 0,
        })
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
        let Latents::Particles(cloud) = &self.latents else {
            return Ok(None);
        };
        let mut c = cloud.clone();
        if let Some(lazy) = &self.lazy {
            let mut l = lazy.clone();
            other!(l.sync_all(&mut c, self.joint_steps(), &self.lazy_stream()))?;
        }
        Ok(Some(c))
    }

    fn lazy_stream(&self) -> NoiseStream {
        NoiseStream::new(self.cfg.seed, LAZY_STREAM).with_generator(self.cfg.particles.noise)
    }

    /// The particle cloud as stored (None for DiffusionVAE); with lazy noise, particles not in
    /// the last minibatch may lag behind (see [`Trainer::synced_cloud`]).
    pub fn cloud(&self) -> Option<&ParticleCloud> {
        match &self.latents {
            Latents::Particles(c) => Some(c),
            Latents::Encoder { .. } => None,
        }
    }
    /// Particles (or encoder samples) per training point in use now.
    pub fn particles_per_point(&self) -> usize {
        match &self.latents {
            Latents::Particles(c) => c.particles(),
            Latents::Encoder { n, .. } => *n,
        }
    }
    /// The training data.
    pub fn data(&self) -> &InMemoryDataset {
        &self.data
    }
    /// The epsilon-network being trained.
    pub fn eps_model(&self) -> &PriorNet {
        &self.eps
    }
    /// The epsilon-network samples are drawn with: the EMA of theta when `train.ema` is set
    /// (its weights brought up to date here), else the trained network.
    pub fn sampling_prior(&self) -> Result<&dyn EpsModel, TrainError> {
        match &self.ema {
            None => Ok(&self.eps),
            Some((ema, vars, net)) => {
                for ((_, var), avg) in sorted_vars(vars).iter().zip(ema.shadow()) {
                    var.set(avg)?;
                }
                Ok(net)
            }
        }
    }
    /// The decoder.
    pub fn decoder(&self) -> &DecoderNet {
        &self.decoder
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
        let b = self.cfg.train.batch_size.min(self.data.len());
        (b, (self.data.len() / b).max(1) as u64)
    }

    /// The minibatch of step `t`: a slice of epoch `t / steps_per_epoch`'s permutation.
    pub fn batch_indices(&self, t: u64) -> Vec<usize> {
        let (b, per_epoch) = self.batching();
        let (epoch, pos) = (t / per_epoch, (t % per_epoch) as usize);
        let mut perm: Vec<usize> = (0..self.data.len()).collect();
        perm.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(
            self.cfg.seed,
            STREAM_BATCH,
            epoch,
        )));
        perm[pos * b..(pos + 1) * b].to_vec()
    }

    /// The particle update's context at step `t` (what [`Trainer::train_step`] passes).
    pub fn step_context(&self, t: u64) -> StepContext {
        let (b, per_epoch) = self.batching();
        let epoch = t / per_epoch;
        StepContext {
            step: t,
            gamma: self.cfg.train.kl.gamma(t),
            step_size: self.cfg.particles.step_size.at_epoch(epoch),
            batch_size: b,
            total_points: self.data.len(),
            precondition_noise: epoch >= 1,
        }
    }

    /// Replaces the configuration of a loaded state (a resumed run's new `train.steps`,
    /// `train.prior_refit`, ...), refusing a change of the joint phase once the refit has begun.
    pub fn set_config(&mut self, cfg: RunConfig) -> Result<(), TrainError> {
        let joint = self.joint_steps();
        self.cfg = cfg;
        self.check_joint_steps(joint).map_err(TrainError::Invalid)
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
        let t = self.step;
        let pc = self.cfg.particles.clone();
        let lazy_stream = self.lazy_stream();
        let batch = self.batch_indices(t);
        if let Latents::Particles(cloud) = &mut self.latents
            && pc.warm_start_steps > 0
            && t == pc.warm_start_steps
            && cloud.particles() == 1
            && pc.count > 1
        {
            // The copies must share the noise the single particle already received.
            if let Some(lazy) = &mut self.lazy {
                other!(lazy.sync_all(cloud, t, &lazy_stream))?;
            }
            other!(cloud.replicate(pc.count))?;
        }
        if let (Latents::Particles(cloud), Some(lazy)) = (&mut self.latents, &mut self.lazy) {
            other!(lazy.sync(cloud, &batch, t, &lazy_stream))?;
        }
        let (b, per_epoch) = self.batching();
        let epoch = t / per_epoch;
        // B.2: the decoder's (and encoder's) learning rate decays exponentially per epoch.
        let phi_scale = self
            .cfg
            .train
            .lr_decay_phi
            .powi(epoch.min(i32::MAX as u64) as i32);
        let (n, dz) = (self.particles_per_point(), self.cfg.data.latent_dim);
        let rows = b * n;

        let mb = self.minibatch_loss(t, &batch, self.cfg.train.shards)?;

        let step_size = pc.step_size.at_epoch(epoch);
        let ctx = self.step_context(t);
        let stats = match &mut self.latents {
            Latents::Particles(cloud) => {
                let mut gz: Vec<f32> = Vec::with_capacity(rows * dz);
                for (g, z) in mb.z_grads.iter().zip(&mb.z_values) {
                    match g {
                        Some(g) => gz.extend(g.flatten_all()?.to_vec1::<f32>()?),
                        None => gz.extend(std::iter::repeat_n(0.0, z.elem_count())),
                    }
                }
                if gz.iter().any(|g| !g.is_finite()) {
                    return Err(TrainError::NonFinite {
                        step: t,
                        what: "the particle gradient".into(),
                    });
                }
                let stream =
                    NoiseStream::new(self.cfg.seed, PARTICLE_NOISE_STREAM).with_generator(pc.noise);
                match &mut self.lazy {
                    Some(lazy) => other!(lazy.step(&pc.update, cloud, &batch, &gz, &ctx, &stream))?,
                    None => other!(pc.update.rule().step(cloud, &batch, &gz, &ctx, &stream))?,
                }
                let mut after = Vec::with_capacity(rows * dz);
                other!(cloud.gather_into(&batch, &mut after))?;
                particle_stats(&after, b, n, dz)
            }
            Latents::Encoder { opt, .. } => {
                let lr = opt.config().lr * phi_scale;
                opt.step(&mb.grads, lr)?;
                let zs: Vec<f32> = Tensor::cat(&mb.z_values, 0)?.flatten_all()?.to_vec1()?;
                particle_stats(&zs, b, n, dz)
            }
        };
        self.opt_theta
            .step(&mb.grads, self.cfg.train.optimizer_theta.lr)?;
        self.opt_phi
            .step(&mb.grads, self.cfg.train.optimizer_phi.lr * phi_scale)?;
        self.update_ema(t)?;
        self.step += 1;

        Ok(StepMetrics {
            step: t,
            loss: mb.loss,
            diffusion_loss: mb.diffusion_sum / rows as f64,
            nll: mb.nll_sum / rows as f64,
            gamma: mb.gamma,
            particle_step_size: step_size,
            particle_norm: stats.0,
            particle_spread: stats.1,
            prior_refit: false,
        })
    }

    /// L-hat of eq. (64) on the minibatch `batch` at step `t` and its gradients, computed in
    /// `shards` data-parallel shards ([`run_shards`]).
    fn minibatch_loss(
        &self,
        t: u64,
        batch: &[usize],
        shards: usize,
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
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(self.cfg.seed, STREAM_LOSS, t));
        // R draws of (k, eps) per latent for the diffusion loss's Monte Carlo estimate.
        let r_draws = self.cfg.train.diffusion_samples;
        let k = other!(timestep_tensor(
            &sample_timesteps(&mut rng, r_draws * rows, self.schedule.steps()),
            self.schedule.steps(),
            &self.device
        ))?;
        let noise = gaussian(&mut rng, (r_draws * rows, dz), DType::F32, &self.device)?;
        let gamma = self.cfg.train.kl.gamma(t);

        // Latents: the minibatch's particles, or the encoder's inputs and reparameterisation
        // noise. Every draw is made here for the whole minibatch, so the shards below change
        // only the order of float sums, never a random number.
        let source = match &self.latents {
            Latents::Particles(cloud) => {
                let mut zb = Vec::with_capacity(rows * dz);
                other!(cloud.gather_into(batch, &mut zb))?;
                ShardLatents::Particles(zb)
            }
            Latents::Encoder { encoder, .. } => ShardLatents::Encoder {
                encoder,
                x: self.data.gather(batch, &self.device)?,
                noise: gaussian(&mut rng, (rows, dz), DType::F32, &self.device)?,
            },
        };
        let inputs = ShardInputs {
            eps: &self.eps,
            decoder: &self.decoder,
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
        if let Some((ema, _, _)) = &mut self.ema {
            let params: Vec<Tensor> = sorted_vars(&self.theta)
                .into_iter()
                .map(|(_, v)| v.as_tensor().clone())
                .collect();
            other!(ema.update(t, &params))?;
        }
        Ok(())
    }

    /// One prior-only step: the simple (or weighted) diffusion loss of eq. (64) on `batch_size`
    /// random points' latents, frozen at the end of the joint phase; AdamW on theta and the EMA.
    fn prior_refit_step(&mut self, r: PriorRefitConfig) -> Result<StepMetrics, TrainError> {
        let t = self.step;
        let joint = self.cfg.train.steps;
        let b = r.batch_size.min(self.data.len());
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(self.cfg.seed, STREAM_REFIT, t));
        let mut batch = rand::seq::index::sample(&mut rng, self.data.len(), b).into_vec();
        batch.sort_unstable();
        let (n, dz) = (self.particles_per_point(), self.cfg.data.latent_dim);
        let rows = b * n;
        let lazy_stream = self.lazy_stream();
        let z = match &mut self.latents {
            Latents::Particles(cloud) => {
                // Lazy noise: bring the rows up to the last joint step (a no-op once synced).
                if let Some(lazy) = &mut self.lazy {
                    other!(lazy.sync(cloud, &batch, joint, &lazy_stream))?;
                }
                let mut zb = Vec::with_capacity(rows * dz);
                other!(cloud.gather_into(&batch, &mut zb))?;
                Tensor::from_vec(zb, (rows, dz), &self.device)?
            }
            Latents::Encoder { encoder, .. } => {
                let x = self.data.gather(&batch, &self.device)?;
                let e = gaussian(&mut rng, (rows, dz), DType::F32, &self.device)?;
                encoder_draws(encoder, &x, n, &e)?.0.detach()
            }
        };
        let k = other!(timestep_tensor(
            &sample_timesteps(&mut rng, rows, self.schedule.steps()),
            self.schedule.steps(),
            &self.device
        ))?;
        let noise = gaussian(&mut rng, (rows, dz), DType::F32, &self.device)?;
        let z_prior = self.prior_space(&z)?;
        let refit_shard = |p: std::ops::Range<usize>| -> Result<(f64, GradStore), TrainError> {
            let (r0, len) = (p.start * n, p.len() * n);
            let terms = other!(self.loss.per_sample(
                &self.eps,
                &z_prior.narrow(0, r0, len)?,
                &noise.narrow(0, r0, len)?,
                &k.narrow(0, r0, len)?
            ))?;
            let loss = terms.total.sum_all()?.affine(1.0 / rows as f64, 0.0)?;
            let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            Ok((value, loss.backward()?))
        };
        let outs = run_shards(&self.device, self.cfg.train.shards, b, refit_shard)?;
        let loss_v: f64 = outs.iter().map(|o| o.0).sum();
        if !loss_v.is_finite() {
            return Err(TrainError::NonFinite {
                step: t,
                what: "the prior-refit loss".into(),
            });
        }
        let grads = add_grads(outs.into_iter().map(|(_, g)| g))?;
        self.opt_theta.step(&grads, r.lr)?;
        self.update_ema(t)?;
        self.step += 1;
        let zs: Vec<f32> = z.flatten_all()?.to_vec1()?;
        let stats = particle_stats(&zs, b, n, dz);
        Ok(StepMetrics {
            step: t,
            loss: loss_v,
            diffusion_loss: loss_v,
            nll: f64::NAN,
            gamma: self.cfg.train.kl.gamma(joint),
            particle_step_size: 0.0,
            particle_norm: stats.0,
            particle_spread: stats.1,
            prior_refit: true,
        })
    }

    /// All tensors of the state, by checkpoint name.
    fn named_tensors(&self) -> Result<Vec<(String, Tensor)>, TrainError> {
        let mut out = Vec::new();
        for (prefix, map) in [("theta", &self.theta), ("phi", &self.phi)] {
            for (name, var) in sorted_vars(map) {
                out.push((format!("{prefix}/{name}"), var.as_tensor().clone()));
            }
        }
        for (prefix, opt) in [("opt_theta", &self.opt_theta), ("opt_phi", &self.opt_phi)] {
            for (name, t) in opt.state() {
                out.push((format!("{prefix}/{name}"), t));
            }
        }
        if let Some((ema, _, _)) = &self.ema {
            for ((name, _), t) in sorted_vars(&self.theta).iter().zip(ema.shadow()) {
                out.push((format!("ema/{name}"), t.clone()));
            }
        }
        match &self.latents {
            Latents::Particles(cloud) => {
                let shape = cloud.shape();
                for (name, buf) in [
                    ("z", cloud.z()),
                    ("momentum", cloud.momentum()),
                    ("second_moment", cloud.second_moment()),
                ] {
                    out.push((
                        format!("particles/{name}"),
                        Tensor::from_slice(buf, (shape[0], shape[1], shape[2]), &Device::Cpu)?,
                    ));
                }
                if let Some(lazy) = &self.lazy {
                    // Steps of noise each row still lacks: at most a few epochs' worth, so
                    // exact in f32.
                    let missed: Vec<f32> = lazy
                        .synced()
                        .iter()
                        .map(|&s| (self.step - s) as f32)
                        .collect();
                    out.push((
                        "particles/missed_noise_steps".into(),
                        Tensor::from_vec(missed, shape[0], &Device::Cpu)?,
                    ));
                }
            }
            Latents::Encoder { vars, opt, .. } => {
                for (name, var) in sorted_vars(vars) {
                    out.push((format!("encoder/{name}"), var.as_tensor().clone()));
                }
                for (name, t) in opt.state() {
                    out.push((format!("opt_encoder/{name}"), t));
                }
            }
        }
        Ok(out)
    }

    /// The checkpoint as safetensors bytes: every tensor plus metadata (step, optimiser steps,
    /// seed, and the rule that regenerates all random draws from them).
    pub fn checkpoint_bytes(&self) -> Result<Vec<u8>, TrainError> {
        let tensors = self.named_tensors()?;
        let mut raw: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
        for (name, t) in tensors {
            let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            raw.push((
                name,
                t.dims().to_vec(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
        }
        let views = raw
            .iter()
            .map(|(n, s, b)| {
                Ok((
                    n.clone(),
                    safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)
                        .map_err(|e| TrainError::Other(e.to_string()))?,
                ))
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        let meta: HashMap<String, String> = [
            ("format", "ipld-checkpoint-v1".to_string()),
            ("step", self.step.to_string()),
            ("joint_steps", self.joint_steps().to_string()),
            ("opt_theta_steps", self.opt_theta.steps().to_string()),
            ("opt_phi_steps", self.opt_phi.steps().to_string()),
            ("seed", self.cfg.seed.to_string()),
            ("method", self.cfg.method.name().to_string()),
            (
                "particles_start",
                self.cloud().map_or(0, |c| c.start()).to_string(),
            ),
            (
                "opt_encoder_steps",
                match &self.latents {
                    Latents::Encoder { opt, .. } => opt.steps(),
                    Latents::Particles(_) => 0,
                }
                .to_string(),
            ),
            (
                "rng",
                "counter-based: every draw is a function of (seed, step)".to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(other!(safetensors::serialize(views, Some(meta)))?)
    }

    /// Restores the state saved in `path` (written by [`Trainer::checkpoint_bytes`]).
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<(), TrainError> {
        let ck = |reason: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| ck(e.to_string()))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| ck(format!("unreadable or truncated: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| ck(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| -> Result<u64, TrainError> {
            meta.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| ck(format!("metadata `{k}` is missing or not a number")))
        };
        if meta.get("format").map(String::as_str) != Some("ipld-checkpoint-v1") {
            return Err(ck("not an ipld checkpoint (format tag missing)".into()));
        }
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(ck(format!(
                    "tensor `{name}` has dtype {:?}, expected F32",
                    view.dtype()
                )));
            }
            let v: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.insert(
                name.to_string(),
                Tensor::from_vec(v, view.shape().to_vec(), &self.device)?,
            );
        }
        for (prefix, map) in [("theta", &self.theta), ("phi", &self.phi)] {
            restore_vars(prefix, map, &tensors).map_err(ck)?;
        }
        if let Some((ema, _, _)) = &mut self.ema {
            let mut shadow = Vec::new();
            for (name, var) in sorted_vars(&self.theta) {
                let t = tensors
                    .get(&format!("ema/{name}"))
                    .ok_or_else(|| ck(format!("missing tensor `ema/{name}` (train.ema is set)")))?;
                if t.dims() != var.dims() {
                    return Err(ck(format!(
                        "`ema/{name}` has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                shadow.push(t.clone());
            }
            *ema = other!(Ema::from_shadow(*ema.config(), shadow))?;
        }
        for (prefix, opt, steps) in [
            ("opt_theta", &mut self.opt_theta, get("opt_theta_steps")?),
            ("opt_phi", &mut self.opt_phi, get("opt_phi_steps")?),
        ] {
            let sub = with_prefix(prefix, &tensors);
            opt.load_state(steps, &sub).map_err(ck)?;
        }
        if meta.get("method").map(String::as_str) != Some(self.cfg.method.name()) {
            return Err(ck(format!(
                "was written by method `{}`, but the config says `{}`",
                meta.get("method").map_or("?", String::as_str),
                self.cfg.method.name()
            )));
        }
        let (data_len, latent_dim) = (self.data.len(), self.cfg.data.latent_dim);
        match &mut self.latents {
            Latents::Particles(cloud) => {
                let part = |name: &str| -> Result<(Vec<usize>, Vec<f32>), TrainError> {
                    let t = tensors
                        .get(&format!("particles/{name}"))
                        .ok_or_else(|| ck(format!("missing tensor `particles/{name}`")))?;
                    Ok((t.dims().to_vec(), t.flatten_all()?.to_vec1()?))
                };
                let (shape, z) = part("z")?;
                let (_, momentum) = part("momentum")?;
                let (_, second) = part("second_moment")?;
                if shape.len() != 3 || shape[0] != data_len || shape[2] != latent_dim {
                    return Err(ck(format!(
                        "particles have shape {shape:?}, expected [{data_len}, N, {latent_dim}] for this data and config"
                    )));
                }
                *cloud = ParticleCloud::from_parts(
                    get("particles_start")? as usize,
                    [shape[0], shape[1], shape[2]],
                    &z,
                    &momentum,
                    &second,
                )
                .map_err(|e| ck(e.to_string()))?;
            }
            Latents::Encoder { vars, opt, .. } => {
                restore_vars("encoder", vars, &tensors).map_err(ck)?;
                let sub = with_prefix("opt_encoder", &tensors);
                opt.load_state(get("opt_encoder_steps")?, &sub)
                    .map_err(ck)?;
            }
        }
        self.step = get("step")?;
        // Older checkpoints predate the prior refit: all their steps were joint steps.
        let joint = meta
            .get("joint_steps")
            .map_or(Ok(self.step), |_| get("joint_steps"))?;
        self.check_joint_steps(joint).map_err(ck)?;
        if self.lazy.is_some() {
            let missed = tensors.get("particles/missed_noise_steps").ok_or_else(|| {
                ck(
                    "missing tensor `particles/missed_noise_steps` (particles.lazy_noise is set)"
                        .into(),
                )
            })?;
            let missed: Vec<f32> = missed.flatten_all()?.to_vec1()?;
            if missed.len() != data_len
                || missed
                    .iter()
                    .any(|&v| !(v >= 0.0 && v.fract() == 0.0 && (v as u64) <= self.step))
            {
                return Err(ck(
                    "`particles/missed_noise_steps` is not one step count in 0..=step per point"
                        .into(),
                ));
            }
            let synced: Vec<u64> = missed.iter().map(|&v| self.step - v as u64).collect();
            let mut lazy = LazyNoise::from_synced(synced, 0, self.cfg.particles.update.lazy_eps());
            // The per-step variances are a function of the config and the step: replay them.
            for s in 0..joint {
                let v = other!(
                    self.cfg
                        .particles
                        .update
                        .step_variance(&self.step_context(s))
                )?;
                other!(lazy.record(s, v))?;
            }
            self.lazy = Some(lazy);
        }
        Ok(())
    }
}

/// A minibatch's loss and gradients, shards merged.
struct MinibatchLoss {
    /// L-hat of eq. (64).
    loss: f64,
    /// Sums over the latent rows of the diffusion loss and of the decoder's NLL.
    diffusion_sum: f64,
    nll_sum: f64,
    /// Gradients of L-hat (the shards' added).
    grads: GradStore,
    /// Per shard, in order: the gradient of the shard's particles (None when none reached
    /// them) and its latents.
    z_grads: Vec<Option<Tensor>>,
    z_values: Vec<Tensor>,
    /// gamma_t of this step.
    gamma: f64,
}

/// The sum of the shards' gradient stores, added in shard order (so the bits do not depend on
/// which thread finished first).
fn add_grads(stores: impl IntoIterator<Item = GradStore>) -> Result<GradStore, TrainError> {
    let mut sum = GradStore::default();
    for g in stores {
        sum.extend(g)?;
    }
    Ok(sum)
}

/// Runs `shard` on `shards` contiguous ranges of a minibatch's `points` (fewer if there are fewer
/// points) and returns the results in range order. On the CPU the shards run in parallel; with a
/// shard per core, the kernels inside each stay on its thread. The loss (64) is a mean over the
/// minibatch, so its gradient is the sum of the shards' gradients: sharding changes only the
/// order of float sums, and a result depends on the shard count, never on the thread count.
fn run_shards<T: Send>(
    device: &Device,
    shards: usize,
    points: usize,
    shard: impl Fn(std::ops::Range<usize>) -> Result<T, TrainError> + Sync,
) -> Result<Vec<T>, TrainError> {
    let shards = shards.clamp(1, points.max(1));
    let range = |s: usize| s * points / shards..(s + 1) * points / shards;
    if shards == 1 || !device.is_cpu() {
        return (0..shards).map(|s| shard(range(s))).collect();
    }
    let per_core = shards >= candle_core::utils::get_num_threads();
    (0..shards)
        .into_par_iter()
        .map(|s| match per_core {
            true => ipld_models::on_this_thread(|| shard(range(s))),
            false => shard(range(s)),
        })
        .collect()
}

/// The latents a shard's loss is computed from.
enum ShardLatents<'a> {
    /// The minibatch's particles, [B N, d] row-major.
    Particles(Vec<f32>),
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
struct ShardInputs<'a> {
    eps: &'a PriorNet,
    decoder: &'a DecoderNet,
    loss: &'a DiffusionLoss,
    latent_scale: f64,
    two_stage: bool,
    sigma: f64,
    gamma: f64,
    points: usize,
    n: usize,
    dz: usize,
    r_draws: usize,
    /// Targets [B N, d_x], each point repeated N times.
    x: &'a Tensor,
    /// Timesteps and noise [R B N (, d)], draw-major.
    k: &'a Tensor,
    noise: &'a Tensor,
    source: &'a ShardLatents<'a>,
}

/// One shard's share of the loss and its gradients.
struct ShardOut {
    /// Its rows' sum of the loss terms divided by the minibatch's row count, so the shards'
    /// values add up to L-hat.
    loss: f64,
    /// Sums over its rows of the diffusion loss and of the decoder's NLL.
    diffusion_sum: f64,
    nll_sum: f64,
    grads: GradStore,
    /// The shard's latents and their gradient (particles only; None when nothing reached them).
    z: Tensor,
    z_grad: Option<Tensor>,
}

impl ShardInputs<'_> {
    /// The loss of eq. (64) over the points `p` of the minibatch (rows p.start N .. p.end N),
    /// scaled by 1/(N |B|), and its backward. L-hat is a mean over latent rows, so its gradient
    /// is the sum of the shards' gradients: shards can run on separate threads, and the result
    /// depends on the shard count (float summation order) but never on the thread count.
    fn run(&self, p: std::ops::Range<usize>) -> Result<ShardOut, TrainError> {
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
            ShardLatents::Particles(zb) => {
                let rows_z = &zb[r0 * dz..(r0 + len) * dz];
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
        let total = if self.r_draws == 1 {
            other!(self.loss.per_sample(self.eps, &z_prior, &noise, &k))?.total
        } else {
            let zr = z_prior.repeat((self.r_draws, 1))?;
            let t = other!(self.loss.per_sample(self.eps, &zr, &noise, &k))?;
            t.total.reshape((self.r_draws, len))?.mean(0)?
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
        let grads = loss.backward()?;
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
fn encoder_draws(
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

/// Sets every variable of `vars` from `tensors["<prefix>/<name>"]`, checking shapes.
fn restore_vars(
    prefix: &str,
    vars: &VarMap,
    tensors: &HashMap<String, Tensor>,
) -> Result<(), String> {
    for (name, var) in sorted_vars(vars) {
        let key = format!("{prefix}/{name}");
        let t = tensors
            .get(&key)
            .ok_or_else(|| format!("missing tensor `{key}`"))?;
        if t.dims() != var.dims() {
            return Err(format!(
                "tensor `{key}` has shape {:?} but the config builds {:?}",
                t.dims(),
                var.dims()
            ));
        }
        var.set(t).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The tensors under `prefix/`, with the prefix stripped.
fn with_prefix(prefix: &str, tensors: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let p = format!("{prefix}/");
    tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(&p).map(|s| (s.to_string(), v.clone())))
        .collect()
}

/// Mean particle norm and mean within-point spread of a [b, n, d] buffer.
fn particle_stats(z: &[f32], b: usize, n: usize, d: usize) -> (f64, f64) {
    let norm = z
        .chunks_exact(d)
        .map(|p| p.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt())
        .sum::<f64>()
        / (b * n) as f64;
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
    (norm, spread / (b * d) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trainer(method: &str, extra: &[&str]) -> Trainer {
        let mut sets = crate::config::method_overrides(method).unwrap();
        sets.extend(
            [
                "data.points=300",
                "data.ambient_dim=8",
                "particles.count=2",
                "train.batch_size=50",
                "train.kl.warmup_steps=20",
                "model.eps.hidden=32",
                "model.eps.time_embedding=16",
            ]
            .iter()
            .chain(extra)
            .map(|s| s.to_string()),
        );
        let cfg = RunConfig::preset("gmm")
            .unwrap()
            .with_overrides(&sets, "test")
            .unwrap();
        let data = crate::run::load_data(&cfg).unwrap();
        Trainer::new(cfg, data, Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Agreement up to f32 summation order: max |a - b| <= 1e-5 max |a|.
    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: length");
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(scale > 0.0, "{what}: all zero");
        assert!(
            diff <= 1e-5 * scale,
            "{what}: differs by {diff:e} (scale {scale:e})"
        );
    }

    /// The shards' losses and gradients add up to the whole minibatch's, for every method and
    /// ablation (3 uneven shards of 16, 17 and 17 points); only the float order changes.
    #[test]
    fn shards_add_up_to_the_whole_minibatch() {
        let cases: [(&str, &[&str]); 6] = [
            ("ipld", &[]),
            ("ipld", &["train.two_stage=true"]),
            ("ipld", &["train.diffusion_samples=2"]),
            ("diffusion-vae", &[]),
            ("pgd", &[]),
            ("mpgd", &[]),
        ];
        for (method, extra) in cases {
            let what = format!("{method} {extra:?}");
            let tr = trainer(method, extra);
            // Past the KL warm-up's start, so the diffusion loss carries weight.
            let t = 30;
            let batch = tr.batch_indices(t);
            let whole = tr.minibatch_loss(t, &batch, 1).unwrap();
            let split = tr.minibatch_loss(t, &batch, 3).unwrap();
            assert_eq!((whole.z_grads.len(), split.z_grads.len()), (1, 3), "{what}");
            let rel = |a: f64, b: f64| (a - b).abs() / a.abs();
            assert!(rel(whole.loss, split.loss) < 1e-6, "{what}: loss");
            assert!(rel(whole.nll_sum, split.nll_sum) < 1e-6, "{what}: nll");
            assert!(
                rel(whole.diffusion_sum, split.diffusion_sum) < 1e-6,
                "{what}: diffusion"
            );
            let mut vars = [&tr.theta, &tr.phi].map(sorted_vars).concat();
            if let Latents::Encoder { vars: enc, .. } = &tr.latents {
                vars.extend(sorted_vars(enc));
            }
            for (name, var) in vars {
                let g = |l: &MinibatchLoss| values(l.grads.get(var.as_tensor()).unwrap());
                assert_close(&g(&whole), &g(&split), &format!("{what}: {name}"));
            }
            let cat =
                |l: &MinibatchLoss| -> Vec<f32> { l.z_values.iter().flat_map(values).collect() };
            assert_eq!(cat(&whole), cat(&split), "{what}: the shards' latents");
            match &tr.latents {
                Latents::Particles(_) => {
                    let zg = |l: &MinibatchLoss| -> Vec<f32> {
                        l.z_grads
                            .iter()
                            .flat_map(|g| values(g.as_ref().unwrap()))
                            .collect()
                    };
                    assert_close(&zg(&whole), &zg(&split), &format!("{what}: particles"));
                }
                Latents::Encoder { .. } => {
                    assert!(split.z_grads.iter().all(Option::is_none), "{what}");
                }
            }
        }
    }
}
