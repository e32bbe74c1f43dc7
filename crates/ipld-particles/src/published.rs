//! The particle updates of particle gradient descent (PGD; Kuntz, Lim & Johansen 2023, eq. 16,
//! subsampled as in their code) and momentum particle descent (MPGD; Lim, Kuntz, Power &
//! Johansen 2024, its exponential integrator of the underdamped Langevin SDE) as published:
//! both move only the minibatch's particles, with the unscaled score of their own point and
//! the full Langevin noise, so each visit is a complete step of a chain whose stationary law is
//! the point's posterior (random-scan Langevin, unlike eq. 22's (M / |B|)-scaled drift).
//!
//! Both read `grads` as every rule does: the gradient of L-hat = 1/(N |B|) sum_{m in B, n} U
//! with respect to the minibatch particles, |B| = `ctx.batch_size`. The score is then
//! s = -N |B| grads = -grad U(z^{m,n}); for the published methods U = -log p(x^m, z) with
//! p(x, z) = N(z; 0, I) N(x; g_phi(z), sigma² I). The noise is at temperature T = gamma_t
//! (`ctx.gamma`; the published methods have no KL weight and run at T = 1), so the stationary
//! law is proportional to exp(-U / T). `particles.noise_scale` does not apply.

use serde::{Deserialize, Serialize};

use crate::kernel::{Row, batch_pass, check_ctx};
use crate::{NoiseStream, ParticleCloud, ParticleError, ParticleUpdate, StepContext};

/// The momentum noise of element e is element e + `MOMENTUM_NOISE` of the same stream and step
/// (the position noise is element e): far beyond any cloud's elements, so the two never meet.
const MOMENTUM_NOISE: u64 = 1 << 40;

/// The score scale N |B| (see the module doc).
fn score_scale(ctx: &StepContext, n: usize) -> f64 {
    (n * ctx.batch_size) as f64
}

/// PGD's particle step as published (Kuntz et al. 2023, eq. 16; their code subsamples it): for
/// each particle of each minibatch point, z <- z + h s + sqrt(2 h T) W with s the score of its
/// own point; other particles do not move. `{ type = "batch-langevin" }`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchLangevin {}

impl ParticleUpdate for BatchLangevin {
    fn name(&self) -> &'static str {
        "batch-langevin"
    }

    fn step(
        &self,
        cloud: &mut ParticleCloud,
        batch: &[usize],
        grads: &[f32],
        ctx: &StepContext,
        noise: &NoiseStream,
    ) -> Result<(), ParticleError> {
        let drift = (ctx.step_size * score_scale(ctx, cloud.particles())) as f32;
        let sd = (2.0 * ctx.step_size * ctx.gamma).sqrt() as f32;
        batch_pass(
            cloud,
            batch,
            grads,
            ctx,
            noise,
            #[inline(always)]
            move |(z, _, _, g, w, _): Row<'_>| {
                let g = g.expect("batch rows carry their gradient");
                for ((zi, gi), wi) in z.iter_mut().zip(g).zip(w) {
                    *zi += -drift * gi + sd * wi;
                }
            },
        )
    }
}

/// MPGD's particle step as published (Lim et al. 2024): the underdamped Langevin SDE
/// dz = eta u dt, du = (s - gamma eta u) dt + sqrt(2 gamma T) dW, with the score s frozen at the
/// step's start, integrated exactly over dt = h for each minibatch particle (the velocity u in
/// the cloud's momentum buffer; its stationary law is N(0, T / eta)). With k = gamma eta dt,
/// a = 1 - e^-k and b = 1 - e^-2k:
/// z' = z + (a u + (dt - a / (gamma eta)) s) / gamma + xi_z,
/// u' = e^-k u + a s / (gamma eta) + xi_u,
/// (xi_z, xi_u) ~ N(0, T S) with S_zz = (2k - 4a + b) / (gamma² eta), S_uz = a² / (gamma eta),
/// S_uu = b / eta (the covariance of the SDE's noise over dt). `{ type = "underdamped-langevin",
/// gamma, eta, catch_up }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnderdampedLangevin {
    /// Friction gamma (Lim et al.'s gamma_x; 0.9 in their CIFAR-10 runs).
    pub gamma: f64,
    /// Inverse mass eta: the position moves at eta u and the velocity's stationary law is
    /// N(0, T / eta) (their eta_x; 500 on CIFAR-10).
    pub eta: f64,
    /// Before a point's step, integrate its particles over the steps they missed since their
    /// last visit, as one transition of length h times that count with the score at their current
    /// position (their `catch_up`; on in their CIFAR-10 runs). The caller computes that score
    /// and calls [`UnderdampedLangevin::catch_up`].
    pub catch_up: bool,
}

