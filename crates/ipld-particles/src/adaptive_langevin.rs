//! Algorithm 2 / eqs. (65)-(66): adaptive Langevin with momentum and an RMSProp preconditioner.

use serde::{Deserialize, Serialize};

use crate::kernel::{Reads, Row, batch_pass, fused_pass, inv_fourth_root};
use crate::{
    KernelParams, NoiseScale, NoiseStream, ParticleCloud, ParticleError, ParticleUpdate,
    StepContext, StepVariance,
};

/// Algorithm 2 / eqs. (65)-(66): adaptive Langevin with momentum and an RMSProp preconditioner.
/// For minibatch particles, with g = M N grad:
/// M <- a M + (1 - a) g, V <- b V + (1 - b) g², G = (V + eps)^(-1/2), z <- z - h G M.
/// The drift *descends* the loss of eq. (64); the pseudo-code's "+ h G M" would ascend it.
/// Every particle then gets noise whose scale the step's [`crate::NoiseScale`] sets:
///
/// - `Paper`: sqrt(2 h gamma_t / M) G^{1/2} W, times 1/|B| when `batch_noise_scale` (the
///   paper's implementation, A.4.2), with G = I during the first epoch
///   ([`AdaptiveLangevin::PRECONDITION_FROM_EPOCH`]).
/// - `Posterior`: sqrt(2 h gamma_t) G^{1/2} W from the first step on. A visit moves a particle
///   by h G M, about h G (M / |B|) grad U_m, once every M / |B| steps on average: the mean drift
///   per step is h G grad U_m, whose Langevin noise is 2 h gamma_t G per step (preconditioned
///   Langevin with a G frozen between visits, Li et al. 2016).
///
/// A particle never visited (visit count 0, [`ParticleCloud::visits`]) has V = 0; its noise uses
/// G = I, not eps^(-1/2) (which would be 100 times the noise's standard deviation at
/// eps = 1e-8).
///
/// What one visit does: the moments change only on visits and, as in eq. (66), carry no bias
/// correction. After k visits with a constant gradient g, M = (1 - a^k) g and
/// V = (1 - b^k) g², so the drift is h (1 - a^k) / sqrt(1 - b^k) sign(g) per element: 3.2 h
/// after the first visit, 6.5 h after 10, 4.5 h after 50 (the gmm run's visits in 1,000 steps),
/// tending to h only after thousands of visits; G is (1 - b^k)^(-1/2) times the
/// bias-corrected one (31.6 after one visit, 4.5 after 50), and so is the noise's variance.
/// In `Posterior` mode the drift and the noise share G, so G's scale does not move the
/// stationary law, but the momentum's (1 - a^k) does: for the first ~1 / (1 - a) = 10 visits
/// the drift is (1 - a^k) times the one the noise is matched to, a temperature gamma_t /
/// (1 - a^k). `bias_correction` divides M by (1 - a^k) and V by (1 - b^k), k counting this
/// visit (Adam's correction, per particle by its visit count), which removes both.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveLangevin {
    /// Momentum coefficient a (0.9).
    pub momentum: f64,
    /// Second-moment coefficient b (0.999).
    pub second_moment: f64,
    /// epsilon inside G = (V + eps)^(-1/2).
    pub eps: f64,
    /// Scale the noise by 1/|B| as the paper's implementation does (`NoiseScale::Paper` only).
    pub batch_noise_scale: bool,
    /// Adam's bias correction of M and V by each particle's visit count (off in the paper;
    /// absent = off, so older configs read as before).
    pub bias_correction: bool,
    /// Whose gradients V averages: `particle` (eq. 66b, each particle its own) or `point` (the
    /// N particles of a point share one V, the mean of their g² per coordinate). A particle's
    /// own V follows its own recent position, so G is small where it has lately been far out,
    /// and Langevin with such a G (without its divergence term) samples a wider law than the
    /// posterior; sharing V over N particles divides that correlation by N (docs/training.md).
    pub second_moment_of: SecondMomentOf,
}

/// Whose squared gradients the second moment V of Algorithm 2 averages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecondMomentOf {
    /// Each particle its own (eq. 66b).
    #[default]
    Particle,
    /// The mean over the point's N particles, per coordinate (every particle of a point holds
    /// the same V). With N = 1 it is `Particle`, bit for bit.
    Point,
}

impl Default for AdaptiveLangevin {
    fn default() -> Self {
        Self {
            momentum: 0.9,
            second_moment: 0.999,
            eps: 1e-8,
            batch_noise_scale: true,
            bias_correction: false,
            second_moment_of: SecondMomentOf::Particle,
        }
    }
}

/// The least V a visit leaves (the smallest normal f32): V = 0 then means "never visited" and
/// nothing else, also where every gradient so far was exactly 0, so the CUDA kernel (which has
/// no visit counts) tells the two apart as the CPU does. It changes no V a realistic gradient
/// gives ((1 - b) g² below 1.2e-38 needs |g| < 3.4e-18).
pub const V_FLOOR: f32 = f32::MIN_POSITIVE;

impl AdaptiveLangevin {
    /// The first epoch whose noise is preconditioned by G^{1/2} in `NoiseScale::Paper` mode: the
    /// paper's implementation uses G = I on the noise during the first epoch, while V is still
    /// warming up (A.4.2).
    pub const PRECONDITION_FROM_EPOCH: u64 = 1;

