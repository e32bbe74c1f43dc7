//! Particle update rules, each one fused pass over the cloud's rows: minibatch rows get the drift
//! (and moment updates), every row gets Langevin noise, with noise drawn inside the loop from the
//! counter-based [`NoiseStream`] at global element index ((m N) + n) d + j, so the result does not
//! depend on how rows are partitioned.
//!
//! `grads` is always the gradient of the minibatch loss L-hat of eq. (22)/(64) with respect to the
//! minibatch particles, [|B|, N, d] in batch order; the rules apply the M N scaling themselves.

use serde::{Deserialize, Serialize};

use crate::{NoiseStream, ParticleCloud, ParticleError};

/// Quantities of the current step shared by every rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepContext {
    /// Global step t (also the noise counter).
    pub step: u64,
    /// KL weight gamma_t (A.4.1): multiplies the noise variance.
    pub gamma: f64,
    /// Particle step size h_z at this step (after per-epoch decay).
    pub step_size: f64,
    /// Minibatch size |B|.
    pub batch_size: usize,
    /// Number of training points M in the whole dataset (not just this shard).
    pub total_points: usize,
    /// Whether the noise is preconditioned by G^{1/2}; the paper uses G = I on the noise during
    /// the first epoch (A.4.2).
    pub precondition_noise: bool,
}

/// A particle update rule.
pub trait ParticleUpdate {
    /// Moves the cloud one step: drift for the rows in `batch` (global indices, no repeats),
    /// noise for every row of the cloud.
    fn step(
        &self,
        cloud: &mut ParticleCloud,
        batch: &[usize],
        grads: &[f32],
        ctx: &StepContext,
        noise: &NoiseStream,
    ) -> Result<(), ParticleError>;
}

/// Algorithm 1 / eqs. (19)-(22): unadjusted Langevin on the subsampled loss. Minibatch particles
/// move by -(M N h) grad; every particle gets sqrt(2 h gamma_t |B| / M) W, the |B|/M matching the
/// full-batch noise variance (Section 3.3) and gamma_t the KL annealing (A.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Langevin {}

/// Algorithm 2 / eqs. (65)-(66): adaptive Langevin with momentum and an RMSProp preconditioner.
/// For minibatch particles, with g = M N grad:
/// M <- a M + (1 - a) g, V <- b V + (1 - b) g², G = (V + eps)^(-1/2), z <- z - h G M.
/// The drift *descends* the loss of eq. (64); the pseudo-code's "+ h G M" would ascend it.
/// Every particle then gets sqrt(2 h gamma_t / M) G^{1/2} W, times 1/|B| when `batch_noise_scale`
/// (the paper's implementation, A.4.2), with G = I until `precondition_noise` is set.
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

/// Momentum particle descent (Lim et al. 2024): kinetic (underdamped) Langevin on the particles,
/// with the velocity kept in the cloud's momentum buffer. Each step, for every particle,
/// v <- a v - h M N grad (grad = 0 outside the minibatch) + sqrt((1 - a²) T) W, then
/// z <- z + h v, where a = `damping` = exp(-friction h) and T = gamma_t |B| / M is the same
/// temperature as Algorithm 1's noise. The velocity update is the exact Ornstein-Uhlenbeck step
/// for the friction and noise, so with grad = 0 the velocities stay at N(0, T I).
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

/// The update rule chosen in a config: `{ type = "adaptive-langevin", ... }` or `{ type = "langevin" }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum UpdateConfig {
    /// Algorithm 1.
    Langevin(Langevin),
    /// Algorithm 2.
    AdaptiveLangevin(AdaptiveLangevin),
    /// Momentum particle descent (MPGD).
    KineticLangevin(KineticLangevin),
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self::AdaptiveLangevin(AdaptiveLangevin::default())
    }
}

impl UpdateConfig {
    /// Checks the coefficients' ranges.
    pub fn validate(&self) -> Result<(), ParticleError> {
        if let Self::KineticLangevin(k) = self
            && !(0.0..1.0).contains(&k.damping)
        {
            return Err(ParticleError::param(
                "particles.update.damping",
                format!("must lie in [0, 1), got {}", k.damping),
            ));
        }
        if let Self::AdaptiveLangevin(a) = self {
            for (key, v) in [
                ("particles.update.momentum", a.momentum),
                ("particles.update.second_moment", a.second_moment),
            ] {
                if !(0.0..1.0).contains(&v) {
                    return Err(ParticleError::param(
                        key,
                        format!("must lie in [0, 1), got {v}"),
                    ));
                }
            }
            if !(a.eps > 0.0 && a.eps.is_finite()) {
                return Err(ParticleError::param(
                    "particles.update.eps",
                    format!("must be > 0, got {}", a.eps),
                ));
            }
        }
        Ok(())
    }

