//! What every particle update rule is: the [`ParticleUpdate`] trait, the step's shared
//! quantities ([`StepContext`]), and what lazy noise ([`StepVariance`]) and the CUDA kernel
//! ([`KernelParams`]) need to know of a rule. `lazy.rs` and `cuda.rs` see rules only through this
//! trait, so adding a rule touches no code outside its own file and its registration in
//! `update.rs`.
//!
//! `grads` is always the gradient of the minibatch loss L-hat of eq. (22)/(64) with respect to the
//! minibatch particles, [|B|, N, d] in batch order; the rules apply the M N scaling themselves.

use serde::{Deserialize, Serialize};

use crate::{NoiseStream, ParticleCloud, ParticleError};

/// How much Langevin noise a rule injects (`particles.noise_scale`).
///
/// With L-hat of eq. (64), M N grad L-hat = (M / |B|) grad U_m for a minibatch particle, where
/// U_m = gamma_t L_D - log p_phi(x^m | z). A particle is in the minibatch on a fraction |B| / M
/// of the steps, so its mean drift per step is h grad U_m (h G grad U_m with Algorithm 2's
/// preconditioner), as in the full-batch chain of eq. (21) with the KL weight of A.4.1. The noise
/// that keeps that chain's stationary law, proportional to exp(-U_m / gamma_t) =
/// p_theta(z) p_phi(x^m | z)^(1 / gamma_t) for fixed (theta, phi), is therefore
/// sqrt(2 h gamma_t) (G^(1/2)) W per step on every particle, whatever |B| is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseScale {
    /// The paper as printed: Algorithm 1's sqrt(2 h gamma_t |B| / M) (temperature gamma_t |B| / M),
    /// Algorithm 2's sqrt(2 h gamma_t / M) G^(1/2), divided by |B| with `batch_noise_scale`
    /// (A.4.2; temperature gamma_t / (M |B|²), about 1e-6 of the consistent noise on gmm), with
    /// G = I during the first epoch, and kinetic Langevin at temperature gamma_t |B| / M. What a
    /// config without `particles.noise_scale` means, so older runs resume bit for bit.
    #[default]
    Paper,
    /// Noise under which the subsampled chain keeps the stationary law of eq. (21) tilted by
    /// gamma_t: sqrt(2 h gamma_t) for Algorithm 1, sqrt(2 h gamma_t) G^(1/2) for Algorithm 2 (G
    /// from a particle's first visit on, the same G as its drift), temperature gamma_t for kinetic
    /// Langevin. `batch_noise_scale` does not apply.
    Posterior,
}

impl NoiseScale {
    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Paper => "paper",
            Self::Posterior => "posterior",
        }
    }

    /// The temperature of the unpreconditioned rules (Algorithm 1, kinetic Langevin): the noise
    /// variance per step is 2 h times this. gamma_t |B| / M as printed, gamma_t for the
    /// posterior.
    pub fn temperature(self, ctx: &StepContext) -> f64 {
        match self {
            Self::Paper => ctx.gamma * ctx.batch_size as f64 / ctx.total_points as f64,
            Self::Posterior => ctx.gamma,
        }
    }
}

/// Quantities of the current step shared by every rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepContext {
    /// Global step t (also the noise counter).
    pub step: u64,
    /// The epoch of step t (0-based): rules whose behaviour changes with the epoch read it (the
    /// paper's adaptive Langevin preconditions its noise only from the second epoch on, A.4.2).
    pub epoch: u64,
    /// KL weight gamma_t (A.4.1): multiplies the noise variance.
    pub gamma: f64,
    /// Particle step size h_z at this step (after per-epoch decay).
    pub step_size: f64,
    /// Minibatch size |B|.
    pub batch_size: usize,
    /// Number of training points M in the whole dataset (not just this shard).
    pub total_points: usize,
    /// The noise's scale: the paper's, or the one that samples the tilted posterior.
    pub noise_scale: NoiseScale,
}

