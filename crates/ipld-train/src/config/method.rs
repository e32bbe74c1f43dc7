//! The training methods a run config names (`method = ...`): IPLD, DiffusionVAE, and PGD and
//! MPGD as published, with the particle rules each may run with.

use ipld_particles::RuleKind;
use serde::{Deserialize, Serialize};

/// The training method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Interacting Particle Latent Diffusion (Algorithm 2; Algorithm 1 with the `langevin` rule;
    /// `kinetic-langevin` as an ablation with momentum on the particles).
    Ipld,
    /// VAE with a diffusion prior (Wehenkel & Louppe 2021) as the paper re-implements it: a linear
    /// Gaussian encoder, N reparameterised samples per point, the same decoder, prior and KL
    /// annealing.
    DiffusionVae,
    /// Particle gradient descent as published (Kuntz, Lim & Johansen 2023): p(x, z) =
    /// N(z; 0, I) N(x; g_phi(z), sigma² I), no diffusion prior and no KL weight; the minibatch's
    /// particles take a Langevin step on their own posterior (`batch-langevin`), phi an
    /// RMSProp-preconditioned gradient step (`train.phi_update`). Samples decode z ~ N(0, I).
    Pgd,
    /// Momentum particle descent as published (Lim, Kuntz, Power & Johansen 2024): PGD's model
    /// with underdamped Langevin on the minibatch's particles (`underdamped-langevin`) and
    /// momentum on phi (`train.phi_update.momentum`).
    Mpgd,
}

impl Method {
    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ipld => "ipld",
            Self::DiffusionVae => "diffusion-vae",
            Self::Pgd => "pgd",
            Self::Mpgd => "mpgd",
        }
    }

    /// Whether the method keeps a particle cloud (all but DiffusionVAE).
    pub fn uses_particles(self) -> bool {
        self != Self::DiffusionVae
    }

    /// Whether the method is a published PGD/MPGD: a standard normal prior in place of the
    /// diffusion prior, so no theta, no KL weight and no reverse-process sampling.
    pub fn is_published(self) -> bool {
        matches!(self, Self::Pgd | Self::Mpgd)
    }

    /// The particle rules (`particles.update.type`) the method may run with.
    pub fn allowed_updates(self) -> &'static [RuleKind] {
        use RuleKind::*;
        match self {
            Self::Ipld => &[AdaptiveLangevin, Langevin, KineticLangevin],
            Self::DiffusionVae => &[AdaptiveLangevin, Langevin, KineticLangevin],
            Self::Pgd => &[BatchLangevin],
            Self::Mpgd => &[UnderdampedLangevin],
        }
    }
}