    /// The config name of the rule's type.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Langevin(_) => "langevin",
            Self::AdaptiveLangevin(_) => "adaptive-langevin",
            Self::KineticLangevin(_) => "kinetic-langevin",
        }
    }

    /// Per-element noise variance of one step, for lazy noise; kinetic Langevin has no lazy
    /// form (its velocity moves every particle every step).
    pub fn step_variance(&self, ctx: &StepContext) -> Result<StepVariance, ParticleError> {
        match self {
            Self::Langevin(r) => Ok(r.step_variance(ctx)),
            Self::AdaptiveLangevin(r) => Ok(r.step_variance(ctx)),
            Self::KineticLangevin(_) => Err(ParticleError::param(
                "particles.lazy_noise",
                "kinetic-langevin moves every particle every step (its velocity); use the eager update",
            )),
        }
    }

    /// The preconditioner epsilon lazy noise needs (0 for rules without a preconditioner).
    pub fn lazy_eps(&self) -> f64 {
        match self {
            Self::AdaptiveLangevin(r) => r.eps,
            Self::Langevin(_) | Self::KineticLangevin(_) => 0.0,
        }
    }

    /// The rule as a trait object.
    pub fn rule(&self) -> &dyn ParticleUpdate {
        match self {
            Self::Langevin(r) => r,
            Self::AdaptiveLangevin(r) => r,
            Self::KineticLangevin(r) => r,
        }
    }
}

/// Maps each local row of a cloud holding rows `start..start + rows` of width `w` to its position
/// in the batch (u32::MAX if absent), checking the batch and the gradient length.
pub(crate) fn batch_positions(
    start: usize,
    rows: usize,
    w: usize,
    batch: &[usize],
    grads: &[f32],
) -> Result<Vec<u32>, ParticleError> {
    if grads.len() != batch.len() * w {
        return Err(ParticleError::Shape(format!(
            "{} gradient values for a batch of {} rows of {w} particle values",
            grads.len(),
            batch.len(),
        )));
    }
    let mut pos = vec![u32::MAX; rows];
    for (p, &m) in batch.iter().enumerate() {
        if m < start || m >= start + rows {
            return Err(ParticleError::Shape(format!(
                "data index {m} is outside this cloud's rows {start}..{}",
                start + rows
            )));
        }
        let r = m - start;
        if pos[r] != u32::MAX {
            return Err(ParticleError::Shape(format!(
                "data index {m} appears twice in the batch"
            )));
        }
        pos[r] = p as u32;
    }
    Ok(pos)
}

pub(crate) fn check_ctx(ctx: &StepContext) -> Result<(), ParticleError> {
    if ctx.batch_size == 0 || ctx.total_points == 0 {
        return Err(ParticleError::param(
            "train.batch_size",
            "batch and dataset must be non-empty",
        ));
    }
    if !(ctx.step_size >= 0.0
        && ctx.gamma >= 0.0
        && ctx.step_size.is_finite()
        && ctx.gamma.is_finite())
    {
        return Err(ParticleError::param(
            "particles.step_size",
            format!(
                "step size and gamma must be finite and >= 0, got {} and {}",
                ctx.step_size, ctx.gamma
            ),
        ));
    }
    Ok(())
}

/// One row's buffers as a kernel sees them: (z, momentum, second moment, the row's gradient if
/// it is in the batch, the row's noise).
pub(crate) type Row<'a> = (
    &'a mut [f32],
    &'a mut [f32],
    &'a mut [f32],
    Option<&'a [f32]>,
    &'a [f32],
);

/// Noise variance of one element at one step, split by whether it is preconditioned: the
/// element's variance is `plain + preconditioned / sqrt(V + eps)` (G^{1/2} W has variance G).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepVariance {
    /// Variance of the unpreconditioned part.
    pub plain: f64,
    /// Variance multiplying G = (V + eps)^(-1/2).
    pub preconditioned: f64,
}