/// Noise variance of one element at one step, split by whether it is preconditioned: the
/// element's variance is `plain + preconditioned G` (G^{1/2} W has variance G), with
/// G = (c V + eps)^(-1/2) for a visited element (c = 1, or 1 / (1 - b^k) after k visits with
/// [`ParticleUpdate::second_moment_bias_correction`]) and G = 1 while V = 0 (never visited).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepVariance {
    /// Variance of the unpreconditioned part.
    pub plain: f64,
    /// Variance multiplying G = (V + eps)^(-1/2).
    pub preconditioned: f64,
}

/// One step of a rule as the CUDA kernel's arguments (`ipld_particle_update` in
/// `KERNEL_SOURCE`). Plain data, so the trait is the same with and without the `cuda` feature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelParams {
    /// The kernel's rule id: 0 Langevin (Algorithm 1), 1 adaptive Langevin (Algorithm 2).
    pub rule: i32,
    /// Langevin: the drift M N h; adaptive Langevin: the gradient scale M N.
    pub drift: f32,
    /// Adaptive Langevin's momentum a (0 otherwise).
    pub a: f32,
    /// Adaptive Langevin's second-moment coefficient b (0 otherwise).
    pub b: f32,
    /// Adaptive Langevin's eps (0 otherwise).
    pub eps: f32,
    /// The noise's standard deviation before any preconditioning.
    pub sd: f32,
    /// Whether the noise is preconditioned by G^{1/2} at this step (G = 1 where V = 0, a
    /// particle never visited).
    pub precondition: bool,
}

/// A particle update rule.
pub trait ParticleUpdate {
    /// The rule's config name (`particles.update.type`).
    fn name(&self) -> &'static str;

    /// Checks the rule's coefficients; keys are relative to the rule's struct (`damping`, ...).
    fn validate(&self) -> Result<(), ParticleError> {
        Ok(())
    }

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

    /// Whether the rule has a lazy form ([`step_variance`](Self::step_variance) and
    /// [`step_batch_rows`](Self::step_batch_rows)), so `particles.lazy_noise` may be set.
    fn supports_lazy_noise(&self) -> bool {
        false
    }

    /// Per-element noise variance of one step, for lazy noise: rows outside the minibatch see
    /// nothing but this noise. A rule that moves rows outside the minibatch otherwise (a
    /// velocity) has no lazy form and keeps this default, an error.
    fn step_variance(&self, ctx: &StepContext) -> Result<StepVariance, ParticleError> {
        let _ = ctx;
        Err(no_lazy_form(self.name()))
    }

    /// The epsilon of the preconditioner G = (V + eps)^(-1/2) that lazy noise applies to the
    /// accumulated preconditioned variance (0 for rules without one).
    fn preconditioner_eps(&self) -> f64 {
        0.0
    }

    /// With Adam's bias correction of the preconditioner, its second-moment coefficient b: a
    /// particle visited k times has G = (V / (1 - b^k) + eps)^(-1/2). Lazy noise reads it for
    /// the rows it catches up. None (the default) for rules without it.
    fn second_moment_bias_correction(&self) -> Option<f64> {
        None
    }

    /// Lazy noise's half of a step: the eager update of the minibatch rows only, with the noise
    /// the eager pass would draw for them (so a minibatch of every row reproduces
    /// [`step`](Self::step) exactly). Rules without a lazy form keep this default, an error.
    fn step_batch_rows(
        &self,
        cloud: &mut ParticleCloud,
        batch: &[usize],
        grads: &[f32],
        ctx: &StepContext,
        noise: &NoiseStream,
    ) -> Result<(), ParticleError> {
        let _ = (cloud, batch, grads, ctx, noise);
        Err(no_lazy_form(self.name()))
    }

    /// The CUDA kernel's arguments for this step of a cloud with `n` particles per point; rules
    /// the kernel does not implement keep this default, an error.
    fn kernel_params(&self, ctx: &StepContext, n: usize) -> Result<KernelParams, ParticleError> {
        let _ = (ctx, n);
        Err(ParticleError::param(
            "type",
            format!(
                "the CUDA kernel implements langevin and adaptive-langevin, not {}",
                self.name()
            ),
        ))
    }
}

fn no_lazy_form(name: &str) -> ParticleError {
    ParticleError::param(
        "lazy_noise",
        format!("{name} moves every particle every step (its velocity); use the eager update"),
    )
}
