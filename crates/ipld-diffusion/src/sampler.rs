//! Reverse-process samplers over an [`EpsModel`], all with one signature
//! `sample(model, schedule, z_K, rng, progress) -> z_0` (k-diffusion's convention):
//!
//! - [`Ddpm`]: ancestral sampling of p_theta(z_{k-1} | z_k) = N(mu_theta,k(z_k), sigma_k^2 I) with
//!   the eps-parameterised mean of Appendix A.1 (Ho et al. 2020, Algorithm 2). sigma_k^2 = beta_k
//!   as in eq. (34), or the posterior variance beta tilde_k; no noise at the last step.
//! - [`Ddim`]: Song et al. (2021a), eq. (12) there, on S evenly spaced timesteps with
//!   sigma = eta sqrt((1 - abar_prev)/(1 - abar)) sqrt(1 - abar/abar_prev). With eta = 1 and
//!   S = K it is exactly DDPM with the posterior variance.
//!
//! - [`crate::Heun`], [`crate::DpmSolverPp`], [`crate::Restart`]: probability-flow samplers on
//!   the EDM grid (module `ode`).
//!
//! Coefficients are computed in f64 on the host; every square root is of a clamped argument.

use candle_core::Tensor;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::reverse::{Sampler, SamplerProgress};
use crate::{DiffusionError, EpsModel, NoiseSchedule, gaussian};

/// The variance of DDPM's reverse kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DdpmVariance {
    /// sigma_k^2 = beta_k, the paper's backward kernels (eq. 34).
    #[default]
    Beta,
    /// sigma_k^2 = beta tilde_k, the forward posterior's variance (eq. 31 with eq. 32's mean).
    Posterior,
}

/// DDPM ancestral sampling over all K steps.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ddpm {
    /// Reverse-kernel variance.
    #[serde(default)]
    pub variance: DdpmVariance,
}

/// DDIM sampling on evenly spaced timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ddim {
    /// Number of network evaluations S (1..=K); 100 in the paper's image evaluation (B.2).
    pub steps: usize,
    /// Stochasticity eta >= 0: 0 is deterministic DDIM, 1 matches DDPM's posterior variance.
    pub eta: f64,
}

impl Default for Ddim {
    fn default() -> Self {
        Self {
            steps: 100,
            eta: 0.0,
        }
    }
}

/// A sampler chosen in a config file: `{ type = "ddpm" }`, `{ type = "ddim", steps = 100, eta = 0.0 }`,
/// `{ type = "heun", steps = 18 }`, `{ type = "dpm-solver++", steps = 25 }` or
/// `{ type = "restart", steps = 18, restart_steps = 3, repetitions = 10, t_min = 0.06, t_max = 0.3 }`
/// (the ODE samplers also take `rho`, `sigma_min`, `sigma_max`; docs/sampling.md).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SamplerConfig {
    /// Ancestral DDPM.
    Ddpm(Ddpm),
    /// DDIM.
    Ddim(Ddim),
    /// The probability-flow ODE with Heun's method on the EDM grid.
    Heun(crate::Heun),
    /// DPM-Solver++(2M) on the EDM grid.
    #[serde(rename = "dpm-solver++")]
    DpmSolverPp(crate::DpmSolverPp),
    /// Restart sampling (Xu 2024, thesis Algorithm 9).
    Restart(crate::Restart),
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self::Ddpm(Ddpm::default())
    }
}

impl SamplerConfig {
    /// Checks the parameters against a schedule.
    pub fn validate(&self, schedule: &NoiseSchedule) -> Result<(), DiffusionError> {
        match self {
            Self::Ddpm(_) => Ok(()),
            Self::Ddim(d) => d.validate(schedule),
            Self::Heun(h) => h.validate(),
            Self::DpmSolverPp(d) => d.validate(),
            Self::Restart(r) => r.validate(),
        }
    }

    /// The configured sampler as a trait object.
    pub fn sampler(&self) -> &dyn Sampler {
        match self {
            Self::Ddpm(d) => d,
            Self::Ddim(d) => d,
            Self::Heun(h) => h,
            Self::DpmSolverPp(d) => d,
            Self::Restart(r) => r,
        }
    }
}

/// z <- c_z z - c_eps eps + sigma w, with w ~ N(0, I) drawn only when sigma > 0.
fn step(
    z: &Tensor,
    eps: &Tensor,
    c_z: f64,
    c_eps: f64,
    sigma: f64,
    rng: &mut dyn RngCore,
) -> Result<Tensor, DiffusionError> {
    let mut next = (z.affine(c_z, 0.0)? - eps.affine(c_eps, 0.0)?)?;
    if sigma > 0.0 {
        let w = gaussian(rng, z.shape(), z.dtype(), z.device())?;
        next = (next + w.affine(sigma, 0.0)?)?;
    }
    // Detach: the model's parameters are Vars, and a 1000-step graph would keep every step alive.
    Ok(next.detach())
}

