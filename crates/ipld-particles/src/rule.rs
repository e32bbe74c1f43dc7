//! What every particle update rule is: the [`ParticleUpdate`] trait, the step's shared
//! quantities ([`StepContext`]), and what lazy noise ([`StepVariance`]) and the CUDA kernel
//! ([`KernelParams`]) need to know of a rule. `lazy.rs` and `cuda.rs` see rules only through this
//! trait, so adding a rule touches no code outside its own file and its registration in
//! `update.rs`.
//!
//! `grads` is always the gradient of the minibatch loss L-hat of eq. (22)/(64) with respect to the
//! minibatch particles, [|B|, N, d] in batch order; the rules apply the M N scaling themselves.

use crate::{NoiseStream, ParticleCloud, ParticleError};

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
}

/// Noise variance of one element at one step, split by whether it is preconditioned: the
/// element's variance is `plain + preconditioned / sqrt(V + eps)` (G^{1/2} W has variance G).
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
    /// Whether the noise is preconditioned by G^{1/2} at this step.
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