impl Default for UnderdampedLangevin {
    fn default() -> Self {
        Self {
            gamma: 0.9,
            eta: 500.0,
            catch_up: true,
        }
    }
}

/// One transition's coefficients over dt (see [`UnderdampedLangevin`]), in f64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnderdampedCoefficients {
    /// e^-k: the velocity's decay.
    pub decay: f64,
    /// The velocity's weight in z': a / gamma.
    pub z_from_u: f64,
    /// The score's weight in z': (dt - a / (gamma eta)) / gamma.
    pub z_from_s: f64,
    /// The score's weight in u': a / (gamma eta).
    pub u_from_s: f64,
    /// The noise's covariance at T = 1: S_zz, S_uz, S_uu.
    pub s_zz: f64,
    /// See `s_zz`.
    pub s_uz: f64,
    /// See `s_zz`.
    pub s_uu: f64,
}

impl UnderdampedLangevin {
    /// The transition's coefficients over `dt`. 2k - 4a + b = 2k³/3 - k⁴/2 + 7k⁵/30 - ... cancels
    /// to k³ in floating point, so below k = 1e-3 it is taken from the series.
    pub fn coefficients(&self, dt: f64) -> UnderdampedCoefficients {
        let ge = self.gamma * self.eta;
        let k = ge * dt;
        let a = -(-k).exp_m1();
        let b = -(-2.0 * k).exp_m1();
        let cubic = if k < 1e-3 {
            k * k * k * (2.0 / 3.0 - k / 2.0 + 7.0 * k * k / 30.0)
        } else {
            2.0 * k - 4.0 * a + b
        };
        UnderdampedCoefficients {
            decay: (-k).exp(),
            z_from_u: a / self.gamma,
            // dt - a / (gamma eta) = (k - a) / (gamma eta), with k - a = k + expm1(-k).
            z_from_s: (k + (-k).exp_m1()) / (ge * self.gamma),
            u_from_s: a / ge,
            s_zz: cubic / (self.gamma * ge),
            s_uz: a * a / ge,
            s_uu: b / self.eta,
        }
    }

    /// Draws every particle's velocity from its stationary law N(0, T / eta) at T = 1 (Lim et
    /// al. start there), from `noise` at `counter`, element by global element index.
    pub fn initial_velocity(&self, cloud: &mut ParticleCloud, noise: &NoiseStream, counter: u64) {
        let e0 = (cloud.start() * cloud.particles() * cloud.dim()) as u64;
        let ((_, u, _), _) = cloud.buffers_and_visits_mut();
        noise.fill(counter, e0, u);
        let sd = (1.0 / self.eta).sqrt() as f32;
        u.iter_mut().for_each(|v| *v *= sd);
    }

    /// The catch-up of `catch_up`: each row of `batch` with `missed[i] > 0` moves by one
    /// transition over h `missed[i]` with the score in `grads` (the gradient of L-hat at its
    /// current position, as for [`ParticleUpdate::step`]); rows with 0 are untouched. Noise
    /// from `noise` at `ctx.step`; visit counts do not change (the visit is the step's own).
    pub fn catch_up(
        &self,
        cloud: &mut ParticleCloud,
        batch: &[usize],
        grads: &[f32],
        missed: &[u64],
        ctx: &StepContext,
        noise: &NoiseStream,
    ) -> Result<(), ParticleError> {
        if missed.len() != batch.len() {
            return Err(ParticleError::Shape(format!(
                "{} missed-step counts for a batch of {}",
                missed.len(),
                batch.len()
            )));
        }
        let dts: Vec<f64> = missed.iter().map(|&k| ctx.step_size * k as f64).collect();
        self.transition(cloud, batch, grads, &dts, ctx, noise)
    }

