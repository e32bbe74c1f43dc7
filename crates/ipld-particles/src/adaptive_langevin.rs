//! Algorithm 2 / eqs. (65)-(66): adaptive Langevin with momentum and an RMSProp preconditioner.

use serde::{Deserialize, Serialize};

use crate::kernel::{Reads, Row, batch_pass, fused_pass, inv_fourth_root};
use crate::{
    KernelParams, NoiseStream, ParticleCloud, ParticleError, ParticleUpdate, StepContext,
    StepVariance,
};

/// Algorithm 2 / eqs. (65)-(66): adaptive Langevin with momentum and an RMSProp preconditioner.
/// For minibatch particles, with g = M N grad:
/// M <- a M + (1 - a) g, V <- b V + (1 - b) g², G = (V + eps)^(-1/2), z <- z - h G M.
/// The drift *descends* the loss of eq. (64); the pseudo-code's "+ h G M" would ascend it.
/// Every particle then gets sqrt(2 h gamma_t / M) G^{1/2} W, times 1/|B| when `batch_noise_scale`
/// (the paper's implementation, A.4.2), with G = I during the first epoch
/// ([`AdaptiveLangevin::PRECONDITION_FROM_EPOCH`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveLangevin {
    /// Momentum coefficient a (0.9).
    pub momentum: f64,
    /// Second-moment coefficient b (0.999).
    pub second_moment: f64,
    /// epsilon inside G = (V + eps)^(-1/2).
    pub eps: f64,
    /// Scale the noise by 1/|B| as the paper's implementation does.
    pub batch_noise_scale: bool,
}

impl Default for AdaptiveLangevin {
    fn default() -> Self {
        Self {
            momentum: 0.9,
            second_moment: 0.999,
            eps: 1e-8,
            batch_noise_scale: true,
        }
    }
}

impl AdaptiveLangevin {
    /// The first epoch whose noise is preconditioned by G^{1/2}: the paper's implementation uses
    /// G = I on the noise during the first epoch, while V is still warming up (A.4.2).
    pub const PRECONDITION_FROM_EPOCH: u64 = 1;

    /// Whether step `ctx` preconditions its noise.
    pub fn preconditions_noise(&self, ctx: &StepContext) -> bool {
        ctx.epoch >= Self::PRECONDITION_FROM_EPOCH
    }

    /// sqrt(2 h gamma_t / M), divided by |B| with `batch_noise_scale`.
    fn noise_sd(&self, ctx: &StepContext) -> f64 {
        let mut sd = (2.0 * ctx.step_size * ctx.gamma / ctx.total_points as f64).sqrt();
        if self.batch_noise_scale {
            sd /= ctx.batch_size.max(1) as f64;
        }
        sd
    }

    fn kernel(&self, ctx: &StepContext, n: usize) -> impl Fn(Row<'_>) + Sync + use<> {
        let scale = (ctx.total_points as f64 * n as f64) as f32;
        let (a, b, eps, h) = (
            self.momentum as f32,
            self.second_moment as f32,
            self.eps as f32,
            ctx.step_size as f32,
        );
        let sd = self.noise_sd(ctx) as f32;
        let precondition = self.preconditions_noise(ctx);
        // Branches hoisted out of the element loops so each loop vectorises; inlined into the
        // dispatched (AVX-512/AVX2) row loop so it is compiled for that ISA.
        #[inline(always)]
        move |(z, m1, m2, g, w): Row<'_>| {
            if let Some(g) = g {
                for ((((zi, m1i), m2i), gi), wi) in z.iter_mut().zip(m1).zip(m2).zip(g).zip(w) {
                    let gi = scale * gi;
                    *m1i = a * *m1i + (1.0 - a) * gi;
                    *m2i = b * *m2i + (1.0 - b) * gi * gi;
                    *zi -= h * *m1i / (*m2i + eps).sqrt();
                    let noise_sd = if precondition {
                        sd * inv_fourth_root(*m2i + eps)
                    } else {
                        sd
                    };
                    *zi += noise_sd * wi;
                }
            } else if precondition {
                for ((zi, m2i), wi) in z.iter_mut().zip(m2.iter()).zip(w) {
                    *zi += sd * inv_fourth_root(*m2i + eps) * wi;
                }
            } else {
                for (zi, wi) in z.iter_mut().zip(w) {
                    *zi += sd * wi;
                }
            }
        }
    }
}

impl ParticleUpdate for AdaptiveLangevin {
    fn name(&self) -> &'static str {
        "adaptive-langevin"
    }

    fn validate(&self) -> Result<(), ParticleError> {
        for (key, v) in [
            ("momentum", self.momentum),
            ("second_moment", self.second_moment),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(ParticleError::param(
                    key,
                    format!("must lie in [0, 1), got {v}"),
                ));
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(ParticleError::param(
                "eps",
                format!("must be > 0, got {}", self.eps),
            ));
        }
        Ok(())
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
        let reads = if self.preconditions_noise(ctx) {
            Reads::M2
        } else {
            Reads::Z
        };
        fused_pass(cloud, batch, grads, ctx, noise, reads, kernel)
    }

    /// s² = 2 h gamma_t / M (divided by |B|² with `batch_noise_scale`), times
    /// G = (V + eps)^(-1/2) from [`AdaptiveLangevin::PRECONDITION_FROM_EPOCH`] on.
    fn supports_lazy_noise(&self) -> bool {
        true
    }

    fn step_variance(&self, ctx: &StepContext) -> Result<StepVariance, ParticleError> {
        let sd = self.noise_sd(ctx);
        let v = sd * sd;
        Ok(if self.preconditions_noise(ctx) {
            StepVariance {
                plain: 0.0,
                preconditioned: v,
            }
        } else {
            StepVariance {
                plain: v,
                preconditioned: 0.0,
            }
        })
    }

    fn preconditioner_eps(&self) -> f64 {
        self.eps
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
            rule: 1,
            drift: (ctx.total_points as f64 * n as f64) as f32,
            a: self.momentum as f32,
            b: self.second_moment as f32,
            eps: self.eps as f32,
            sd: self.noise_sd(ctx) as f32,
            precondition: self.preconditions_noise(ctx),
        })
    }
}
