//! Where a method's latents come from, as one type: a particle cloud moved by a Langevin-type
//! rule, with its optional exact lazy noise (IPLD; Algorithms 1 and 2) or MPGD's catch-up of
//! the steps a point missed (PGD, MPGD as published), or an
//! amortised Gaussian encoder with N reparameterised draws per point (DiffusionVAE). Each
//! variant gathers a minibatch's latents for the loss of eq. (64), applies the step's update to
//! them, and saves and restores its own state.

use candle_core::{DType, Device, Tensor};
use ipld_data::{Dataset, InMemoryDataset};
use ipld_diffusion::gaussian;
use ipld_particles::{
    INIT_STREAM, LazyNoise, NoiseStream, ParticleCloud, ParticleUpdate, StepContext,
    UnderdampedLangevin, UpdateConfig,
};
use rand_chacha::ChaCha8Rng;

use super::loss::{MinibatchLoss, ShardLatents, encoder_draws};
use super::network::{OptimizerChoice, Trained};
use crate::config::{ParticlesConfig, RunConfig};
use crate::error::TrainError;
use crate::nets::EncoderNet;
use crate::streams::Stream;

/// A particle cloud, its lazy-noise state when `particles.lazy_noise` is set, and the two
/// noise streams it draws from.
pub(crate) struct Particles {
    pub(super) cloud: ParticleCloud,
    pub(super) lazy: Option<LazyNoise>,
    /// The updates' noise (Stream::ParticleNoise).
    noise: NoiseStream,
    /// Lazy noise's catch-up draws (Stream::LazyNoise); MPGD's catch-up transitions draw from it
    /// too (the two never run together).
    catch_up: NoiseStream,
    /// MPGD with `catch_up`: per point, the step its particles' dynamics have been applied
    /// through (the step after its last visit; 0 if never visited).
    caught_up: Option<Vec<u64>>,
    /// Points M of the whole data (the cloud may hold a rank's slice of them).
    pub(super) points: usize,
}

/// The latents of a method.
pub(crate) enum Latents {
    /// IPLD, PGD, MPGD.
    Particles(Particles),
    /// DiffusionVAE: the encoder and `n` draws per point.
    Encoder {
        /// The encoder with its parameters and optimiser.
        encoder: Trained<EncoderNet>,
        /// Draws per point N.
        n: usize,
    },
}

impl Latents {
    /// Fresh latents for the data rows `rows` of `m` points of dimension `dx` (all rows in one
    /// process; a rank's slice when sharded): particles z ~ N(0, I) (one per point during a warm
    /// start, B.3), drawn as the whole cloud would draw them, or a seeded encoder.
    pub fn new(
        cfg: &RunConfig,
        m: usize,
        rows: std::ops::Range<usize>,
        dx: usize,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let dz = cfg.data.latent_dim;
        let pc = &cfg.particles;
        if !cfg.method.uses_particles() {
            let opt = OptimizerChoice::AdamW(cfg.train.optimizer_encoder);
            let encoder = Trained::new(device, "encoder", opt, |v, vb| {
                EncoderNet::new(
                    &cfg.model.decoder,
                    dz,
                    dx,
                    v,
                    vb,
                    Stream::NetworkInit.seed(cfg.seed, 3),
                )
            })?;
            return Ok(Self::Encoder {
                encoder,
                n: pc.count,
            });
        }
        let n0 = if pc.warm_start_steps > 0 { 1 } else { pc.count };
        let mut cloud = ParticleCloud::gaussian(rows.start, rows.len(), n0, dz, cfg.seed)?;
        if pc.init_scale != 1.0 {
            cloud.scale_positions(pc.init_scale as f32);
        }
        let lazy = pc
            .lazy_noise
            .then(|| LazyNoise::for_rule(&cloud, 0, &pc.update));
        let mut caught_up = None;
        if let UpdateConfig::UnderdampedLangevin(r) = &pc.update {
            // MPGD's velocities start at their stationary law (counter 1 of the initial
            // particles' stream; the particles are counter 0).
            r.initial_velocity(&mut cloud, &NoiseStream::new(cfg.seed, INIT_STREAM), 1);
            caught_up = r.catch_up.then(|| vec![0; m]);
        }
        Ok(Self::Particles(Particles {
            cloud,
            lazy,
            noise: Stream::ParticleNoise.noise(cfg.seed, pc.noise),
            catch_up: Stream::LazyNoise.noise(cfg.seed, pc.noise),
            caught_up,
            points: m,
        }))
    }

    /// Latents per training point now (particles N, or encoder draws).
    pub fn per_point(&self) -> usize {
        match self {
            Self::Particles(p) => p.cloud.particles(),
            Self::Encoder { n, .. } => *n,
        }
    }

    /// The cloud as stored; with lazy noise, rows not in the last minibatch may lag behind.
    pub fn cloud(&self) -> Option<&ParticleCloud> {
        match self {
            Self::Particles(p) => Some(&p.cloud),
            Self::Encoder { .. } => None,
        }
    }