    /// Whether step `ctx` preconditions its noise: from the second epoch on as printed, always
    /// for the posterior (where never-visited particles still get G = I).
    pub fn preconditions_noise(&self, ctx: &StepContext) -> bool {
        match ctx.noise_scale {
            NoiseScale::Paper => ctx.epoch >= Self::PRECONDITION_FROM_EPOCH,
            NoiseScale::Posterior => true,
        }
    }

    /// The noise's standard deviation before G^{1/2}: sqrt(2 h gamma_t / M) (divided by |B| with
    /// `batch_noise_scale`) as printed, sqrt(2 h gamma_t) for the posterior.
    fn noise_sd(&self, ctx: &StepContext) -> f64 {
        match ctx.noise_scale {
            NoiseScale::Paper => {
                let mut sd = (2.0 * ctx.step_size * ctx.gamma / ctx.total_points as f64).sqrt();
                if self.batch_noise_scale {
                    sd /= ctx.batch_size.max(1) as f64;
                }
                sd
            }
            NoiseScale::Posterior => (2.0 * ctx.step_size * ctx.gamma).sqrt(),
        }
    }

    /// Adam's correction factors (1 / (1 - a^k), 1 / (1 - b^k)) after k visits; (1, 1) without
    /// bias correction or before the first visit.
    fn corrections(&self, k: u32) -> (f32, f32) {
        if !self.bias_correction || k == 0 {
            return (1.0, 1.0);
        }
        let k = k.min(i32::MAX as u32) as i32;
        (
            (1.0 / (1.0 - self.momentum.powi(k))) as f32,
            (1.0 / (1.0 - self.second_moment.powi(k))) as f32,
        )
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
        let rule = *self;
        // With one particle per point its V is the point's: the per-particle loop, so N = 1
        // gives the paper's bits (the shared loop rounds (1 - b) g² in another order).
        let shared = self.second_moment_of == SecondMomentOf::Point && n > 1;
        let inv_n = 1.0 / n as f32;
        // Branches hoisted out of the element loops so each loop vectorises; inlined into the
        // dispatched (AVX-512/AVX2) row loop so it is compiled for that ISA. Without bias
        // correction c1 = c2 = 1, and multiplying by 1 keeps every bit.
        #[inline(always)]
        move |(z, m1, m2, g, w, visits): Row<'_>| {
            if let (Some(g), true) = (g, shared) {
                // One V per point and coordinate: the mean of the N particles' g², applied to
                // every copy (they start equal and stay equal).
                let (c1, c2) = rule.corrections(visits.saturating_add(1));
                let d = z.len() / n;
                for j in 0..d {
                    let mean_sq = (0..n)
                        .map(|p| (scale * g[p * d + j]) * (scale * g[p * d + j]))
                        .sum::<f32>()
                        * inv_n;
                    for p in 0..n {
                        let i = p * d + j;
                        let gi = scale * g[i];
                        m1[i] = a * m1[i] + (1.0 - a) * gi;
                        m2[i] = (b * m2[i] + (1.0 - b) * mean_sq).max(V_FLOOR);
                        let v = c2 * m2[i];
                        z[i] -= h * (c1 * m1[i]) / (v + eps).sqrt();
                        let noise_sd = if precondition {
                            sd * inv_fourth_root(v + eps)
                        } else {
                            sd
                        };
                        z[i] += noise_sd * w[i];
                    }
                }
            } else if let Some(g) = g {
                let (c1, c2) = rule.corrections(visits.saturating_add(1));
                for ((((zi, m1i), m2i), gi), wi) in z.iter_mut().zip(m1).zip(m2).zip(g).zip(w) {
                    let gi = scale * gi;
                    *m1i = a * *m1i + (1.0 - a) * gi;
                    *m2i = (b * *m2i + (1.0 - b) * gi * gi).max(V_FLOOR);
                    let v = c2 * *m2i;
                    *zi -= h * (c1 * *m1i) / (v + eps).sqrt();
                    let noise_sd = if precondition {
                        sd * inv_fourth_root(v + eps)
                    } else {
                        sd
                    };
                    *zi += noise_sd * wi;
                }
            } else if precondition && visits > 0 {
                let (_, c2) = rule.corrections(visits);
                if c2 == 1.0 {
                    // The common case (no bias correction), without a multiply per element.
                    for ((zi, m2i), wi) in z.iter_mut().zip(m2.iter()).zip(w) {
                        *zi += sd * inv_fourth_root(*m2i + eps) * wi;
                    }
                } else {
                    for ((zi, m2i), wi) in z.iter_mut().zip(m2.iter()).zip(w) {
                        *zi += sd * inv_fourth_root(c2 * *m2i + eps) * wi;
                    }
                }
            } else {
                // Unpreconditioned noise, and G = I for rows never visited.
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
        // Bias correction reads each row's visit count, so rows go to the kernel one by one.
        let per_row = self.bias_correction && self.preconditions_noise(ctx);
        fused_pass(cloud, batch, grads, ctx, noise, reads, per_row, kernel)
    }

    /// s² = 2 h gamma_t / M (divided by |B|² with `batch_noise_scale`) as printed, 2 h gamma_t
    /// for the posterior, times G while the noise is preconditioned.
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

    fn second_moment_bias_correction(&self) -> Option<f64> {
        self.bias_correction.then_some(self.second_moment)
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
        if self.second_moment_of != SecondMomentOf::Particle && n > 1 {
            return Err(ParticleError::param(
                "second_moment_of",
                "the CUDA kernel keeps one V per particle; use the CPU update",
            ));
        }
        if self.bias_correction {
            return Err(ParticleError::param(
                "bias_correction",
                "the CUDA kernel has no per-particle visit counts; use the CPU update",
            ));
        }
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
