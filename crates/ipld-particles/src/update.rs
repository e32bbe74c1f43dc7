//! Particle update rules, each one fused pass over the cloud's rows: minibatch rows get the drift
//! (and moment updates), every row gets Langevin noise, with noise drawn inside the loop from the
//! counter-based [`NoiseStream`] at global element index ((m N) + n) d + j, so the result does not
//! depend on how rows are partitioned.
//!
//! `grads` is always the gradient of the minibatch loss L-hat of eq. (22)/(64) with respect to the
//! minibatch particles, [|B|, N, d] in batch order; the rules apply the M N scaling themselves.

use serde::{Deserialize, Serialize};

use crate::rng::Isa;
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
        let r = local_row(start, rows, m)?;
        if pos[r] != u32::MAX {
            return Err(repeated(m));
        }
        pos[r] = p as u32;
    }
    Ok(pos)
}

/// Global data index `m`'s row in a cloud holding rows `start..start + rows`.
fn local_row(start: usize, rows: usize, m: usize) -> Result<usize, ParticleError> {
    if m < start || m >= start + rows {
        return Err(ParticleError::Shape(format!(
            "data index {m} is outside this cloud's rows {start}..{}",
            start + rows
        )));
    }
    Ok(m - start)
}

fn repeated(m: usize) -> ParticleError {
    ParticleError::Shape(format!("data index {m} appears twice in the batch"))
}

/// The batch's local row indices, checked as in [`batch_positions`] but in O(|B| log |B|)
/// work, independent of the cloud's size (the CUDA path's per-step host work).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn local_rows(
    start: usize,
    rows: usize,
    batch: &[usize],
) -> Result<Vec<u32>, ParticleError> {
    let local = batch
        .iter()
        .map(|&m| {
            let r = local_row(start, rows, m)?;
            u32::try_from(r).map_err(|_| {
                ParticleError::Shape(format!("local row {r} does not fit the kernel's u32 index"))
            })
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let mut sorted = local.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(repeated(start + w[0] as usize));
    }
    Ok(local)
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
/// it is in the batch, the row's noise). Without a gradient the slices may span several
/// consecutive rows outside the batch, so kernels must be elementwise there.
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

/// One task's slices of z, the momentum and the second moment, as the zipped chunk iterators
/// yield them.
type TaskBuffers<'a> = ((&'a mut [f32], &'a mut [f32]), &'a mut [f32]);

/// The fused pass shared by every rule: rows are split into tasks of about 4,096 elements; each
/// task draws the noise of its rows in one vectorised [`NoiseStream::fill`] (its elements are
/// contiguous), then hands each row's (z, momentum, second moment, gradient if in the batch,
/// noise) to `row`. Tasks run in parallel (rayon); the noise of element e is a function of
/// (step, e) only, so the result is the same for every partition and thread count. Clouds under
/// 65,536 elements run on the calling thread.
fn fused_pass<F: Fn(Row<'_>) + Sync>(
    cloud: &mut ParticleCloud,
    batch: &[usize],
    grads: &[f32],
    ctx: &StepContext,
    noise: &NoiseStream,
    reads: Reads,
    row: F,
) -> Result<(), ParticleError> {
    use rayon::prelude::*;
    check_ctx(ctx)?;
    let w = cloud.particles() * cloud.dim();
    let pos = batch_positions(cloud.start(), cloud.rows(), w, batch, grads)?;
    let start = cloud.start();
    // 16 KiB of each buffer per task: enough to amortise scheduling, small enough for L2.
    let rows_per_task = (4096 / w).max(1);
    let chunk = rows_per_task * w;
    let (z, m1, m2) = cloud.buffers_mut();
    let small = z.len() < crate::lazy::PARALLEL_MIN;
    let task = |buf: &mut Vec<f32>, (c, ((z, m1), m2)): (usize, TaskBuffers<'_>)| {
        let r0 = c * rows_per_task;
        let buf = &mut buf[..z.len()];
        // The noise draw is compute-bound and the kernel after it memory-bound: prefetch
        // the buffers the kernel reads while drawing, so the two overlap.
        let e0 = ((start + r0) * w) as u64;
        match reads {
            Reads::Z => noise.fill_prefetching(ctx.step, e0, buf, &[z]),
            Reads::M1 => noise.fill_prefetching(ctx.step, e0, buf, &[z, m1]),
            Reads::M2 => noise.fill_prefetching(ctx.step, e0, buf, &[z, m2]),
        }
        let task = Task {
            w,
            pos: &pos[r0..r0 + z.len() / w],
            grads,
            z,
            m1,
            m2,
            noise: buf,
        };
        task.run_dispatch(&row);
    };
    if small {
        // A small cloud (gmm at N = 1: 20,000 elements) is done before rayon's workers wake.
        let mut buf = vec![0f32; chunk];
        z.chunks_mut(chunk)
            .zip(m1.chunks_mut(chunk))
            .zip(m2.chunks_mut(chunk))
            .enumerate()
            .for_each(|item| task(&mut buf, item));
    } else {
        z.par_chunks_mut(chunk)
            .zip(m1.par_chunks_mut(chunk))
            .zip(m2.par_chunks_mut(chunk))
            .enumerate()
            .for_each_init(|| vec![0f32; chunk], task);
    }
    Ok(())
}

/// x^(-1/4) for normal positive x (the noise's G^{1/2} = (V + eps)^(-1/4)), to about 2 f32 ulps.
/// Two square roots and a division per element were a third of the eager update's time; this is
/// an exponent-halving bit trick (initial relative error <= 3.2%) and three Newton steps on
/// y^-4 = x (error 3.2e-2 -> 2.5e-3 -> 1.6e-5 -> f32 rounding), in multiplies and adds only, so it
/// vectorises and gives the same bits on every CPU.
#[inline(always)]
pub(crate) fn inv_fourth_root(x: f32) -> f32 {
    // The constant minimises the initial error over [1e-8, 1e8] (a grid search, see the test).
    let mut y = f32::from_bits(0x4f58_6000 - (x.to_bits() >> 2));
    // Hoisted (two multiplies fewer per element): 0.25 x is exact for x >= 2^-124, so
    // xq y^4 has the bits of 0.25 (x y^4).
    let xq = 0.25 * x;
    for _ in 0..3 {
        let y2 = y * y;
        y *= 1.25 - xq * (y2 * y2);
    }
    y
}

/// Which buffer besides z a rule reads on every row (not only on minibatch rows): prefetched
/// with z.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    /// z only (Langevin).
    Z,
    /// The momentum buffer (kinetic Langevin's velocity).
    M1,
    /// The second moment (adaptive Langevin's preconditioned noise).
    M2,
}

