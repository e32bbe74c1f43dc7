//! `train.prior_refit`: prior-only steps after the joint steps of Algorithm 2 (not in the
//! paper), and the learning rate of each of them.

use serde::{Deserialize, Serialize};

/// Prior-only steps after joint training (`train.prior_refit`). On a CPU budget the joint phase
/// ends long before the prior has fitted the latents (the paper gives the prior ~10^5 steps,
/// Table 2); these steps cost one prior evaluation each and no decoder pass. Step numbers
/// continue after `train.steps`, so checkpoints, resume and the EMA carry over unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorRefitConfig {
    /// Number of prior-only steps.
    pub steps: u64,
    /// Training points per step, drawn without replacement; each brings all its N particles
    /// (DiffusionVAE: N encoder draws).
    pub batch_size: usize,
    /// AdamW learning rate for theta in this phase (the optimizer state carries over).
    pub lr: f64,
    /// Anneal the rate from `lr` to this over the refit by a half cosine
    /// ([`PriorRefitConfig::lr_at`]); absent = `lr` throughout (configs before this key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_lr: Option<f64>,
    /// Fit N(mu, Sigma) (full covariance) to the frozen cloud when the refit begins and train
    /// the network as the residual over that Gaussian's exact eps (`ipld_diffusion::GaussianBase`;
    /// its output layer restarts at zero, so the refit starts from the Gaussian). Particle
    /// methods only; absent = false (configs before this key).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gaussian_base: bool,
    /// Train the refit on the Min-SNR-gamma weighting (`ipld_diffusion::LossWeighting::MinSnr`,
    /// Hang et al. 2023): each step's squared error weighted by min(SNR_k, gamma) / SNR_k, with
    /// SNR_k = abar_k / (1 - abar_k) of the schedule, so the barely-noised steps count less. The
    /// logged loss stays eq. (41)'s, so runs compare. Needs `diffusion.loss = "simple"`; absent =
    /// the diffusion loss's own weighting (configs before this key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_snr_gamma: Option<f64>,
}

impl PriorRefitConfig {
    /// The learning rate of refit step `i` (0-based, of `steps`): `lr` without `final_lr`, else
    /// final + (lr - final) (1 + cos(pi i / steps)) / 2, which starts at `lr` and reaches
    /// `final_lr` after the last step.
    pub fn lr_at(&self, i: u64) -> f64 {
        match self.final_lr {
            None => self.lr,
            Some(f) => {
                let x = (i.min(self.steps) as f64) / (self.steps.max(1) as f64);
                f + (self.lr - f) * 0.5 * (1.0 + (std::f64::consts::PI * x).cos())
            }
        }
    }
}