/// The fused pass shared by every rule: for each local row, draw its noise in place, then hand
/// (z, momentum, second moment, the row's gradient if it is in the batch, noise) to `row`. Rows
/// run in parallel (rayon); the noise of element e is a function of (step, e) only, so the result
/// is the same for every partition of the rows and every thread count.
fn fused_pass(
    cloud: &mut ParticleCloud,
    batch: &[usize],
    grads: &[f32],
    ctx: &StepContext,
    noise: &NoiseStream,
    row: impl Fn(Row<'_>) + Sync,
) -> Result<(), ParticleError> {
    use rayon::prelude::*;
    check_ctx(ctx)?;
    let w = cloud.particles() * cloud.dim();
    let pos = batch_positions(cloud.start(), cloud.rows(), w, batch, grads)?;
    let start = cloud.start();
    // About 16 KiB of particles per task: enough work to amortise scheduling.
    let min_rows = (4096 / w).max(1);
    let (z, m1, m2) = cloud.buffers_mut();
    z.par_chunks_mut(w)
        .zip(m1.par_chunks_mut(w))
        .zip(m2.par_chunks_mut(w))
        .enumerate()
        .with_min_len(min_rows)
        .for_each_init(
            || vec![0f32; w],
            |w_buf, (r, ((z, m1), m2))| {
                noise.fill(ctx.step, ((start + r) * w) as u64, w_buf);
                let g = (pos[r] != u32::MAX)
                    .then(|| &grads[pos[r] as usize * w..(pos[r] as usize + 1) * w]);
                row((z, m1, m2, g, w_buf));
            },
        );
    Ok(())
}

impl ParticleUpdate for Langevin {
    fn step(
        &self,
        cloud: &mut ParticleCloud,
        batch: &[usize],
        grads: &[f32],
        ctx: &StepContext,
        noise: &NoiseStream,
    ) -> Result<(), ParticleError> {
        let kernel = self.kernel(ctx, cloud.particles());
        fused_pass(cloud, batch, grads, ctx, noise, kernel)
    }
}

impl Langevin {
    /// Per-element noise variance of one step: 2 h gamma_t |B| / M, unpreconditioned.
    pub fn step_variance(&self, ctx: &StepContext) -> StepVariance {
        StepVariance {
            plain: 2.0 * ctx.step_size * ctx.gamma * ctx.batch_size as f64
                / ctx.total_points as f64,
            preconditioned: 0.0,
        }
    }

    pub(crate) fn kernel(&self, ctx: &StepContext, n: usize) -> impl Fn(Row<'_>) + Sync + use<> {
        let m_total = ctx.total_points as f64;
        let drift = (ctx.step_size * m_total * n as f64) as f32;
        let sd = self.step_variance(ctx).plain.sqrt() as f32;
        move |(z, _, _, g, w): Row<'_>| match g {
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
}

impl ParticleUpdate for AdaptiveLangevin {
    fn step(
        &self,
        cloud: &mut ParticleCloud,
        batch: &[usize],
        grads: &[f32],
        ctx: &StepContext,
        noise: &NoiseStream,
    ) -> Result<(), ParticleError> {
        let kernel = self.kernel(ctx, cloud.particles());
        fused_pass(cloud, batch, grads, ctx, noise, kernel)
    }
}

impl AdaptiveLangevin {
    /// Per-element noise variance of one step: s² = 2 h gamma_t / M (divided by |B|² with
    /// `batch_noise_scale`), times G = (V + eps)^(-1/2) once `precondition_noise` is set.
    pub fn step_variance(&self, ctx: &StepContext) -> StepVariance {
        let sd = self.noise_sd(ctx);
        let v = sd * sd;
        if ctx.precondition_noise {
            StepVariance {
                plain: 0.0,
                preconditioned: v,
            }
        } else {
            StepVariance {
                plain: v,
                preconditioned: 0.0,
            }
        }
    }

    /// sqrt(2 h gamma_t / M), divided by |B| with `batch_noise_scale`.
    pub(crate) fn noise_sd(&self, ctx: &StepContext) -> f64 {
        let mut sd = (2.0 * ctx.step_size * ctx.gamma / ctx.total_points as f64).sqrt();
        if self.batch_noise_scale {
            sd /= ctx.batch_size.max(1) as f64;
        }
        sd
    }

    pub(crate) fn kernel(&self, ctx: &StepContext, n: usize) -> impl Fn(Row<'_>) + Sync + use<> {
        let scale = (ctx.total_points as f64 * n as f64) as f32;
        let (a, b, eps, h) = (
            self.momentum as f32,
            self.second_moment as f32,
            self.eps as f32,
            ctx.step_size as f32,
        );
        let sd = self.noise_sd(ctx) as f32;
        let precondition = ctx.precondition_noise;
        move |(z, m1, m2, g, w): Row<'_>| {
            for i in 0..z.len() {
                if let Some(g) = g {
                    let gi = scale * g[i];
                    m1[i] = a * m1[i] + (1.0 - a) * gi;
                    m2[i] = b * m2[i] + (1.0 - b) * gi * gi;
                    z[i] -= h * m1[i] / (m2[i] + eps).sqrt();
                }
                let noise_sd = if precondition {
                    sd / (m2[i] + eps).sqrt().sqrt()
                } else {
                    sd
                };
                z[i] += noise_sd * w[i];
            }
        }
    }
}

impl ParticleUpdate for KineticLangevin {
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
        let temperature = ctx.gamma * ctx.batch_size as f64 / m_total;
        let a = self.damping;
        let sd = ((1.0 - a * a) * temperature).sqrt() as f32;
        let (a, h) = (a as f32, ctx.step_size as f32);
        fused_pass(
            cloud,
            batch,
            grads,
            ctx,
            noise,
            |(z, v, _, g, w): Row<'_>| {
                for i in 0..z.len() {
                    let gi = g.map_or(0.0, |g| g[i]);
                    v[i] = a * v[i] - force * gi + sd * w[i];
                    z[i] += h * v[i];
                }
            },
        )
    }
}
