//! The latent DDPM prior's configuration (`[diffusion]`): the schedule of eqs. (29)-(30), the
//! diffusion loss of eqs. (40)/(41) or the stable target field, and the latent scale.

use ipld_diffusion::{LossWeighting, ScheduleConfig};
use serde::{Deserialize, Serialize};

/// The latent DDPM prior.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionConfig {
    /// Noise schedule (Appendix B: linear, 1e-4 to 0.02, K = 1000).
    pub schedule: ScheduleConfig,
    /// The diffusion loss: `simple` (eq. 41), `likelihood-weighted` (eq. 40), or `stf`, the
    /// simple weighting with the stable target field as theta's regression target (Xu 2024,
    /// thesis Algorithm 1; docs/training.md, "Stable target field"). Under `stf` the particles
    /// still follow the gradient of the simple loss, whose one-draw target is eq. (41)'s.
    pub loss: DiffusionObjective,
    /// Under `loss = "stf"`: how many training points' latents (all N particles of each, the
    /// minibatch's own included) form the reference batch; capped at the data's size.
    #[serde(default = "default_stf_reference")]
    pub stf_reference: usize,
    /// The prior models u = z / s with this s (the role of LDM's latent scale factor, Rombach
    /// et al. 2022): the diffusion loss of eq. (64) sees z / s and prior samples are s u. The
    /// ideal score of z is unchanged, only the schedule's noise levels move relative to the
    /// latents' scale. 1 = the paper.
    #[serde(default = "unit_scale")]
    pub latent_scale: f64,
}

fn unit_scale() -> f64 {
    1.0
}

fn default_stf_reference() -> usize {
    256
}

/// The diffusion objective (`diffusion.loss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiffusionObjective {
    /// Eq. (41), Ho et al.'s L_simple.
    #[default]
    Simple,
    /// Eq. (40), the ELBO's weighting.
    LikelihoodWeighted,
    /// Eq. (41)'s weighting with the stable target field replacing each row's own noise as
    /// theta's target.
    Stf,
}

impl DiffusionObjective {
    /// The per-timestep weighting of the squared error.
    pub fn weighting(self) -> LossWeighting {
        match self {
            Self::Simple | Self::Stf => LossWeighting::Simple,
            Self::LikelihoodWeighted => LossWeighting::LikelihoodWeighted,
        }
    }

    /// The name a config spells it with.
    pub fn name(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::LikelihoodWeighted => "likelihood-weighted",
            Self::Stf => "stf",
        }
    }

    /// Whether theta regresses on the stable target field.
    pub fn is_stf(self) -> bool {
        self == Self::Stf
    }
}
