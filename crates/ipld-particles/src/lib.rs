#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod adaptive_langevin;
mod cloud;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod error;
mod kernel;
mod kinetic_langevin;
mod langevin;
mod lazy;
mod published;
mod rng;
mod rule;
mod schedule;
mod update;

pub use adaptive_langevin::{AdaptiveLangevin, SecondMomentOf, V_FLOOR};
pub use cloud::{INIT_STREAM, ParticleCloud, advise_huge_pages};
pub use cpu::{ISA_ENV, Isa, active_isa, set_isa};
#[cfg(feature = "cuda")]
pub use cuda::{CudaCloud, KERNEL_SOURCE};
pub use error::ParticleError;
pub use kinetic_langevin::KineticLangevin;
pub use langevin::Langevin;
pub use lazy::{LAZY_STREAM, LazyNoise};
pub use published::{BatchLangevin, UnderdampedCoefficients, UnderdampedLangevin};
pub use rng::{NoiseGenerator, NoiseStream, box_muller4, philox4x32, philox4x32_10};
pub use rule::{KernelParams, NoiseScale, ParticleUpdate, StepContext, StepVariance};
pub use schedule::{KlAnnealing, StepSizeSchedule};
pub use update::{RuleKind, UpdateConfig};