    /// The encoder's variables (DiffusionVAE).
    pub fn encoder_vars(&self) -> Option<&candle_nn::VarMap> {
        match self {
            Self::Particles(_) => None,
            Self::Encoder { encoder, .. } => Some(&encoder.vars),
        }
    }

    /// The encoder and its parameters (DiffusionVAE).
    #[cfg(test)]
    pub fn encoder(&self) -> Option<&Trained<EncoderNet>> {
        match self {
            Self::Particles(_) => None,
            Self::Encoder { encoder, .. } => Some(encoder),
        }
    }

    /// A copy of the cloud with every row's noise applied through step `upto` (the state is
    /// not changed); None for an encoder.
    pub fn synced_cloud(&self, upto: u64) -> Result<Option<ParticleCloud>, TrainError> {
        let Self::Particles(p) = self else {
            return Ok(None);
        };
        let mut c = p.cloud.clone();
        if let Some(lazy) = &p.lazy {
            lazy.clone().sync_all(&mut c, upto, &p.catch_up)?;
        }
        Ok(Some(c))
    }

    /// Before step `t`'s loss: the warm start's replication to N particles (B.3) when `t` is its
    /// end, and lazy noise's catch-up of the minibatch `batch`.
    pub fn prepare(
        &mut self,
        t: u64,
        batch: &[usize],
        pc: &ParticlesConfig,
    ) -> Result<(), TrainError> {
        let Self::Particles(p) = self else {
            return Ok(());
        };
        if pc.warm_start_steps > 0
            && t == pc.warm_start_steps
            && p.cloud.particles() == 1
            && pc.count > 1
        {
            // The copies must share the noise the single particle already received.
            if let Some(lazy) = &mut p.lazy {
                lazy.sync_all(&mut p.cloud, t, &p.catch_up)?;
            }
            p.cloud.replicate(pc.count)?;
        }
        if let Some(lazy) = &mut p.lazy {
            lazy.sync(&mut p.cloud, batch, t, &p.catch_up)?;
        }
        Ok(())
    }