/// The rows of one task of [`fused_pass`] (or of a lazy minibatch pass).
pub(crate) struct Task<'a> {
    /// Row width N d.
    pub w: usize,
    /// Each row's position in the batch (u32::MAX if absent).
    pub pos: &'a [u32],
    /// The batch's gradients, [|B|, w].
    pub grads: &'a [f32],
    pub z: &'a mut [f32],
    pub m1: &'a mut [f32],
    pub m2: &'a mut [f32],
    /// The task's noise, same layout as `z`.
    pub noise: &'a [f32],
}

impl Task<'_> {
    /// Batch rows one at a time; each run of consecutive rows outside the batch as one slice,
    /// since every kernel is elementwise there. At N d = 32 (the eager bench, gmm at N = 16) a
    /// row is two AVX-512 vectors, and the per-row set-up cost about a tenth of the pass.
    #[inline(always)]
    fn run<F: Fn(Row<'_>)>(self, row: &F) {
        let (w, pos) = (self.w, self.pos);
        let mut r = 0;
        while r < pos.len() {
            let (e, g) = if pos[r] != u32::MAX {
                (r + 1, Some(&self.grads[pos[r] as usize * w..][..w]))
            } else {
                let run = pos[r..].iter().take_while(|&&p| p == u32::MAX).count();
                (r + run, None)
            };
            let span = r * w..e * w;
            row((
                &mut self.z[span.clone()],
                &mut self.m1[span.clone()],
                &mut self.m2[span.clone()],
                g,
                &self.noise[span],
            ));
            r = e;
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw")]
    fn run_avx512<F: Fn(Row<'_>)>(self, row: &F) {
        self.run(row)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn run_avx2<F: Fn(Row<'_>)>(self, row: &F) {
        self.run(row)
    }

    /// [`run`](Self::run) compiled for the widest vector unit present; the kernels use plain
    /// IEEE operations (no FMA contraction in Rust), so every path gives the same bits.
    pub(crate) fn run_dispatch<F: Fn(Row<'_>)>(self, row: &F) {
        match Isa::detect() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the function's features were detected.
            Isa::Avx512 => unsafe { self.run_avx512(row) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { self.run_avx2(row) },
            Isa::Portable => self.run(row),
        }
    }
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
        fused_pass(cloud, batch, grads, ctx, noise, Reads::Z, kernel)
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
        // Inlined into the dispatched (AVX-512/AVX2) row loop so it is vectorised for that ISA.
        #[inline(always)]
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
        let reads = if ctx.precondition_noise {
            Reads::M2
        } else {
            Reads::Z
        };
        fused_pass(cloud, batch, grads, ctx, noise, reads, kernel)
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
            Reads::M1,
            #[inline(always)]
            |(z, v, _, g, w): Row<'_>| match g {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_rows_agree_with_batch_positions_and_reject_what_they_reject() {
        let (start, rows, w) = (100, 50, 3);
        let batch = [149, 100, 120, 131];
        let local = local_rows(start, rows, &batch).unwrap();
        assert_eq!(local, [49, 0, 20, 31]);
        let pos = batch_positions(start, rows, w, &batch, &[0.0; 12]).unwrap();
        for (p, &r) in local.iter().enumerate() {
            assert_eq!(pos[r as usize], p as u32);
        }
        for bad in [&[120, 99][..], &[150], &[120, 131, 120]] {
            let want = batch_positions(start, rows, w, bad, &vec![0.0; bad.len() * w]);
            let got = local_rows(start, rows, bad);
            assert_eq!(
                got.unwrap_err().to_string(),
                want.unwrap_err().to_string(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn inv_fourth_root_is_accurate_over_the_range_v_takes() {
        // V + eps spans [1e-8, ~1e12] in practice; check a dense log grid of [1e-12, 1e15]
        // (every f32 step near the grid points' exponents) against f64.
        let (lo, hi) = (1e-12f64.ln(), 1e15f64.ln());
        let n = 2_000_000;
        let mut worst = 0f64;
        for i in 0..=n {
            let x = (lo + (hi - lo) * i as f64 / n as f64).exp() as f32;
            let want = (x as f64).powf(-0.25);
            worst = worst.max((inv_fourth_root(x) as f64 / want - 1.0).abs());
        }
        assert!(worst < 3e-7, "max relative error {worst}");
        // The bit trick's starting point alone is within 3.2% (the Newton steps' premise).
        let y0 = |x: f32| f32::from_bits(0x4f58_6000 - (x.to_bits() >> 2)) as f64;
        for x in [1e-8f32, 3e-5, 0.7, 1.0, 2.0, 123.0, 9e7] {
            assert!((y0(x) * (x as f64).powf(0.25) - 1.0).abs() < 0.032, "x {x}");
        }
    }
}
