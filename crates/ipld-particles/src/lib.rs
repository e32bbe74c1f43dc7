#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod cloud;
#[cfg(feature = "cuda")]
mod cuda;
mod error;
mod lazy;
mod rng;
mod schedule;
mod update;

pub use cloud::{INIT_STREAM, ParticleCloud, advise_huge_pages};
#[cfg(feature = "cuda")]
pub use cuda::{CudaCloud, KERNEL_SOURCE};
pub use error::ParticleError;
pub use lazy::{LAZY_STREAM, LazyNoise};
pub use rng::{NoiseGenerator, NoiseStream, box_muller4, philox4x32, philox4x32_10};
pub use schedule::{KlAnnealing, StepSizeSchedule};
pub use update::{
    AdaptiveLangevin, KineticLangevin, Langevin, ParticleUpdate, StepContext, StepVariance,
    UpdateConfig,
};
