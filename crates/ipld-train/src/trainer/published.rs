//! One step of the published PGD (Kuntz, Lim & Johansen 2023) and MPGD (Lim, Kuntz, Power &
//! Johansen 2024) on p(x, z) = N(z; 0, I) N(x; g_phi(z), sigma² I): no diffusion prior, no KL
//! weight. The order of each step follows the authors' code:
//!
//! - PGD: the loss and its gradients at (phi, z); the minibatch's particles take their Langevin
//!   step with the score at the old phi; then phi takes its (RMSProp-preconditioned) step.
//! - MPGD: the catch-up of the minibatch's particles over the steps they missed (`catch_up`,
//!   score at the old phi); phi <- phi + c1 v; the loss and its phi-gradient there; phi's
//!   momentum step; then the particles' underdamped transition with the score at the new phi.
//!
//! L-hat = 1/(N |B|) sum_{m in B, n} -log p(x^m, z^{m,n}) (without constants), the particle
//! rules' convention; phi's update scales its gradient by |B| to the codes' minibatch sum.

use candle_core::{DType, Var};
use ipld_models::{Decoder, gaussian_nll};
use ipld_particles::UpdateConfig;

use super::loss::{MinibatchLoss, ShardOut, add_grads, even_ranges, particle_stats, run_shards};
use super::{StepMetrics, Trainer};
use crate::error::TrainError;

impl Trainer {
    /// One step of the published PGD or MPGD.
    pub(super) fn published_step(&mut self) -> Result<StepMetrics, TrainError> {
        let t = self.step;
        let batch = self.batch_indices(t);
        self.latents.prepare(t, &batch, &self.cfg.particles)?;
        let (b, per_epoch) = self.batching();
        let epoch = t / per_epoch;
        let phi_cfg = self
            .cfg
            .train
            .phi_update
            .ok_or_else(|| TrainError::Invalid("PGD and MPGD need train.phi_update".into()))?;
        let h_phi = phi_cfg.step_size * self.phi_decay(epoch);
        let ctx = self.step_context(t);
        let rule = self.cfg.particles.update;
        let momentum = matches!(rule, UpdateConfig::UnderdampedLangevin(_));
        if let UpdateConfig::UnderdampedLangevin(r) = &rule
            && r.catch_up
        {
            let missed = self.latents.missed(&batch, t);
            if missed.iter().any(|&k| k > 0) {
                let at_old = self.published_loss(t, &batch, self.cfg.train.shards)?;
                self.latents.catch_up(r, &at_old, &batch, &missed, &ctx)?;
            }
        }
        self.phi()?.advance(h_phi)?;
        let mb = self.published_loss(t, &batch, self.cfg.train.shards)?;
        let after = if momentum {
            self.phi()?.step(&mb.grads, h_phi, b as f64)?;
            let at_new = self.published_loss(t, &batch, self.cfg.train.shards)?;
            self.latents.update(&at_new, &batch, &ctx, &rule, 0.0)?
        } else {
            let after = self.latents.update(&mb, &batch, &ctx, &rule, 0.0)?;
            self.phi()?.step(&mb.grads, h_phi, b as f64)?;
            after
        };
        let stats = particle_stats(
            &after,
            b,
            self.particles_per_point(),
            self.cfg.data.latent_dim,
        );
        self.latents.mark_moved(&batch, t);
        self.step += 1;
        let rows = (b * self.particles_per_point()) as f64;
        Ok(StepMetrics {
            step: t,
            loss: mb.loss,
            diffusion_loss: f64::NAN,
            nll: mb.nll_sum / rows,
            gamma: 1.0,
            particle_step_size: ctx.step_size,
            particle_norm: stats.0,
            particle_spread: stats.1,
            lr_theta: 0.0,
            lr_phi: h_phi,
            prior_refit: false,
        })
    }

    fn phi(&mut self) -> Result<&mut crate::optim::PhiUpdate, TrainError> {
        self.decoder
            .phi_update()
            .ok_or_else(|| TrainError::Invalid("the decoder has no PGD/MPGD update".into()))
    }

    /// L-hat = 1/(N |B|) sum -log p(x^m, z^{m,n}) = mean of ||z||² / 2 + ||x - g_phi(z)||² /
    /// (2 sigma²) over the minibatch's particles, with its gradients in phi and z, in `shards`
    /// data-parallel shards. `diffusion_sum` holds the prior term's sum.
    pub(super) fn published_loss(
        &self,
        t: u64,
        batch: &[usize],
        shards: usize,
    ) -> Result<MinibatchLoss, TrainError> {
        let (b, n, dz) = (
            batch.len(),
            self.particles_per_point(),
            self.cfg.data.latent_dim,
        );
        let rows = b * n;
        let x = self.repeated_points(batch)?;
        let cloud = self
            .latents
            .cloud()
            .ok_or_else(|| TrainError::Invalid("PGD and MPGD need particles".into()))?;
        let mut zb = Vec::with_capacity(rows * dz);
        cloud.gather_into(batch, &mut zb)?;
        let sigma = self.cfg.decoder_sigma();
        let decoder = &self.decoder.net;
        let shard = |p: std::ops::Range<usize>| -> Result<ShardOut, TrainError> {
            let (r0, len) = (p.start * n, p.len() * n);
            let var = Var::from_slice(&zb[r0 * dz..(r0 + len) * dz], (len, dz), &self.device)?;
            let z = var.as_tensor();
            let prior = (z.sqr()?.sum(1)? * 0.5)?;
            let nll = gaussian_nll(&x.narrow(0, r0, len)?, &decoder.decode(z)?, sigma)?;
            let loss = (&prior + &nll)?.sum_all()?.affine(1.0 / rows as f64, 0.0)?;
            let value = |t: &candle_core::Tensor| -> candle_core::Result<f64> {
                t.to_dtype(DType::F64)?.to_scalar::<f64>()
            };
            let grads = loss.backward()?;
            let z_grad = grads.get(z).cloned();
            Ok(ShardOut {
                loss: value(&loss)?,
                diffusion_sum: value(&prior.sum_all()?)?,
                nll_sum: value(&nll.sum_all()?)?,
                grads,
                z: z.clone(),
                z_grad,
            })
        };
        let outs = run_shards(&self.device, even_ranges(shards, b), shard)?;
        let loss: f64 = outs.iter().map(|o| o.loss).sum();
        if !loss.is_finite() {
            return Err(TrainError::NonFinite {
                step: t,
                what: "the loss".into(),
            });
        }
        let diffusion_sum = outs.iter().map(|o| o.diffusion_sum).sum();
        let nll_sum = outs.iter().map(|o| o.nll_sum).sum();
        let mut grads = Vec::with_capacity(outs.len());
        let (mut z_grads, mut z_values) = (Vec::new(), Vec::new());
        for o in outs {
            grads.push(o.grads);
            z_grads.push(o.z_grad);
            z_values.push(o.z);
        }
        Ok(MinibatchLoss {
            loss,
            diffusion_sum,
            nll_sum,
            grads: add_grads(grads)?,
            z_grads,
            z_values,
            gamma: 1.0,
        })
    }
}