impl Sampler for Ddpm {
    fn sample(
        &self,
        model: &dyn EpsModel,
        schedule: &NoiseSchedule,
        z_init: Tensor,
        rng: &mut dyn RngCore,
        progress: &mut dyn FnMut(SamplerProgress),
    ) -> Result<Tensor, DiffusionError> {
        let total = schedule.steps();
        let mut z = z_init.detach();
        for (i, k) in (1..=total).rev().enumerate() {
            let eps = model.predict_eps_uniform(&z, k)?;
            let (a, b, abar) = (schedule.alpha(k), schedule.beta(k), schedule.alpha_bar(k));
            let c_z = 1.0 / a.sqrt();
            let c_eps = b / ((1.0 - abar).max(f64::MIN_POSITIVE).sqrt() * a.sqrt());
            let sigma = match (k, self.variance) {
                (1, _) => 0.0,
                (_, DdpmVariance::Beta) => b.sqrt(),
                (_, DdpmVariance::Posterior) => {
                    schedule.posterior_variance()[k - 1].max(0.0).sqrt()
                }
            };
            z = step(&z, &eps, c_z, c_eps, sigma, rng)?;
            progress(SamplerProgress {
                step: i + 1,
                total,
                timestep: k,
            });
        }
        Ok(z)
    }

    fn evaluations(&self, schedule: &NoiseSchedule) -> usize {
        schedule.steps()
    }
}

impl Ddim {
    /// Checks 1 <= steps <= K and 0 <= eta <= 1 (eta = 1 is DDPM's posterior variance; above
    /// it sigma^2 can exceed 1 - alpha-bar_{t-1}, leaving no real direction coefficient).
    pub fn validate(&self, schedule: &NoiseSchedule) -> Result<(), DiffusionError> {
        if self.steps == 0 || self.steps > schedule.steps() {
            return Err(DiffusionError::param(
                "steps",
                &format!("must lie in 1..={}, got {}", schedule.steps(), self.steps),
            ));
        }
        if !(0.0..=1.0).contains(&self.eta) {
            return Err(DiffusionError::param(
                "eta",
                &format!("must lie in [0, 1], got {}", self.eta),
            ));
        }
        Ok(())
    }
}

/// S evenly spaced 1-based timesteps in increasing order, tau_i = round(i K / S), i = 1..=S, so
/// the last is K. Since K / S >= 1 the rounded values are distinct.
pub fn ddim_timesteps(total: usize, steps: usize) -> Vec<usize> {
    (1..=steps)
        .map(|i| ((i as f64) * (total as f64) / (steps as f64)).round() as usize)
        .collect()
}

impl Sampler for Ddim {
    fn sample(
        &self,
        model: &dyn EpsModel,
        schedule: &NoiseSchedule,
        z_init: Tensor,
        rng: &mut dyn RngCore,
        progress: &mut dyn FnMut(SamplerProgress),
    ) -> Result<Tensor, DiffusionError> {
        self.validate(schedule)?;
        let taus = ddim_timesteps(schedule.steps(), self.steps);
        let mut z = z_init.detach();
        for (i, j) in (0..taus.len()).rev().enumerate() {
            let k = taus[j];
            let prev = if j == 0 { 0 } else { taus[j - 1] };
            let eps = model.predict_eps_uniform(&z, k)?;
            let (abar, abar_prev) = (schedule.alpha_bar(k), schedule.alpha_bar(prev));
            let var =
                self.eta * self.eta * (1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev);
            let sigma = var.max(0.0).sqrt();
            // z_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma w, with
            // x0_hat = (z - sqrt(1 - abar) eps) / sqrt(abar); collected as c_z z - c_eps eps.
            let r = (abar_prev / abar).sqrt();
            let dir = (1.0 - abar_prev - sigma * sigma).max(0.0).sqrt();
            let c_eps = r * (1.0 - abar).max(0.0).sqrt() - dir;
            z = step(&z, &eps, r, c_eps, sigma, rng)?;
            progress(SamplerProgress {
                step: i + 1,
                total: taus.len(),
                timestep: k,
            });
        }
        Ok(z)
    }

    fn evaluations(&self, _schedule: &NoiseSchedule) -> usize {
        self.steps
    }
}
