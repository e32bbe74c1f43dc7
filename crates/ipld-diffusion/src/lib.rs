#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod analytic;
mod ema;
mod error;
mod forward;
mod gaussian_base;
mod guidance;
mod loss;
mod model;
mod noise;
mod ode;
mod reverse;
mod sampler;
mod schedule;
mod stf;

pub use analytic::{GaussianEps, GaussianMixtureEps};
pub use ema::{Ema, EmaConfig};
pub use error::DiffusionError;
pub use forward::{q_sample, sample_timesteps, timestep_tensor};
pub use gaussian_base::{GaussianBase, GaussianFit, ResidualEps};
pub use guidance::{Bandwidth, GuidanceConfig, ParticleGuidance};
pub use loss::{DiffusionLoss, LossTerms, LossWeighting, StfTerms, loss_weight};
pub use model::EpsModel;
pub use noise::gaussian;
pub use ode::{
    DpmSolverPp, EdmGrid, Heun, Restart, edm_sigmas, edm_timesteps, nearest_timestep, vp_sigmas,
};
pub use reverse::{Sampler, SamplerProgress};
pub use sampler::{Ddim, Ddpm, DdpmVariance, SamplerConfig, ddim_timesteps};
pub use schedule::{
    NoiseSchedule, ScheduleConfig, ScheduleKind, ScheduleTensors, cosine_betas, linear_betas,
};
pub use stf::stf_eps_targets;