    /// What the loss's shards read for the minibatch `batch` ([B N, d] rows): the particles of
    /// the positions `local` (this rank's), or the encoder's inputs and its reparameterisation
    /// noise drawn from `rng` for the whole minibatch (after the loss's own draws, as the random
    /// sequence requires).
    pub fn shard_source<'a>(
        &'a self,
        batch: &[usize],
        local: std::ops::Range<usize>,
        data: &InMemoryDataset,
        rng: &mut ChaCha8Rng,
        dz: usize,
        device: &Device,
    ) -> Result<ShardLatents<'a>, TrainError> {
        let rows = batch.len() * self.per_point();
        Ok(match self {
            Self::Particles(p) => {
                let mut zb = Vec::with_capacity(local.len() * self.per_point() * dz);
                p.cloud.gather_into(&batch[local.clone()], &mut zb)?;
                ShardLatents::Particles {
                    z: zb,
                    first: local.start * self.per_point(),
                }
            }
            Self::Encoder { encoder, .. } => ShardLatents::Encoder {
                encoder: &encoder.net,
                x: data.gather(batch, device)?,
                noise: gaussian(rng, (rows, dz), DType::F32, device)?,
            },
        })
    }

    /// The step's update of the latents from the minibatch loss `mb`: the particle rule (lazily
    /// when configured) on the particles' gradients of `batch` (this rank's points), or an AdamW
    /// step of the encoder with learning rate `lr_encoder`. Returns those points' latents after
    /// it ([points, N, d]).
    pub fn update(
        &mut self,
        mb: &MinibatchLoss,
        batch: &[usize],
        ctx: &StepContext,
        rule: &UpdateConfig,
        lr_encoder: f64,
    ) -> Result<Vec<f32>, TrainError> {
        let (b, n) = (batch.len(), self.per_point());
        match self {
            Self::Particles(p) => {
                let dz = p.cloud.dim();
                let gz = particle_grads(mb, ctx.step)?;
                match &mut p.lazy {
                    Some(lazy) => lazy.step(rule, &mut p.cloud, batch, &gz, ctx, &p.noise)?,
                    None => rule.step(&mut p.cloud, batch, &gz, ctx, &p.noise)?,
                }
                let mut after = Vec::with_capacity(b * n * dz);
                p.cloud.gather_into(batch, &mut after)?;
                Ok(after)
            }
            Self::Encoder { encoder, .. } => {
                encoder.step(&mb.grads, lr_encoder)?;
                Ok(Tensor::cat(&mb.z_values, 0)?.flatten_all()?.to_vec1()?)
            }
        }
    }

    /// MPGD's catch-up (`catch_up`): the steps each point of `batch` missed since its
    /// particles last moved, before step `t` (all 0 without catch-up).
    pub fn missed(&self, batch: &[usize], t: u64) -> Vec<u64> {
        match self {
            Self::Particles(Particles {
                caught_up: Some(c), ..
            }) => batch.iter().map(|&m| t - c[m]).collect(),
            _ => vec![0; batch.len()],
        }
    }

    /// MPGD's catch-up transitions of the points of `batch` over their `missed` steps, with the
    /// particle gradients of `mb` (taken at their current positions).
    pub fn catch_up(
        &mut self,
        rule: &UnderdampedLangevin,
        mb: &MinibatchLoss,
        batch: &[usize],
        missed: &[u64],
        ctx: &StepContext,
    ) -> Result<(), TrainError> {
        if let Self::Particles(p) = self {
            let gz = particle_grads(mb, ctx.step)?;
            rule.catch_up(&mut p.cloud, batch, &gz, missed, ctx, &p.catch_up)?;
        }
        Ok(())
    }

    /// After step `t` moved the particles of `batch`: they are caught up through step t + 1.
    pub fn mark_moved(&mut self, batch: &[usize], t: u64) {
        if let Self::Particles(Particles {
            caught_up: Some(c), ..
        }) = self
        {
            for &m in batch {
                c[m] = t + 1;
            }
        }
    }

    /// After a load: MPGD's caught-up steps are a function of the minibatches so far (the step
    /// after each point's last visit), recomputed by the trainer like the visit counts.
    pub fn set_caught_up(&mut self, caught_up: &[u64]) -> Result<(), TrainError> {
        if let Self::Particles(Particles {
            caught_up: Some(c), ..
        }) = self
        {
            if c.len() != caught_up.len() {
                return Err(TrainError::Invalid(format!(
                    "{} caught-up steps for {} points",
                    caught_up.len(),
                    c.len()
                )));
            }
            c.copy_from_slice(caught_up);
        }
        Ok(())
    }

    /// The prior refit's latents of the points at positions `local` of `batch` ([local N, d],
    /// detached): the particles brought up to the last joint step `joint`, or N encoder draws
    /// with noise drawn from `rng` for the whole batch (so every rank draws the same numbers).
    #[allow(clippy::too_many_arguments)]
    pub fn frozen(
        &mut self,
        batch: &[usize],
        local: std::ops::Range<usize>,
        joint: u64,
        data: &InMemoryDataset,
        rng: &mut ChaCha8Rng,
        dz: usize,
        device: &Device,
    ) -> Result<Tensor, TrainError> {
        let n = self.per_point();
        let mine = &batch[local.clone()];
        let rows = mine.len() * n;
        match self {
            Self::Particles(p) => {
                // Lazy noise: bring the rows up to the last joint step (a no-op once synced).
                if let Some(lazy) = &mut p.lazy {
                    lazy.sync(&mut p.cloud, mine, joint, &p.catch_up)?;
                }
                let mut zb = Vec::with_capacity(rows * dz);
                p.cloud.gather_into(mine, &mut zb)?;
                Ok(Tensor::from_vec(zb, (rows, dz), device)?)
            }
            Self::Encoder { encoder, .. } => {
                let x = data.gather(mine, device)?;
                let e = gaussian(rng, (batch.len() * n, dz), DType::F32, device)?;
                let e = e.narrow(0, local.start * n, rows)?;
                Ok(encoder_draws(&encoder.net, &x, n, &e)?.0.detach())
            }
        }
    }

    /// After a load: each point's visit count (Adam's bias correction reads it) is a function
    /// of the minibatches so far, recomputed by the trainer, so the checkpoint needs no extra
    /// tensor and checkpoints written before the counts existed restore them exactly.
    pub fn set_visits(&mut self, visits: &[u32]) -> Result<(), TrainError> {
        if let Self::Particles(p) = self {
            p.cloud.set_visits(visits)?;
        }
        Ok(())
    }

    /// Lazy noise after a load: the per-step variances are a function of the config and the
    /// step, so those of the joint steps `0..joint` are recomputed from `ctx` (only with lazy
    /// noise).
    pub fn replay_noise_variances(
        &mut self,
        joint: u64,
        rule: &UpdateConfig,
        ctx: impl Fn(u64) -> StepContext,
    ) -> Result<(), TrainError> {
        if let Self::Particles(Particles {
            lazy: Some(lazy), ..
        }) = self
        {
            for s in 0..joint {
                lazy.record(s, rule.step_variance(&ctx(s))?)?;
            }
        }
        Ok(())
    }
}

/// The particle gradients of a minibatch loss, flattened in batch order (0 where none reached a
/// shard's particles), checked finite.
fn particle_grads(mb: &MinibatchLoss, step: u64) -> Result<Vec<f32>, TrainError> {
    let mut gz: Vec<f32> = Vec::new();
    for (g, z) in mb.z_grads.iter().zip(&mb.z_values) {
        match g {
            Some(g) => gz.extend(g.flatten_all()?.to_vec1::<f32>()?),
            None => gz.extend(std::iter::repeat_n(0.0, z.elem_count())),
        }
    }
    if gz.iter().any(|g| !g.is_finite()) {
        return Err(TrainError::NonFinite {
            step,
            what: "the particle gradient".into(),
        });
    }
    Ok(gz)
}
