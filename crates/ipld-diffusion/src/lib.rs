#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod analytic;
mod ema;
mod error;
mod forward;
mod loss;
mod model;
mod noise;
mod sampler;
mod schedule;

pub use analytic::GaussianEps;
pub use ema::{Ema, EmaConfig};
pub use error::DiffusionError;
pub use forward::{q_sample, sample_timesteps, timestep_tensor};
pub use loss::{DiffusionLoss, LossTerms, LossWeighting, loss_weight};
pub use model::EpsModel;
pub use noise::gaussian;
pub use sampler::{
    Ddim, Ddpm, DdpmVariance, Sampler, SamplerConfig, SamplerProgress, ddim_timesteps,
};
pub use schedule::{
    NoiseSchedule, ScheduleConfig, ScheduleKind, ScheduleTensors, cosine_betas, linear_betas,
};