    /// One transition of each row `batch[i]` over `dts[i]` (none where it is 0).
    fn transition(
        &self,
        cloud: &mut ParticleCloud,
        batch: &[usize],
        grads: &[f32],
        dts: &[f64],
        ctx: &StepContext,
        noise: &NoiseStream,
    ) -> Result<(), ParticleError> {
        check_ctx(ctx)?;
        let (n, d) = (cloud.particles(), cloud.dim());
        let w = n * d;
        if grads.len() != batch.len() * w {
            return Err(ParticleError::Shape(format!(
                "{} gradient values for a batch of {} rows of {w}",
                grads.len(),
                batch.len()
            )));
        }
        let total = (cloud.start() + cloud.rows()) * w;
        if total as u64 >= MOMENTUM_NOISE {
            return Err(ParticleError::Shape(format!(
                "a cloud of {total} elements is too large for the momentum noise's offset"
            )));
        }
        let mut seen = vec![false; cloud.rows()];
        let locals = batch
            .iter()
            .map(|&m| {
                let r = cloud.local(m)?;
                if std::mem::replace(&mut seen[r], true) {
                    return Err(ParticleError::Shape(format!(
                        "data index {m} appears twice in the batch"
                    )));
                }
                Ok(r)
            })
            .collect::<Result<Vec<_>, ParticleError>>()?;
        let scale = score_scale(ctx, n);
        let temperature = ctx.gamma;
        let start = cloud.start();
        let ((z, u, _), _) = cloud.buffers_and_visits_mut();
        let (mut xi_z, mut xi_u) = (vec![0f32; w], vec![0f32; w]);
        for (p, (&r, &dt)) in locals.iter().zip(dts).enumerate() {
            if dt == 0.0 {
                continue;
            }
            let c = self.coefficients(dt);
            // Cholesky factor of T S.
            let l_zz = (temperature * c.s_zz).sqrt();
            let l_uz = if l_zz > 0.0 {
                temperature * c.s_uz / l_zz
            } else {
                0.0
            };
            let l_uu = (temperature * c.s_uu - l_uz * l_uz).max(0.0).sqrt();
            let e0 = ((start + r) * w) as u64;
            noise.fill(ctx.step, e0, &mut xi_z);
            noise.fill(ctx.step, e0 + MOMENTUM_NOISE, &mut xi_u);
            let g = &grads[p * w..(p + 1) * w];
            let (zr, ur) = (&mut z[r * w..(r + 1) * w], &mut u[r * w..(r + 1) * w]);
            for j in 0..w {
                let s = -scale * g[j] as f64;
                let (z0, u0) = (zr[j] as f64, ur[j] as f64);
                let (wz, wu) = (xi_z[j] as f64, xi_u[j] as f64);
                zr[j] = (z0 + c.z_from_u * u0 + c.z_from_s * s + l_zz * wz) as f32;
                ur[j] = (c.decay * u0 + c.u_from_s * s + l_uz * wz + l_uu * wu) as f32;
            }
        }
        Ok(())
    }
}

impl ParticleUpdate for UnderdampedLangevin {
    fn name(&self) -> &'static str {
        "underdamped-langevin"
    }

    fn validate(&self) -> Result<(), ParticleError> {
        for (k, v) in [("gamma", self.gamma), ("eta", self.eta)] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(ParticleError::param(k, format!("must be > 0, got {v}")));
            }
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
        let dts = vec![ctx.step_size; batch.len()];
        self.transition(cloud, batch, grads, &dts, ctx, noise)?;
        cloud.count_visits(batch)
    }
}
