//! Kinetic (underdamped) Langevin on eq. (22)'s subsampled loss: an IPLD ablation with momentum on
//! the particles, after momentum particle descent (Lim et al. 2024; the published MPGD update is
//! `published::UnderdampedLangevin`).

use serde::{Deserialize, Serialize};

use crate::kernel::{Reads, Row, fused_pass};
use crate::{NoiseStream, ParticleCloud, ParticleError, ParticleUpdate, StepContext};

/// Kinetic (underdamped) Langevin on the subsampled loss, after momentum particle descent (Lim et
/// al. 2024), with the velocity kept in the cloud's momentum buffer. Each step, for every particle,
/// v <- a v - h M N grad (grad = 0 outside the minibatch) + sqrt((1 - a²) T) W, then
/// z <- z + h v, where a = `damping` = exp(-friction h) and T is the temperature of the step's
/// [`crate::NoiseScale`], as for Algorithm 1: gamma_t |B| / M as printed, gamma_t for the
/// posterior (with the mean force per step h grad U_m, the stationary law of z is then
/// proportional to exp(-U_m / T)). The velocity update is the exact Ornstein-Uhlenbeck step
/// for the friction and noise, so with grad = 0 the velocities stay at N(0, T I). The velocity
/// moves every particle every step, so the rule has no lazy form.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KineticLangevin {
    /// Velocity damping a in [0, 1) per step.
    pub damping: f64,
}

impl Default for KineticLangevin {
    fn default() -> Self {
        Self { damping: 0.9 }
    }
}

impl ParticleUpdate for KineticLangevin {
    fn name(&self) -> &'static str {
        "kinetic-langevin"
    }

    fn validate(&self) -> Result<(), ParticleError> {
        if !(0.0..1.0).contains(&self.damping) {
            return Err(ParticleError::param(
                "damping",
                format!("must lie in [0, 1), got {}", self.damping),
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
        let m_total = ctx.total_points as f64;
        let force = (ctx.step_size * m_total * cloud.particles() as f64) as f32;
        let temperature = ctx.noise_scale.temperature(ctx);
        let a = self.damping;
        let sd = ((1.0 - a * a) * temperature).sqrt() as f32;
        let (a, h) = (a as f32, ctx.step_size as f32);
        fused_pass(
            cloud,
            batch,
            grads,
            ctx,
            noise,
            Reads::M1,
            false,
            #[inline(always)]
            |(z, v, _, g, w, _): Row<'_>| match g {
                Some(g) => {
                    for (((zi, vi), gi), wi) in z.iter_mut().zip(v).zip(g).zip(w) {
                        *vi = a * *vi - force * gi + sd * wi;
                        *zi += h * *vi;
                    }
                }
                None => {
                    for ((zi, vi), wi) in z.iter_mut().zip(v).zip(w) {
                        *vi = a * *vi + sd * wi;
                        *zi += h * *vi;
                    }
                }
            },
        )
    }
}
