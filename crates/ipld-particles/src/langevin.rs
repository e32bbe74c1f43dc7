//! Algorithm 1 / eqs. (19)-(22): unadjusted Langevin on the subsampled loss.

use serde::{Deserialize, Serialize};

use crate::kernel::{Reads, Row, batch_pass, fused_pass};
use crate::{
    KernelParams, NoiseStream, ParticleCloud, ParticleError, ParticleUpdate, StepContext,
    StepVariance,
};

/// Algorithm 1 / eqs. (19)-(22): unadjusted Langevin on the subsampled loss. Minibatch particles
/// move by -(M N h) grad; every particle gets sqrt(2 h T) W with the temperature T of the
/// step's [`crate::NoiseScale`]: gamma_t |B| / M as printed (Section 3.3's "matching" |B|/M and
/// the KL annealing of A.4.1), or gamma_t, under which the subsampled chain keeps eq. (21)'s
/// stationary law.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Langevin {}

impl Langevin {
    /// The per-row kernel of one step for a cloud of `n` particles per point.
    fn kernel(&self, ctx: &StepContext, n: usize) -> impl Fn(Row<'_>) + Sync + use<> {
        let m_total = ctx.total_points as f64;
        let drift = (ctx.step_size * m_total * n as f64) as f32;
        let sd = self.variance(ctx).plain.sqrt() as f32;
        // Inlined into the dispatched (AVX-512/AVX2) row loop so it is vectorised for that ISA.
        #[inline(always)]
        move |(z, _, _, g, w, _): Row<'_>| match g {
            Some(g) => {
                for ((zi, gi), wi) in z.iter_mut().zip(g).zip(w) {
                    *zi += -drift * gi + sd * wi;
                }
            }
            None => {
                for (zi, wi) in z.iter_mut().zip(w) {
                    *zi += sd * wi;
                }
            }
        }
    }

    /// Per-element noise variance of one step: 2 h T, unpreconditioned (T = gamma_t |B| / M as
    /// printed, gamma_t for the posterior).
    fn variance(&self, ctx: &StepContext) -> StepVariance {
        StepVariance {
            plain: 2.0 * ctx.step_size * ctx.noise_scale.temperature(ctx),
            preconditioned: 0.0,
        }
    }
}

impl ParticleUpdate for Langevin {
    fn name(&self) -> &'static str {
        "langevin"
    }

    fn step(
        &self,
        cloud: &mut ParticleCloud,
        batch: &[usize],
        grads: &[f32],
        ctx: &StepContext,
        noise: &NoiseStream,
    ) -> Result<(), ParticleError> {
        let kernel = self.kernel(ctx, cloud.particles());
        fused_pass(cloud, batch, grads, ctx, noise, Reads::Z, false, kernel)
    }

    fn supports_lazy_noise(&self) -> bool {
        true
    }

    fn step_variance(&self, ctx: &StepContext) -> Result<StepVariance, ParticleError> {
        Ok(self.variance(ctx))
    }

    fn step_batch_rows(
        &self,
        cloud: &mut ParticleCloud,
        batch: &[usize],
        grads: &[f32],
        ctx: &StepContext,
        noise: &NoiseStream,
    ) -> Result<(), ParticleError> {
        let kernel = self.kernel(ctx, cloud.particles());
        batch_pass(cloud, batch, grads, ctx, noise, kernel)
    }

    fn kernel_params(&self, ctx: &StepContext, n: usize) -> Result<KernelParams, ParticleError> {
        Ok(KernelParams {
            rule: 0,
            drift: (ctx.step_size * ctx.total_points as f64 * n as f64) as f32,
            a: 0.0,
            b: 0.0,
            eps: 0.0,
            sd: self.variance(ctx).plain.sqrt() as f32,
            precondition: false,
        })
    }
}
