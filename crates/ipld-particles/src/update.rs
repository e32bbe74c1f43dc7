//! The rule registry: [`UpdateConfig`], the serde enum a config names a rule by
//! (`{ type = "adaptive-langevin", ... }`), and [`RuleKind`], its variants without their
//! parameters. Adding a rule is a file with its struct and its [`ParticleUpdate`] impl, plus a
//! variant in each enum here and its arm in `rule`, `kind` and `RuleKind::name`.

use serde::{Deserialize, Serialize};

use crate::{
    AdaptiveLangevin, BatchLangevin, KernelParams, KineticLangevin, Langevin, NoiseStream,
    ParticleCloud, ParticleError, ParticleUpdate, StepContext, StepVariance, UnderdampedLangevin,
};

/// The update rule chosen in a config: `{ type = "adaptive-langevin", ... }`, `{ type =
/// "langevin" }`, `{ type = "kinetic-langevin", damping = ... }`, or the published PGD's and
/// MPGD's `{ type = "batch-langevin" }` and `{ type = "underdamped-langevin", ... }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum UpdateConfig {
    /// Algorithm 1.
    Langevin(Langevin),
    /// Algorithm 2.
    AdaptiveLangevin(AdaptiveLangevin),
    /// Kinetic Langevin on the subsampled loss (an IPLD ablation with momentum on the particles).
    KineticLangevin(KineticLangevin),
    /// PGD's particle step as published (minibatch particles only, unscaled score).
    BatchLangevin(BatchLangevin),
    /// MPGD's particle step as published (exact underdamped transition, minibatch only).
    UnderdampedLangevin(UnderdampedLangevin),
}

/// A rule's kind (its `type`), for code that allows or refuses rules without caring about their
/// parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleKind {
    /// [`Langevin`].
    Langevin,
    /// [`AdaptiveLangevin`].
    AdaptiveLangevin,
    /// [`KineticLangevin`].
    KineticLangevin,
    /// [`BatchLangevin`].
    BatchLangevin,
    /// [`UnderdampedLangevin`].
    UnderdampedLangevin,
}

impl RuleKind {
    /// The config name (`type = "..."`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Langevin => "langevin",
            Self::AdaptiveLangevin => "adaptive-langevin",
            Self::KineticLangevin => "kinetic-langevin",
            Self::BatchLangevin => "batch-langevin",
            Self::UnderdampedLangevin => "underdamped-langevin",
        }
    }
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self::AdaptiveLangevin(AdaptiveLangevin::default())
    }
}

impl UpdateConfig {
    /// The rule as a trait object: the one place that dispatches on the variant.
    pub fn rule(&self) -> &dyn ParticleUpdate {
        match self {
            Self::Langevin(r) => r,
            Self::AdaptiveLangevin(r) => r,
            Self::KineticLangevin(r) => r,
            Self::BatchLangevin(r) => r,
            Self::UnderdampedLangevin(r) => r,
        }
    }

    /// The rule's kind.
    pub fn kind(&self) -> RuleKind {
        match self {
            Self::Langevin(_) => RuleKind::Langevin,
            Self::AdaptiveLangevin(_) => RuleKind::AdaptiveLangevin,
            Self::KineticLangevin(_) => RuleKind::KineticLangevin,
            Self::BatchLangevin(_) => RuleKind::BatchLangevin,
            Self::UnderdampedLangevin(_) => RuleKind::UnderdampedLangevin,
        }
    }
}

/// The config forwards to its rule, so it can be passed wherever a rule is.
impl ParticleUpdate for UpdateConfig {
    fn name(&self) -> &'static str {
        self.rule().name()
    }

    fn validate(&self) -> Result<(), ParticleError> {
        self.rule().validate()
    }

    fn step(
        &self,
        cloud: &mut ParticleCloud,
        batch: &[usize],
        grads: &[f32],
        ctx: &StepContext,
        noise: &NoiseStream,
    ) -> Result<(), ParticleError> {
        self.rule().step(cloud, batch, grads, ctx, noise)
    }

    fn supports_lazy_noise(&self) -> bool {
        self.rule().supports_lazy_noise()
    }

    fn step_variance(&self, ctx: &StepContext) -> Result<StepVariance, ParticleError> {
        self.rule().step_variance(ctx)
    }

    fn preconditioner_eps(&self) -> f64 {
        self.rule().preconditioner_eps()
    }

    fn second_moment_bias_correction(&self) -> Option<f64> {
        self.rule().second_moment_bias_correction()
    }

    fn step_batch_rows(
        &self,
        cloud: &mut ParticleCloud,
        batch: &[usize],
        grads: &[f32],
        ctx: &StepContext,
        noise: &NoiseStream,
    ) -> Result<(), ParticleError> {
        self.rule().step_batch_rows(cloud, batch, grads, ctx, noise)
    }

    fn kernel_params(&self, ctx: &StepContext, n: usize) -> Result<KernelParams, ParticleError> {
        self.rule().kernel_params(ctx, n)
    }
}
